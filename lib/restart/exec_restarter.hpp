// `--restarter exec`: runs --restart-command (a command_template) per host with uv_spawn, no
// shell, and --verify-command after a success. Exit 0 (and a verify that succeeds) is ok. A
// command that provably did nothing — it could not be started, or it exited with
// exit_code_did_nothing — is a failed restart, which may be retried. Anything else (another exit
// code, a signal, --restart-timeout, a verify that fails) is unverified: the command may have
// acted, so it is never run again for that message. Both are logged with the exit code or signal
// and the last lines of the command's stderr.
//
// No process of a command outlives it. Each command runs in its own process group (setsid),
// and a command is finished only when that group is empty:
//  - processes left in the group when the command (its group leader) exits get SIGTERM at once,
//    SIGKILL after --restart-kill-grace; the result is still the leader's exit status;
//  - when the task awaiting a command is destroyed (a forced release at the drain deadline or a
//    second signal) the command is abandoned: its whole group gets SIGTERM, then SIGKILL after
//    the grace, and it is reaped and freed on the loop. An unfinished command keeps the loop
//    alive until its group is empty.
// A process that leaves the group (setsid, setpgid) escapes this, unless the worker runs in a
// delegated cgroup v2 (exec_options::cgroup): then each command also gets a cgroup of its own,
// which is what gets signalled and waited for.
//
// Through the exec wrapper (exec_options::wrapper, `mayhem-exec`), a command receives exactly
// descriptors 0, 1 and 2 of the worker's, and dies with the worker (PR_SET_PDEATHSIG).
//
// Threading: loop thread only.
#pragma once

#include "restart/command_template.hpp"
#include "restart/exec_wrapper.hpp"
#include "restart/restarter.hpp"
#include "runtime/counter.hpp"
#include "runtime/loop.hpp"

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mayhem {

struct exec_options {
    std::chrono::milliseconds timeout{5 * 60 * 1000};
    std::chrono::milliseconds kill_grace{10 * 1000};
    // The program each command is started through (restart/exec_wrapper.hpp): the worker passes
    // installed_exec_wrapper(). Empty: the command is exec'd directly (the unit tests,
    // which have no mayhem binary): it then inherits every descriptor not marked close-on-exec,
    // runs on when the worker is killed, and gets no cgroup.
    std::string wrapper;
    // A cgroup v2 directory delegated to the worker (delegated_cgroup()): each command gets a
    // child cgroup in it, and its end is that cgroup's end. Empty: the process group only.
    // Needs the wrapper, which moves the command into its cgroup before the exec.
    std::string cgroup;
};

// How one command run ended.
struct command_result {
    bool ok = false;
    bool did_nothing = false;    // with !ok: never started, or exited with exit_code_did_nothing
    std::string detail;          // failure text: exit code or signal, timeout, last stderr lines
    std::size_t left_behind = 0; // processes still running when the command itself exited
};

// What the worker had to end by signal. Written on the loop thread, read by any (metrics).
struct exec_restarter_stats {
    rt::counter processes_terminated; // processes of commands sent SIGTERM (timeout, abandoned,
                                      // left behind by a command that exited)
    rt::counter processes_killed;     // processes still running at the end of the grace: SIGKILL
};

class exec_restarter final : public restarter {
public:
    exec_restarter(rt::loop& loop, command_template restart_command,
                   std::optional<command_template> verify_command, exec_options opts);

    std::string_view name() const override { return "exec"; }
    rt::task<restart_result> restart(const message& m) override;
    std::optional<std::string> refuse(const message& m) const override;
    bool uses_instance_name() const override;
    std::size_t live_processes() const override;
    void hurry(std::chrono::milliseconds grace) override;
    bool can_verify() const override { return verify_.has_value(); }
    rt::task<restart_result> verify(const message& m) override;

    const exec_restarter_stats& stats() const noexcept;

    // Runs one command to its end (exit, timeout, and its group empty). Public for the tests.
    rt::task<command_result> run(std::vector<std::string> argv);

    // What the commands share with their restarter; an abandoned command keeps it after the
    // restarter is gone (it may outlive it until the loop closes).
    struct shared;

private:
    rt::loop& loop_;
    command_template restart_;
    std::optional<command_template> verify_;
    exec_options opts_;
    std::shared_ptr<shared> shared_;
};

// The worker's own cgroup v2 directory when it may create cgroups in it: systemd delegated it
// (Delegate=yes sets the xattr trusted.delegate or user.delegate to 1), it is writable and it
// has cgroup.kill (Linux 5.14). Empty otherwise.
std::string delegated_cgroup();

} // namespace mayhem
