#include "pipeline/pipeline.hpp"

#include "runtime/log.hpp"

#include <algorithm>
#include <cassert>

namespace mayhem {

// ---------------------------------------------------------------------------------------------
// latency_histogram
// ---------------------------------------------------------------------------------------------

void latency_histogram::observe(double seconds) noexcept {
    std::size_t i = 0;
    while (i < bounds.size() && seconds > bounds[i])
        ++i;
    counts_[i].inc();
    count_.inc();
    sum_ns_.inc(static_cast<std::uint64_t>(std::max(0.0, seconds) * 1e9));
}

// ---------------------------------------------------------------------------------------------
// flight: one delivery in flight. It lives in the task's frame, so it dies with the task: if
// the task is destroyed before it settled (a forced stop), the destructor releases it.
// ---------------------------------------------------------------------------------------------

// Its list node (a base) links it into the lease renewal order.
struct pipeline::flight : rt::list_node {
    pipeline& p;
    delivery& d; // the task's own parameter, in the same frame
    message msg; // decoded from d.payload
    bool decoded = false;
    bool settled = false;
    bool indexed = false;             // registered in by_id_
    bool ran = false;                 // its restart started and its end is not recorded yet
    bool lost = false;                // its claim was taken over by a peer: not acked here
    std::uint32_t attempt = 0;        // the store's count of this id's restart starts (0: none)
    bool lease_lost = false;          // the source gave it to a peer: start no restart for it
    outcome last = outcome::released; // what it settled with, for a coalesced duplicate
    flight_stage stage = flight_stage::claiming; // for /debug/inflight
    std::uint64_t started_ns = 0;                // when save and restart were started
    std::uint64_t restarted_ns = 0;              // when the restart's steps ended
    rt::event done;
    std::uint64_t lease_due = 0;
    rt::branch<save_result> save;
    restart_result restarted;
    restart_guard::pass pass; // the restart's way through the guard

