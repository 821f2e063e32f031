#include "restart/restart_guard.hpp"

#include "runtime/duration.hpp"
#include "runtime/log.hpp"

#include <algorithm>
#include <sys/stat.h>

namespace mayhem {

// ---------------------------------------------------------------------------------------------
// pass: while it holds its host (from hold() to leave()), it is in running_hosts_ and coalesced
// messages wait on `done_`. Destroyed before leave() only when every task is being destroyed
// (a forced release): the tasks waiting on `done_` are destroyed too, so they are not resumed.
// ---------------------------------------------------------------------------------------------
restart_guard::pass::~pass() {
    if (g_) g_->release(*this);
}

// ---------------------------------------------------------------------------------------------
// admit_awaiter: waits in the FIFO until the admission pass grants the pass a slot. Destroying
// it while it waits (the task is destroyed) just leaves the queue.
// ---------------------------------------------------------------------------------------------
class restart_guard::admit_awaiter {
public:
    admit_awaiter(restart_guard& g, pass& p) : g_(g), pass_(p) {}
    admit_awaiter(const admit_awaiter&) = delete;
    admit_awaiter& operator=(const admit_awaiter&) = delete;
    ~admit_awaiter() {
        if (node_.linked()) {
            node_.unlink();
            g_.stats_.waiting.add(-1);
        }
    }

    bool await_ready() const noexcept { return pass_.admitted_; }
    void await_suspend(std::coroutine_handle<> h) {
        h_ = h;
        g_.waiters_.push_back(node_);
        g_.stats_.waiting.add(1);
        g_.schedule_admission(); // arms the breaker's wake-up if that is what holds it
    }
    void await_resume() const noexcept {}

private:
    friend class restart_guard;
    restart_guard& g_;
    pass& pass_;
    std::coroutine_handle<> h_;
    rt::owned_node<admit_awaiter> node_{this};
};

// ---------------------------------------------------------------------------------------------
// pause_probe: one uv_fs_stat of the pause file in flight. If the guard is destroyed first, the
// callback only frees the request.
// ---------------------------------------------------------------------------------------------
struct restart_guard::pause_probe {
    uv_fs_t req{};
    restart_guard* owner;
};

namespace {
// A pause file that cannot be looked at (EACCES, EIO...) counts as present: when in doubt, the
// kill switch is on.
bool pause_file_present(int stat_result) {
    return !(stat_result == UV_ENOENT || stat_result == UV_ENOTDIR);
}
} // namespace

// ---------------------------------------------------------------------------------------------
// restart_guard
// ---------------------------------------------------------------------------------------------

restart_guard::restart_guard(rt::loop& loop, guard_options opts, store& st, restarter& inner)
    : loop_(loop), opts_(std::move(opts)), store_(st), inner_(inner),
      filter_(opts_.allow_hosts, opts_.deny_hosts), breaker_(opts_.breaker),
      fleet_breaker_(opts_.breaker.failures > 0 && st.shares_breaker()),
      admission_([this] { admit_waiters(); }), breaker_wake_([this] {
          show_breaker(); // the cooldown is over: a new restart would be the trial
          schedule_admission();
      }) {
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
        set_paused(pause_file_present(rc),
                   rc == 0 ? "the pause file exists" : "the pause file cannot be looked at");
        pause_timer_ = std::make_unique<rt::periodic_timer>(loop_, opts_.pause_check,
                                                            [this] { check_pause_file(); });
    }
    // A store that keeps a fleet-wide pause is polled as often as the pause file.
    store_.watch_pause(opts_.pause_check, [this](const fleet_pause* p) { set_fleet_pause(p); });
    if (fleet_breaker_)
        store_.watch_breaker([this](const fleet_breaker& b) { set_fleet_breaker(b); });
}

restart_guard::~restart_guard() {
    if (probe_) probe_->owner = nullptr;
    store_.watch_pause(opts_.pause_check, nullptr);
    if (fleet_breaker_) store_.watch_breaker(nullptr);
}

std::chrono::milliseconds restart_guard::now() const noexcept {
    return std::chrono::milliseconds{static_cast<std::int64_t>(loop_.now())};
}

