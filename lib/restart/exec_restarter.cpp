#include "restart/exec_restarter.hpp"

#include "runtime/duration.hpp"
#include "runtime/log.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <unordered_set>

namespace mayhem {

namespace {

constexpr std::size_t stderr_keep_bytes = 4096; // the tail of stderr kept per command
constexpr std::size_t stderr_report_lines = 5;  // lines of it put in the log
constexpr std::uint64_t never = UINT64_MAX;
// How often a command's processes are looked at while some remain after the command exited:
// a command that leaves nothing behind is finished at its exit without a single poll; leftovers
// that end on SIGTERM are seen gone within a few milliseconds; then at most 10 looks a second.
constexpr std::uint64_t poll_first_ms = 1;
constexpr std::uint64_t poll_max_ms = 100;

// ---------------------------------------------------------------------------------------------
// Small synchronous reads and writes of /proc and cgroupfs. They touch no disk (the kernel
// answers from memory), so they run on the loop thread like any other system call.
// ---------------------------------------------------------------------------------------------

bool read_file(const std::string& path, std::string& out) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    out.clear();
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0)
        out.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    return n == 0;
}

// 0, or the errno of the failure.
int write_file(const std::string& path, std::string_view text) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    int err =
        ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) ? 0 : errno;
    ::close(fd);
    return err;
}

// Processes of group `pgid` that still run: zombies do not count. After a command's leader is
// reaped its orphans belong to init (or a subreaper), which may reap them late, or never when
// the worker itself is PID 1 in a container; kill(-pgid, 0) succeeds on zombies, so only the
// state in /proc/PID/stat tells a live process from a dead one. One pass over /proc: done only
// while kill() says the group still exists.
std::size_t live_members(pid_t pgid) {
    DIR* d = ::opendir("/proc");
    if (!d) return 1; // cannot tell: assume one, so the group is signalled and waited for
    std::size_t n = 0;
    while (const dirent* e = ::readdir(d)) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        std::string path = std::string("/proc/") + e->d_name + "/stat";
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        char buf[512]; // "pid (comm) state ppid pgrp ...": comm is at most 16 bytes
        ssize_t k = ::read(fd, buf, sizeof buf - 1);
        ::close(fd);
        if (k <= 0) continue;
        buf[k] = '\0';
        const char* p = std::strrchr(buf, ')');
        char state = 0;
        int ppid = 0, pgrp = 0;
        if (p && std::sscanf(p + 1, " %c %d %d", &state, &ppid, &pgrp) == 3 && pgrp == pgid &&
            state != 'Z' && state != 'X')
            ++n;
    }
    ::closedir(d);
    return n;
}

// ---------------------------------------------------------------------------------------------
// command_processes: what makes up one command, i.e. its process group (the id is the leader's
// pid: libuv's setsid) and, with a delegated cgroup, the cgroup of its own that the wrapper
// moved it into. The group is what a command that stays in it leaves behind; the cgroup also
// holds what escaped the group (setsid, a daemon), so with one, both must be empty.
//
// A process group id is not reused while any process, even a zombie, is in the group; between
// our last look at an emptied group and a signal to it, its id would have to be handed out
// again and taken by a new group, which a pid space of 2^22 makes negligible.
// ---------------------------------------------------------------------------------------------
class command_processes {
public:
    command_processes() = default;
    command_processes(pid_t pgid, std::string cgroup) : pgid_(pgid), cgroup_(std::move(cgroup)) {}

    pid_t pgid() const noexcept { return pgid_; }
    const std::string& cgroup() const noexcept { return cgroup_; }

    // Nothing left that runs. kill() fails with ESRCH when the group is gone, and with EPERM
    // when none of it may be signalled by us: then none of it could be ended by us either.
    bool empty() const {
        bool group = pgid_ <= 0 || ::kill(-pgid_, 0) != 0 || live_members(pgid_) == 0;
        return group && !populated();
    }

