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

#include "runtime/counter.hpp"
#include "runtime/loop.hpp"
#include "store/held_records.hpp"
#include "store/pause_watch.hpp"
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

struct sqlite_store_stats {
    rt::counter transactions;        // committed
    rt::counter failed_transactions; // rolled back (the requests in them failed)
    rt::counter requests;            // requests in committed transactions (all kinds)
    rt::counter saves;               // messages saved in committed transactions
    rt::counter outages;             // times healthy() turned false
    rt::counter unrecorded;          // records given up (store.hpp, unrecorded())
    rt::counter withdrawn;           // restart starts withdrawn: their task was gone
    rt::counter pruned_messages;     // rows deleted by retention passes (prune)
    rt::counter pruned_restarts;
};

class sqlite_store final : public store {
public:
    // Opens and creates or migrates the schema at once (start-up, before the loop runs), so a
    // newer or foreign file fails fast with sqlite_fatal. A file that cannot be opened or written
    // right now (read-only, locked, missing directory) does not throw: the store starts
    // unhealthy and every transaction tries to open it again.
    sqlite_store(rt::loop& loop, sqlite_options opts);
    ~sqlite_store() override;
    sqlite_store(const sqlite_store&) = delete;
    sqlite_store& operator=(const sqlite_store&) = delete;

    std::string_view name() const override { return "sqlite"; }
    rt::task<save_result> save(const message& m, const delivery& d) override;
    rt::task<claim_answer> claim_restart(const message& m) override;
    rt::task<host_claim> claim_host(const message& m, std::chrono::system_clock::time_point now,
                                    std::chrono::milliseconds cooldown) override;
    rt::task<bool> finish_restart(const message& m, const restart_result& r) override;
    void renew_claims(std::span<const message* const> ms) override;
    rt::task<void> release_claim(const message& m) override;
    // The rails of every worker sharing the file, as the postgres store's for a fleet.
    bool shares_slots() const override { return true; }
    rt::task<bool> claim_slot(const message& m, std::size_t cap) override;
    void release_slot(const message& m) override;
    void watch_pause(std::chrono::milliseconds every,
                     std::function<void(const fleet_pause*)> changed) override;
    rt::task<prune_counts> prune(prune_bounds b) override;
    prune_counts pruned() const override {
        return {stats_.pruned_messages.get(), stats_.pruned_restarts.get()};
    }
    void complete(const message& m, const verdict& v) override;
    bool healthy() const override { return health_.healthy(); }
    // See store.hpp. A transaction waiting for another writer's lock gives up at once.
    void hurry() override;
    std::uint64_t unrecorded() const override { return stats_.unrecorded.get(); }
    commit_counts commits() const override {
        return {stats_.transactions.get(), stats_.saves.get()};
    }
    rt::task<void> close() override;

    const sqlite_store_stats& stats() const noexcept { return stats_; }

    // The queue's types, shared with the postgres store (store/store_batch.hpp).
    using op = store_op;
    using text_ref = store_text_ref;
    using request = store_request;
    using batch = store_batch;
    struct shared; // connection + statements + the batch in flight

private:
    struct kick final : rt::timer_entry {
        sqlite_store& s;
        explicit kick(sqlite_store& st) : s(st) {}
        void fire() noexcept override;
    };
    // Resumes the tasks of the transaction that just committed, while the next one is written.
    struct resume_done final : rt::timer_entry {
        sqlite_store& s;
        explicit resume_done(sqlite_store& st) : s(st) {}
        void fire() noexcept override { s.flush_done(); }
    };
    // The store's life: writing; closing (close() called: write what is queued and held);
    // hurried (out of time: write nothing more); closed (the writer has ended).
    enum class phase : std::uint8_t { open, closing, hurried, closed };
    // Calls a member of the store when due (loop thread).
    struct timer final : rt::timer_entry {
        sqlite_store& s;
        void (sqlite_store::*fn)();
        timer(sqlite_store& st, void (sqlite_store::*f)()) : s(st), fn(f) {}
        void fire() noexcept override { (s.*fn)(); }
    };
    struct idle_awaiter {
        sqlite_store& s;
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> h) noexcept { s.writer_idle_ = h; }
        void await_resume() const noexcept {}
    };

    store_reply_awaiter enqueue(const request& r);
    void wake() noexcept;
    void flush_done() noexcept;
    rt::task<void> writer();
    void withdraw_if_orphaned(request& r);
    void give_up();

    rt::loop& loop_;
    std::shared_ptr<shared> db_;
    batch pending_;             // waiting for the next transaction (loop thread)
    batch done_;                // committed (or failed), its tasks not resumed yet
    store_reply_slots replies_; // where the answers of the queued, written and done requests go
    bool batch_ok_ = true;      // result of done_ (while resuming it)
    std::string batch_error_;   //   and why it failed
    std::coroutine_handle<> writer_idle_; // the writer, suspended with nothing to write
    kick kick_{*this};
    resume_done resume_{*this};
    phase phase_ = phase::open;
    bool prune_queued_ = false; // a retention pass is queued or being written
    pause_watch pause_;         // the shared pause as last read, and its watcher
    // Messages holding one of the file's slots (their renewals renew it too).
    std::unordered_set<std::string> slot_holders_;
    rt::event writer_done_;
    // Records nobody waits for, oldest first (see the top of this file), the number of them in
    // the transaction being written (its last ones), and when they may be written again.
    sqlite_store_stats stats_;
    store_health health_;  // after stats_: it counts outages there
    held_records records_; // records nobody waits for (store/held_records.hpp); after stats_
    rt::task_scope tasks_;
};

} // namespace mayhem
