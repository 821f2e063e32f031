// The part of a group-committing store (sqlite_store, postgres_store) that does not depend on
// its database: the request queue, the answers to the tasks waiting on it, the records nobody
// waits for, health, the shared pause's watch, and every store call that only queues a request
// and reads its answer.
//
// A subclass runs one writer task. It waits (idle_awaiter) until woken by a request, a due
// record or the stop; then marks the starts nobody waits for as skips (skip_unwaited_starts),
// appends the held records (records_.take_into), takes pending_ as the batch to write, writes
// it as one transaction, and hands it to batch_ended(), which answers its requests on the next
// loop turn (flush_done) while the next batch is already being written. When the stop runs out
// of time (hurried) the writer calls give_up() and ends. The writer sets phase_ to closed and
// writer_done_ as it ends.
//
// Threading: loop thread only; healthy() and the counters are also read by the metrics thread.
#pragma once

#include "runtime/counter.hpp"
#include "runtime/loop.hpp"
#include "store/held_records.hpp"
#include "store/pause_watch.hpp"
#include "store/store.hpp"
#include "store/store_batch.hpp"
#include "store/store_health.hpp"
#include "store/store_reply.hpp"

#include <chrono>
#include <coroutine>
#include <functional>
#include <string>

namespace mayhem {

struct group_commit_stats {
    rt::counter transactions;        // committed
    rt::counter failed_transactions; // failed or not sent (the requests in them failed)
    rt::counter requests;            // requests in committed transactions (all kinds)
    rt::counter saves;               // saves in committed transactions
    rt::counter outages;             // times healthy() turned false
    rt::counter unrecorded;          // records given up (store.hpp, unrecorded())
    rt::counter withdrawn;           // restart starts withdrawn: their task was gone
    rt::counter pruned_messages;     // rows deleted by retention passes (prune)
    rt::counter pruned_restarts;
};

class group_commit_store : public store {
public:
    group_commit_store(const group_commit_store&) = delete;
    group_commit_store& operator=(const group_commit_store&) = delete;

    rt::task<save_result> save(const message& m, const delivery& d) override;
    rt::task<claim_answer> claim_restart(const message& m) override;
    rt::task<host_claim> claim_host(const message& m, std::chrono::system_clock::time_point now,
                                    std::chrono::milliseconds cooldown) override;
    rt::task<bool> finish_restart(const message& m, const restart_result& r) override;
    rt::task<void> release_claim(const message& m) override;
    // The rails of every worker sharing the database.
    bool shares_slots() const override { return true; }
    rt::task<bool> claim_slot(const message& m, std::size_t cap) override;
    // Held until written (store/held_records.hpp): a release lost with a failed transaction
    // would keep the slot from every worker sharing the database until its lease expired.
    void release_slot(const message& m) override;
    void watch_pause(std::chrono::milliseconds every,
                     std::function<void(const fleet_pause*)> changed) override;
    prune_counts pruned() const override {
        return {stats_.pruned_messages.get(), stats_.pruned_restarts.get()};
    }
    void complete(const message& m, const verdict& v) override;
    bool healthy() const override { return health_.healthy(); }
    std::uint64_t unrecorded() const override { return stats_.unrecorded.get(); }
    commit_counts commits() const override {
        return {stats_.transactions.get(), stats_.saves.get()};
    }

    const group_commit_stats& stats() const noexcept { return stats_; }

    using op = store_op;
    using request = store_request;
    using batch = store_batch;

protected:
    // `field`=`value` names the store in its log lines (db=PATH, store=postgres).
    group_commit_store(rt::loop& loop, std::size_t max_held_records, const std::string& field,
                       const std::string& value);
    ~group_commit_store() override = default;

    // The store's life: writing; closing (close() called: write what is queued and held);
    // hurried (out of time: write nothing more); closed (the writer has ended).
    enum class phase : std::uint8_t { open, closing, hurried, closed };
    // Calls a member of the store when due (loop thread).
    struct timer final : rt::timer_entry {
        group_commit_store& s;
        void (group_commit_store::*fn)();
        timer(group_commit_store& st, void (group_commit_store::*f)()) : s(st), fn(f) {}
        void fire() noexcept override { (s.*fn)(); }
    };
    // The writer, suspended with nothing to do: a request, a due record or the stop wakes it.
    struct idle_awaiter {
        group_commit_store& s;
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> h) noexcept { s.writer_idle_ = h; }
        void await_resume() const noexcept {}
    };

    // Queues a request its task waits on (store/store_reply.hpp); once the writer has ended, it
    // fails at once.
    store_reply_awaiter enqueue(const request& r);
    // Queues a request nobody waits on (a renewal, a breaker note, a pause read).
    void enqueue_unwaited(const request& r);
    void wake() noexcept;
    void kick();
    // A start (a claim, a cooldown claim, a slot, a breaker trial) whose task is gone (a
    // forced stop) must not be written: no restart will run for it, and its row would read as a
    // crash in the window on the next delivery, or hold a slot or the trial nobody gives back.
    void skip_unwaited_starts();
    // The batch `flying` ended (committed, or failed: `error`): counts it, keeps or holds its
    // records, notes health, and makes it done_, whose tasks are resumed on the next loop turn;
    // `flying` is left empty.
    void batch_ended(bool ok, std::string error, batch& flying);
    void flush_done() noexcept;
    void withdraw_if_orphaned(request& r);
    // hurry(): every request still queued fails, and the records are given up.
    void give_up();
    // close()'s common part: the pause watch stops, the writer writes what is queued and held
    // and ends (or gives up at hurry()).
    rt::task<void> close_writer();

    rt::loop& loop_;
    batch pending_;             // waiting for the next transaction
    batch done_;                // committed (or failed), its tasks not resumed yet
    store_reply_slots replies_; // where the answers of the queued, written and done requests go
    bool batch_ok_ = true;      // result of done_ (while resuming it)
    std::string batch_error_;   //   and why it failed
    std::coroutine_handle<> writer_idle_;
    timer kick_{*this, &group_commit_store::kick};
    timer resume_{*this, &group_commit_store::flush_done};
    phase phase_ = phase::open;
    rt::event writer_done_;
    bool prune_queued_ = false; // a retention pass is queued or being written (one at a time)
    group_commit_stats stats_;
    store_health health_;  // after stats_: it counts outages there
    held_records records_; // records nobody waits for (store/held_records.hpp); after stats_
    pause_watch pause_;    // the shared pause as last read, who to tell of a change, its poll
};

} // namespace mayhem