    // Sends `sig` to every process of the command; returns how many were running.
    std::size_t signal(int sig) const {
        std::size_t n = 0;
        if (!cgroup_.empty()) {
            auto pids = cgroup_pids();
            n = pids.size();
            if (sig == SIGKILL)
                (void)write_file(cgroup_ + "/cgroup.kill", "1"); // all of it, atomically
            else
                for (pid_t p : pids)
                    ::kill(p, sig);
        } else if (pgid_ > 0 && ::kill(-pgid_, 0) == 0) {
            n = live_members(pgid_);
        }
        if (pgid_ > 0) ::kill(-pgid_, sig); // the leader before it joined its cgroup
        return n;
    }

    // Removes the command's cgroup (empty by now); "" or the reason it could not be.
    std::string remove_cgroup() const {
        if (cgroup_.empty() || ::rmdir(cgroup_.c_str()) == 0 || errno == ENOENT) return {};
        return std::strerror(errno);
    }

private:
    // cgroup.events says "populated 0" once no process of the cgroup runs (zombies do not count).
    bool populated() const {
        std::string events;
        if (cgroup_.empty() || !read_file(cgroup_ + "/cgroup.events", events)) return false;
        return events.find("populated 1") != std::string::npos;
    }
    std::vector<pid_t> cgroup_pids() const {
        std::vector<pid_t> pids;
        std::string text;
        if (!read_file(cgroup_ + "/cgroup.procs", text)) return pids;
        std::istringstream in(text);
        for (pid_t p; in >> p;)
            pids.push_back(p);
        return pids;
    }

    pid_t pgid_ = 0;
    std::string cgroup_;
};

} // namespace

class exec_child;

struct exec_restarter::shared {
    explicit shared(std::chrono::milliseconds g) : grace(g) {}
    std::unordered_set<exec_child*> live; // commands not finished (running, terminating)
    exec_restarter_stats stats;
    std::chrono::milliseconds grace; // --restart-kill-grace, shortened by hurry()
    std::uint64_t cgroups = 0;       // cgroups created so far: names the next one
};

// ---------------------------------------------------------------------------------------------
// exec_child: one spawned command, with its stderr pipe and one timer for whatever is due next
// (the timeout, SIGKILL at the end of the grace, a look at the processes left behind).
// Heap-allocated so it can outlive the task that started it: when that task is destroyed first,
// the child is abandoned, ends its processes and frees itself once they are gone. A timer per
// child (not the shared timer queue) because an abandoned child must still be able to send
// SIGKILL while the loop runs its last turns in ~loop, after the timer queue is gone; a child
// costs a fork and an exec, a timer handle is nothing beside.
//
// One state machine: running → terminating (SIGTERM sent) → killed (SIGKILL sent) → finished.
// The leader's exit is an event, not a state: the command is finished when the leader has
// exited and its processes are all gone, whatever the stage. Deadlines are loop times in ms.
// ---------------------------------------------------------------------------------------------
class exec_child {
public:
    exec_child(rt::loop& loop, std::shared_ptr<exec_restarter::shared> sh,
               const std::vector<std::string>& argv, const exec_options& o)
        : loop_(loop), shared_(std::move(sh)) {
        err_ = rt::uv_handle<uv_pipe_t>(
            [&](uv_pipe_t* p) { return uv_pipe_init(loop.get(), p, 0); }, "uv_pipe_init");
        err_->data = this;
        timer_ = rt::uv_handle<uv_timer_t>(
            [&](uv_timer_t* t) { return uv_timer_init(loop.get(), t); }, "uv_timer_init");
        timer_->data = this;

        std::string cgroup;
        if (!o.cgroup.empty() && !o.wrapper.empty()) {
            cgroup = o.cgroup + "/mayhem-" + std::to_string(::getpid()) + "-" +
                     std::to_string(++shared_->cgroups);
            if (::mkdir(cgroup.c_str(), 0755) != 0) {
                error = "cannot create cgroup " + cgroup + ": " + std::strerror(errno);
                give_up_start();
                return;
            }
        }
        // With the wrapper: `mayhem-exec PPID CGROUP argv...` (restart/exec_wrapper.hpp).
        std::string ppid = std::to_string(::getpid());
        std::vector<char*> args;
        if (!o.wrapper.empty()) {
            args.push_back(const_cast<char*>(exec_wrapper_program));
            args.push_back(ppid.data());
            args.push_back(cgroup.data());
        }
        for (const auto& a : argv)
            args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        uv_stdio_container_t stdio[3];
        stdio[0].flags = UV_IGNORE; // /dev/null
        stdio[1].flags = UV_IGNORE; // stdout is not looked at
        stdio[2].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
        stdio[2].data.stream = reinterpret_cast<uv_stream_t*>(err_.get());
        uv_process_options_t po{};
        po.exit_cb = &exec_child::on_exit;
        po.file = o.wrapper.empty() ? argv[0].c_str() : o.wrapper.c_str();
        po.args = args.data();
        po.stdio = stdio;
        po.stdio_count = 3;
        // Its own session and process group, so the whole group (a shell and what it started)
        // can be signalled, and a terminal's Ctrl-C reaches only us: we decide what it gets.
        po.flags = UV_PROCESS_DETACHED;
        // On unix uv_spawn initialises the handle even when it fails, so the handle is kept
        // (and closed by uv_handle) either way; the spawn error is carried as a value.
        int rc = 0;
        proc_ = rt::uv_handle<uv_process_t>(
            [&](uv_process_t* p) {
                rc = uv_spawn(loop.get(), p, &po);
                return 0;
            },
            "uv_spawn");
        proc_->data = this;
        if (rc < 0) {
            // A missing or non-executable program at run time (it was there at start-up): the
            // worker's environment is broken, not the message, so this is a failed restart
            // that is retried and counted by the circuit breaker.
            error = std::string("cannot run '") + po.file + "': " + uv_strerror(rc);
            command_processes(0, cgroup).remove_cgroup();
            give_up_start();
            return;
        }
        procs_ = command_processes(proc_->pid, std::move(cgroup));
        shared_->live.insert(this);
        if (uv_read_start(reinterpret_cast<uv_stream_t*>(err_.get()), &exec_child::on_alloc,
                          &exec_child::on_read) < 0)
            err_.close();
        if (o.timeout.count() > 0)
            timeout_at_ = loop_.now() + static_cast<std::uint64_t>(o.timeout.count());
        rearm(loop_.now());
    }
    exec_child(const exec_child&) = delete;
    exec_child& operator=(const exec_child&) = delete;

