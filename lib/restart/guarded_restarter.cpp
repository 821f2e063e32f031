#include "restart/guarded_restarter.hpp"

#include "runtime/duration.hpp"
#include "runtime/log.hpp"

#include <sys/stat.h>

namespace mayhem {

// ---------------------------------------------------------------------------------------------
// host_run: the restart of one host in progress here. It lives in the frame of the task that
// runs it; a second message for the host waits on `done` and shares `result`.
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

struct guarded_restarter::host_run {
    guarded_restarter& g;
    const message& msg;
    const restart_result& result; // the running task's own result, read by coalesced messages
    rt::event done;
    bool registered = true;

    // running_for() found no restart of this host (and nothing suspended since).
    host_run(guarded_restarter& owner, const message& m, const restart_result& r)
        : g(owner), msg(m), result(r) {
        g.running_hosts_.insert(this);
    }
    host_run(const host_run&) = delete;
    host_run& operator=(const host_run&) = delete;
    // Destroyed unfinished only when every task is being destroyed (a forced release): the
    // tasks waiting on `done` are destroyed too, so they are not resumed.
    ~host_run() { unregister(); }

    void unregister() noexcept {
        if (!registered) return;
        registered = false;
        g.running_hosts_.erase(this);
    }
    // The restart ended (its result is in `result`): tell the breaker (through the slot), then
    // the coalesced messages, which resume here while `result` is alive.
    void complete(slot& admitted) {
        admitted.finish(result.status);
        unregister(); // a message arriving from now on starts its own restart (and cooldown)
        done.set();
    }
};

// ---------------------------------------------------------------------------------------------
// slot: one admitted restart. Releasing it frees the concurrency slot and, for the breaker's
// trial, reports a trial that never got a result (cancelled) as neutral.
// ---------------------------------------------------------------------------------------------

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

// One coroutine frame per message (it stays alive while the restart runs, for every message in
// flight), so it is kept small: the steps that do not suspend are plain functions below that
// write into the one result `r` (no result temporaries of their own in the frame), and the
// cooldown claim, which suspends only when a cooldown is set, has a frame of its own.
rt::task<restart_result> guarded_restarter::restart(const message& m) {
    restart_result r;
    if (refused(m, r)) co_return std::move(r);
    if (host_run* first = running_for(m.hostname)) {
        // One restart per host at a time: wait for the one running and share its result.
        co_await coalesce(m, *first, r);
        co_return std::move(r);
    }
    host_run here(*this, m, r);
    slot admitted = co_await admit_awaiter(*this);
    bool go = true;
    if (opts_.cooldown.count() > 0) go = co_await cooldown_granted(m, r);
    if (go) {
        if (opts_.dry_run)
            dry_run(m, r);
        else
            fail_if_thrown(co_await inner_.restart(m).into(r), r);
    }
    here.complete(admitted);
    co_return std::move(r);
}

// The rare path in a frame of its own, so the event's awaiter takes no room in every message's.
rt::task<void> guarded_restarter::coalesce(const message& m, host_run& first, restart_result& r) {
    co_await first.done;
    shared_result(m, first, r); // `first` is alive: set() resumes us
}

// The per-host cooldown: true when the store granted the restart; otherwise `r` says why not.
rt::task<bool> guarded_restarter::cooldown_granted(const message& m, restart_result& r) {
    auto now = std::chrono::system_clock::now();
    auto claim = co_await store_.claim_host(m, now, opts_.cooldown).settled();
    co_return cooldown_decision(m, now, claim, r);
}

bool guarded_restarter::refused(const message& m, restart_result& r) {
    auto why = refuse(m);
    if (!why) return false;
    stats_.refused.inc();
    log::warn("restart refused",
              {{"message_id", m.message_id}, {"hostname", m.hostname}, {"reason", *why}});
    r = restart_result{restart_status::refused, std::move(*why)};
    return true;
}

std::string_view guarded_restarter::host_of(const host_run& r) noexcept {
    return r.msg.hostname;
}

guarded_restarter::host_run* guarded_restarter::running_for(const std::string& hostname) {
    return running_hosts_.find(hostname);
}

void guarded_restarter::shared_result(const message& m, const host_run& first, restart_result& r) {
    r = first.result;
    stats_.coalesced.inc();
    log::debug("restart coalesced", {{"message_id", m.message_id},
                                     {"hostname", m.hostname},
                                     {"with", first.msg.message_id},
                                     {"result", to_string(r.status)}});
    if (r.status == restart_status::ok)
        r = restart_result{restart_status::coalesced,
                           "shared the restart for message " + first.msg.message_id};
}

bool guarded_restarter::cooldown_decision(const message& m,
                                          std::chrono::system_clock::time_point now,
                                          rt::result<host_claim>& claim, restart_result& r) {
    // Store trouble in claim_host is a failure like any other; the coalesced messages hear it.
    if (!claim) {
        r = restart_result{restart_status::failed, rt::describe(claim.error())};
        return false;
    }
    if (claim->granted) return true;
    stats_.cooldown_skips.inc();
    auto ago = std::chrono::duration_cast<std::chrono::milliseconds>(now - claim->last_restart);
    std::string why = "host restarted " + format_duration(ago) + " ago, within the " +
                      format_duration(opts_.cooldown) + " cooldown";
    log::info("restart skipped: cooldown",
              {{"message_id", m.message_id}, {"hostname", m.hostname}, {"reason", why}});
    r = restart_result{restart_status::skipped_cooldown, std::move(why)};
    return false;
}

void guarded_restarter::dry_run(const message& m, restart_result& r) {
    log::info("dry run: restart not carried out",
              {{"message_id", m.message_id}, {"hostname", m.hostname}});
    r = restart_result{restart_status::dry_run, "dry run"};
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
