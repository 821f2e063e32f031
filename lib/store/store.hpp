// The seam for `save`: a durable record of each request, keyed by message id, and the
// idempotency record of restarts (so a redelivered message is not restarted twice).
//
// Threading: called on the loop thread; an implementation may do its blocking work on the
// libuv thread pool but completes its tasks on the loop.
#pragma once

#include "message/delivery.hpp"
#include "message/message.hpp"
#include "pipeline/outcome.hpp"
#include "runtime/task.hpp"

#include <chrono>
#include <functional>
#include <span>
#include <string>
#include <string_view>

namespace mayhem {

// What the store knows about a restart for a message id before it runs.
//
// A claim has an owner (the worker process that made it) and a lease: until `lease_until` the
// restart is taken to be running on its owner, and the owner renews the lease while the message
// is in flight (renew_claims). Only a claim whose lease has expired counts as unfinished.
enum class restart_claim : std::uint8_t {
    proceed,    // no restart recorded: recorded as started now, by this worker, go ahead
    done,       // already restarted (or completed): do not restart again
    unfinished, // started but never finished, and its owner's lease expired (a crash in the
                // window); the claim is now this worker's, to finish or to run again
    held,       // started and still leased by another live worker: do not restart now
};

// The answer to claim_restart.
struct claim_answer {
    restart_claim kind = restart_claim::proceed;
    // With proceed or unfinished: which restart start of the message id this claim recorded,
    // from 1. Every start counts: restarts that failed, and starts a worker left unfinished
    // (killed, or a request that kills its worker). 0: the store does not count them (memory):
    // the delivery's attempt stands in.
    std::uint32_t attempt = 0;

    friend bool operator==(const claim_answer& a, restart_claim k) noexcept { return a.kind == k; }
};

// The answer to claim_host: the per-host cooldown ("restart only if the host's last restart is
// older than N"), checked and recorded in one step.
struct host_claim {
    bool granted = true;
    // When not granted: when the restart that blocks this one started (for the log).
    std::chrono::system_clock::time_point last_restart{};
    // Not granted because that restart started after `now`: the wall clock is behind the store's
    // records (stepped back), so the cooldown cannot be computed; nothing was recorded.
    bool clock_behind = false;
};

// The fleet-wide pause (`mayhem pause`): who set it, when (ms since the epoch), and why.
struct fleet_pause {
    std::string who, reason;
    std::int64_t since_ms = 0;
    friend bool operator==(const fleet_pause&, const fleet_pause&) = default;
};

// The fleet-wide circuit breaker (restart/policy.hpp has the rules of one breaker) as a store
// that keeps one last read it: closed, open since `opened_ms` (a trial may start once its
// cooldown is over), or half-open (a trial restart runs somewhere in the fleet).
struct fleet_breaker {
    enum class state : std::uint8_t { closed = 0, open = 1, half_open = 2 };
    state st = state::closed;
    std::int64_t opened_ms = 0; // wall clock, ms since the epoch
    friend bool operator==(const fleet_breaker&, const fleet_breaker&) = default;
};

// The breaker's rules as every worker of the fleet applies them (--breaker-*).
struct breaker_rules {
    std::uint32_t failures = 0;
    std::chrono::milliseconds window{0}, cooldown{0};
};

// How a restart ended, for the breaker: failed (counts), ok (closes a half-open breaker after
// its trial), or neither (proves nothing).
enum class breaker_outcome : std::uint8_t { ok = 0, failed = 1, neutral = 2 };

// The answer to claim_trial.
enum class trial_answer : std::uint8_t {
    go,    // the breaker is closed: restart, not as a trial
    trial, // this restart is the fleet's one trial of the half-open breaker
    wait,  // open and cooling down, or another worker's trial runs
};

// Retention (store/retention.hpp): one bounded pass of store::prune. Times are ms since the
// epoch. A store deletes, in one short transaction of its own:
//  - messages rows with a final outcome (acked, dead_lettered, skipped) completed before
//    `messages_before`, unless a restart of the id is unfinished;
//  - every restarts row of a message id whose rows are all finished before `restarts_before`,
//    none of them a host claim started at or after `host_claims_since` (a cooldown still needs
//    it), and whose messages row, if any, is not in flight (no outcome, or retried).
// At most `limit` messages rows and `limit` message ids' restarts rows go in one pass (oldest
// first), so a pass never holds the database for long.
struct prune_bounds {
    std::int64_t messages_before = 0, restarts_before = 0, host_claims_since = 0;
    std::uint32_t limit = 1000;
};
struct prune_counts {
    std::uint64_t messages = 0, restarts = 0; // rows deleted
    friend bool operator==(const prune_counts&, const prune_counts&) = default;
};

class store {
public:
    virtual ~store() = default;
    virtual std::string_view name() const = 0;

