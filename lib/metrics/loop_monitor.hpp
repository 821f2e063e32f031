// Watches the event loop from inside it, the talk's "slow callback" concern measured:
//
//  - a periodic probe timer stamps the heartbeat that /healthz reads and records how late it
//    fired into the loop-lag histogram (a timer fires late exactly when a callback hogged the
//    loop);
//  - a uv_prepare/uv_check pair measures how long each loop iteration was busy (its time minus
//    the time spent waiting in epoll, from libuv's idle-time metric) and logs a warning when one
//    ran longer than --slow-callback-warn, naming the phase that took the time.
//
// Threading: the loop thread owns it; live_state is how its figures reach the HTTP threads.
// None of its handles keeps the loop alive.
#pragma once

#include "metrics/live_state.hpp"
#include "runtime/loop.hpp"

#include <cstdint>
#include <functional>

namespace mayhem::metrics {

class loop_monitor {
public:
    // `on_tick` runs on every probe tick after the heartbeat (the owner publishes loop-owned
    // figures from it). A zero `slow_warn` disables the busy-iteration check.
    loop_monitor(rt::loop& l, live_state& live, rt::millis period, rt::millis slow_warn,
                 std::function<void()> on_tick);
    loop_monitor(const loop_monitor&) = delete;
    loop_monitor& operator=(const loop_monitor&) = delete;

    static std::int64_t steady_ns() noexcept;
    // CPU time of the calling thread: tells a slow callback from a thread that was not running.
    static std::uint64_t thread_cpu_ns() noexcept;

private:
    void tick() noexcept;
    static void on_prepare(uv_prepare_t* h) noexcept;
    static void on_check(uv_check_t* h) noexcept;

    rt::loop& loop_;
    live_state& live_;
    std::uint64_t period_ns_;
    std::uint64_t slow_ns_;
    std::function<void()> on_tick_;

    // Probe timer state.
    std::uint64_t last_tick_ = 0; // uv_hrtime

    // Iteration accounting (uv_hrtime and uv_metrics_idle_time, both nanoseconds).
    std::uint64_t last_check_ = 0;     // end of the previous iteration's poll phase; 0: none yet
    std::uint64_t last_check_cpu_ = 0; // this thread's CPU time then
    std::uint64_t prepare_at_ = 0, idle_at_prepare_ = 0;
    std::uint64_t last_warn_ = 0, suppressed_ = 0;

    rt::periodic_timer timer_;
    rt::uv_handle<uv_prepare_t> prepare_;
    rt::uv_handle<uv_check_t> check_;
};

} // namespace mayhem::metrics