    bool finished() const noexcept { return stage_ == stage::finished; }
    void wait(std::coroutine_handle<> h) noexcept { waiter_ = h; }

    // The owner lets go. A finished child is freed now; an unfinished one is abandoned: what
    // still runs of it is ended, and it frees itself once all of it is gone.
    void release() noexcept {
        waiter_ = {};
        if (stage_ == stage::finished) {
            delete this;
            return;
        }
        abandoned_ = true;
        advance();
    }

    // Moves the SIGKILL (and the give-up after it) earlier. Only re-arms: never finishes here,
    // as the caller walks the set of live children.
    void hurry(std::uint64_t kill_at, std::uint64_t give_up_at) noexcept {
        kill_at_ = std::min(kill_at_, kill_at);
        give_up_at_ = std::min(give_up_at_, give_up_at);
        rearm(loop_.now());
    }

    // The result, once finished.
    std::string error; // the command could not be started: why
    bool timed_out = false;
    std::int64_t exit_status = 0;
    int term_signal = 0;
    std::size_t left_behind = 0; // processes still running when the leader exited
    std::string tail;            // the last stderr_keep_bytes of stderr

private:
    enum class stage { running, terminating, killed, finished };

    // Every event (exit, timer, release) comes here: do what is due, then sleep until the next
    // thing can be due. Must be the last thing a callback does: finishing may free this child,
    // or resume (and so free) its waiter.
    void advance() noexcept {
        const std::uint64_t now = loop_.now();
        if (exited_ && procs_.empty()) return finish();
        if (stage_ == stage::running) {
            timed_out = !exited_ && !abandoned_ && now >= timeout_at_;
            if (exited_ || abandoned_ || timed_out) signal(SIGTERM, now);
        }
        if (stage_ != stage::killed && now >= kill_at_) signal(SIGKILL, now);
        if (stage_ == stage::killed && now >= give_up_at_) {
            log::error("processes of a restart command outlived SIGKILL; no longer waiting for "
                       "them",
                       {{"pgid", procs_.pgid()}, {"cgroup", procs_.cgroup()}});
            return finish();
        }
        if (exited_) {
            poll_at_ = now + poll_ms_;
            poll_ms_ = std::min(poll_ms_ * 2, poll_max_ms);
        }
        rearm(now);
    }