std::optional<std::string> restart_guard::refuse(const message& m) const {
    if (auto why = filter_.refuse(m.hostname())) return why;
    // A command that names the machine by {instance_name} restarts that machine, whatever the
    // hostname says: the filter checks it too, as the host name it derives.
    if (inner_.uses_instance_name()) {
        auto host = derived_host_name(m.instance_name(), opts_.host_domain);
        if (host != m.hostname())
            if (auto why = filter_.refuse(host))
                return "instance_name \"" + std::string(m.instance_name()) +
                       "\" used by the command: " + *why;
    }
    return inner_.refuse(m);
}

// ---------------------------------------------------------------------------------------------
// The steps (see the header for how a message's task strings them together)
// ---------------------------------------------------------------------------------------------

restart_guard::gate restart_guard::enter(pass& p, const message& m, restart_result& r) {
    if (refused(m, r)) return gate::done;
    // One restart per host at a time: wait for the one running and share its result.
    if (running_for(m)) return gate::wait;
    if (stopped(r)) return gate::done;
    hold(p, m, r);
    if (!admit_now(p) || opts_.cooldown.count() > 0 || fleet_slots() ||
        (p.trial_ && fleet_breaker_))
        return gate::wait;
    return go(m, r) ? gate::restart : gate::done;
}

// The rare paths, in a frame that lives only while the message waits here (or, with a cooldown
// set, while the store answers the claim), not while its restart runs.
rt::task<bool> restart_guard::wait(pass& p, const message& m, restart_result& r) {
    if (!p.g_) {
        pass* first = running_for(m); // enter() found it, and nothing ran since
        co_await first->done_;
        shared_result(m, *first, r); // `first` is alive: set() resumes us
        co_return false;
    }
    bool in = co_await admitted(p, m, r);
    if (!in) co_return false;
    if (opts_.cooldown.count() > 0) {
        auto now = std::chrono::system_clock::now();
        auto claim = co_await store_.claim_host(m, now, opts_.cooldown).settled();
        if (!cooldown_decision(m, now, claim, r)) co_return false;
    }
    // The pause began while the store answered: nothing starts once the pause is seen, so the
    // restart gives its slots back and waits for admission again (its host claim stays).
    while (paused_ && !stopping_) {
        unadmit(p);
        in = co_await admitted(p, m, r);
        if (!in) co_return false;
    }
    co_return go(m, r);
}

// Admission, then what the store shares: one of its slots, and with a fleet-wide breaker that
// is open, the fleet's one trial. A trial another worker holds (or a cooldown not over yet)
// sends the restart back to wait for admission. False when `r` holds the result.
rt::task<bool> restart_guard::admitted(pass& p, const message& m, restart_result& r) {
    for (;;) {
        co_await admit_awaiter(*this, p);
        if (stopped(r)) co_return false; // resumed by stop(), or stopped while it waited
        bool slot = co_await take_slot(p, m, r);
        if (!slot) co_return false;
        if (!p.trial_ || !fleet_breaker_) co_return true;
        auto answer = co_await store_.claim_trial(m, opts_.breaker.cooldown).settled();
        if (!answer) { // store trouble, as for the slot
            r = restart_result{restart_status::failed, rt::describe(answer.error())};
            r.not_attempted = true;
            co_return false;
        }
        if (*answer == trial_answer::trial) {
            p.fleet_trial_ = true;
            co_return true;
        }
        if (*answer == trial_answer::go) { // closed meanwhile: an ordinary restart
            p.trial_ = false;
            trial_out_ = false;
            co_return true;
        }
        // Not ours: ask again after a pause check (the trial's owner may have died).
        next_trial_ask_ = wall_ms() + opts_.pause_check.count();
        unadmit(p);
        if (stopped(r)) co_return false;
    }
}

bool restart_guard::fleet_slots() const noexcept {
    return opts_.max_concurrent > 0 && store_.shares_slots();
}

