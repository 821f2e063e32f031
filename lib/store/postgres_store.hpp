// `--store postgres`: every request recorded in one PostgreSQL database that every worker of a
// fleet shares, so the idempotency record, the claims and the per-host cooldown hold across
// machines, not only across the processes sharing one SQLite file.
//
// Group commit on the loop, no thread: requests (save, claim, claim_host, finish, unclaim,
// renew, complete) are queued on the loop thread; one writer task sends the whole queue as ONE
// pipeline of a few set-based statements (arrays of ids, `unnest`) ending in one Sync, i.e.
// one round trip and one transaction; requests arriving meanwhile wait for the next one. The
// tasks that waited on a committed batch get their answers (reply slots, store/store_reply.hpp)
// and are resumed on the next loop turn, while the next batch is already on its way (as in
// sqlite_store).
//
// What must hold across the fleet is decided inside that transaction by the database, each in
// one statement: a first claim is an INSERT ... ON CONFLICT DO NOTHING on (message_id,
// attempt); any other claim re-reads the id's latest row and writes conditionally, looping on
// a lost race (mayhem_claim_again); the per-host cooldown first locks the hosts' rows in
// `host_locks` (sorted: no deadlock between workers), then checks and marks (see
// postgres_store.cpp, the schema). The fleet-wide breaker's one row is locked by every change
// to it (a failure counted, a trial taken or ended).
//
// Connection loss: the writer reconnects with capped exponential backoff (100 ms to 5 s,
// jittered); a batch whose transaction did not commit (an error, a dropped connection, no
// answer within io_timeout) fails as a whole: its saves and claims are answered as failed
// (their messages are retried, never acked), its outcome records and slot releases are kept
// and written again (store/held_records.hpp). While the database is unreachable, new requests
// fail at once. Health: as sqlite_store (down at the first failure, up after `recover_after`
// of successes).
//
// Threading: loop thread only; healthy() and the counters are also read by the metrics thread.
#pragma once

#include "runtime/counter.hpp"
#include "runtime/loop.hpp"
#include "store/held_records.hpp"
#include "store/pause_watch.hpp"
#include "store/pg_link.hpp"
#include "store/store.hpp"
#include "store/store_batch.hpp"
#include "store/store_health.hpp"
#include "store/store_reply.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace mayhem {

// The schema version this build writes (the highest row of schema_migrations). A database with
// a newer version is refused (exit 1 at start).
inline constexpr int postgres_schema_version = 5;

struct postgres_options {
    // A libpq connection string or URI (`postgresql://user@host:5432/db?sslmode=require`).
    // Never logged: it may hold a password (prefer PGPASSFILE / ~/.pgpass).
    std::string url;
    // This worker's name on its claims, and how long a claim stays its own without renewal
    // (0: never held against a peer). As sqlite_options.
    std::string owner = "mayhem";
    std::chrono::milliseconds claim_lease{0};
    std::size_t max_held_records = 100000;
    std::chrono::milliseconds connect_timeout{5000};
    // A batch not answered within this is failed and the connection dropped.
    std::chrono::milliseconds io_timeout{30000};
    // Connect and migrate blocking in the constructor (below). Off for a worker's second and
    // later connections (sharded_store): the first has checked the schema, and an unreachable
    // server would otherwise hold the start for connect_timeout once per connection. The
    // writer migrates with every connection it makes either way.
    bool check_at_start = true;
};