    void signal(int sig, std::uint64_t now) noexcept {
        std::size_t n = procs_.signal(sig);
        auto grace = static_cast<std::uint64_t>(shared_->grace.count());
        if (sig == SIGTERM) {
            shared_->stats.processes_terminated.inc(n);
            if (exited_) left_behind = n;
            stage_ = stage::terminating;
            kill_at_ = std::min(kill_at_, now + grace);
        } else {
            shared_->stats.processes_killed.inc(n);
            stage_ = stage::killed;
            give_up_at_ = std::min(give_up_at_, now + grace);
        }
    }

    void rearm(std::uint64_t now) noexcept {
        if (!timer_) return;
        std::uint64_t next = never;
        if (stage_ == stage::running && !exited_) next = timeout_at_;
        if (stage_ != stage::killed) next = std::min(next, kill_at_);
        if (stage_ == stage::killed) next = std::min(next, give_up_at_);
        if (exited_) next = std::min(next, poll_at_);
        if (next == never) {
            uv_timer_stop(timer_.get());
            return;
        }
        uv_timer_start(timer_.get(), &exec_child::on_timer, next > now ? next - now : 0, 0);
    }

    // Reads what is left in the stderr pipe without waiting: every process that could write to
    // it has exited (a process that escaped the group and kept it open is not waited for).
    void drain_stderr() noexcept {
        if (!err_) return;
        uv_os_fd_t fd = -1;
        if (uv_fileno(err_.base(), &fd) == 0) {
            uv_read_stop(reinterpret_cast<uv_stream_t*>(err_.get()));
            ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
            ssize_t n;
            while ((n = ::read(fd, buf_, sizeof buf_)) > 0)
                keep(buf_, static_cast<std::size_t>(n));
        }
        err_.close();
    }

    void keep(const char* data, std::size_t n) {
        tail.append(data, n);
        if (tail.size() > stderr_keep_bytes) tail.erase(0, tail.size() - stderr_keep_bytes);
    }

    void close_all() noexcept {
        timer_.close();
        err_.close();
        proc_.close();
    }

    // The command could not be started: finished at once, with `error` set.
    void give_up_start() noexcept {
        stage_ = stage::finished;
        close_all();
    }

    void finish() noexcept {
        stage_ = stage::finished;
        drain_stderr();
        close_all();
        if (auto why = procs_.remove_cgroup(); !why.empty())
            log::warn("cannot remove a restart command's cgroup",
                      {{"cgroup", procs_.cgroup()}, {"error", why}});
        shared_->live.erase(this);
        if (abandoned_) {
            delete this;
            return;
        }
        if (auto h = std::exchange(waiter_, {})) h.resume();
    }

    static void on_exit(uv_process_t* p, std::int64_t status, int sig) noexcept {
        auto* c = static_cast<exec_child*>(p->data);
        if (!c) return;
        c->exited_ = true;
        c->exit_status = status;
        c->term_signal = sig;
        c->advance();
    }
    static void on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
        auto* c = static_cast<exec_child*>(h->data);
        *buf = uv_buf_init(c->buf_, sizeof c->buf_);
    }
    static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept {
        auto* c = static_cast<exec_child*>(s->data);
        if (!c) return;
        if (n > 0) return c->keep(buf->base, static_cast<std::size_t>(n));
        if (n < 0) c->err_.close(); // EOF or a read error: nothing more to read either way
    }
    static void on_timer(uv_timer_t* t) noexcept {
        if (auto* c = static_cast<exec_child*>(t->data)) c->advance();
    }

    rt::loop& loop_;
    std::shared_ptr<exec_restarter::shared> shared_;
    rt::uv_handle<uv_pipe_t> err_;
    rt::uv_handle<uv_timer_t> timer_;
    rt::uv_handle<uv_process_t> proc_;
    command_processes procs_;
    stage stage_ = stage::running;
    bool exited_ = false;    // the leader was reaped
    bool abandoned_ = false; // no task awaits this child: it frees itself when finished
    std::uint64_t timeout_at_ = never, kill_at_ = never, give_up_at_ = never, poll_at_ = never;
    std::uint64_t poll_ms_ = poll_first_ms;
    std::coroutine_handle<> waiter_;
    char buf_[1024];
};

