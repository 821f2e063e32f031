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
    // Whether the command names the machine by the message's instance_name (a `{instance_name}`
    // placeholder): then --allow-hosts/--deny-hosts check that name too, not only the hostname.
    virtual bool uses_instance_name() const { return false; }
    // Process groups of this restarter's commands not yet empty and reaped, counting abandoned
    // ones still being terminated. The stop waits for this to reach 0.
    virtual std::size_t live_processes() const { return 0; }
    // For a bounded stop: from now on every running or terminating command is SIGKILLed at most
    // `grace` after this call, and commands abandoned later wait at most `grace` for SIGKILL.
    virtual void hurry(std::chrono::milliseconds grace) { (void)grace; }
    // Whether verify() can tell that a host came back from a restart (--verify-command).
    virtual bool can_verify() const { return false; }
    // Asks, without restarting, whether `m`'s host came back from a restart: `ok` when it did.
    // Used before running again a restart that a dead worker left unfinished.
    virtual rt::task<restart_result> verify(const message& m) {
        (void)m;
        co_return restart_result{restart_status::failed, "no way to verify"};
    }
};

} // namespace mayhem