// With a store that shares its slots, the local admission is not enough: one of the store's
// --max-concurrent-restarts slots is taken too (the cap then holds for every worker of the
// store). While every slot is held elsewhere, the restart keeps its local slot and asks again.
rt::task<bool> restart_guard::take_slot(pass& p, const message& m, restart_result& r) {
    if (!fleet_slots() || p.slot_) co_return true;
    for (;;) {
        auto got = co_await store_.claim_slot(m, opts_.max_concurrent).settled();
        if (!got) { // store trouble: nothing ran (retried, no attempt used; the breaker ignores)
            r = restart_result{restart_status::failed, rt::describe(got.error())};
            r.not_attempted = true;
            co_return false;
        }
        if (*got) {
            p.slot_ = true;
            co_return true;
        }
        stats_.slots_busy.inc();
        {
            struct waiting { // also when the task is destroyed while it sleeps
                rt::gauge& g;
                explicit waiting(rt::gauge& x) : g(x) { g.add(1); }
                ~waiting() { g.add(-1); }
            } counted{stats_.slot_waiting};
            co_await rt::sleep_for(loop_, opts_.slot_retry);
        }
        if (stopped(r)) co_return false;
    }
}

void restart_guard::leave(pass& p) {
    if (!p.g_) return; // refused or coalesced: held nothing
    if (p.admitted_) {
        record(*p.result_, p);
        p.trial_ = false; // heard: release() must not report it again
        p.fleet_trial_ = false;
    }
    // A message arriving from now on starts its own restart (and cooldown); the coalesced ones
    // resume here, while the result they copy is alive.
    release(p);
    p.done_.set();
}

void restart_guard::hold(pass& p, const message& m, const restart_result& r) {
    p.g_ = this;
    p.msg_ = &m;
    p.result_ = &r;
    running_hosts_.insert(&p); // running_for() found none
}

// Fast path: nobody waits and there is room: admitted without suspending.
bool restart_guard::admit_now(pass& p) {
    if (!waiters_.empty() || !room()) return false;
    auto a = admit_breaker();
    show_breaker();
    if (a == circuit_breaker::admission::wait) return false;
    grant(p, a == circuit_breaker::admission::trial);
    return true;
}

void restart_guard::grant(pass& p, bool trial) {
    p.admitted_ = true;
    p.trial_ = trial;
    if (trial && fleet_breaker_) trial_out_ = true;
    ++running_;
    stats_.running.set(static_cast<std::int64_t>(running_));
}

// Gives back what the pass holds: its host and its slot.
void restart_guard::release(pass& p) noexcept {
    running_hosts_.erase(&p);
    p.g_ = nullptr;
    unadmit(p);
}

// Gives back the pass's slot, if it holds one. A breaker trial that never got a result (it
// never ran) is neutral: the next restart is the trial.
void restart_guard::unadmit(pass& p) noexcept {
    if (!p.admitted_) return;
    p.admitted_ = false;
    if (p.slot_) { // not awaited: a slot not given back comes free when its lease expires
        p.slot_ = false;
        store_.release_slot(*p.msg_);
    }
    if (p.trial_) record(restart_result{restart_status::dry_run}, p);
    p.trial_ = false;
    p.fleet_trial_ = false;
    --running_;
    stats_.running.set(static_cast<std::int64_t>(running_));
    schedule_admission();
}

void restart_guard::stop() {
    if (stopping_) return;
    stopping_ = true;
    if (!waiters_.empty())
        log::info("stopping: restarts waiting for admission will not start",
                  {{"waiting", stats_.waiting.get()}, {"running", running_}});
    admit_waiters(); // resumes every waiter, none admitted
}

bool restart_guard::stopped(restart_result& r) const {
    if (!stopping_) return false;
    r = restart_result{restart_status::not_started, "the worker is stopping"};
    return true;
}

// The last step before the restart itself: --dry-run stops here, and so does a stop that began
// while the cooldown claim was being answered.
bool restart_guard::go(const message& m, restart_result& r) {
    if (stopped(r)) return false;
    if (!opts_.dry_run) return true;
    log::info("dry run: restart not carried out",
              {{"message_id", m.message_id()}, {"hostname", m.hostname()}});
    r = restart_result{restart_status::dry_run, "dry run"};
    return false;
}

