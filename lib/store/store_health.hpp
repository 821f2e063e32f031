// store_health: a store's health as a state, not the last write's result (sqlite_store,
// postgres_store). Down from the first failed transaction; up again once transactions have
// succeeded for `recover_after` with none failing, so a store that fails one transaction and
// takes the next (a full disk with room left in the WAL, a flapping network) does not flap
// readiness. The log follows it: "store unavailable" / "store recovered", each change at once
// unless the previous line is less than `log_interval` old (then one line when the interval is
// over, if the state still differs from the previous line; a line counts the changes it sums
// up).
//
// Threading: loop thread; healthy() from any thread (the metrics thread).
#pragma once

#include "runtime/counter.hpp"
#include "runtime/loop.hpp"

#include <atomic>
#include <string>

namespace mayhem {

class store_health {
public:
    static constexpr rt::millis recover_after{1000};
    static constexpr rt::millis log_interval{5000};

    // `field`=`value` names the store in its log lines (db=PATH, store=postgres); `outages`
    // counts the times it turned unhealthy.
    store_health(rt::loop& loop, std::string field, std::string value, rt::counter& outages);
    store_health(const store_health&) = delete;
    store_health& operator=(const store_health&) = delete;

    // A transaction (or an attempt to reach the database) ended: ok, or failed with `error`.
    void note(bool ok, const std::string& error);
    bool healthy() const noexcept { return healthy_.load(std::memory_order_relaxed); }
    // Why the last failure failed.
    const std::string& last_error() const noexcept { return error_; }
    // The store closed: its log ends with the truth (recovering counts as up when the last
    // transactions succeeded) and a change still waiting for its line is written now.
    void closed();

private:
    // up, down after a failure, recovering after a success while down (up after recover_after
    // with no failure).
    enum class state : std::uint8_t { up, down, recovering };
    struct timer final : rt::timer_entry {
        store_health& h;
        void (store_health::*fn)();
        timer(store_health& s, void (store_health::*f)()) : h(s), fn(f) {}
        void fire() noexcept override { (h.*fn)(); }
    };
    void recovered();
    void log();

    rt::loop& loop_;
    std::string field_, value_;
    rt::counter& outages_;
    state state_ = state::up;
    std::atomic<bool> healthy_{true}; // state_ == up, for the metrics thread
    std::string error_;
    bool closed_ = false;
    timer recover_timer_{*this, &store_health::recovered};
    bool logged_up_ = true;             // what the last line said
    std::uint64_t log_quiet_until_ = 0; // loop time (ms) before which no line is written
    std::uint64_t unlogged_changes_ = 0;
    timer log_timer_{*this, &store_health::log};
};

} // namespace mayhem
