#include "restart/exec_restarter.hpp"

#include "runtime/duration.hpp"
#include "runtime/log.hpp"

#include <csignal>
#include <cstring>

namespace mayhem {

namespace {

constexpr std::size_t stderr_keep_bytes = 4096; // the tail of stderr kept per child
constexpr std::size_t stderr_report_lines = 5;  // lines of it put in the log
// After the child exited, how long its stderr may stay open (a grandchild holding it) before
// we stop reading: the restart's result does not wait on a daemon it left behind.
constexpr std::chrono::milliseconds stderr_linger{1000};

// ---------------------------------------------------------------------------------------------
// child: one spawned command, with its stderr pipe and one timer (timeout, then kill grace, then
// the stderr linger). Heap-allocated so it can outlive the task that started it: when that task
// is destroyed first, the child is abandoned, ends its process group and frees itself once the
// process has been reaped. A timer per child (not the shared timer queue) because an abandoned
// child must still be able to send SIGKILL while the loop runs its last turns in ~loop, after
// the timer queue is gone; a child costs a fork and an exec, a timer handle is nothing beside.
// ---------------------------------------------------------------------------------------------
class child {
public:
    child(rt::loop& loop, const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
          std::chrono::milliseconds grace)
        : grace_(grace) {
        err_ = rt::uv_handle<uv_pipe_t>(
            [&](uv_pipe_t* p) { return uv_pipe_init(loop.get(), p, 0); }, "uv_pipe_init");
        err_->data = this;
        timer_ = rt::uv_handle<uv_timer_t>(
            [&](uv_timer_t* t) { return uv_timer_init(loop.get(), t); }, "uv_timer_init");
        timer_->data = this;

        std::vector<char*> args;
        for (const auto& a : argv)
            args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        uv_stdio_container_t stdio[3];
        stdio[0].flags = UV_IGNORE; // /dev/null
        stdio[1].flags = UV_IGNORE; // stdout is not looked at
        stdio[2].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
        stdio[2].data.stream = reinterpret_cast<uv_stream_t*>(err_.get());
        uv_process_options_t o{};
        o.exit_cb = &child::on_exit;
        o.file = args[0];
        o.args = args.data();
        o.stdio = stdio;
        o.stdio_count = 3;
        // Its own session and process group, so the whole group (a shell and what it started)
        // can be signalled, and a terminal's Ctrl-C reaches only us: we decide what it gets.
        o.flags = UV_PROCESS_DETACHED;
        // On unix uv_spawn initialises the handle even when it fails, so the handle is kept
        // (and closed by uv_handle) either way; the spawn error is carried as a value.
        proc_ = rt::uv_handle<uv_process_t>(
            [&](uv_process_t* p) {
                spawn_error = uv_spawn(loop.get(), p, &o);
                return 0;
            },
            "uv_spawn");
        proc_->data = this;
        if (spawn_error < 0) {
            finished_ = true;
            close_all();
            return;
        }
        pid_ = proc_->pid;
        if (uv_read_start(reinterpret_cast<uv_stream_t*>(err_.get()), &child::on_alloc,
                          &child::on_read) < 0)
            eof_ = true;
        if (timeout.count() > 0)
            uv_timer_start(timer_.get(), &child::on_timer,
                           static_cast<std::uint64_t>(timeout.count()), 0);
    }
    child(const child&) = delete;
    child& operator=(const child&) = delete;

    bool finished() const noexcept { return finished_; }
    void wait(std::coroutine_handle<> h) noexcept { waiter_ = h; }

    // The owner lets go. A finished child is freed now; a running one is abandoned: its group
    // gets SIGTERM (then SIGKILL after the grace) and it frees itself once reaped.
    void release() noexcept {
        waiter_ = {};
        if (finished_) {
            delete this;
            return;
        }
        abandoned_ = true;
        if (exited_) { // only the stderr linger is left: stop waiting for it
            finish();
            return;
        }
        if (stage_ == stage::running) terminate();
    }

    // The result, once finished.
    int spawn_error = 0;
    bool timed_out = false;
    std::int64_t exit_status = 0;
    int term_signal = 0;
    std::string tail; // the last stderr_keep_bytes of stderr

private:
    enum class stage { running, terminating, killed };

    void signal_group(int sig) noexcept {
        // Only while the process is not reaped: its pid (and group id) cannot have been reused.
        if (pid_ > 0 && !exited_) uv_kill(-pid_, sig);
    }
    void terminate() noexcept {
        stage_ = stage::terminating;
        signal_group(SIGTERM);
        uv_timer_start(timer_.get(), &child::on_timer, static_cast<std::uint64_t>(grace_.count()),
                       0);
    }
    void close_all() noexcept {
        timer_.close();
        err_.close();
        proc_.close();
    }
    // Both the exit and the end of stderr are in (or given up on). Must be the last thing a
    // callback does: resuming the waiter may free this child.
    void finish() noexcept {
        finished_ = true;
        close_all();
        if (abandoned_) {
            delete this;
            return;
        }
        if (auto h = std::exchange(waiter_, {})) h.resume();
    }
    void stderr_done() noexcept {
        eof_ = true;
        err_.close();
    }

