#include "store/store_health.hpp"

#include "runtime/log.hpp"

#include <utility>

namespace mayhem {

store_health::store_health(rt::loop& loop, std::string field, std::string value,
                           rt::counter& outages)
    : loop_(loop), field_(std::move(field)), value_(std::move(value)), outages_(outages) {}

void store_health::note(bool ok, const std::string& error) {
    if (!ok) error_ = error;
    switch (state_) {
    case state::up:
        if (ok) return;
        state_ = state::down;
        healthy_.store(false, std::memory_order_relaxed);
        outages_.inc();
        ++unlogged_changes_;
        log();
        return;
    case state::down:
        if (!ok) return;
        state_ = state::recovering;
        loop_.timers().arm(recover_timer_, recover_after);
        return;
    case state::recovering:
        if (ok) return;
        // Failed again before it held: it never showed as up.
        recover_timer_.cancel();
        state_ = state::down;
        return;
    }
}

// recover_after passed with transactions succeeding and none failing.
void store_health::recovered() {
    if (state_ != state::recovering) return;
    state_ = state::up;
    healthy_.store(true, std::memory_order_relaxed);
    ++unlogged_changes_;
    log();
}

void store_health::closed() {
    if (state_ == state::recovering) {
        recover_timer_.cancel();
        state_ = state::up;
        healthy_.store(true, std::memory_order_relaxed);
        ++unlogged_changes_;
    }
    closed_ = true;
    log_timer_.cancel();
    log();
}

// Writes the line for the current state if it differs from the previous line, at most one line
// per log_interval (a later line sums up the changes in between).
void store_health::log() {
    auto now = loop_.now();
    if (!closed_ && now < log_quiet_until_) {
        if (!log_timer_.armed()) loop_.timers().arm(log_timer_, rt::millis(log_quiet_until_ - now));
        return;
    }
    bool up = state_ == state::up;
    if (up == logged_up_) return; // changed and changed back: the next line counts both
    auto changes = std::exchange(unlogged_changes_, 0);
    if (up)
        log::info("store recovered: saves succeed again",
                  {{field_, value_}, {"state_changes", changes}});
    else
        log::error("store unavailable: saves fail, their messages are retried, not acked",
                   {{field_, value_}, {"error", error_}, {"state_changes", changes}});
    logged_up_ = up;
    log_quiet_until_ = now + static_cast<std::uint64_t>(log_interval.count());
}

} // namespace mayhem
