// The restart policy in front of any restarter: the talk's "block when needed" step.
//
//   refused?  (--allow-hosts/--deny-hosts, or the restarter will not take the message)
//   coalesce  (a restart of this host is running here: wait for it, share its result)
//   admit     (wait while --pause-file exists, the circuit breaker is open, or
//              --max-concurrent-restarts are running; FIFO, no polling)
//   slot      (a store that shares slots, sqlite and postgres: one of its --max-concurrent-restarts
//              slots, fleet-wide; while all are held elsewhere, asked again every slot_retry,
//              holding the local slot; a store error is store trouble, as for the cooldown)
//   trial     (a store that shares the breaker, postgres: the breaker is the fleet's; when it
//              is open and its cooldown over, one restart at a time asks the store for the
//              fleet's one trial (claim_trial); one that is not granted waits for admission
//              again. Failures and trials' ends are told to the store (note_breaker))
//   cooldown  (store.claim_host: skipped_cooldown if restarted within the cooldown; a store
//              error is store trouble, not a failed restart: retried, no attempt used, the
//              breaker never hears it)
//   pause     (looked at again: a pause that began while the claim was answered sends the
//              restart back to wait for admission, so nothing starts once the pause is seen)
//   dry run   (--dry-run: stop here, result dry_run)
//   restart   (the inner restarter), then tell the breaker how it went
//
// Once stop() was called (a drain), every step that would lead to a restart answers
// `not_started` instead: a stopping worker starts no new restart.
//
// The guard is a set of steps, not a coroutine: the message's own task awaits them, so the
// guard's bookkeeping for one restart (a `pass`) lives in the message's frame and no frame of
// the guard's stays alive while the restart runs. The task does
//
//     gate g = guard.enter(pass, m, r);               // no waiting: decided, or must wait
//     bool go = g == gate::restart;
//     if (g == gate::wait) go = co_await guard.wait(pass, m, r);   // its own, short-lived frame
//     if (go) r = co_await guard.inner().restart(m);
//     guard.leave(pass);                              // the breaker and coalesced messages hear r
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
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mayhem {

struct guard_options {
    std::chrono::milliseconds cooldown{0};       // 0: no per-host cooldown (no store round trip)
    std::size_t max_concurrent = 0;              // 0: unlimited
    std::string allow_hosts, deny_hosts;         // regexes, full match; empty: not set
    std::string host_domain = "example.net";     // to check {instance_name} as a host name
    std::string pause_file;                      // empty: no kill switch
    std::chrono::milliseconds pause_check{1000}; // how often the pause file is looked for
    // A look at the pause file (a stat on the thread pool) that has not answered after this
    // counts as "cannot tell", which holds restarts like a present file (a hung NFS mount).
    std::chrono::milliseconds pause_timeout{5000};
    breaker_options breaker{0, {}, {}}; // failures 0: no breaker
    // How often a restart waiting for one of the store's slots asks again.
    std::chrono::milliseconds slot_retry{200};
    bool dry_run = false;
};

// For the metrics exporter (mayhem_restarts_paused, the breaker state, ...). Restarts by result
// are counted by the pipeline (pipeline_stats::restarts, by restart_status).
struct restart_guard_stats {
    rt::gauge paused;        // 1 while the pause file or the fleet-wide pause holds restarts
    rt::gauge fleet_paused;  // 1 while the store's fleet-wide pause (`mayhem pause`) is set
    rt::gauge breaker_state; // what a new restart would meet: 0 closed, 1 open, 2 half-open
    rt::gauge running;       // restarts admitted and not finished
    rt::gauge waiting;       // restarts waiting for admission (pause, breaker, cap)
    rt::gauge clock_behind;  // 1 while the last cooldown claim met a start after its clock
    rt::gauge slot_waiting;  // restarts admitted here, waiting for one of the store's slots
    rt::counter slots_busy;  // slot claims that found every store slot held
    rt::counter breaker_opened;
    rt::counter cooldown_skips;
    rt::counter coalesced;
    rt::counter refused;
};

class restart_guard {
    class admit_awaiter;

public:
    // Throws std::regex_error for a bad --allow-hosts/--deny-hosts (validated at start-up).
    restart_guard(rt::loop& loop, guard_options opts, store& st, restarter& inner);
    restart_guard(const restart_guard&) = delete;
    restart_guard& operator=(const restart_guard&) = delete;
    ~restart_guard();

    restarter& inner() const noexcept { return inner_; }

    // One message's way through the guard. It lives in the message's task frame, next to the
    // restart's result `r` it was entered with; destroyed unfinished (a forced release), it gives
    // its concurrency slot back and reports a breaker trial that never got a result as neutral.
    class pass {
    public:
        pass() = default;
        pass(const pass&) = delete;
        pass& operator=(const pass&) = delete;
        ~pass();

    private:
        friend class restart_guard;
        friend class admit_awaiter;
        restart_guard* g_ = nullptr;             // set while this pass holds the host
        const message* msg_ = nullptr;           // the host's key in running_hosts_
        const restart_result* result_ = nullptr; // read by coalesced messages
        rt::event done_;                         // coalesced messages wait on it
        bool admitted_ = false, trial_ = false;
        bool fleet_trial_ = false; // the trial of the store's fleet-wide breaker
        bool slot_ = false;        // holds one of the store's slots
    };

    enum class gate : std::uint8_t {
        restart, // go ahead: run the inner restarter now
        done,    // `r` holds the result (refused, dry run): no restart
        wait,    // co_await wait() first
    };
    // What can be decided without waiting. Writes `r` when it returns done.
    gate enter(pass& p, const message& m, restart_result& r);
    // The waits (coalescing, admission, the cooldown claim): true when the restart may run now;
    // otherwise `r` holds the result.
    rt::task<bool> wait(pass& p, const message& m, restart_result& r);
    // The restart ended with the result `enter` was given (or never ran): the breaker hears it,
    // the messages coalesced with it share it, and the concurrency slot is freed.
    void leave(pass& p);

    // The worker stops: from now on no restart starts here. Messages waiting for admission are
    // resumed at once with `not_started`, and so is every message that reaches enter() or the
    // end of wait() later; a message coalesced with a restart already running still waits for it
    // and shares its result. Irreversible.
    void stop();
    bool stopping() const noexcept { return stopping_; }

    // Starts loading what enter() and leave() touch for `m` (its host's index slot).
    void prefetch(const message& m) const noexcept { running_hosts_.prefetch_hash(m.host_hash()); }

    const restart_guard_stats& stats() const noexcept { return stats_; }
    bool paused() const noexcept { return paused_; }
    breaker_state breaker() const noexcept { return breaker_.state(); }

private:
    struct pause_probe;

    std::optional<std::string> refuse(const message& m) const;
    bool refused(const message& m, restart_result& r);
    pass* running_for(const message& m);
    void hold(pass& p, const message& m, const restart_result& r);
    bool admit_now(pass& p);
    void grant(pass& p, bool trial);
    void release(pass& p) noexcept;
    bool go(const message& m, restart_result& r);
    bool stopped(restart_result& r) const;
    void shared_result(const message& m, const pass& first, restart_result& r);
    void unadmit(pass& p) noexcept;
    rt::task<bool> take_slot(pass& p, const message& m, restart_result& r);
    rt::task<bool> admitted(pass& p, const message& m, restart_result& r);
    circuit_breaker::admission admit_breaker();
    void arm_breaker_wake();
    std::int64_t next_trial_at() const noexcept;
    static std::int64_t wall_ms() noexcept;
    void set_fleet_breaker(const fleet_breaker& b);
    bool fleet_slots() const noexcept;
    bool cooldown_decision(const message& m, std::chrono::system_clock::time_point now,
                           rt::result<host_claim>& claim, restart_result& r);
    bool room() const noexcept;
    void schedule_admission();
    void admit_waiters();
    void record(const restart_result& r, pass& p);
    void show_breaker();
    void check_pause_file();
    void set_paused(bool paused, std::string_view why);
    void set_fleet_pause(const fleet_pause* p);
    void show_pause();
    std::chrono::milliseconds now() const noexcept;

    rt::loop& loop_;
    guard_options opts_;
    store& store_;
    restarter& inner_;
    host_filter filter_;
    circuit_breaker breaker_; // this worker's own, unless the store shares one
    // The store's fleet-wide breaker (store.hpp), used instead of breaker_ when the store keeps
    // one: as last read, whether a restart of this worker's is the trial candidate, and when a
    // trial held by another worker is asked for again (wall clock, ms).
    bool fleet_breaker_ = false;
    fleet_breaker fleet_;
    bool trial_out_ = false;
    std::int64_t next_trial_ask_ = 0;

    // Hosts whose restart runs here, for coalescing. Keys are the hostnames of the running
    // restarts' messages (alive as long as their pass holds the host).
    static std::string_view host_of(const pass& p) noexcept;
    static std::uint64_t host_hash_of(const pass& p) noexcept;
    rt::string_index<pass, &restart_guard::host_of, &restart_guard::host_hash_of> running_hosts_;
    rt::intrusive_list waiters_; // admit_awaiter, FIFO
    std::size_t running_ = 0;
    bool paused_ = false;      // either of the two below
    bool file_paused_ = false; // the pause file exists or cannot be looked at
    bool fleet_paused_ = false;
    bool pause_unknown_ = false; // the last look at the pause file did not answer in time
    bool stopping_ = false;

    rt::delayed_call admission_;    // one admission pass per loop turn
    rt::delayed_call breaker_wake_; // when the breaker's cooldown ends (armed while it is open)
    std::unique_ptr<rt::periodic_timer> pause_timer_;
    pause_probe* probe_ = nullptr;  // the uv_fs_stat in progress, if any
    std::uint64_t probe_since_ = 0; // loop time it was started
    restart_guard_stats stats_;
};

} // namespace mayhem
