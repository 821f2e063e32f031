// The restart policy in front of any restarter: the talk's "block when needed" step.
//
//   restart(m):  refused?  (--allow-hosts/--deny-hosts, or the restarter will not take m)
//                coalesce  (a restart of this host is running here: wait for it, share its result)
//                admit     (wait while --pause-file exists, the circuit breaker is open, or
//                           --max-concurrent-restarts are running; FIFO, no polling)
//                cooldown  (store.claim_host: skipped_cooldown if restarted within the cooldown)
//                dry run   (--dry-run: stop here, result dry_run)
//                restart   (the inner restarter), then tell the breaker how it went
//
// Waiting messages stay in flight, so the pipeline keeps renewing their leases. The admission
// queue is a semaphore of suspended coroutines: a slot freed, the pause file gone or the
// breaker's cooldown over schedule one admission pass on the next loop turn (a zero-delay timer
// entry), which resumes waiters in order while there is room. Passes never run inside a
// destructor, so a forced release that destroys every task cannot start new restarts.
//
// Threading: loop thread only. `stats()` is read by the metrics thread (relaxed atomics).
#pragma once

#include "restart/policy.hpp"
#include "restart/restarter.hpp"
#include "runtime/counter.hpp"
#include "runtime/list.hpp"
#include "runtime/loop.hpp"
#include "runtime/string_index.hpp"
#include "store/store.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mayhem {

struct guard_options {
    std::chrono::milliseconds cooldown{0};       // 0: no per-host cooldown (no store round trip)
    std::size_t max_concurrent = 0;              // 0: unlimited
    std::string allow_hosts, deny_hosts;         // regexes, full match; empty: not set
    std::string pause_file;                      // empty: no kill switch
    std::chrono::milliseconds pause_check{1000}; // how often the pause file is looked for
    breaker_options breaker{0, {}, {}};          // failures 0: no breaker
    bool dry_run = false;
};

// For the metrics exporter (mayhem_restarts_paused, the breaker state, ...). Restarts by result
// are counted by the pipeline (pipeline_stats::restarts, by restart_status).
struct restart_guard_stats {
    rt::gauge paused;        // 1 while the pause file exists
    rt::gauge breaker_state; // 0 closed, 1 open, 2 half-open (breaker_state)
    rt::gauge running;       // restarts admitted and not finished
    rt::gauge waiting;       // restarts waiting for admission (pause, breaker, cap)
    rt::counter breaker_opened;
    rt::counter cooldown_skips;
    rt::counter coalesced;
    rt::counter refused;
};

class guarded_restarter final : public restarter {
public:
    // Throws std::regex_error for a bad --allow-hosts/--deny-hosts (validated at start-up).
    guarded_restarter(rt::loop& loop, guard_options opts, store& st, restarter& inner);
    guarded_restarter(const guarded_restarter&) = delete;
    guarded_restarter& operator=(const guarded_restarter&) = delete;
    ~guarded_restarter() override;

    std::string_view name() const override { return inner_.name(); }
    rt::task<restart_result> restart(const message& m) override;
    std::optional<std::string> refuse(const message& m) const override;

    const restart_guard_stats& stats() const noexcept { return stats_; }
    bool paused() const noexcept { return paused_; }
    breaker_state breaker() const noexcept { return breaker_.state(); }

private:
    struct host_run;
    class admit_awaiter;
    class slot;
    struct pause_probe;

    // The steps that do not suspend: each writes the restart's result into `r`.
    bool refused(const message& m, restart_result& r);
    host_run* running_for(const std::string& hostname);
    rt::task<void> coalesce(const message& m, host_run& first, restart_result& r);
    void shared_result(const message& m, const host_run& first, restart_result& r);
    rt::task<bool> cooldown_granted(const message& m, restart_result& r);
    bool cooldown_decision(const message& m, std::chrono::system_clock::time_point now,
                           rt::result<host_claim>& claim, restart_result& r);
    void dry_run(const message& m, restart_result& r);
    bool room() const noexcept;
    void schedule_admission();
    void admit_waiters();
    void record(restart_status s, bool trial);
    void check_pause_file();
    void set_paused(bool paused);
    std::chrono::milliseconds now() const noexcept;

    rt::loop& loop_;
    guard_options opts_;
    store& store_;
    restarter& inner_;
    host_filter filter_;
    circuit_breaker breaker_;

    // Hosts whose restart runs here, for coalescing. Keys are the hostnames of the running
    // restarts' messages (alive as long as their host_run).
    static std::string_view host_of(const host_run& r) noexcept;
    rt::string_index<host_run, &guarded_restarter::host_of> running_hosts_;
    rt::intrusive_list waiters_; // admit_awaiter, FIFO
    std::size_t running_ = 0;
    bool paused_ = false;

    rt::delayed_call admission_;    // one admission pass per loop turn
    rt::delayed_call breaker_wake_; // when the breaker's cooldown ends
    std::unique_ptr<rt::periodic_timer> pause_timer_;
    pause_probe* probe_ = nullptr; // the uv_fs_stat in progress, if any
    restart_guard_stats stats_;
};

} // namespace mayhem
