// `--restarter exec`: runs --restart-command (a command_template) per host with uv_spawn, no
// shell, and --verify-command after a success. Exit 0 is ok; anything else, a signal, or
// --restart-timeout is a failed restart, logged with the exit code or signal and the last lines
// of the command's stderr.
//
// Children never outlive their restart: each runs in its own process group (setsid), and when
// the task awaiting it is destroyed (a forced release at the drain deadline or a second
// signal) the whole group gets SIGTERM, then SIGKILL after --restart-kill-grace. The process
// handle is reaped and closed on the loop before the loop can close: an unfinished child keeps
// the loop alive until it has exited.
//
// Threading: loop thread only.
#pragma once

#include "restart/command_template.hpp"
#include "restart/restarter.hpp"
#include "runtime/loop.hpp"

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace mayhem {

struct exec_options {
    std::chrono::milliseconds timeout{5 * 60 * 1000};
    std::chrono::milliseconds kill_grace{10 * 1000};
};

// How one command run ended.
struct command_result {
    bool ok = false;
    std::string detail; // failure text: exit code or signal, timeout, last stderr lines
};

class exec_restarter final : public restarter {
public:
    exec_restarter(rt::loop& loop, command_template restart_command,
                   std::optional<command_template> verify_command, exec_options opts);

    std::string_view name() const override { return "exec"; }
    rt::task<restart_result> restart(const message& m) override;
    std::optional<std::string> refuse(const message& m) const override;

    // Runs one command to its end (exit, timeout). Public for the unit tests.
    rt::task<command_result> run(std::vector<std::string> argv);

private:
    rt::loop& loop_;
    command_template restart_;
    std::optional<command_template> verify_;
    exec_options opts_;
};

} // namespace mayhem