bool restart_guard::refused(const message& m, restart_result& r) {
    auto why = refuse(m);
    if (!why) return false;
    stats_.refused.inc();
    log::warn("restart refused",
              {{"message_id", m.message_id()}, {"hostname", m.hostname()}, {"reason", *why}});
    r = restart_result{restart_status::refused, std::move(*why)};
    return true;
}

std::string_view restart_guard::host_of(const pass& p) noexcept {
    return p.msg_->hostname();
}

std::uint64_t restart_guard::host_hash_of(const pass& p) noexcept {
    return p.msg_->host_hash();
}

restart_guard::pass* restart_guard::running_for(const message& m) {
    return running_hosts_.find(m.hostname(), m.host_hash());
}

void restart_guard::shared_result(const message& m, const pass& first, restart_result& r) {
    r = *first.result_;
    stats_.coalesced.inc();
    log::debug("restart coalesced", {{"message_id", m.message_id()},
                                     {"hostname", m.hostname()},
                                     {"with", first.msg_->message_id()},
                                     {"result", to_string(r.status)}});
    if (r.status == restart_status::ok)
        r = restart_result{restart_status::coalesced, "shared the restart for message " +
                                                          std::string(first.msg_->message_id())};
}

bool restart_guard::cooldown_decision(const message& m, std::chrono::system_clock::time_point now,
                                      rt::result<host_claim>& claim, restart_result& r) {
    // Store trouble in claim_host is store trouble, not a failed restart: nothing ran, so the
    // message is retried without using up an attempt and the breaker never hears of it (record);
    // the coalesced messages share that.
    if (!claim) {
        r = restart_result{restart_status::failed, rt::describe(claim.error())};
        r.not_attempted = true;
        return false;
    }
    // The clock is behind a restart the store holds: how long ago that was cannot be told, so
    // nothing is guessed. Refused like store trouble (retried, no attempt used) until the clock
    // has passed it; readiness and a gauge show it, and the log says so once per episode.
    bool behind = !claim->granted && claim->clock_behind;
    if (behind != (stats_.clock_behind.get() != 0)) {
        stats_.clock_behind.set(behind ? 1 : 0);
        if (behind)
            log::error("the clock is behind a restart recorded in the store: restarts of that "
                       "host are refused until it has passed it",
                       {{"message_id", m.message_id()},
                        {"hostname", m.hostname()},
                        {"ahead_by", format_duration(std::chrono::duration_cast<millis>(
                                         claim->last_restart - now))}});
        else
            log::info("the clock is no longer behind the restarts recorded in the store");
    }
    if (behind) {
        r = restart_result{restart_status::failed,
                           "the clock is behind the last restart of this host recorded in the "
                           "store: refusing to guess the cooldown"};
        r.not_attempted = true;
        return false;
    }
    if (claim->granted) return true;
    stats_.cooldown_skips.inc();
    auto ago = std::chrono::duration_cast<std::chrono::milliseconds>(now - claim->last_restart);
    std::string why = "host restarted " + format_duration(ago) + " ago, within the " +
                      format_duration(opts_.cooldown) + " cooldown";
    log::info("restart skipped: cooldown",
              {{"message_id", m.message_id()}, {"hostname", m.hostname()}, {"reason", why}});
    r = restart_result{restart_status::skipped_cooldown, std::move(why)};
    return false;
}

// ---------------------------------------------------------------------------------------------
// Admission
// ---------------------------------------------------------------------------------------------

bool restart_guard::room() const noexcept {
    return !paused_ && (opts_.max_concurrent == 0 || running_ < opts_.max_concurrent);
}

void restart_guard::schedule_admission() {
    if (!waiters_.empty() && !admission_.armed()) loop_.timers().arm(admission_, millis{0});
}

// Resumes waiters in order while there is room. Each resumed task runs until it suspends (or
// finishes), so the front is re-read every time.
void restart_guard::admit_waiters() {
    while (auto* n = waiters_.front()) {
        if (stopping_) { // resumed without a slot: wait() sees the stop
            auto* w = static_cast<rt::owned_node<admit_awaiter>*>(n)->owner;
            n->unlink();
            stats_.waiting.add(-1);
            w->h_.resume();
            continue;
        }
        if (!room()) return;
        auto a = admit_breaker();
        show_breaker();
        if (a == circuit_breaker::admission::wait) {
            arm_breaker_wake();
            return;
        }
        auto* w = static_cast<rt::owned_node<admit_awaiter>*>(n)->owner;
        n->unlink();
        stats_.waiting.add(-1);
        grant(w->pass_, a == circuit_breaker::admission::trial);
        w->h_.resume();
    }
}