    // Records the request durably; completes when it is durable.
    virtual rt::task<save_result> save(const message& m, const delivery& d) = 0;
    // Before a restart: claims it (recorded as started) unless already done.
    virtual rt::task<claim_answer> claim_restart(const message& m) = 0;
    // Per-host cooldown, called by the restart policy right before the restart itself starts.
    // An implementation must, as ONE atomic step (one transaction; with a database shared by
    // several workers, atomic against all of them, e.g. BEGIN IMMEDIATE in SQLite):
    //  1. look at the restarts of host `m.hostname()` made for a message id other than
    //     `m.message_id()` that may have restarted the host: finished with status `ok` or
    //     `unverified`, or started and never finished (running elsewhere, or lost in a crash: we
    //     cannot know the host was not restarted, so it counts);
    //  2. if one of them started later than `now - cooldown`: record nothing and answer
    //     {granted = false, last_restart = the latest such start time}, with clock_behind set
    //     when that start is later than `now` itself (the clock went back: refuse to guess);
    //  3. otherwise record a restart of `m.hostname()` for `m.message_id()` started at `now` (not
    //     finished) and answer {granted = true}.
    // A cooldown of zero always grants (and still records). The same message id never blocks
    // itself, so a redelivery after a crash may finish its own restart. finish_restart(m, r)
    // then settles that record: status `ok` or `unverified` makes it a restart of the host (its
    // start time is what step 2 compares); any other status (failed, dry_run, refused, ...)
    // must make it no longer count in step 1, so a restart that did nothing never blocks the
    // next real one. `now` is wall-clock time, because records outlive the process.
    virtual rt::task<host_claim> claim_host(const message& m,
                                            std::chrono::system_clock::time_point now,
                                            std::chrono::milliseconds cooldown) = 0;
    // After a restart: records how it ended (for the message id, and for the host claim above).
    // False when the claim is no longer this worker's (its lease expired and a peer took it
    // over): nothing is recorded, and the caller must neither record nor ack the message.
    virtual rt::task<bool> finish_restart(const message& m, const restart_result& r) = 0;
    // Extends the leases of this worker's unfinished claims of these messages (not awaited:
    // batched, best effort; a claim lost meanwhile shows in finish_restart).
    virtual void renew_claims(std::span<const message* const> ms) { (void)ms; }
    // A restart claimed by claim_restart(m) that will never run (the worker began to stop
    // first): removes the start that claim recorded, and its host claim, so the next claim of m
    // answers `proceed`, not `unfinished`. Only an unfinished start is removed: a finished
    // restart's record stays.
    virtual rt::task<void> release_claim(const message& m) = 0;
    // Fleet-wide `--max-concurrent-restarts`: true when the store keeps restart slots for every
    // worker sharing it (sqlite: the file, postgres: the fleet). Then the guard, after its own
    // admission, takes one of the store's slots for each restart; otherwise its own count is the
    // cap.
    virtual bool shares_slots() const { return false; }
    // Takes one of `cap` slots for m's restart as ONE atomic step across every worker of the
    // store: true when taken (or m already holds one of this worker's), false when all `cap`
    // are held by live owners. A slot is this worker's until its lease expires (the claim
    // lease, renewed by renew_claims with m's claim) or release_slot gives it back, so the
    // slots of a worker that died come free after the lease.
    virtual rt::task<bool> claim_slot(const message& m, std::size_t cap);
    // Gives back m's slot, if this worker holds one (not awaited, batched).
    virtual void release_slot(const message& m) { (void)m; }
    // The shared pause, for a store that keeps one (sqlite, postgres): calls `changed` (loop
    // thread) at once with the pause as last read (nullptr: none), then reads it every `every`
    // (one small query) and calls `changed` again whenever it changed. While the database cannot
    // be read the last answer stands (no restart can be claimed meanwhile anyway). A null
    // `changed` stops the watch.
    virtual void watch_pause(std::chrono::milliseconds every,
                             std::function<void(const fleet_pause*)> changed) {
        (void)every;
        (void)changed;
    }
    // The fleet-wide circuit breaker, for a store that keeps one (postgres): every worker of
    // the store counts the failures of all (distinct hosts failed in `window`, as one breaker
    // would), and there is one open/half-open state and one trial for the whole fleet.
    virtual bool shares_breaker() const { return false; }
    // Calls `changed` (loop thread) at once with the breaker as last read, then whenever a read
    // finds it changed: the reads ride on watch_pause's poll, and on each note_breaker. A null
    // `changed` stops the watch.
    virtual void watch_breaker(std::function<void(const fleet_breaker&)> changed) { (void)changed; }
    // A restart of m's host ended with `o` (not awaited, batched; only failures and trials need
    // telling). `trial`: it was the trial claim_trial granted. Opens the breaker when the
    // failures reach `rules.failures`; a trial's end closes it (ok), opens it again (failed), or
    // makes the next restart the trial (neutral).
    virtual void note_breaker(const message& m, breaker_outcome o, bool trial,
                              const breaker_rules& rules) {
        (void)m;
        (void)o;
        (void)trial;
        (void)rules;
    }
    // Asks to run m's restart as the trial of an open breaker whose cooldown is over, as ONE
    // atomic step across the fleet: at most one trial at a time. The trial is this worker's
    // until the claim lease expires (renewed with m's claim by renew_claims) or note_breaker
    // hears its end, so the trial of a worker that died is taken over after the lease.
    virtual rt::task<trial_answer> claim_trial(const message& m,
                                               std::chrono::milliseconds cooldown);
    // One retention pass (prune_bounds above), run by the store's writer between its batches
    // (sqlite) or as one statement of a batch (postgres); the rows deleted. Throws when the
    // store could not run it. One pass at a time. The memory store keeps nothing: it prunes
    // nothing. pruned(): the rows deleted so far by this process (loop thread).
    virtual rt::task<prune_counts> prune(prune_bounds b);
    virtual prune_counts pruned() const { return {}; }
    // Records the outcome of a message (not awaited, batched). A store that cannot write it now
    // keeps it and writes it later; one it gives up on is counted in unrecorded().
    virtual void complete(const message& m, const verdict& v) = 0;
    // A hint that `m`'s record is about to be read or written: a store that keeps it in memory
    // starts loading it (with thousands of messages in flight, no cache holds it).
    virtual void prefetch(const message& m) const noexcept { (void)m; }
    // Up and writable (readiness, mayhem_store_healthy). A state, not the last write's result:
    // false from a failed write until writes have succeeded for a while with none failing, so
    // it does not flap with each transaction. Any thread.
    virtual bool healthy() const { return true; }
    // Group-commit figures, for metrics: transactions committed and saves in them (0 for a
    // store without transactions). Loop thread.
    struct commit_counts {
        std::uint64_t transactions = 0, saves = 0;
    };
    virtual commit_counts commits() const { return {}; }
    // Flushes and closes; the loop still runs while it completes. A store that keeps records
    // nobody waits for (complete()'s outcome records) writes them again until they are written,
    // for as long as it is given: see hurry().
    virtual rt::task<void> close() = 0;
    // The time close() was given is up: from now on the store starts no new write. A transaction
    // already being written ends (cut short where the store can), every request still queued
    // fails (its task sees an error), records nobody waits for are given up and counted in
    // unrecorded(), and close() completes. Called on the loop thread, before or during close().
    virtual void hurry() {}
    // Records nobody waited for that never reached the database: outcome records (complete())
    // dropped past the store's bound while it could not write or given up at close, and
    // withdrawals of restart starts whose task was gone (the sqlite store) given up at close.
    // Non-zero means the database is behind what the source was told. Loop thread; final once
    // close() completed.
    virtual std::uint64_t unrecorded() const { return 0; }
};

inline rt::task<trial_answer> store::claim_trial(const message& m,
                                                 std::chrono::milliseconds cooldown) {
    (void)m;
    (void)cooldown;
    co_return trial_answer::go;
}

inline rt::task<prune_counts> store::prune(prune_bounds b) {
    (void)b;
    co_return prune_counts{};
}

inline rt::task<bool> store::claim_slot(const message& m, std::size_t cap) {
    (void)m;
    (void)cap;
    co_return true;
}

} // namespace mayhem