    static void on_exit(uv_process_t* p, std::int64_t status, int sig) noexcept {
        auto* c = static_cast<child*>(p->data);
        if (!c) return;
        c->exited_ = true;
        c->exit_status = status;
        c->term_signal = sig;
        uv_timer_stop(c->timer_.get());
        if (c->eof_ || c->abandoned_) return c->finish();
        uv_timer_start(c->timer_.get(), &child::on_timer,
                       static_cast<std::uint64_t>(stderr_linger.count()), 0);
    }
    static void on_alloc(uv_handle_t* h, std::size_t, uv_buf_t* buf) noexcept {
        auto* c = static_cast<child*>(h->data);
        *buf = uv_buf_init(c->buf_, sizeof c->buf_);
    }
    static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) noexcept {
        auto* c = static_cast<child*>(s->data);
        if (!c) return;
        if (n > 0) {
            c->tail.append(buf->base, static_cast<std::size_t>(n));
            if (c->tail.size() > stderr_keep_bytes)
                c->tail.erase(0, c->tail.size() - stderr_keep_bytes);
            return;
        }
        if (n == 0) return;
        c->stderr_done(); // EOF or a read error: nothing more to read either way
        if (c->exited_) c->finish();
    }
    static void on_timer(uv_timer_t* t) noexcept {
        auto* c = static_cast<child*>(t->data);
        if (!c) return;
        if (c->exited_) { // the stderr linger is over
            c->stderr_done();
            return c->finish();
        }
        switch (c->stage_) {
        case stage::running:
            c->timed_out = true;
            c->terminate();
            break;
        case stage::terminating:
            c->stage_ = stage::killed;
            c->signal_group(SIGKILL);
            break;
        case stage::killed:
            break;
        }
    }

    std::chrono::milliseconds grace_;
    rt::uv_handle<uv_pipe_t> err_;
    rt::uv_handle<uv_timer_t> timer_;
    rt::uv_handle<uv_process_t> proc_;
    int pid_ = 0;
    stage stage_ = stage::running;
    bool exited_ = false, eof_ = false, finished_ = false, abandoned_ = false;
    std::coroutine_handle<> waiter_;
    char buf_[1024];
};

// The awaiting task's handle on a child: awaitable, and destroying it (with the task) releases
// the child, which ends it if it still runs.
class child_ref {
public:
    explicit child_ref(child* c) : c_(c) {}
    child_ref(const child_ref&) = delete;
    child_ref& operator=(const child_ref&) = delete;
    ~child_ref() { c_->release(); }
    child* operator->() const noexcept { return c_; }

    bool await_ready() const noexcept { return c_->finished(); }
    void await_suspend(std::coroutine_handle<> h) noexcept { c_->wait(h); }
    void await_resume() const noexcept {}

private:
    child* c_;
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

} // namespace

exec_restarter::exec_restarter(rt::loop& loop, command_template restart_command,
                               std::optional<command_template> verify_command, exec_options opts)
    : loop_(loop), restart_(std::move(restart_command)), verify_(std::move(verify_command)),
      opts_(opts) {}

std::optional<std::string> exec_restarter::refuse(const message& m) const {
    if (auto bad = restart_.refuse(m)) return bad;
    if (verify_) return verify_->refuse(m);
    return std::nullopt;
}

rt::task<command_result> exec_restarter::run(std::vector<std::string> argv) {
    child_ref c(new child(loop_, argv, opts_.timeout, opts_.kill_grace));
    co_await c;
    command_result r;
    if (c->spawn_error < 0) {
        // A missing or non-executable program at run time (it was there at start-up): the
        // worker's environment is broken, not the message, so this is a failed restart that is
        // retried and counted by the circuit breaker.
        r.detail = "cannot run '" + argv[0] + "': " + uv_strerror(c->spawn_error);
        co_return r;
    }
    if (c->timed_out) {
        r.detail = "timed out after " + format_duration(opts_.timeout) + ", ended with " +
                   signal_text(c->term_signal ? c->term_signal : SIGTERM);
    } else if (c->term_signal != 0) {
        r.detail = "killed by " + signal_text(c->term_signal);
    } else if (c->exit_status != 0) {
        r.detail = "exit code " + std::to_string(c->exit_status);
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
    if (!r.ok) {
        log::warn("restart command failed", {{"message_id", m.message_id()},
                                             {"hostname", m.hostname()},
                                             {"command", restart_.program()},
                                             {"error", r.detail}});
        co_return restart_result{restart_status::failed, std::move(r.detail)};
    }
    if (verify_) {
        auto vargv = verify_->expand(m);
        if (auto* why = std::get_if<std::string>(&vargv))
            co_return restart_result{restart_status::refused, *why};
        command_result v = co_await run(std::get<0>(std::move(vargv)));
        if (!v.ok) {
            log::warn("verify command failed after the restart command succeeded",
                      {{"message_id", m.message_id()},
                       {"hostname", m.hostname()},
                       {"command", verify_->program()},
                       {"error", v.detail}});
            co_return restart_result{restart_status::failed, "verify command: " + v.detail};
        }
    }
    log::info("host restarted", {{"message_id", m.message_id()},
                                 {"hostname", m.hostname()},
                                 {"command", restart_.program()},
                                 {"verified", verify_.has_value()}});
    co_return restart_result{restart_status::ok, {}};
}

} // namespace mayhem