// What admission meets in the breaker: this worker's own, or the fleet's as the store last read
// it. Of the fleet's, a worker asks for the trial with one restart at a time (claim_trial
// decides), and while another worker's trial runs, again after each pause check.
circuit_breaker::admission restart_guard::admit_breaker() {
    using admission = circuit_breaker::admission;
    if (!fleet_breaker_) return breaker_.admit(now());
    if (fleet_.st == fleet_breaker::state::closed) return admission::go;
    if (trial_out_ || wall_ms() < next_trial_at()) return admission::wait;
    return admission::trial;
}

// When a restart held by the breaker may ask again (the cooldown's end, the next look at a
// trial held elsewhere); a half-open breaker of this worker's, or a trial candidate of this
// worker's, schedules the next pass with its result.
void restart_guard::arm_breaker_wake() {
    if (!fleet_breaker_) {
        if (breaker_.state() == breaker_state::open)
            loop_.timers().arm(breaker_wake_, breaker_.trial_at() - now());
        return;
    }
    if (fleet_.st == fleet_breaker::state::closed || trial_out_) return;
    loop_.timers().arm(breaker_wake_,
                       millis{std::max<std::int64_t>(0, next_trial_at() - wall_ms())});
}

std::int64_t restart_guard::next_trial_at() const noexcept {
    if (fleet_.st == fleet_breaker::state::open)
        return std::max(fleet_.opened_ms + opts_.breaker.cooldown.count(), next_trial_ask_);
    return next_trial_ask_;
}

