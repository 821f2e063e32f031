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
// sqlite_store). The queue, the answers and the held records are group_commit_store's
// (store/group_commit_store.hpp); this store adds the writer and the connection.
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
#include "store/group_commit_store.hpp"
#include "store/pg_link.hpp"

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

class postgres_store final : public group_commit_store {
public:
    // Connects and migrates the schema at once (start-up, before the loop runs, blocking), so a
    // newer schema fails fast with postgres_fatal. An unreachable server does not throw: the
    // store starts unhealthy and the writer connects (and migrates) when it can.
    postgres_store(rt::loop& loop, postgres_options opts);
    ~postgres_store() override;

    std::string_view name() const override { return "postgres"; }
    void renew_claims(std::span<const message* const> ms) override;
    bool shares_breaker() const override { return true; }
    void watch_breaker(std::function<void(const fleet_breaker&)> changed) override;
    void note_breaker(const message& m, breaker_outcome o, bool trial,
                      const breaker_rules& rules) override;
    rt::task<trial_answer> claim_trial(const message& m,
                                       std::chrono::milliseconds cooldown) override;
    rt::task<prune_counts> prune(prune_bounds b) override;
    void hurry() override;
    rt::task<void> close() override;

    // Connections made after the first.
    std::uint64_t reconnects() const noexcept { return reconnects_.get(); }

private:
    static constexpr rt::millis reconnect_min{100}, reconnect_max{5000};

    void check_schema();
    rt::task<void> writer();
    rt::task<std::string> connect();
    rt::task<std::string> write(std::int64_t now);
    void take_pending();
    void saw_pause(const PGresult* res);
    void saw_breaker(const PGresult* res, int col);

    postgres_options opts_;
    pg_link link_;
    bool ever_connected_ = false;
    rt::counter reconnects_;
    std::string fatal_; // why the schema cannot be used (logged, the store stays down)
    rt::millis reconnect_backoff_{0};
    std::uint64_t reconnect_at_ = 0; // loop time (ms) before which no connect is tried
    batch flying_;                   // being written
    timer backoff_timer_{*this, &postgres_store::kick}; // the end of a reconnect backoff
    // The retention pass queued (one at a time): its bounds.
    prune_bounds prune_next_;
    // The fleet-wide breaker as last read, who to tell of a change, and the rules notes apply.
    fleet_breaker breaker_;
    std::function<void(const fleet_breaker&)> breaker_changed_;
    breaker_rules breaker_rules_;
    // Scratch of write(), reused batch after batch.
    std::vector<pg_statement> stmts_;
    std::vector<pg_result> results_;
    rt::task_scope tasks_; // last: the writer's frame goes first
};

} // namespace mayhem