// Thrown at start-up for a database that retrying cannot fix (a newer schema, tables that are
// not mayhem's).
class postgres_fatal : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Migrates the schema over a blocking connection (a worker's start, `mayhem pause`): returns the
// version the database is at. Throws postgres_fatal when it cannot be migrated or is newer.
int postgres_migrate(PGconn* c);
// The migrations, one per version from 1, as shipped (the tests build older databases with them).
std::span<const char* const> postgres_migrations();

struct postgres_store_stats {
    rt::counter transactions;        // committed
    rt::counter failed_transactions; // failed or not sent (the requests in them failed)
    rt::counter requests;            // requests in committed transactions
    rt::counter saves;               // saves in committed transactions
    rt::counter outages;             // times healthy() turned false
    rt::counter reconnects;          // connections made after the first
    rt::counter unrecorded;          // records given up (store.hpp, unrecorded())
    rt::counter withdrawn;           // restart starts withdrawn: their task was gone
    rt::counter pruned_messages;     // rows deleted by retention passes (prune)
    rt::counter pruned_restarts;
};

class postgres_store final : public store {
public:
    // Connects and migrates the schema at once (start-up, before the loop runs, blocking), so a
    // newer schema fails fast with postgres_fatal. An unreachable server does not throw: the
    // store starts unhealthy and the writer connects (and migrates) when it can.
    postgres_store(rt::loop& loop, postgres_options opts);
    ~postgres_store() override;
    postgres_store(const postgres_store&) = delete;
    postgres_store& operator=(const postgres_store&) = delete;

    std::string_view name() const override { return "postgres"; }
    rt::task<save_result> save(const message& m, const delivery& d) override;
    rt::task<claim_answer> claim_restart(const message& m) override;
    rt::task<host_claim> claim_host(const message& m, std::chrono::system_clock::time_point now,
                                    std::chrono::milliseconds cooldown) override;
    rt::task<bool> finish_restart(const message& m, const restart_result& r) override;
    void renew_claims(std::span<const message* const> ms) override;
    rt::task<void> release_claim(const message& m) override;
    bool shares_slots() const override { return true; }
    rt::task<bool> claim_slot(const message& m, std::size_t cap) override;
    void release_slot(const message& m) override;
    void watch_pause(std::chrono::milliseconds every,
                     std::function<void(const fleet_pause*)> changed) override;
    bool shares_breaker() const override { return true; }
    void watch_breaker(std::function<void(const fleet_breaker&)> changed) override;
    void note_breaker(const message& m, breaker_outcome o, bool trial,
                      const breaker_rules& rules) override;
    rt::task<trial_answer> claim_trial(const message& m,
                                       std::chrono::milliseconds cooldown) override;
    rt::task<prune_counts> prune(prune_bounds b) override;
    prune_counts pruned() const override {
        return {stats_.pruned_messages.get(), stats_.pruned_restarts.get()};
    }
    void complete(const message& m, const verdict& v) override;
    bool healthy() const override { return health_.healthy(); }
    void hurry() override;
    std::uint64_t unrecorded() const override { return stats_.unrecorded.get(); }
    commit_counts commits() const override {
        return {stats_.transactions.get(), stats_.saves.get()};
    }
    rt::task<void> close() override;

    const postgres_store_stats& stats() const noexcept { return stats_; }

    using op = store_op;
    using request = store_request;
    using batch = store_batch;

private:
    // Calls a member of the store when due (loop thread).
    struct timer final : rt::timer_entry {
        postgres_store& s;
        void (postgres_store::*fn)();
        timer(postgres_store& st, void (postgres_store::*f)()) : s(st), fn(f) {}
        void fire() noexcept override { (s.*fn)(); }
    };
    // The writer, suspended with nothing to do (or waiting out a reconnect backoff): a request,
    // a due record, hurry() or the backoff's end wake it.
    struct idle_awaiter {
        postgres_store& s;
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> h) noexcept { s.writer_idle_ = h; }
        void await_resume() const noexcept {}
    };
    enum class phase : std::uint8_t { open, closing, hurried, closed };
    static constexpr rt::millis reconnect_min{100}, reconnect_max{5000};

    void check_schema();
    store_reply_awaiter enqueue(const request& r);
    void wake() noexcept;
    void kick();
    void flush_done() noexcept;
    rt::task<void> writer();
    rt::task<std::string> connect();
    rt::task<std::string> write(std::int64_t now);
    void settle(bool ok, std::string error);
    void take_pending();
    void withdraw_if_orphaned(request& r);
    void give_up();
    void saw_pause(const PGresult* res);
    void saw_breaker(const PGresult* res, int col);

    rt::loop& loop_;
    postgres_options opts_;
    pg_link link_;
    bool ever_connected_ = false;
    std::string fatal_; // why the schema cannot be used (logged, the store stays down)
    rt::millis reconnect_backoff_{0};
    std::uint64_t reconnect_at_ = 0; // loop time (ms) before which no connect is tried
    batch pending_;                  // waiting for the next transaction
    batch flying_;                   // being written
    batch done_;                     // committed (or failed), its tasks not resumed yet
    store_reply_slots replies_;      // where the answers of those three batches go
    bool batch_ok_ = true;           // result of done_ (while resuming it)
    std::string batch_error_;        //   and why it failed
    std::coroutine_handle<> writer_idle_;
    timer kick_{*this, &postgres_store::kick};
    timer backoff_timer_{*this, &postgres_store::kick}; // the end of a reconnect backoff
    timer resume_{*this, &postgres_store::flush_done};
    phase phase_ = phase::open;
    rt::event writer_done_;
    postgres_store_stats stats_;
    store_health health_;  // after stats_: it counts outages there
    held_records records_; // records nobody waits for (store/held_records.hpp); after stats_
    // The fleet-wide pause as last read, who to tell of a change, and its poll.
    pause_watch pause_;
    // The retention pass queued (one at a time): its bounds.
    prune_bounds prune_next_;
    bool prune_queued_ = false;
    // The fleet-wide breaker as last read, who to tell of a change, and the rules notes apply.
    fleet_breaker breaker_;
    std::function<void(const fleet_breaker&)> breaker_changed_;
    breaker_rules breaker_rules_;
    // Scratch of write(), reused batch after batch.
    std::vector<pg_statement> stmts_;
    std::vector<pg_result> results_;
    rt::task_scope tasks_;
};

} // namespace mayhem
