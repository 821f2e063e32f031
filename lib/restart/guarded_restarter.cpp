#include "restart/guarded_restarter.hpp"

#include "runtime/duration.hpp"
#include "runtime/log.hpp"

#include <sys/stat.h>

namespace mayhem {

// ---------------------------------------------------------------------------------------------
// host_run: the restart of one host in progress here. It lives in the frame of the task that
// runs it; a second message for the host waits on `done` and shares `result`.
// ---------------------------------------------------------------------------------------------
struct guarded_restarter::host_run {
    guarded_restarter& g;
    const message& msg;
    restart_result result;
    rt::event done;
    bool registered = true;

    host_run(guarded_restarter& owner, const message& m) : g(owner), msg(m) {
        if (g.spare_nodes_.empty()) {
            g.running_hosts_.emplace(msg.hostname, this);
            return;
        }
        auto node = std::move(g.spare_nodes_.back());
        g.spare_nodes_.pop_back();
        node.key() = msg.hostname;
        node.mapped() = this;
        g.running_hosts_.insert(std::move(node));
    }
    host_run(const host_run&) = delete;
    host_run& operator=(const host_run&) = delete;
    // Destroyed unfinished only when every task is being destroyed (a forced release): the
    // tasks waiting on `done` are destroyed too, so they are not resumed.
    ~host_run() { unregister(); }

    void unregister() noexcept {
        if (!registered) return;
        registered = false;
        if (auto it = g.running_hosts_.find(msg.hostname);
            it != g.running_hosts_.end() && it->second == this) {
            auto node = g.running_hosts_.extract(it);
            if (g.spare_nodes_.size() < 1024) g.spare_nodes_.push_back(std::move(node));
        }
    }
    void finish(restart_result r) {
        result = std::move(r);
        unregister(); // a message arriving from now on starts its own restart (and cooldown)
        done.set();   // resumes the coalesced ones here, while `result` is alive
    }
};

// ---------------------------------------------------------------------------------------------
// slot: one admitted restart. Releasing it frees the concurrency slot and, for the breaker's
// trial, reports a trial that never got a result (cancelled) as neutral.
// ---------------------------------------------------------------------------------------------
class guarded_restarter::slot {
public:
    slot(guarded_restarter& g, bool trial) : g_(&g), trial_(trial) {}
    slot(slot&& o) noexcept
        : g_(std::exchange(o.g_, nullptr)), trial_(o.trial_), recorded_(o.recorded_) {}
    slot(const slot&) = delete;
    slot& operator=(const slot&) = delete;
    ~slot() {
        if (!g_) return;
        if (trial_ && !recorded_) g_->record(restart_status::dry_run, true); // neutral
        --g_->running_;
        g_->stats_.running.set(static_cast<std::int64_t>(g_->running_));
        g_->schedule_admission();
    }
    // The restart ended with `s`: tell the breaker.
    void finish(restart_status s) {
        recorded_ = true;
        g_->record(s, trial_);
    }

private:
    guarded_restarter* g_;
    bool trial_;
    bool recorded_ = false;
};

// ---------------------------------------------------------------------------------------------
// admit_awaiter: waits in the FIFO until the admission pass grants a slot. Destroying it while
// it waits (the task is destroyed) just leaves the queue.
// ---------------------------------------------------------------------------------------------
class guarded_restarter::admit_awaiter {
public:
    explicit admit_awaiter(guarded_restarter& g) : g_(g) {}
    admit_awaiter(const admit_awaiter&) = delete;
    admit_awaiter& operator=(const admit_awaiter&) = delete;
    ~admit_awaiter() {
        if (node_.linked()) {
            node_.unlink();
            g_.stats_.waiting.add(-1);
        }
    }

    // Fast path: nobody waits and there is room: no suspension at all.
    bool await_ready() {
        if (!g_.waiters_.empty() || !g_.room()) return false;
        auto a = g_.breaker_.admit(g_.now());
        g_.stats_.breaker_state.set(static_cast<std::int64_t>(g_.breaker_.state()));
        if (a == circuit_breaker::admission::wait) return false;
        grant(a == circuit_breaker::admission::trial);
        return true;
    }
    void await_suspend(std::coroutine_handle<> h) {
        h_ = h;
        g_.waiters_.push_back(node_);
        g_.stats_.waiting.add(1);
        g_.schedule_admission(); // arms the breaker's wake-up if that is what holds it
    }
    slot await_resume() { return slot(g_, trial_); }

private:
    friend class guarded_restarter;
    void grant(bool trial) {
        trial_ = trial;
        ++g_.running_;
        g_.stats_.running.set(static_cast<std::int64_t>(g_.running_));
    }