namespace {

// The awaiting task's handle on a child: awaitable, and destroying it (with the task) releases
// the child, which ends it if it still runs.
class child_ref {
public:
    explicit child_ref(exec_child* c) : c_(c) {}
    child_ref(const child_ref&) = delete;
    child_ref& operator=(const child_ref&) = delete;
    ~child_ref() { c_->release(); }
    exec_child* operator->() const noexcept { return c_; }

    bool await_ready() const noexcept { return c_->finished(); }
    void await_suspend(std::coroutine_handle<> h) noexcept { c_->wait(h); }
    void await_resume() const noexcept {}

private:
    exec_child* c_;
};

std::string last_lines(const std::string& tail) {
    std::vector<std::string_view> lines;
    std::string_view rest(tail);
    while (!rest.empty()) {
        auto nl = rest.find('\n');
        std::string_view line = rest.substr(0, nl);
        while (!line.empty() && (line.back() == '\r' || line.back() == ' '))
            line.remove_suffix(1);
        if (!line.empty()) lines.push_back(line);
        if (nl == std::string_view::npos) break;
        rest.remove_prefix(nl + 1);
    }
    std::string out;
    std::size_t from = lines.size() > stderr_report_lines ? lines.size() - stderr_report_lines : 0;
    for (std::size_t i = from; i < lines.size(); ++i) {
        if (!out.empty()) out += " | ";
        out += lines[i];
    }
    return out;
}

std::string signal_text(int sig) {
    const char* name = sig == SIGTERM ? "SIGTERM" : sig == SIGKILL ? "SIGKILL" : nullptr;
    return name ? std::string(name) : "signal " + std::to_string(sig);
}

void log_left_behind(const message& m, const command_template& cmd, const command_result& r) {
    if (r.left_behind == 0) return;
    log::warn("restart command left processes running when it exited; they were ended",
              {{"message_id", m.message_id()},
               {"hostname", m.hostname()},
               {"command", cmd.program()},
               {"processes", r.left_behind}});
}

} // namespace

exec_restarter::exec_restarter(rt::loop& loop, command_template restart_command,
                               std::optional<command_template> verify_command, exec_options opts)
    : loop_(loop), restart_(std::move(restart_command)), verify_(std::move(verify_command)),
      opts_(std::move(opts)), shared_(std::make_shared<shared>(opts_.kill_grace)) {
    if (!opts_.cgroup.empty() && !opts_.wrapper.empty())
        log::info("restart commands run in cgroups of their own", {{"cgroup", opts_.cgroup}});
}

bool exec_restarter::uses_instance_name() const {
    return restart_.uses_instance_name() || (verify_ && verify_->uses_instance_name());
}

std::optional<std::string> exec_restarter::refuse(const message& m) const {
    if (auto bad = restart_.refuse(m)) return bad;
    if (verify_) return verify_->refuse(m);
    return std::nullopt;
}

std::size_t exec_restarter::live_processes() const {
    return shared_->live.size();
}

void exec_restarter::hurry(std::chrono::milliseconds grace) {
    shared_->grace = std::min(shared_->grace, grace);
    auto g = static_cast<std::uint64_t>(std::max<std::int64_t>(grace.count(), 0));
    auto now = loop_.now();
    for (exec_child* c : shared_->live)
        c->hurry(now + g, now + 2 * g);
}

const exec_restarter_stats& exec_restarter::stats() const noexcept {
    return shared_->stats;
}

rt::task<command_result> exec_restarter::run(std::vector<std::string> argv) {
    child_ref c(new exec_child(loop_, shared_, argv, opts_));
    co_await c;
    command_result r;
    r.left_behind = c->left_behind;
    if (!c->error.empty()) {
        r.detail = c->error;
        r.did_nothing = true;
        co_return r;
    }
    if (c->timed_out) {
        r.detail = "timed out after " + format_duration(opts_.timeout) + ", ended with " +
                   signal_text(c->term_signal ? c->term_signal : SIGTERM);
    } else if (c->term_signal != 0) {
        r.detail = "killed by " + signal_text(c->term_signal);
    } else if (c->exit_status != 0) {
        r.detail = "exit code " + std::to_string(c->exit_status);
        r.did_nothing = c->exit_status == exit_code_did_nothing;
    } else {
        r.ok = true;
        co_return r;
    }
    if (auto err = last_lines(c->tail); !err.empty()) r.detail += "; stderr: " + err;
    co_return r;
}

