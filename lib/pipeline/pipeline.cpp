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

struct pipeline::flight {
    pipeline& p;
    delivery d;
    message msg; // decoded from d.payload
    bool decoded = false;
    bool settled = false;
    bool indexed = false; // registered in by_id_
    verdict last;         // what it settled with, for a coalesced duplicate
    rt::event done;
    rt::owned_node<flight> lease{this};
    std::uint64_t lease_due = 0;

    flight(pipeline& owner, delivery dv) : p(owner), d(std::move(dv)) {
        ++p.in_flight_;
        p.stats_.in_flight.set(static_cast<std::int64_t>(p.in_flight_));
    }
    flight(const flight&) = delete;
    flight& operator=(const flight&) = delete;
    ~flight() {
        if (!settled) p.settle(*this, verdict{outcome::released, "stopped before it finished", {}});
        --p.in_flight_;
        p.stats_.in_flight.set(static_cast<std::int64_t>(p.in_flight_));
        p.pump();
    }
};

// ---------------------------------------------------------------------------------------------
// pipeline
// ---------------------------------------------------------------------------------------------

pipeline::pipeline(rt::loop& loop, pipeline_options opts, source& src, store& st, restarter& rs)
    : loop_(loop), opts_(std::move(opts)), source_(src), store_(st), restarter_(rs),
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
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
}

void pipeline::start() {
    source_.start(*this);
    source_.request(opts_.queue_capacity);
}

void pipeline::stop_intake() {
    if (intake_stopped_) return;
    intake_stopped_ = true;
    source_.stop();
    notify();
}

void pipeline::release_all() {
    stop_intake();
    releasing_ = true;
    while (!queue_.empty()) {
        delivery d = std::move(queue_.front());
        queue_.pop_front();
        stats_.queue_depth.set(static_cast<std::int64_t>(queue_.size()));
        ++unconfirmed_;
        source_.settle(std::move(d), verdict{outcome::released, "stopped before it started", {}});
    }
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

// ---------------------------------------------------------------------------------------------
// source_sink: deliveries in, confirmations back
// ---------------------------------------------------------------------------------------------

void pipeline::deliver(delivery d) {
    stats_.received.inc();
    d.received_ns = now_ns();
    queue_.push_back(std::move(d));
    stats_.queue_depth.set(static_cast<std::int64_t>(queue_.size()));
    pump();
}

void pipeline::settled(outcome o) {
    assert(unconfirmed_ > 0);
    --unconfirmed_;
    stats_.completed[static_cast<std::size_t>(o)].inc();
    notify();
}

void pipeline::source_changed() {
    notify();
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

rt::task<void> pipeline::process(delivery d) {
    flight f(*this, std::move(d));
    if (auto bad = decode_into(f.msg, f.d.payload, opts_.decode)) {
        stats_.decode_errors[static_cast<std::size_t>(bad->kind)].inc();
        log::warn("undecodable message dead-lettered",
                  {{"reason", bad->reason}, {"kind", to_string(bad->kind)}, {"ref", f.d.ref}});
        co_return settle(f, verdict{outcome::dead_lettered, std::move(bad->reason), {}});
    }
    f.decoded = true;
    const message& msg = f.msg;

    if (auto it = by_id_.find(msg.message_id); it != by_id_.end()) {
        // A second delivery of an id still in flight: wait for the first and share its outcome,
        // so one id never gets two restarts, whatever the timing.
        flight& first = *it->second;
        co_await first.done;
        verdict v = first.last;
        if (v.what == outcome::acked)
            v = verdict{outcome::skipped, "duplicate of a message in flight", {}};
        co_return settle(f, std::move(v));
    }
    by_id_.emplace(msg.message_id, &f);
    f.indexed = true;
    f.lease_due = loop_.now() + static_cast<std::uint64_t>(opts_.lease_extend_interval.count());
    leases_.push_back(f.lease);

    auto [saved, restarted] = co_await rt::gather(save(msg, f.d), restart(msg));

    decide_inputs in;
    in.attempt = f.d.attempt;
    in.max_attempts = opts_.max_attempts;
    if (saved)
        in.saved = std::move(*saved);
    else
        in.save_exception = rt::describe(saved.error());
    if (restarted)
        in.restarted = std::move(*restarted);
    else
        in.restart_exception = rt::describe(restarted.error());
    co_return settle(f, decide(in, opts_.backoff, rng_()));
}

rt::task<save_result> pipeline::save(const message& m, const delivery& d) {
    auto start = now_ns();
    save_result r = co_await store_.save(m, d);
    stats_.save_seconds.observe(static_cast<double>(now_ns() - start) / 1e9);
    co_return r;
}

// "Block when needed": the restart is a serial chain (claim, restart, record) that still never
// blocks the loop.
rt::task<restart_result> pipeline::restart(const message& m) {
    auto start = now_ns();
    restart_result r;
    switch (co_await store_.claim_restart(m)) {
    case restart_claim::done:
        r = restart_result{restart_status::skipped_duplicate, "already restarted for this message"};
        break;
    case restart_claim::unfinished:
        stats_.unfinished_restarts.inc();
        [[fallthrough]];
    case restart_claim::proceed:
        try {
            r = co_await restarter_.restart(m);
        } catch (const std::exception& e) {
            r = restart_result{restart_status::failed, e.what()};
        }
        co_await store_.finish_restart(m, r);
        break;
    }
    stats_.restarts[static_cast<std::size_t>(r.status)].inc();
    stats_.restart_seconds.observe(static_cast<double>(now_ns() - start) / 1e9);
    co_return r;
}

void pipeline::settle(flight& f, verdict v) {
    assert(!f.settled);
    f.settled = true;
    f.lease.unlink();
    if (f.indexed) {
        by_id_.erase(f.msg.message_id);
        f.indexed = false;
    }
    if (v.what == outcome::retried) stats_.retries.inc();
    if (f.decoded && v.what != outcome::released) store_.complete(f.msg, v);
    stats_.total_seconds.observe(static_cast<double>(now_ns() - f.d.received_ns) / 1e9);
    if (log::enabled(spdlog::level::debug)) {
        log::debug("message settled", {{"message_id", f.msg.message_id},
                                       {"outcome", to_string(v.what)},
                                       {"reason", v.reason},
                                       {"attempt", f.d.attempt}});
    }
    f.last = v;
    ++unconfirmed_;
    source_.settle(std::move(f.d), v);
    f.done.set(); // duplicates waiting on this one settle now
}

// One timer renews every lease that is due, in one call to the source. Leases are kept in the
// order they fall due (all share one interval), so a tick touches only what it renews.
void pipeline::renew_leases() {
    auto now = loop_.now();
    auto interval = static_cast<std::uint64_t>(opts_.lease_extend_interval.count());
    lease_batch_.clear();
    rt::intrusive_list renewed;
    while (auto* n = leases_.front()) {
        flight* f = static_cast<rt::owned_node<flight>*>(n)->owner;
        if (f->lease_due > now) break;
        lease_batch_.push_back(&f->d);
        f->lease_due = now + interval;
        renewed.push_back(*n);
    }
    renewed.splice_into(leases_);
    if (lease_batch_.empty()) return;
    stats_.lease_extensions.inc(lease_batch_.size());
    source_.extend(lease_batch_);
}

} // namespace mayhem