std::int64_t restart_guard::wall_ms() noexcept {
    return std::chrono::duration_cast<millis>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// The store's fleet-wide breaker changed (a poll, a note, a trial claim's answer).
void restart_guard::set_fleet_breaker(const fleet_breaker& b) {
    using st = fleet_breaker::state;
    fleet_breaker before = fleet_;
    fleet_ = b;
    show_breaker();
    if (b.st == st::open && (before.st != st::open || before.opened_ms != b.opened_ms)) {
        stats_.breaker_opened.inc();
        const auto& o = opts_.breaker;
        log::warn("circuit breaker open fleet-wide: no restart starts on any worker until the "
                  "cooldown is over",
                  {{"failures", o.failures},
                   {"window", format_duration(o.window)},
                   {"cooldown", format_duration(o.cooldown)},
                   {"opened_ms", b.opened_ms}});
    } else if (b.st == st::closed && before.st != st::closed) {
        log::info("circuit breaker closed fleet-wide: a trial restart succeeded");
    }
    schedule_admission();
}

// A restart that was never attempted (store trouble) proves nothing about the hosts: neutral.
void restart_guard::record(const restart_result& rr, pass& p) {
    using result = circuit_breaker::result;
    bool trial = p.trial_;
    result r = rr.not_attempted                  ? result::neutral
               : rr.status == restart_status::ok ? result::ok
               : rr.status == restart_status::failed || rr.status == restart_status::unverified
                   ? result::failed
                   : result::neutral;
    if (fleet_breaker_) {
        // The fleet's breaker counts failures and ends trials; successes outside a trial need
        // no telling.
        if (trial) trial_out_ = false;
        bool claimed = trial && p.fleet_trial_;
        if (claimed || r == result::failed)
            store_.note_breaker(*p.msg_,
                                r == result::ok       ? breaker_outcome::ok
                                : r == result::failed ? breaker_outcome::failed
                                                      : breaker_outcome::neutral,
                                claimed,
                                breaker_rules{opts_.breaker.failures, opts_.breaker.window,
                                              opts_.breaker.cooldown});
        schedule_admission();
        return;
    }
    breaker_state before = breaker_.state();
    auto change = breaker_.record(r, trial, now(), p.msg_->host_hash());
    show_breaker();
    // Open: the gauge turns half-open when the cooldown is over, traffic or not.
    if (breaker_.state() == breaker_state::open)
        loop_.timers().arm(breaker_wake_, std::max(millis{0}, breaker_.trial_at() - now()));
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

void restart_guard::show_breaker() {
    if (!fleet_breaker_) {
        stats_.breaker_state.set(static_cast<std::int64_t>(breaker_.state_at(now())));
        return;
    }
    // As for this worker's own: an open breaker whose cooldown is over shows as half-open.
    auto shown = fleet_.st == fleet_breaker::state::open &&
                         wall_ms() >= fleet_.opened_ms + opts_.breaker.cooldown.count()
                     ? breaker_state::half_open
                     : static_cast<breaker_state>(fleet_.st);
    stats_.breaker_state.set(static_cast<std::int64_t>(shown));
}

// ---------------------------------------------------------------------------------------------
// The kill switch: one periodic stat of --pause-file, not one per message. The stat runs on the
// thread pool (never on the loop); one that does not answer within pause_timeout (a hung NFS
// mount) means "cannot tell", which holds restarts until a look answers again.
// ---------------------------------------------------------------------------------------------

void restart_guard::check_pause_file() {
    if (probe_) { // the previous look has not answered yet
        if (!pause_unknown_ &&
            loop_.now() - probe_since_ >= static_cast<std::uint64_t>(opts_.pause_timeout.count())) {
            pause_unknown_ = true;
            log::error("the pause file cannot be looked at: its stat has not answered; restarts "
                       "are held as if it existed",
                       {{"pause_file", opts_.pause_file},
                        {"waited", format_duration(opts_.pause_timeout)}});
            set_paused(true, "the pause file cannot be looked at");
        }
        return;
    }
    auto* p = new pause_probe{};
    p->owner = this;
    p->req.data = p;
    int rc = uv_fs_stat(loop_.get(), &p->req, opts_.pause_file.c_str(), [](uv_fs_t* r) {
        auto* probe = static_cast<pause_probe*>(r->data);
        int looked = static_cast<int>(r->result);
        uv_fs_req_cleanup(r);
        if (auto* g = probe->owner) {
            g->probe_ = nullptr;
            g->pause_unknown_ = false;
            g->set_paused(pause_file_present(looked), looked == 0
                                                          ? "the pause file exists"
                                                          : "the pause file cannot be looked at");
        }
        delete probe;
    });
    if (rc < 0) {
        uv_fs_req_cleanup(&p->req);
        delete p;
        return;
    }
    probe_ = p;
    probe_since_ = loop_.now();
}

void restart_guard::set_paused(bool paused, std::string_view why) {
    if (paused == file_paused_) return;
    file_paused_ = paused;
    show_pause();
    if (paused) {
        log::warn("restarts paused: no restart starts until the pause file is gone",
                  {{"pause_file", opts_.pause_file},
                   {"why", why},
                   {"running", running_},
                   {"waiting", stats_.waiting.get()}});
    } else {
        log::info("restarts resumed: the pause file is gone",
                  {{"pause_file", opts_.pause_file}, {"waiting", stats_.waiting.get()}});
    }
}

// The store's fleet-wide pause (`mayhem pause` / `mayhem resume`), as polled by the store.
void restart_guard::set_fleet_pause(const fleet_pause* p) {
    if ((p != nullptr) == fleet_paused_) return;
    fleet_paused_ = p != nullptr;
    stats_.fleet_paused.set(fleet_paused_ ? 1 : 0);
    show_pause();
    if (p)
        log::warn("restarts paused fleet-wide: no restart starts until `mayhem resume`",
                  {{"paused_by", p->who},
                   {"reason", p->reason},
                   {"since_ms", p->since_ms},
                   {"running", running_},
                   {"waiting", stats_.waiting.get()}});
    else
        log::info("restarts resumed fleet-wide", {{"waiting", stats_.waiting.get()}});
}

void restart_guard::show_pause() {
    bool paused = file_paused_ || fleet_paused_;
    stats_.paused.set(paused ? 1 : 0);
    if (paused == paused_) return;
    paused_ = paused;
    if (!paused) schedule_admission();
}

} // namespace mayhem
