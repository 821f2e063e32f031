// The exec wrapper: the small program `mayhem-exec` through which the exec restarter starts
// every restart command. libuv's uv_spawn has no hook between fork and exec, so what must happen
// in the child before the command runs happens in this program, which then execs the command in
// its own place (no extra process remains).
//
//   mayhem-exec PPID CGROUP PROGRAM ARGS...
//
// It dies with process PPID (PR_SET_PDEATHSIG, SIGKILL) and exits at once if PPID is already
// gone, moves itself into CGROUP (a directory; "" = none), closes every descriptor above 2, then
// execvp's PROGRAM. If any step fails: the reason on stderr, exit `exit_code_did_nothing`.
//
// It is a program of its own, not a mode of the worker's binary, because it runs once per
// restart and must start fast: it links only the C library (the worker's binary spends ~10 ms
// of CPU in the dynamic loader before main). It must not include anything beyond libc and this
// header.
#pragma once

namespace mayhem {

// The exit code by which a restart command says it refused before acting (sysexits.h's
// EX_TEMPFAIL): the restart did nothing and may be retried. The exec wrapper exits with it too
// when it cannot start the command.
inline constexpr int exit_code_did_nothing = 75;

// The wrapper's file name; the worker looks for it next to its own binary.
inline constexpr const char* exec_wrapper_program = "mayhem-exec";

// The wrapper's main, from PPID on: argv[0] is PPID.
int run_exec_wrapper(int argc, char** argv);

} // namespace mayhem