    flight(pipeline& owner, delivery& dv) : p(owner), d(dv) {
        auto n = static_cast<std::int64_t>(++p.in_flight_);
        p.stats_.in_flight.set(n);
        if (n > p.stats_.peak_in_flight.get()) p.stats_.peak_in_flight.set(n);
    }
    flight(const flight&) = delete;
    flight& operator=(const flight&) = delete;
    ~flight() {
        if (ran)
            log::error("a restart started and its end was never recorded; its redelivery finds "
                       "it unfinished (--on-unfinished-restart decides)",
                       {{"message_id", msg.message_id()}, {"hostname", msg.hostname()}});
        if (!settled) p.settle(*this, verdict{outcome::released, "stopped before it finished", {}});
        --p.in_flight_;
        p.stats_.in_flight.set(static_cast<std::int64_t>(p.in_flight_));
        p.pump();
    }
};

// ---------------------------------------------------------------------------------------------
// pipeline
// ---------------------------------------------------------------------------------------------

pipeline::pipeline(rt::loop& loop, pipeline_options opts, source& src, store& st,
                   restart_guard& guard)
    : loop_(loop), opts_(std::move(opts)), source_(src), store_(st), guard_(guard),
      lease_timer_(loop, std::max(std::chrono::milliseconds{1}, opts_.lease_extend_interval / 4),
                   [this] { renew_leases(); }),
      rng_(opts_.seed ? opts_.seed : std::random_device{}()), tasks_([](std::exception_ptr e) {
          // Only a bug gets here: process() turns every failure into a verdict.
          log::error("message task failed", {{"error", rt::describe(e)}});
      }) {
    if (opts_.max_in_flight == 0) opts_.max_in_flight = 1;
    if (opts_.queue_capacity == 0) opts_.queue_capacity = 1;
}

pipeline::~pipeline() {
    releasing_ = true;
    tasks_.cancel_all();
}

std::uint64_t pipeline::now_ns() noexcept {
    return rt::details::steady_ns();
}

void pipeline::start() {
    source_.start(*this);
    source_.request(opts_.queue_capacity);
}

// A drain starts no new restart: what is queued is released at once, the guard lets no waiting
// restart start, and what the source still delivers is released as it arrives (deliver()).
void pipeline::stop_intake() {
    if (intake_stopped_) return;
    intake_stopped_ = true;
    source_.stop();
    guard_.stop();
    release_queued("stopped before it started");
    notify();
}

// A delivery that never became a flight goes back to the source unstarted; the source reports
// when it has carried that out (settled()).
void pipeline::release_unstarted(delivery d, const char* why) {
    ++unconfirmed_;
    source_.settle(std::move(d), verdict{outcome::released, why, {}});
}

void pipeline::release_queued(const char* why) {
    while (!queue_.empty()) {
        delivery d = std::move(queue_.front());
        queue_.pop_front();
        release_unstarted(std::move(d), why);
    }
    stats_.queue_depth.set(0);
}

void pipeline::release_all() {
    stop_intake();
    releasing_ = true;
    tasks_.cancel_all();  // each flight's destructor releases its delivery
    source_.force_stop(); // verdicts the transport cannot confirm now are released too
    notify();
}

bool pipeline::idle() const noexcept {
    return queue_.empty() && in_flight_ == 0 && unconfirmed_ == 0;
}

void pipeline::set_max_in_flight(std::size_t n) {
    opts_.max_in_flight = std::max<std::size_t>(1, n);
    pump();
}

void pipeline::set_auth_keys(std::shared_ptr<auth::key_ring> keys) {
    opts_.decode.auth_keys = std::move(keys);
}

// ---------------------------------------------------------------------------------------------
// source_sink: deliveries in, confirmations back
// ---------------------------------------------------------------------------------------------

void pipeline::deliver(delivery d) {
    stats_.received.inc();
    d.received_ns = now_ns();
    if (first_received_ns_ == 0) first_received_ns_ = d.received_ns;
    if (intake_stopped_) { // a read sent before the stop: nothing new starts now
        release_unstarted(std::move(d), "arrived while stopping");
        notify();
        return;
    }
    queue_.push_back(std::move(d));
    stats_.queue_depth.set(static_cast<std::int64_t>(queue_.size()));
    pump();
}

void pipeline::settled(outcome o) {
    assert(unconfirmed_ > 0);
    --unconfirmed_;
    stats_.completed[static_cast<std::size_t>(o)].inc();
    last_settled_ns_ = now_ns();
    notify();
}

double pipeline::active_seconds() const noexcept {
    if (first_received_ns_ == 0 || last_settled_ns_ < first_received_ns_) return 0;
    return static_cast<double>(last_settled_ns_ - first_received_ns_) / 1e9;
}

void pipeline::source_changed() {
    notify();
}

// The source gave delivery `ref` to a peer. Queued, it is released at once; in flight, its
// restart is not started (released, its claim given back) unless it already has: then the
// store's claim, renewed while the restart runs, keeps the peer from restarting the host too,
// and the source does not ack it here.
void pipeline::lease_lost(std::string_view ref) {
    if (ref.empty()) return;
    auto queued =
        std::find_if(queue_.begin(), queue_.end(), [&](const delivery& d) { return d.ref == ref; });
    if (queued != queue_.end()) {
        delivery d = std::move(*queued);
        queue_.erase(queued);
        stats_.queue_depth.set(static_cast<std::int64_t>(queue_.size()));
        stats_.lost_unstarted.inc();
        release_unstarted(std::move(d), "lease lost to a peer");
        notify();
        return;
    }
    for (auto* n = leases_.front(); n && n != leases_.end(); n = n->next) {
        auto* f = static_cast<flight*>(n);
        if (f->d.ref == ref) {
            f->lease_lost = true;
            return;
        }
    }
}

void pipeline::notify() {
    if (on_change_) on_change_();
}

// The consumer: start one task per queued delivery while there is room in flight, then give
// the source back as much demand as was taken off the queue. Re-entrant calls (a task that
// completes synchronously) return at once; the outer loop picks up where they left off.
void pipeline::pump() {
    if (pumping_ || releasing_) return;
    pumping_ = true;
    std::size_t taken = 0;
    while (!queue_.empty() && in_flight_ < opts_.max_in_flight) {
        delivery d = std::move(queue_.front());
        queue_.pop_front();
        ++taken;
        tasks_.spawn(process(std::move(d)));
    }
    stats_.queue_depth.set(static_cast<std::int64_t>(queue_.size()));
    pumping_ = false;
    if (taken > 0 && !intake_stopped_) source_.request(taken);
    if (taken > 0 || in_flight_ == 0) notify();
}

// ---------------------------------------------------------------------------------------------
// One message, as in the talk: fan out save and restart, gather both, decide, settle.
// ---------------------------------------------------------------------------------------------

// Every co_await here takes a slot of its own in this frame, which lives as long as the message
// is in flight (GCC 12 overlaps no two awaits' slots, nor the temporaries kept across them).
// So this frame awaits only the restart itself, the save, and one call per phase; the phases'
// own waits, the rare ones above all (a duplicate, a verify, a slot, a retried record), live in
// short-lived frames of their own, allocated only while that phase runs.
rt::task<void> pipeline::process(delivery d) {
    flight f(*this, d);
    if (!admit(f)) co_return; // undecodable: dead-lettered
    warm(f, false);
    if (in_flight_with_id(f.msg)) {
        // A second delivery of an id still in flight waits for the first and shares its outcome,
        // so one id never gets two restarts, whatever the timing.
        co_return co_await follow(f);
    }
    hold(f);
    // Fan out: the save runs as a branch while this frame carries out the restart, a serial
    // chain that never blocks the loop ("block when needed"): claim, the guard's steps, the
    // restart, its record. Every step writes the one result `f.restarted`.
    f.save.start(store_.save(f.msg, f.d));
    claim_step step = co_await claim(f);
    if (step == claim_step::restart) {
        auto gate = guard_.enter(f.pass, f.msg, f.restarted);
        bool go = gate == restart_guard::gate::restart;
        if (gate == restart_guard::gate::wait) go = co_await wait_for_slot(f);
        if (go && f.lease_lost) {
            go = false;
            stats_.lost_unstarted.inc();
            f.restarted = restart_result{restart_status::not_started, "lease lost to a peer"};
        }
        if (go) {
            f.stage = flight_stage::restarting;
            f.ran = true;
            try {
                auto ran_from = now_ns();
                f.restarted = co_await guard_.inner().restart(f.msg);
                stats_.command_seconds.observe(static_cast<double>(now_ns() - ran_from) / 1e9);
            } catch (...) {
                // A restarter that threw: a failed restart like any other.
                restart_failed(f.restarted);
            }
        }
        warm(f, true);
        guard_.leave(f.pass);
    }
    if (step == claim_step::restart || step == claim_step::record ||
        step == claim_step::record_counted) {
        co_await close_claim(f);
        if (f.restarted.not_attempted)
            step = claim_step::uncounted; // store trouble: no restart to count
        else if (step != claim_step::record)
            step = claim_step::counted;
    }
    if (step == claim_step::counted)
        stats_.restarts[static_cast<std::size_t>(f.restarted.status)].inc();
    f.restarted_ns = now_ns();
    f.stage = flight_stage::saving;
    co_await f.save; // gather
    co_return conclude(f);
}

// The claim of the restart, and what it calls for next: store trouble is no restart (counted as
// none, retried without using up an attempt); an unfinished restart may be verified first.
rt::task<pipeline::claim_step> pipeline::claim(flight& f) {
    claim_step step;
    try {
        step = after_claim(f, co_await store_.claim_restart(f.msg));
    } catch (...) {
        co_return store_failed(f.restarted);
    }
    if (step == claim_step::verify) step = co_await verify_unfinished(f);
    co_return step;
}

// The rare path in a frame of its own: the guard holds the restart (the cap, the pause file, the
// breaker, a coalesced restart of the host, the cooldown claim). True when it may run now;
// otherwise `f.restarted` holds the result.
rt::task<bool> pipeline::wait_for_slot(flight& f) {
    f.stage = flight_stage::waiting_for_slot;
    auto waited_from = now_ns();
    try {
        bool go = co_await guard_.wait(f.pass, f.msg, f.restarted);
        stats_.slot_wait_seconds.observe(static_cast<double>(now_ns() - waited_from) / 1e9);
        co_return go;
    } catch (...) {
        restart_failed(f.restarted); // a guard step that threw: a failed restart like any other
        co_return false;
    }
}

// The claim's end. A restart the stop kept from starting, or that store trouble kept from being
// attempted, gives its claim back, so its redelivery is not taken for a restart that died
// half-way; any other result is recorded, however long that takes: a restart that ran is never
// run again because its record failed. A failed write is logged (at a bounded rate) and tried
// again with backoff; the message stays in flight meanwhile (its lease is renewed), and a forced
// stop destroys this frame and ~flight reports the restart that ran unrecorded. A claim that a
// peer took over meanwhile (this worker stalled past its lease) is not written: the restart may
// have run twice, which is reported, and the message is not acked here.
rt::task<void> pipeline::close_claim(flight& f) {
    f.stage = flight_stage::recording;
    if (f.restarted.status == restart_status::not_started || f.restarted.not_attempted) {
        co_await unclaim(f);
        co_return;
    }
    for (std::uint32_t attempt = 0;; ++attempt) {
        if (attempt > 0) {
            stats_.record_retries.inc();
            co_await rt::sleep_for(loop_, opts_.record_retry.delay(attempt, rng_()));
        }
        try {
            bool mine = co_await store_.finish_restart(f.msg, f.restarted);
            f.ran = false; // recorded, or the peer's to record: nothing left for ~flight to report
            if (!mine) claim_lost(f);
            co_return;
        } catch (...) {
            if (store_log_.allow(loop_.now()))
                log::error(
                    "cannot record how a restart ended; writing it again, the message is held",
                    {{"message_id", f.msg.message_id()},
                     {"result", to_string(f.restarted.status)},
                     {"error", rt::describe(std::current_exception())}});
        }
    }
}

// The rare path in a frame of its own: before running again a restart a dead worker left
// unfinished, ask the verify command whether the host came back since; if it did, that restart
// is recorded as ok and not run a second time.
rt::task<pipeline::claim_step> pipeline::verify_unfinished(flight& f) {
    f.stage = flight_stage::verifying;
    restart_result v;
    try {
        v = co_await guard_.inner().verify(f.msg);
    } catch (...) {
        v = restart_result{restart_status::failed, rt::describe(std::current_exception())};
    }
    if (v.status != restart_status::ok) co_return claim_step::restart;
    stats_.unfinished_verified.inc();
    log::info("unfinished restart verified: the host came back, not restarted again",
              {{"message_id", f.msg.message_id()}, {"hostname", f.msg.hostname()}});
    f.restarted = restart_result{restart_status::ok, "verified after an unfinished restart"};
    co_return claim_step::record_counted;
}

void pipeline::claim_lost(flight& f) {
    f.lost = true;
    stats_.claims_lost.inc();
    log::error("restart claim lost: a peer took it over after this worker's lease expired; the "
               "host may have been restarted twice",
               {{"message_id", f.msg.message_id()},
                {"hostname", f.msg.hostname()},
                {"result", to_string(f.restarted.status)}});
}

// Best effort: a claim left behind is met by --on-unfinished-restart on redelivery.
rt::task<void> pipeline::unclaim(flight& f) {
    try {
        co_await store_.release_claim(f.msg);
    } catch (...) {
        if (store_log_.allow(loop_.now()))
            log::warn("cannot give back the claim of a restart that never started",
                      {{"message_id", f.msg.message_id()},
                       {"error", rt::describe(std::current_exception())}});
    }
}

// The steps of process() that need no suspension live in plain functions, so their temporaries
// (log fields, decide inputs) take no room in the coroutine frame of every message in flight.

bool pipeline::admit(flight& f) {
    auto bad = decode_into(f.msg, f.d.payload, opts_.decode);
    if (!bad) {
        f.decoded = true;
        return true;
    }
    stats_.decode_errors[static_cast<std::size_t>(bad->kind)].inc();
    // Requests refused as unsigned or forged have a budget of their own: a flood of bad JSON
    // must not hide them from the log, nor they it.
    bool unsigned_or_forged = is_auth_rejection(bad->kind);
    if ((unsigned_or_forged ? auth_log_ : bad_log_).allow(loop_.now()))
        log::warn(unsigned_or_forged ? "request not signed by a trusted key: dead-lettered"
                                     : "undecodable message dead-lettered",
                  {{"reason", bad->reason}, {"kind", to_string(bad->kind)}, {"ref", f.d.ref}});
    settle(f, verdict{outcome::dead_lettered, std::move(bad->reason), {}});
    return false;
}

std::string_view pipeline::id_of(const flight& f) noexcept {
    return f.msg.message_id();
}

std::uint64_t pipeline::id_hash_of(const flight& f) noexcept {
    return f.msg.id_hash();
}

// The rare path in a frame of its own, so the event's awaiter takes no room in every message's.
// The duplicate's own lease is renewed while it waits: lapsed, a peer would reclaim the entry,
// find the claim unfinished and restart the host while the first restart still runs.
rt::task<void> pipeline::follow(flight& f) {
    f.stage = flight_stage::duplicate;
    lease(f);
    flight& first = *in_flight_with_id(f.msg);
    co_await first.done;
    settle_duplicate(f, first); // `first` is alive: set() resumes us
}

pipeline::flight* pipeline::in_flight_with_id(const message& m) {
    return by_id_.find(m.message_id(), m.id_hash());
}

void pipeline::settle_duplicate(flight& f, const flight& first) {
    switch (first.last) {
    case outcome::acked:
    case outcome::skipped:
        settle(f, verdict{outcome::skipped, "duplicate of a message in flight", {}});
        break;
    case outcome::retried:
        settle(f, verdict{outcome::retried, "duplicate of a message that was retried",
                          opts_.backoff.delay(f.d.attempt, rng_())});
        break;
    case outcome::dead_lettered:
        settle(f, verdict{outcome::dead_lettered, "duplicate of a dead-lettered message", {}});
        break;
    case outcome::released:
        settle(f, verdict{outcome::released, "duplicate of a released message", {}});
        break;
    }
}

void pipeline::hold(flight& f) {
    by_id_.insert(&f); // in_flight_with_id() found none
    f.indexed = true;
    lease(f);
    f.started_ns = now_ns();
}

// From now until it settles, the flight's lease is renewed with every other one that is due.
void pipeline::lease(flight& f) {
    f.lease_due = loop_.now() + static_cast<std::uint64_t>(opts_.lease_extend_interval.count());
    leases_.push_back(f);
}

void pipeline::conclude(flight& f) {
    auto saved_ns = f.save.finished_ns();
    stats_.save_seconds.observe(static_cast<double>(saved_ns - f.started_ns) / 1e9);
    stats_.restart_seconds.observe(static_cast<double>(f.restarted_ns - f.started_ns) / 1e9);
    auto saved = f.save.take();
    if (f.lost) // the peer that took the claim over settles the message
        return settle(f, verdict{outcome::released, "restart claim lost to another worker", {}},
                      std::max(saved_ns, f.restarted_ns));
    decide_inputs in;
    in.attempt = f.attempt ? f.attempt : f.d.attempt;
    in.max_attempts = opts_.max_attempts;
    if (saved)
        in.saved = std::move(*saved);
    else
        in.save_exception = rt::describe(saved.error());
    in.restarted = std::move(f.restarted);
    settle(f, decide(in, opts_.backoff, rng_()), std::max(saved_ns, f.restarted_ns));
}

pipeline::claim_step pipeline::after_claim(flight& f, claim_answer claim) {
    restart_result& r = f.restarted;
    f.attempt = claim.attempt;
    switch (claim.kind) {
    case restart_claim::done:
        r = restart_result{restart_status::skipped_duplicate, "already restarted for this message"};
        return claim_step::counted;
    case restart_claim::unfinished:
        // The store has recorded this claim as the next start of the id: its record.
        stats_.unfinished_restarts.inc();
        if (claim.attempt > opts_.max_attempts) {
            // Every start so far died with its worker (or lost its lease): a request that kills
            // the worker running it would otherwise take down every worker in turn, forever.
            r = restart_result{restart_status::failed,
                               "restart started " + std::to_string(claim.attempt - 1) +
                                   " times and never finished (--max-attempts " +
                                   std::to_string(opts_.max_attempts) + ")",
                               true};
            return claim_step::record;
        }
        if (opts_.on_unfinished == unfinished_policy::retry && guard_.inner().can_verify())
            return claim_step::verify;
        if (opts_.on_unfinished == unfinished_policy::dead_letter) {
            // Dead-lettered at once by decide(); nothing runs, so nothing is counted, and the
            // row is closed with this result: no id stays in progress.
            r = restart_result{restart_status::failed,
                               "a restart for this message was started but never finished "
                               "(--on-unfinished-restart dead-letter)",
                               true};
            return claim_step::record;
        }
        return claim_step::restart;
    case restart_claim::held:
        // Running on a live peer (its lease in the store is current): not here, not now.
        stats_.claims_held.inc();
        r = restart_result{restart_status::failed,
                           "a restart for this message is running on another worker"};
        r.not_attempted = true;
        return claim_step::uncounted;
    case restart_claim::proceed:
        break;
    }
    return claim_step::restart;
}

// From a catch block: the exception in flight is the restart's failure, its text the detail.
void pipeline::restart_failed(restart_result& r) {
    r = restart_result{restart_status::failed, rt::describe(std::current_exception())};
}

// Store trouble in the restart's claim: no restart ran, so none is counted, and the message is
// retried without using up an attempt (decide()).
pipeline::claim_step pipeline::store_failed(restart_result& r) {
    restart_failed(r);
    r.not_attempted = true;
    return claim_step::uncounted;
}

void pipeline::settle(flight& f, verdict v, std::uint64_t now) {
    assert(!f.settled);
    f.settled = true;
    f.unlink();
    if (f.indexed) {
        by_id_.erase(&f);
        f.indexed = false;
    }
    if (v.what == outcome::retried) stats_.retries.inc();
    if (f.decoded && v.what != outcome::released) store_.complete(f.msg, v);
    // After the gather, the later of the two stamps is now (one clock read less per message).
    if (now == 0) now = now_ns();
    stats_.total_seconds.observe(static_cast<double>(now - f.d.received_ns) / 1e9);
    if (log::enabled(spdlog::level::debug)) {
        log::debug("message settled", {{"message_id", f.msg.message_id()},
                                       {"outcome", to_string(v.what)},
                                       {"reason", v.reason},
                                       {"attempt", f.d.attempt}});
    }
    f.last = v.what;
    ++unconfirmed_;
    if (f.decoded) v.message_id = f.msg.message_id();
    source_.settle(std::move(f.d), v);
    f.done.set(); // duplicates waiting on this one settle now
}

// With thousands of messages in flight, the records a message's steps look up (its id's and its
// host's index slots, the store's record) are cache misses, and so, when it ends, are the slots
// it erases, the lease list neighbour it unlinks from and its payload's heap block, all last
// touched one latency ago. Started together, the loads overlap instead of following each other.
void pipeline::warm(const flight& f, bool ending) const noexcept {
    if (in_flight_ < 4096) return; // below this they are still cached
    by_id_.prefetch_hash(f.msg.id_hash());
    guard_.prefetch(f.msg);
    store_.prefetch(f.msg);
    if (!ending) return;
    if (f.linked()) __builtin_prefetch(f.next);
    __builtin_prefetch(f.d.payload.data());
}

std::string_view to_string(flight_stage s) noexcept {
    switch (s) {
    case flight_stage::claiming:
        return "claiming";
    case flight_stage::verifying:
        return "verifying";
    case flight_stage::waiting_for_slot:
        return "waiting_for_slot";
    case flight_stage::restarting:
        return "restarting";
    case flight_stage::recording:
        return "recording";
    case flight_stage::saving:
        return "saving";
    case flight_stage::duplicate:
        return "duplicate";
    }
    return "unknown";
}

// Every message in flight is on the lease list from its first suspension until it settles
// (hold() or follow()). The list is in renewal order, not age order: the oldest are picked out.
inflight_snapshot pipeline::inflight(std::size_t limit) const {
    inflight_snapshot s;
    s.in_flight = in_flight_;
    s.queued = queue_.size();
    std::vector<const flight*> all;
    for (auto* n = leases_.front(); n && n != leases_.end(); n = n->next)
        all.push_back(static_cast<const flight*>(n));
    auto by_age = [](const flight* a, const flight* b) {
        return a->d.received_ns < b->d.received_ns;
    };
    auto shown = all.begin() + static_cast<std::ptrdiff_t>(std::min(limit, all.size()));
    std::partial_sort(all.begin(), shown, all.end(), by_age);
    auto now = now_ns();
    for (auto it = all.begin(); it != shown; ++it) {
        const flight& f = **it;
        inflight_entry e;
        e.message_id = f.msg.message_id();
        e.hostname = f.msg.hostname();
        e.stage = f.stage;
        e.saved = f.save.finished_ns() != 0;
        e.age_seconds = static_cast<double>(now - f.d.received_ns) / 1e9;
        e.attempt = f.attempt ? f.attempt : f.d.attempt;
        s.oldest.push_back(std::move(e));
    }
    return s;
}

// One timer renews every lease that is due, in one call to the source. Leases are kept in the
// order they fall due (all share one interval), so a tick touches only what it renews.
void pipeline::renew_leases() {
    auto now = loop_.now();
    auto interval = static_cast<std::uint64_t>(opts_.lease_extend_interval.count());
    lease_batch_.clear();
    claim_batch_.clear();
    rt::intrusive_list renewed;
    while (auto* n = leases_.front()) {
        flight* f = static_cast<flight*>(n);
        if (f->lease_due > now) break;
        lease_batch_.push_back(&f->d);
        if (f->indexed) claim_batch_.push_back(&f->msg);
        f->lease_due = now + interval;
        renewed.push_back(*n);
    }
    renewed.splice_into(leases_);
    if (lease_batch_.empty()) return;
    stats_.lease_extensions.inc(lease_batch_.size());
    source_.extend(lease_batch_);
    store_.renew_claims(claim_batch_); // the claims live as long as the leases
}

} // namespace mayhem
