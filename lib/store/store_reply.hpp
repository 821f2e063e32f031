// How a group-committing store (sqlite_store, postgres_store) answers the task that waits on a
// queued request (store_batch.hpp). The request points to a reply slot, which the task's
// awaiter holds; once the transaction holding the request has ended, the store writes the
// answer into the slot and resumes the task. A slot has a stable address (pooled, reused from a
// free list), so the batches may grow and swap while the task waits.
//
// A task destroyed while it waits leaves its slot orphaned: the request is still written (a
// save stays a save; the store turns a start nobody will run into a skip or a withdrawal), and
// the store takes the slot back once the transaction has ended. A request made once the writer
// has ended has no slot and fails at once ("store closed").
//
// Threading: loop thread only.
#pragma once

#include "store/store.hpp"
#include "store/store_batch.hpp"

#include <coroutine>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mayhem {

// A request's answer: whether its transaction committed (else why not), and what the store set
// in the request (store_request: claim, n, attempt).
struct store_reply {
    bool ok = true;
    std::string error;
    restart_claim claim = restart_claim::proceed;
    std::int64_t n = 0;
    std::uint32_t attempt = 0;
};

// Who holds a slot: nobody (free); the awaiter, its request queued or in flight (waiting) or
// answered (answered); the request alone, its awaiter gone (orphaned).
struct store_reply_slot {
    enum class state : std::uint8_t { free, waiting, answered, orphaned };
    state st = state::free;
    std::coroutine_handle<> waiter; // waiting: the task, once it suspended
    store_reply out;                // answered
};

// A store's reply slots: every slot made (one per request in flight at the peak), and those free
// for the next request. The store must outlive every awaiter of its requests.
class store_reply_awaiter;
class store_reply_slots {
public:
    // Queues `r` at the end of `b`, with a slot of its own: the awaiter its task awaits.
    store_reply_awaiter queue(store_batch& b, const store_request& r);

    // A slot for a request about to be queued, held by its awaiter from now on.
    store_reply_slot* take() {
        store_reply_slot* s;
        if (free_.empty()) {
            s = all_.emplace_back(std::make_unique<store_reply_slot>()).get();
            free_.reserve(all_.size()); // so that drop() never allocates
        } else {
            s = free_.back();
            free_.pop_back();
        }
        s->st = store_reply_slot::state::waiting;
        return s;
    }

    // The awaiter is gone, or the request of an orphaned slot has ended: an answered or orphaned
    // slot is free again; a waiting one is orphaned, and freed when its request has ended.
    void drop(store_reply_slot& s) noexcept {
        if (s.st == store_reply_slot::state::waiting) {
            s.st = store_reply_slot::state::orphaned;
            s.waiter = {};
            return;
        }
        s.st = store_reply_slot::state::free;
        s.out = store_reply{};
        free_.push_back(&s); // reserved in take()
    }

    // A request's task still waits for its answer (false: nobody waits, or its task was
    // destroyed). Before a batch is written, a start or a slot nobody waits for becomes a skip;
    // after, a committed start nobody waits for is withdrawn.
    static bool waited(const store_request& r) noexcept {
        return r.reply && r.reply->st == store_reply_slot::state::waiting;
    }

    // `r`'s transaction has ended (`ok`, else failed with `error`): gives its task the answer
    // and resumes it. False when nobody waited (an orphaned slot is free again), so the caller
    // may withdraw a start. Resuming may destroy other tasks waiting on the same batch (their
    // slots become orphaned): call it for one request at a time, reading each at its turn.
    bool answer(store_request& r, bool ok, const std::string& error) {
        store_reply_slot* s = std::exchange(r.reply, nullptr);
        if (!s) return false;
        if (s->st != store_reply_slot::state::waiting) {
            drop(*s);
            return false;
        }
        s->out.ok = ok;
        if (!ok) s->out.error = error;
        s->out.claim = r.claim;
        s->out.n = r.n;
        s->out.attempt = r.attempt;
        s->st = store_reply_slot::state::answered;
        if (auto h = std::exchange(s->waiter, {})) h.resume();
        return true;
    }

private:
    std::vector<std::unique_ptr<store_reply_slot>> all_;
    std::vector<store_reply_slot*> free_;
};

// Suspends a task until its request's transaction has ended, and gives it the answer. Held in
// the task's frame: destroying it orphans the slot (the rule of lib/runtime/README.md,
// "Destroying a suspended frame cancels what it waits on"). Name it before awaiting it
// (`auto pending = enqueue(r); store_reply x = co_await pending;`): see GCC 12 in
// lib/runtime/README.md.
class store_reply_awaiter {
public:
    // `slot` null: the store was closed, the request fails at once.
    store_reply_awaiter(store_reply_slots& slots, store_reply_slot* slot) noexcept
        : slots_(slots), slot_(slot) {}
    store_reply_awaiter(const store_reply_awaiter&) = delete;
    store_reply_awaiter& operator=(const store_reply_awaiter&) = delete;
    ~store_reply_awaiter() {
        if (slot_) slots_.drop(*slot_);
    }
    bool await_ready() const noexcept {
        return !slot_ || slot_->st == store_reply_slot::state::answered;
    }
    void await_suspend(std::coroutine_handle<> h) noexcept { slot_->waiter = h; }
    store_reply await_resume() {
        if (!slot_) return store_reply{false, "store closed", {}, 0, 0};
        return std::move(slot_->out);
    }

private:
    store_reply_slots& slots_;
    store_reply_slot* slot_;
};

inline store_reply_awaiter store_reply_slots::queue(store_batch& b, const store_request& r) {
    b.reqs.push_back(r);
    store_reply_slot* s = take(); // should it throw, the request is queued with nobody waiting
    b.reqs.back().reply = s;
    return store_reply_awaiter(*this, s);
}

} // namespace mayhem
