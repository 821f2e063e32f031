#include "metrics/loop_monitor.hpp"

#include "runtime/log.hpp"

#include <algorithm>
#include <chrono>
#include <ctime>

namespace mayhem::metrics {

namespace {
constexpr std::uint64_t warn_every_ns = 1'000'000'000; // at most one warning a second
} // namespace

std::int64_t loop_monitor::steady_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

std::uint64_t loop_monitor::thread_cpu_ns() noexcept {
    timespec ts{};
    if (::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000 +
           static_cast<std::uint64_t>(ts.tv_nsec);
}

loop_monitor::loop_monitor(rt::loop& l, live_state& live, rt::millis period, rt::millis slow_warn,
                           std::function<void()> on_tick)
    : loop_(l), live_(live),
      period_ns_(static_cast<std::uint64_t>(std::max<std::int64_t>(1, period.count())) * 1'000'000),
      slow_ns_(static_cast<std::uint64_t>(std::max<std::int64_t>(0, slow_warn.count())) *
               1'000'000),
      on_tick_(std::move(on_tick)), last_tick_(uv_hrtime()), timer_(l, period, [this] { tick(); }),
      prepare_([&l](uv_prepare_t* h) { return uv_prepare_init(l.get(), h); }, "uv_prepare_init"),
      check_([&l](uv_check_t* h) { return uv_check_init(l.get(), h); }, "uv_check_init") {
    live_.heartbeat_ns.store(steady_ns(), std::memory_order_relaxed);
    if (slow_ns_ == 0) return;
    // Idle time lets a long iteration be told apart from a long wait for I/O.
    rt::check_uv(uv_loop_configure(l.get(), UV_METRICS_IDLE_TIME), "uv_loop_configure");
    prepare_->data = this;
    check_->data = this;
    rt::check_uv(uv_prepare_start(prepare_.get(), &loop_monitor::on_prepare), "uv_prepare_start");
    rt::check_uv(uv_check_start(check_.get(), &loop_monitor::on_check), "uv_check_start");
    uv_unref(prepare_.base());
    uv_unref(check_.base());
}

void loop_monitor::tick() noexcept {
    std::uint64_t now = uv_hrtime();
    std::uint64_t late = now - last_tick_ > period_ns_ ? now - last_tick_ - period_ns_ : 0;
    last_tick_ = now;
    live_.loop_lag.observe(static_cast<double>(late) / 1e9);
    live_.heartbeat_ns.store(steady_ns(), std::memory_order_relaxed);
    if (on_tick_) on_tick_();
}

// Before the poll phase: everything since the last check (closing handles, timers, pending and
// idle callbacks) was busy time.
void loop_monitor::on_prepare(uv_prepare_t* h) noexcept {
    auto* self = static_cast<loop_monitor*>(h->data);
    if (!self) return;
    self->prepare_at_ = uv_hrtime();
    self->idle_at_prepare_ = uv_metrics_idle_time(self->loop_.get());
}

// After the poll phase: the I/O callbacks run in it (sockets, signals, thread-pool completions)
// were busy time, the wait in epoll was not.
void loop_monitor::on_check(uv_check_t* h) noexcept {
    auto* self = static_cast<loop_monitor*>(h->data);
    if (!self) return;
    std::uint64_t now = uv_hrtime();
    std::uint64_t prev = std::exchange(self->last_check_, now);
    std::uint64_t cpu = thread_cpu_ns();
    std::uint64_t prev_cpu = std::exchange(self->last_check_cpu_, cpu);
    if (prev == 0 || self->prepare_at_ < prev) return; // first iteration, or no prepare seen
    std::uint64_t idle = uv_metrics_idle_time(self->loop_.get()) - self->idle_at_prepare_;
    std::uint64_t before_poll = self->prepare_at_ - prev;
    std::uint64_t in_poll = now - self->prepare_at_;
    in_poll = in_poll > idle ? in_poll - idle : 0;
    std::uint64_t busy = before_poll + in_poll;
    if (busy < self->slow_ns_) return;
    self->live_.slow_iterations.inc();
    if (self->last_warn_ != 0 && now - self->last_warn_ < warn_every_ns) {
        ++self->suppressed_;
        return;
    }
    self->last_warn_ = now;
    log::warn("slow event loop iteration: nothing else ran while it was busy",
              {{"busy_ms", static_cast<double>(busy) / 1e6},
               // Much less CPU than busy time: the thread was not running (an overloaded host,
               // a page fault storm), rather than a callback computing.
               {"cpu_ms", static_cast<double>(cpu - prev_cpu) / 1e6},
               {"warn_ms", static_cast<double>(self->slow_ns_) / 1e6},
               {"running", in_poll >= before_poll
                               ? "I/O callbacks (sockets, signals, thread-pool completions)"
                               : "timer callbacks (sleeps, deadlines, housekeeping)"},
               {"suppressed_since_last_warning", self->suppressed_}});
    self->suppressed_ = 0;
}

} // namespace mayhem::metrics
