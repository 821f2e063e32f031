#include "restart/exec_wrapper.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

namespace mayhem {
namespace {

// close_range(2) needs Linux 5.9; before that, the list in /proc/self/fd, read in full before
// closing anything (closing while reading would skip entries).
void close_from_3() {
    if (::close_range(3, ~0U, 0) == 0) return;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        int fds[4096];
        std::size_t n = 0;
        bool all = true;
        while (const dirent* e = ::readdir(d)) {
            int fd = std::atoi(e->d_name);
            if (fd <= 2 || fd == ::dirfd(d)) continue;
            if (n == sizeof fds / sizeof fds[0]) {
                all = false;
                break;
            }
            fds[n++] = fd;
        }
        ::closedir(d);
        for (std::size_t i = 0; i < n; ++i)
            ::close(fds[i]);
        if (all) return;
    }
    rlimit lim{};
    int top = ::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY
                  ? static_cast<int>(lim.rlim_cur < (1 << 20) ? lim.rlim_cur : (1 << 20))
                  : 1024;
    for (int fd = 3; fd < top; ++fd)
        ::close(fd);
}

// The wrapper never started the command: it did nothing, and says so. `what` and `arg` are
// joined ("cannot run 'PROGRAM'"); errno is read first.
int failed(const char* what, const char* arg = "", const char* after = "") {
    int err = errno;
    std::fprintf(stderr, "%s%s%s: %s\n", what, arg, after, std::strerror(err));
    return exit_code_did_nothing;
}

// Moves this process into the cgroup directory `cgroup`; false with errno set on failure.
bool join_cgroup(const char* cgroup) {
    char path[4096];
    if (std::snprintf(path, sizeof path, "%s/cgroup.procs", cgroup) >= int(sizeof path)) {
        errno = ENAMETOOLONG;
        return false;
    }
    int fd = ::open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    bool ok = ::write(fd, "0", 1) == 1;
    int err = errno;
    ::close(fd);
    errno = err;
    return ok;
}

} // namespace

int run_exec_wrapper(int argc, char** argv) {
    if (argc < 3) {
        std::fputs("mayhem-exec is internal to the exec restarter: "
                   "mayhem-exec PPID CGROUP PROGRAM ARGS...\n",
                   stderr);
        return exit_code_did_nothing;
    }
    const char* cgroup = argv[1];
    const char* program = argv[2];
    // The worker may be SIGKILLed while its command runs; the command then dies with it, so a
    // redelivery does not run beside it. The death signal fires when the thread that spawned
    // us exits: the worker's loop thread, which lives as long as the worker. It survives the
    // exec below, except of a set-user-ID or set-group-ID program or one with file capabilities
    // (sudo, for one), which the kernel starts without it unless no_new_privs is set
    // (NoNewPrivileges=yes: then it gains no privilege either).
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        return failed("cannot set the parent-death signal");
    // The worker died before the line above: nothing would kill us later.
    if (::getppid() != static_cast<pid_t>(std::strtol(argv[0], nullptr, 10))) {
        std::fputs("the worker is gone\n", stderr);
        return exit_code_did_nothing;
    }
    if (cgroup[0] != '\0' && !join_cgroup(cgroup)) return failed("cannot join cgroup ", cgroup);
    // Exactly stdin, stdout and stderr: the worker's sockets (hiredis makes them without
    // SOCK_CLOEXEC), database files and the like are not the command's business.
    close_from_3();
    ::execvp(program, argv + 2);
    return failed("cannot run '", program, "'");
}

} // namespace mayhem
