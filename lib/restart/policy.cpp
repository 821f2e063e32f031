#include "restart/policy.hpp"

#include <algorithm>

namespace mayhem {

// ---------------------------------------------------------------------------------------------
// host_filter
// ---------------------------------------------------------------------------------------------

host_filter::host_filter(const std::string& allow, const std::string& deny)
    : allow_text_(allow), deny_text_(deny) {
    // Host names are ASCII and short: std::regex is fast enough, and only ever run once per
    // restart, not per byte of traffic.
    auto flags = std::regex::ECMAScript | std::regex::icase;
    if (!allow.empty()) allow_.emplace(allow, flags);
    if (!deny.empty()) deny_.emplace(deny, flags);
}

std::optional<std::string> host_filter::refuse(std::string_view hostname) const {
    std::string h(hostname);
    if (allow_ && !std::regex_match(h, *allow_))
        return "host \"" + h + "\" does not match --allow-hosts \"" + allow_text_ + "\"";
    if (deny_ && std::regex_match(h, *deny_))
        return "host \"" + h + "\" matches --deny-hosts \"" + deny_text_ + "\"";
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// cooldown
// ---------------------------------------------------------------------------------------------

bool in_cooldown(std::chrono::system_clock::time_point last,
                 std::chrono::system_clock::time_point now, std::chrono::milliseconds cooldown) {
    return cooldown.count() > 0 && last > now - cooldown;
}

// ---------------------------------------------------------------------------------------------
// circuit_breaker
// ---------------------------------------------------------------------------------------------

std::string_view to_string(breaker_state s) noexcept {
    switch (s) {
    case breaker_state::closed:
        return "closed";
    case breaker_state::open:
        return "open";
    case breaker_state::half_open:
        return "half_open";
    }
    return "unknown";
}

circuit_breaker::admission circuit_breaker::admit(time now) {
    switch (state_) {
    case breaker_state::closed:
        return admission::go;
    case breaker_state::open:
        if (now < trial_at()) return admission::wait;
        state_ = breaker_state::half_open;
        trial_running_ = true;
        return admission::trial;
    case breaker_state::half_open:
        return admission::wait; // the trial is running: everyone else waits for its verdict
    }
    return admission::wait;
}

circuit_breaker::change circuit_breaker::record(result r, bool trial, time now,
                                                std::uint64_t host) {
    if (opts_.failures == 0) return change::none;
    if (trial && state_ == breaker_state::half_open && trial_running_) {
        trial_running_ = false;
        switch (r) {
        case result::ok:
            state_ = breaker_state::closed;
            failures_.clear();
            return change::closed;
        case result::failed:
            state_ = breaker_state::open;
            opened_at_ = now;
            return change::none; // it was open already: still open, one more cooldown
        case result::neutral:
            state_ = breaker_state::open; // cooldown already over: the next restart is the trial
            return change::none;
        }
    }
    if (r != result::failed) return change::none;
    // Restarts that were running when the breaker opened may fail afterwards: they do not
    // change an open breaker (only the trial does).
    if (state_ != breaker_state::closed) return change::none;
    std::erase_if(failures_, [&](const failed_host& f) { return f.last <= now - opts_.window; });
    auto same = std::find_if(failures_.begin(), failures_.end(),
                             [&](const failed_host& f) { return f.host == host; });
    if (same != failures_.end())
        same->last = now; // the same host again: still one failed host
    else
        failures_.push_back({host, now});
    if (failures_.size() < opts_.failures) return change::none;
    state_ = breaker_state::open;
    opened_at_ = now;
    failures_.clear();
    return change::opened;
}

} // namespace mayhem
