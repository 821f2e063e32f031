#include "pipeline/service_notifier.hpp"

#include "runtime/log.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <systemd/sd-daemon.h>

namespace mayhem {

service_notifier::service_notifier(rt::loop& loop, std::function<bool()> ready, rt::millis check)
    : ready_(std::move(ready)) {
    const char* socket = std::getenv("NOTIFY_SOCKET");
    enabled_ = socket && *socket;
    if (!enabled_) return;
    std::uint64_t usec = 0;
    // > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID, if set, is this process.
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        watchdog_ = std::chrono::microseconds{usec};
        auto half = std::max<rt::millis::rep>(
            std::chrono::duration_cast<rt::millis>(watchdog_).count() / 2, 1);
        // The ping comes from a loop timer: while the loop is stuck, none is sent.
        watchdog_timer_ = std::make_unique<rt::periodic_timer>(loop, rt::millis{half},
                                                               [this] { send("WATCHDOG=1"); });
    }
    ready_check_ = std::make_unique<rt::periodic_timer>(loop, check, [this] { check_ready(); });
}

void service_notifier::check_ready() {
    if (ready_sent_ || stopping_ || !ready_()) return;
    ready_sent_ = true;
    ready_check_->stop();
    send("READY=1\nSTATUS=ready");
}

void service_notifier::status(const std::string& text) {
    if (enabled_) send("STATUS=" + text);
}

void service_notifier::stopping() {
    if (!enabled_ || stopping_) return;
    stopping_ = true;
    if (ready_check_) ready_check_->stop();
    send("STOPPING=1\nSTATUS=draining");
}

void service_notifier::send(const std::string& state) {
    int rc = sd_notify(0, state.c_str());
    if (rc < 0 && enabled_) {
        // The socket went away or refuses us: say so once and stop trying.
        log::warn("cannot notify systemd; notifications stop",
                  {{"error", std::string(std::strerror(-rc))}});
        enabled_ = false;
        if (watchdog_timer_) watchdog_timer_->stop();
        if (ready_check_) ready_check_->stop();
    }
}

} // namespace mayhem
