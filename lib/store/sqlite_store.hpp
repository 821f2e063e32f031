// `--store sqlite` (the default): every request recorded durably in one SQLite file (WAL mode)
// before its message may be acked, and the idempotency record of restarts kept there too, so a
// redelivery after a crash or a restart of the worker is recognised.
//
// Group commit (the before-sleep fsync of Redis): requests (save, claim, finish, complete) are
// queued on the loop thread; one writer task hands the whole queue to libuv's thread pool as ONE
// transaction, and requests that arrive while it is being written wait for the next one. At most
// one transaction is in flight; a task waiting on a request resumes (on the loop) only after the
// transaction holding it committed. The writer hands over the next queue as soon as a
// transaction has committed, before the tasks that waited on it are resumed (on the next loop
// turn): the pool writes while the loop resumes, instead of each waiting for the other.

// The queue, the answers and the held records are group_commit_store's
// (store/group_commit_store.hpp); this store adds the writer and the file.
//
// Records nobody waits for (outcome records from complete(), the withdrawal of a restart start
// whose task was destroyed while its claim was written, and slot releases) are kept apart, in
// `records_` (store/held_records.hpp): they join the next transaction, and when it fails they are
// kept, in order, and written again (after a backoff, or with the transaction after the next one
// that succeeds; slot releases with every transaction) until they are written, close() gives up
// on them (hurry()), or, while the store cannot write, more than `max_held_records` pile up (then
// new outcome records are dropped). What is given up is counted in unrecorded(), except slot
// releases (a slot comes free with its lease). A save, claim or finish that fails is answered as
// failed at once: its task decides whether to retry.
//
// Health (healthy(), readiness, the log lines about it): a state, store/store_health.hpp.
//
// Threading: the store object and its queues belong to the loop thread. The SQLite connection
// and the batch being written (both in `shared`) are touched only by the pool thread running the
// transaction, and by the loop thread only while no transaction is in flight (start-up, close).
// The counters are also read by the metrics thread (relaxed atomics); healthy() too.
#pragma once

#include "runtime/loop.hpp"
#include "store/group_commit_store.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

namespace mayhem {

// The schema version this build writes (PRAGMA user_version). A file with a newer version is
// refused at start (exit 1): an older worker must not write rows it does not understand.
inline constexpr int sqlite_schema_version = 3;
// The migrations, one per version from 1, as shipped: each sets its user_version (the tests
// build older files with them).
std::span<const char* const> sqlite_migrations();
// Creates or migrates the schema of the file at `path` as a worker's start does (`mayhem pause`
// on a file no worker opened yet); the version reached. Throws sqlite_fatal for a newer or
// foreign file, std::runtime_error when it cannot be opened or written.
int sqlite_migrate(const std::string& path);

struct sqlite_options {
    std::string path = "mayhem.db";
    // NORMAL: in WAL mode a commit survives a crash of the process (the WAL is in the OS page
    // cache) but the last transactions may be lost on power loss or a kernel crash. FULL: the
    // WAL is fsynced at every commit, durable across power loss, slower per transaction (group
    // commit amortises it). A transaction that writes a restart claim is FULL either way.
    bool synchronous_full = false;
    std::chrono::milliseconds busy_timeout{5000};
    // This worker's name on its claims (unique per process), and how long a claim stays its own
    // without renewal. 0: claims are never held against a peer (one worker per file).
    std::string owner = "mayhem";
    std::chrono::milliseconds claim_lease{0};
    // While the store cannot write: outcome records kept for writing later, at most (about 100
    // bytes each plus their reason); past it, new ones are dropped and counted in unrecorded().
    std::size_t max_held_records = 100000;
};

// Thrown at start-up for a database that retrying cannot fix (newer schema, not a database).
class sqlite_fatal : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class sqlite_store final : public group_commit_store {
public:
    // Opens and creates or migrates the schema at once (start-up, before the loop runs), so a
    // newer or foreign file fails fast with sqlite_fatal. A file that cannot be opened or written
    // right now (read-only, locked, missing directory) does not throw: the store starts
    // unhealthy and every transaction tries to open it again.
    sqlite_store(rt::loop& loop, sqlite_options opts);
    ~sqlite_store() override;

    std::string_view name() const override { return "sqlite"; }
    void renew_claims(std::span<const message* const> ms) override;
    // The rails of every worker sharing the file, as the postgres store's for a fleet.
    rt::task<bool> claim_slot(const message& m, std::size_t cap) override;
    void release_slot(const message& m) override;
    rt::task<prune_counts> prune(prune_bounds b) override;
    // See store.hpp. A transaction waiting for another writer's lock gives up at once.
    void hurry() override;
    rt::task<void> close() override;

    // The queue's types, shared with the postgres store (store/store_batch.hpp).
    using text_ref = store_text_ref;
    struct shared; // connection + statements + the batch in flight

private:
    rt::task<void> writer();

    std::shared_ptr<shared> db_;
    // Messages holding one of the file's slots (their renewals renew it too).
    std::unordered_set<std::string> slot_holders_;
    rt::task_scope tasks_; // last: the writer's frame goes first
};

} // namespace mayhem