    guarded_restarter& g_;
    std::coroutine_handle<> h_;
    bool trial_ = false;
    rt::owned_node<admit_awaiter> node_{this};
};

// ---------------------------------------------------------------------------------------------
// pause_probe: one uv_fs_stat of the pause file in flight. If the guard is destroyed first, the
// callback only frees the request.
// ---------------------------------------------------------------------------------------------
struct guarded_restarter::pause_probe {
    uv_fs_t req{};
    guarded_restarter* owner;
};

namespace {
// A pause file that cannot be looked at (EACCES, EIO...) counts as present: when in doubt, the
// kill switch is on.
bool pause_file_present(int stat_result) {
    return !(stat_result == UV_ENOENT || stat_result == UV_ENOTDIR);
}
} // namespace

// ---------------------------------------------------------------------------------------------
// guarded_restarter
// ---------------------------------------------------------------------------------------------

guarded_restarter::guarded_restarter(rt::loop& loop, guard_options opts, store& st,
                                     restarter& inner)
    : loop_(loop), opts_(std::move(opts)), store_(st), inner_(inner),
      filter_(opts_.allow_hosts, opts_.deny_hosts), breaker_(opts_.breaker),
      admission_([this] { admit_waiters(); }), breaker_wake_([this] { schedule_admission(); }) {
    log::info("restart policy", {{"restarter", inner_.name()},
                                 {"cooldown", format_duration(opts_.cooldown)},
                                 {"max_concurrent", opts_.max_concurrent},
                                 {"breaker_failures", opts_.breaker.failures},
                                 {"breaker_window", format_duration(opts_.breaker.window)},
                                 {"breaker_cooldown", format_duration(opts_.breaker.cooldown)},
                                 {"allow_hosts", opts_.allow_hosts},
                                 {"deny_hosts", opts_.deny_hosts},
                                 {"pause_file", opts_.pause_file},
                                 {"dry_run", opts_.dry_run}});
    if (!opts_.pause_file.empty()) {
        // At start-up the loop runs nothing yet: one blocking stat, so a pause file present
        // before the first message already holds it.
        struct stat sb;
        int rc = ::stat(opts_.pause_file.c_str(), &sb) == 0 ? 0 : uv_translate_sys_error(errno);
        set_paused(pause_file_present(rc));
        pause_timer_ = std::make_unique<rt::periodic_timer>(loop_, opts_.pause_check,
                                                            [this] { check_pause_file(); });
    }
}

guarded_restarter::~guarded_restarter() {
    if (probe_) probe_->owner = nullptr;
}

std::chrono::milliseconds guarded_restarter::now() const noexcept {
    return std::chrono::milliseconds{static_cast<std::int64_t>(loop_.now())};
}

std::optional<std::string> guarded_restarter::refuse(const message& m) const {
    if (auto why = filter_.refuse(m.hostname)) return why;
    return inner_.refuse(m);
}

rt::task<restart_result> guarded_restarter::restart(const message& m) {
    if (auto why = refuse(m)) {
        stats_.refused.inc();
        log::warn("restart refused",
                  {{"message_id", m.message_id}, {"hostname", m.hostname}, {"reason", *why}});
        co_return restart_result{restart_status::refused, std::move(*why)};
    }
    if (auto it = running_hosts_.find(m.hostname); it != running_hosts_.end()) {
        // One restart per host at a time: wait for the one running and share its result.
        host_run& first = *it->second;
        std::string first_id = first.msg.message_id;
        co_await first.done;
        restart_result r = first.result; // `first` is alive while it resumes us
        stats_.coalesced.inc();
        log::debug("restart coalesced", {{"message_id", m.message_id},
                                         {"hostname", m.hostname},
                                         {"with", first_id},
                                         {"result", to_string(r.status)}});
        if (r.status == restart_status::ok)
            co_return restart_result{restart_status::coalesced,
                                     "shared the restart for message " + first_id};
        co_return r;
    }
    host_run here(*this, m);
    restart_result r;
    try {
        r = co_await run(m);
    } catch (const std::exception& e) {
        // Store trouble in claim_host, or a restarter that threw: a failure like any other,
        // and the coalesced messages must hear about it.
        r = restart_result{restart_status::failed, e.what()};
    }
    here.finish(r);
    co_return r;
}

rt::task<restart_result> guarded_restarter::run(const message& m) {
    slot admitted = co_await admit_awaiter(*this);
    if (opts_.cooldown.count() > 0) {
        auto now = std::chrono::system_clock::now();
        host_claim claim = co_await store_.claim_host(m, now, opts_.cooldown);
        if (!claim.granted) {
            stats_.cooldown_skips.inc();
            auto ago =
                std::chrono::duration_cast<std::chrono::milliseconds>(now - claim.last_restart);
            std::string why = "host restarted " + format_duration(ago) + " ago, within the " +
                              format_duration(opts_.cooldown) + " cooldown";
            log::info("restart skipped: cooldown",
                      {{"message_id", m.message_id}, {"hostname", m.hostname}, {"reason", why}});
            admitted.finish(restart_status::skipped_cooldown);
            co_return restart_result{restart_status::skipped_cooldown, std::move(why)};
        }
    }
    if (opts_.dry_run) {
        log::info("dry run: restart not carried out",
                  {{"message_id", m.message_id}, {"hostname", m.hostname}});
        admitted.finish(restart_status::dry_run);
        co_return restart_result{restart_status::dry_run, "dry run"};
    }
    restart_result r;
    try {
        r = co_await inner_.restart(m);
    } catch (const std::exception& e) {
        r = restart_result{restart_status::failed, e.what()};
    }
    admitted.finish(r.status);
    co_return r;
}

// ---------------------------------------------------------------------------------------------
// Admission
// ---------------------------------------------------------------------------------------------

bool guarded_restarter::room() const noexcept {
    return !paused_ && (opts_.max_concurrent == 0 || running_ < opts_.max_concurrent);
}

void guarded_restarter::schedule_admission() {
    if (!waiters_.empty() && !admission_.armed()) loop_.timers().arm(admission_, millis{0});
}

// Resumes waiters in order while there is room. Each resumed task runs until it suspends (or
// finishes), so the front is re-read every time.
void guarded_restarter::admit_waiters() {
    while (auto* n = waiters_.front()) {
        if (!room()) return;
        auto a = breaker_.admit(now());
        stats_.breaker_state.set(static_cast<std::int64_t>(breaker_.state()));
        if (a == circuit_breaker::admission::wait) {
            if (breaker_.state() == breaker_state::open)
                loop_.timers().arm(breaker_wake_, breaker_.trial_at() - now());
            return; // half-open: the trial's result schedules the next pass
        }
        auto* w = static_cast<rt::owned_node<admit_awaiter>*>(n)->owner;
        n->unlink();
        stats_.waiting.add(-1);
        w->grant(a == circuit_breaker::admission::trial);
        w->h_.resume();
    }
}

void guarded_restarter::record(restart_status s, bool trial) {
    using result = circuit_breaker::result;
    result r = s == restart_status::ok       ? result::ok
               : s == restart_status::failed ? result::failed
                                             : result::neutral;
    breaker_state before = breaker_.state();
    auto change = breaker_.record(r, trial, now());
    stats_.breaker_state.set(static_cast<std::int64_t>(breaker_.state()));
    const auto& o = breaker_.options();
    if (change == circuit_breaker::change::opened) {
        stats_.breaker_opened.inc();
        log::warn("circuit breaker opened: no restart starts until the cooldown is over",
                  {{"failures", o.failures},
                   {"window", format_duration(o.window)},
                   {"cooldown", format_duration(o.cooldown)}});
    } else if (change == circuit_breaker::change::closed) {
        log::info("circuit breaker closed: the trial restart succeeded");
    } else if (trial && before == breaker_state::half_open && r == result::failed) {
        log::warn("circuit breaker stays open: the trial restart failed",
                  {{"cooldown", format_duration(o.cooldown)}});
    }
    schedule_admission();
}

// ---------------------------------------------------------------------------------------------
// The kill switch: one periodic stat of --pause-file, not one per message.
// ---------------------------------------------------------------------------------------------

void guarded_restarter::check_pause_file() {
    if (probe_) return; // the previous look has not answered yet
    auto* p = new pause_probe{};
    p->owner = this;
    p->req.data = p;
    int rc = uv_fs_stat(loop_.get(), &p->req, opts_.pause_file.c_str(), [](uv_fs_t* r) {
        auto* probe = static_cast<pause_probe*>(r->data);
        bool present = pause_file_present(static_cast<int>(r->result));
        uv_fs_req_cleanup(r);
        if (auto* g = probe->owner) {
            g->probe_ = nullptr;
            g->set_paused(present);
        }
        delete probe;
    });
    if (rc < 0) {
        uv_fs_req_cleanup(&p->req);
        delete p;
        return;
    }
    probe_ = p;
}

void guarded_restarter::set_paused(bool paused) {
    if (paused == paused_) return;
    paused_ = paused;
    stats_.paused.set(paused ? 1 : 0);
    if (paused) {
        log::warn("restarts paused: the pause file exists; no restart starts until it is removed",
                  {{"pause_file", opts_.pause_file},
                   {"running", running_},
                   {"waiting", stats_.waiting.get()}});
    } else {
        log::info("restarts resumed: the pause file is gone",
                  {{"pause_file", opts_.pause_file}, {"waiting", stats_.waiting.get()}});
        schedule_admission();
    }
}

} // namespace mayhem
