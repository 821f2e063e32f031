// systemd's service notifications (sd_notify(3), through libsystemd): READY=1 once the worker
// is ready (its source up, its store healthy), STATUS= lines, STOPPING=1 when a drain begins,
// and WATCHDOG=1 from the event loop every half of WATCHDOG_USEC, so a loop that stops turning
// gets the service restarted (WatchdogSec= in the unit). Without NOTIFY_SOCKET every call does
// nothing.
//
// Threading: loop thread only.
#pragma once

#include "runtime/loop.hpp"

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace mayhem {

class service_notifier {
public:
    // `ready` answers whether the worker is ready now; it is asked every `check` until it is.
    service_notifier(rt::loop& loop, std::function<bool()> ready,
                     rt::millis check = rt::millis{100});
    service_notifier(const service_notifier&) = delete;
    service_notifier& operator=(const service_notifier&) = delete;

    bool enabled() const noexcept { return enabled_; }
    // The watchdog interval systemd asked for (WATCHDOG_USEC), zero when none.
    std::chrono::microseconds watchdog() const noexcept { return watchdog_; }
    void status(const std::string& text);
    void stopping();

private:
    void send(const std::string& state);
    void check_ready();

    bool enabled_ = false;
    bool ready_sent_ = false;
    bool stopping_ = false;
    std::chrono::microseconds watchdog_{0};
    std::function<bool()> ready_;
    std::unique_ptr<rt::periodic_timer> ready_check_, watchdog_timer_;
};

} // namespace mayhem
