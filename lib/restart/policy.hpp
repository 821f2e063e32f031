// The restart policy as plain code: the host filter, the circuit breaker and the cooldown rule.
// Each takes data and a clock reading and returns a decision; nothing here knows the loop, so it
// is unit-tested directly (tests/unit/restart/policy.cpp). restart_guard wires them in.
//
// Threading: plain objects, used by their owner's thread only (the loop thread).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

namespace mayhem {

// ---------------------------------------------------------------------------------------------
// host_filter: --allow-hosts / --deny-hosts. Each is an ECMAScript regex that must match the
// WHOLE host name (std::regex_match), so "web-[0-9]+" does not allow "web-1.evil". An empty
// pattern means "not set". Host names are case-insensitive: the patterns ignore case (the names
// they are given are already lower case, message.hpp's machine identity).
// ---------------------------------------------------------------------------------------------
class host_filter {
public:
    host_filter() = default;
    // Throws std::regex_error for a pattern that does not compile (caught at configuration).
    host_filter(const std::string& allow, const std::string& deny);

    // nullopt when the host may be restarted, else why not.
    std::optional<std::string> refuse(std::string_view hostname) const;

private:
    std::optional<std::regex> allow_, deny_;
    std::string allow_text_, deny_text_;
};

// ---------------------------------------------------------------------------------------------
// Cooldown: "restart only if the host's last restart is older than N" (the talk's
// last_restart_date()). True when a restart that started at `last` blocks one at `now`.
// ---------------------------------------------------------------------------------------------
bool in_cooldown(std::chrono::system_clock::time_point last,
                 std::chrono::system_clock::time_point now, std::chrono::milliseconds cooldown);

// ---------------------------------------------------------------------------------------------
// circuit_breaker: an error budget, like SSM's MaxErrors. `failures` distinct hosts whose
// restart failed within `window` open it (one host failing again and again counts once); while
// open no restart starts; after `cooldown` exactly one trial restart may start (half-open); its
// success closes the breaker, its failure opens it again for another cooldown. A trial that
// ends neither ok nor failed (skipped by the cooldown, refused, dry run, cancelled) proves
// nothing: the breaker goes back to open with the cooldown already over, so the next restart
// is the trial. failures == 0 disables the breaker. Times are monotonic (loop time).
// ---------------------------------------------------------------------------------------------
enum class breaker_state : std::uint8_t { closed = 0, open = 1, half_open = 2 };
std::string_view to_string(breaker_state s) noexcept;

struct breaker_options {
    std::uint32_t failures = 10; // 0: disabled
    std::chrono::milliseconds window{10 * 60 * 1000};
    std::chrono::milliseconds cooldown{5 * 60 * 1000};
};

class circuit_breaker {
public:
    using time = std::chrono::milliseconds; // a monotonic clock reading

    enum class admission : std::uint8_t { go, trial, wait };
    enum class result : std::uint8_t { ok, failed, neutral };
    enum class change : std::uint8_t { none, opened, closed };

    explicit circuit_breaker(breaker_options o = {}) : opts_(o) {}

    // May a restart start now? `trial` is the one restart of a half-open breaker: its result
    // must be passed back with trial = true. Moves open -> half_open once the cooldown is over.
    admission admit(time now);
    // A restart of the host `host` (a hash of its name) ended. Returns whether the breaker
    // opened or closed because of it.
    change record(result r, bool trial, time now, std::uint64_t host);

    breaker_state state() const noexcept { return state_; }
    // The state a restart asking now would meet: an open breaker whose cooldown is over lets the
    // next restart through as its trial, so it shows as half-open (the gauge does not stay at
    // "open" with no traffic to move it).
    breaker_state state_at(time now) const noexcept {
        return state_ == breaker_state::open && now >= trial_at() ? breaker_state::half_open
                                                                  : state_;
    }
    // While open: when a trial may start (to arm a timer).
    time trial_at() const noexcept { return opened_at_ + opts_.cooldown; }
    // Hosts whose failure counts in the current window (for the log line).
    std::size_t recent_failures() const noexcept { return failures_.size(); }
    const breaker_options& options() const noexcept { return opts_; }

private:
    breaker_options opts_;
    breaker_state state_ = breaker_state::closed;
    bool trial_running_ = false;
    time opened_at_{0};
    struct failed_host {
        std::uint64_t host;
        time last; // its latest failure
    };
    // The hosts that failed within the window, at most `failures` - 1 of them (the next one
    // opens the breaker and clears the list), so a linear scan is cheap.
    std::vector<failed_host> failures_;
};

} // namespace mayhem