rt::task<restart_result> exec_restarter::restart(const message& m) {
    auto argv = restart_.expand(m);
    if (auto* why = std::get_if<std::string>(&argv))
        co_return restart_result{restart_status::refused, *why};
    command_result r = co_await run(std::get<0>(std::move(argv)));
    log_left_behind(m, restart_, r);
    if (!r.ok) {
        log::warn(r.did_nothing ? "restart command did nothing; it may be retried"
                                : "restart command failed; it may have acted, it is not run again",
                  {{"message_id", m.message_id()},
                   {"hostname", m.hostname()},
                   {"command", restart_.program()},
                   {"error", r.detail}});
        co_return restart_result{r.did_nothing ? restart_status::failed
                                               : restart_status::unverified,
                                 std::move(r.detail)};
    }
    if (verify_) {
        restart_result v = co_await verify(m);
        if (v.status != restart_status::ok) {
            log::warn("verify command failed after the restart command succeeded; the restart is "
                      "not run again",
                      {{"message_id", m.message_id()},
                       {"hostname", m.hostname()},
                       {"command", verify_->program()},
                       {"error", v.detail}});
            co_return restart_result{restart_status::unverified, std::move(v.detail)};
        }
    }
    log::info("host restarted", {{"message_id", m.message_id()},
                                 {"hostname", m.hostname()},
                                 {"command", restart_.program()},
                                 {"verified", verify_.has_value()}});
    co_return restart_result{restart_status::ok, {}};
}

rt::task<restart_result> exec_restarter::verify(const message& m) {
    auto vargv = verify_->expand(m);
    if (auto* why = std::get_if<std::string>(&vargv))
        co_return restart_result{restart_status::refused, *why};
    command_result v = co_await run(std::get<0>(std::move(vargv)));
    log_left_behind(m, *verify_, v);
    if (!v.ok) co_return restart_result{restart_status::failed, "verify command: " + v.detail};
    co_return restart_result{restart_status::ok, {}};
}

std::string delegated_cgroup() {
    // Our cgroup v2 path: the "0::PATH" line.
    std::ifstream self("/proc/self/cgroup");
    std::string line, path;
    while (std::getline(self, line))
        if (line.rfind("0::", 0) == 0) path = line.substr(3);
    if (path.empty()) return {};
    // Where cgroup2 is mounted: /sys/fs/cgroup (unified), /sys/fs/cgroup/unified (hybrid).
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS... - FSTYPE SOURCE SUPER-OPTIONS
    std::ifstream mounts("/proc/self/mountinfo");
    std::string dir;
    while (std::getline(mounts, line)) {
        auto dash = line.find(" - ");
        if (dash == std::string::npos || line.compare(dash + 3, 8, "cgroup2 ") != 0) continue;
        std::istringstream head(line.substr(0, dash));
        std::string id, parent, dev, root, point;
        head >> id >> parent >> dev >> root >> point;
        if (root != "/" && path.rfind(root + "/", 0) != 0) continue;
        dir = point + (root == "/" ? path : path.substr(root.size()));
        break;
    }
    if (dir.empty()) return {};
    while (dir.size() > 1 && dir.back() == '/')
        dir.pop_back();
    bool delegated = false;
    for (const char* attr : {"trusted.delegate", "user.delegate"}) {
        char value[8] = {};
        ssize_t n = ::getxattr(dir.c_str(), attr, value, sizeof value - 1);
        if (n == 1 && value[0] == '1') delegated = true;
    }
    if (!delegated) return {};
    for (const char* file : {"", "/cgroup.procs", "/cgroup.kill"})
        if (::access((dir + file).c_str(), W_OK) != 0) return {};
    return dir;
}

} // namespace mayhem
