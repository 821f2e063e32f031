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
// Threading: the store object and its queues belong to the loop thread. The SQLite connection
// and the batch being written (both in `shared`) are touched only by the pool thread running the
// transaction, and by the loop thread only while no transaction is in flight (start-up, close).
// The counters are also read by the metrics thread (relaxed atomics); healthy() too.
#pragma once

#include "runtime/counter.hpp"
#include "runtime/loop.hpp"
#include "store/store.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mayhem {

// The schema version this build writes (PRAGMA user_version). A file with a newer version is
// refused at start (exit 1): an older worker must not write rows it does not understand.
inline constexpr int sqlite_schema_version = 2;

struct sqlite_options {
    std::string path = "mayhem.db";
    // NORMAL: in WAL mode a commit survives a crash of the process (the WAL is in the OS page
    // cache) but the last transactions may be lost on power loss or a kernel crash. FULL: the
    // WAL is fsynced at every commit, durable across power loss, slower per transaction (group
    // commit amortises it).
    bool synchronous_full = false;
    std::chrono::milliseconds busy_timeout{5000};
    // This worker's name on its claims (unique per process), and how long a claim stays its own
    // without renewal. 0: claims are never held against a peer (one worker per file).
    std::string owner = "mayhem";
    std::chrono::milliseconds claim_lease{0};
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
    rt::task<restart_claim> claim_restart(const message& m) override;
    rt::task<host_claim> claim_host(const message& m, std::chrono::system_clock::time_point now,
                                    std::chrono::milliseconds cooldown) override;
    rt::task<bool> finish_restart(const message& m, const restart_result& r) override;
    void renew_claims(std::span<const message* const> ms) override;
    rt::task<void> release_claim(const message& m) override;
    void complete(const message& m, const verdict& v) override;
    bool healthy() const override { return healthy_.load(std::memory_order_relaxed); }
    commit_counts commits() const override {
        return {stats_.transactions.get(), stats_.saves.get()};
    }
    rt::task<void> close() override;

    const sqlite_store_stats& stats() const noexcept { return stats_; }

    enum class op : std::uint8_t {
        save,
        claim,
        claim_host,
        finish,
        unclaim,
        renew,
        complete,
        skip
    };
    // A string copied into a batch's text (offset, length): the pool thread must never read a
    // message that a cancelled task has already freed.
    struct text_ref {
        std::uint32_t off = 0, len = 0;
    };
    // One queued request.
    struct request {
        op kind = op::save;
        text_ref id, a, b, c; // save: instance, hostname, reason; claim: hostname;
                              // finish: result, detail; complete: outcome, reason
        // out: claim; claim_host: done = blocked; finish: held = the claim is a peer's now
        restart_claim claim = restart_claim::proceed;
        std::int64_t n = 0; // claim_host: in, the cutoff (ms); out, the blocking start (ms)
        std::coroutine_handle<> waiter; // null: nobody waits (complete, cancelled)
    };
    // Requests and the strings they refer to, all in one buffer: queueing a request allocates
    // nothing once the buffers have grown to a batch's size (they are reused, batch after batch).
    struct batch {
        std::vector<request> reqs;
        std::string text;

        text_ref put(std::string_view v) {
            text_ref r{static_cast<std::uint32_t>(text.size()),
                       static_cast<std::uint32_t>(v.size())};
            text.append(v);
            return r;
        }
        std::string_view view(text_ref r) const { return {text.data() + r.off, r.len}; }
        std::size_t size() const noexcept { return reqs.size(); }
        bool empty() const noexcept { return reqs.empty(); }
        request& operator[](std::size_t i) { return reqs[i]; }
        auto begin() { return reqs.begin(); }
        auto end() { return reqs.end(); }
        auto begin() const { return reqs.begin(); }
        auto end() const { return reqs.end(); }
        void clear() noexcept {
            reqs.clear();
            text.clear();
        }
        friend void swap(batch& x, batch& y) noexcept {
            x.reqs.swap(y.reqs);
            x.text.swap(y.text);
        }
    };
    struct shared; // connection + statements + the batch in flight

private:
    class request_awaiter;
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
    struct idle_awaiter {
        sqlite_store& s;
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> h) noexcept { s.writer_idle_ = h; }
        void await_resume() const noexcept {}
    };

    request_awaiter enqueue(const request& r);
    void wake() noexcept;
    void flush_done() noexcept;
    rt::task<void> writer();
    void note_health(bool ok, const std::string& error);

    rt::loop& loop_;
    std::shared_ptr<shared> db_;
    batch pending_;                       // waiting for the next transaction (loop thread)
    std::uint64_t pending_gen_ = 1;       // generation of pending_
    std::uint64_t flying_gen_ = 0;        // generation of db_->flying while in flight, else 0
    batch done_;                          // committed (or failed), its tasks not resumed yet
    std::uint64_t done_gen_ = 0;          // generation of done_ while it holds a batch, else 0
    bool batch_ok_ = true;                // result of done_ (while resuming it)
    std::string batch_error_;             //   and why it failed
    std::coroutine_handle<> writer_idle_; // the writer, suspended with nothing to write
    kick kick_{*this};
    resume_done resume_{*this};
    bool closing_ = false;
    rt::event writer_done_;
    std::atomic<bool> healthy_{true};
    sqlite_store_stats stats_;
    rt::task_scope tasks_;
};

} // namespace mayhem
