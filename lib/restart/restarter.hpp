// The seam for `restart`: carries out one host restart and says how it ended. Policy
// (cooldown, caps, dry-run) sits in front of it, not in it (restart/restart_guard.hpp).
#pragma once

#include "message/message.hpp"
#include "pipeline/outcome.hpp"
#include "runtime/task.hpp"

#include <chrono>
#include <cstddef>
#include <exception>
#include <optional>
#include <string>
#include <string_view>

namespace mayhem {

class restarter {
public:
    virtual ~restarter() = default;
    virtual std::string_view name() const = 0;
    virtual rt::task<restart_result> restart(const message& m) = 0;
    // Asked before any policy step (coalescing, caps, the cooldown claim): a reason when this
    // restarter can never carry out `m` (e.g. a placeholder value it will not put on a command
    // line). Such a message is refused, i.e. dead-lettered with that reason.
    virtual std::optional<std::string> refuse(const message& m) const {
        (void)m;
        return std::nullopt;
    }
    // Processes this restarter started that are not gone yet (running, or abandoned and being
    // ended). The stop waits for none to be left.
    virtual std::size_t live_processes() const { return 0; }
    // The stop is short of time: from now on a process being ended is killed (SIGKILL) at most
    // `grace` after this call or after it was abandoned, whichever is later.
    virtual void hurry(std::chrono::milliseconds grace) { (void)grace; }
};

} // namespace mayhem
