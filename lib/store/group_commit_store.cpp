#include "store/group_commit_store.hpp"

#include <stdexcept>
#include <utility>

namespace mayhem {

group_commit_store::group_commit_store(rt::loop& loop, std::size_t max_held_records,
                                       const std::string& field, const std::string& value)
    : loop_(loop), health_(loop, field, value, stats_.outages),
      records_(
          loop, max_held_records, stats_.unrecorded, [this] { wake(); }, field, value) {}

// ---------------------------------------------------------------------------------------------
// The queue
// ---------------------------------------------------------------------------------------------

store_reply_awaiter group_commit_store::enqueue(const request& r) {
    if (phase_ == phase::closed) return store_reply_awaiter(replies_, nullptr);
    wake(); // the writer takes it on the next loop turn
    return replies_.queue(pending_, r);
}

void group_commit_store::enqueue_unwaited(const request& r) {
    pending_.reqs.push_back(r);
    wake();
}

void group_commit_store::wake() noexcept {
    // The writer starts the next transaction on the next loop turn, so everything queued in this
    // turn goes into it.
    if (writer_idle_ && !kick_.armed()) loop_.timers().arm(kick_, rt::millis{0});
}

void group_commit_store::kick() {
    if (auto h = std::exchange(writer_idle_, {})) h.resume();
}

// ---------------------------------------------------------------------------------------------
// The writer's steps
// ---------------------------------------------------------------------------------------------

void group_commit_store::skip_unwaited_starts() {
    for (auto& r : pending_)
        if ((r.kind == op::claim || r.kind == op::claim_host || r.kind == op::slot ||
             r.kind == op::trial) &&
            !store_reply_slots::waited(r))
            r.kind = op::skip;
}

void group_commit_store::batch_ended(bool ok, std::string error, batch& flying) {
    if (ok) {
        std::uint64_t saves = 0;
        for (const auto& r : flying)
            saves += r.kind == op::save;
        stats_.transactions.inc();
        stats_.requests.inc(flying.size());
        stats_.saves.inc(saves);
    } else {
        stats_.failed_transactions.inc();
    }
    // Committed: what is held goes with the next transaction. Failed: its records are held.
    records_.ended(ok, flying);
    pause_.read_ended();
    health_.note(ok, error);
    batch_ok_ = ok;
    batch_error_ = std::move(error);
    swap(done_, flying);
    flying.clear();
    // Starts whose task was destroyed while they were written: withdrawn in the next
    // transaction, ahead of any claim already queued for the same id.
    for (auto& r : done_)
        withdraw_if_orphaned(r);
    loop_.timers().arm(resume_, rt::millis{0});
}

// Answers every request of done_ and resumes the tasks waiting (store/store_reply.hpp). Resuming
// may destroy other waiters' tasks (their slots become orphaned), so each request is answered
// at its turn; new requests land in pending_, not here. A committed start whose task was
// destroyed meanwhile (an orphaned slot) is withdrawn.
void group_commit_store::flush_done() noexcept {
    resume_.cancel();
    for (std::size_t i = 0; i < done_.size(); ++i)
        if (!replies_.answer(done_[i], batch_ok_, batch_error_)) withdraw_if_orphaned(done_[i]);
    done_.clear();
}

// A start (claim, or claim_host granted) that committed while its task was destroyed: no
// restart will run for it, so it is withdrawn (once: the request becomes a skip).
void group_commit_store::withdraw_if_orphaned(request& r) {
    if (store_reply_slots::waited(r) || !batch_ok_ || r.claim != restart_claim::proceed ||
        (r.kind != op::claim && r.kind != op::claim_host))
        return;
    r.kind = op::skip;
    records_.add_withdrawal(done_.view(r.id), r.n);
    stats_.withdrawn.inc();
}

void group_commit_store::give_up() {
    flush_done();
    while (!pending_.empty()) {
        swap(done_, pending_);
        pending_.clear();
        batch_ok_ = false;
        batch_error_ = "store closing: out of time to write";
        flush_done(); // the resumed tasks may queue more: failed in the next round
    }
    records_.give_up();
}

rt::task<void> group_commit_store::close_writer() {
    pause_.stop();
    if (phase_ == phase::open) phase_ = phase::closing;
    wake();
    co_await writer_done_;
    health_.closed();
}

// ---------------------------------------------------------------------------------------------
// The requests. Each awaiter is a named local: GCC 12 destroys temporaries inside a co_await
// expression twice.
// ---------------------------------------------------------------------------------------------

rt::task<save_result> group_commit_store::save(const message& m, const delivery&) {
    request r;
    r.kind = op::save;
    r.id = pending_.put(m.message_id());
    r.a = pending_.put(m.instance_name());
    r.b = pending_.put(m.hostname());
    r.c = pending_.put(m.reason());
    auto pending = enqueue(r);
    store_reply x = co_await pending;
    co_return save_result{x.ok, std::move(x.error)};
}

rt::task<claim_answer> group_commit_store::claim_restart(const message& m) {
    request r;
    r.kind = op::claim;
    r.id = pending_.put(m.message_id());
    r.a = pending_.put(m.hostname());
    auto pending = enqueue(r);
    store_reply x = co_await pending;
    // Without a durable claim the restart must not run: the caller turns this into a retry.
    if (!x.ok) throw std::runtime_error("store: " + x.error);
    co_return claim_answer{x.claim, x.attempt};
}

rt::task<bool> group_commit_store::finish_restart(const message& m, const restart_result& res) {
    request r;
    r.kind = op::finish;
    r.id = pending_.put(m.message_id());
    r.a = pending_.put(to_string(res.status));
    r.b = pending_.put(res.detail);
    auto pending = enqueue(r);
    store_reply x = co_await pending;
    // Not written: the restart is still recorded as unfinished (the caller writes it again).
    if (!x.ok) throw std::runtime_error("store: " + x.error);
    co_return x.claim != restart_claim::held;
}

rt::task<void> group_commit_store::release_claim(const message& m) {
    request r;
    r.kind = op::unclaim;
    r.id = pending_.put(m.message_id());
    auto pending = enqueue(r);
    store_reply x = co_await pending;
    if (!x.ok) throw std::runtime_error("store: " + x.error);
}

rt::task<host_claim> group_commit_store::claim_host(const message& m,
                                                    std::chrono::system_clock::time_point now,
                                                    std::chrono::milliseconds cooldown) {
    request r;
    r.kind = op::claim_host;
    r.id = pending_.put(m.message_id());
    r.a = pending_.put(m.hostname());
    // The transaction stamps the claim with its own clock; the cutoff uses the caller's.
    r.n = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() -
          cooldown.count();
    auto pending = enqueue(r);
    store_reply x = co_await pending;
    if (!x.ok) throw std::runtime_error("store: " + x.error);
    if (x.claim == restart_claim::proceed) co_return host_claim{};
    co_return host_claim{false,
                         std::chrono::system_clock::time_point{std::chrono::milliseconds{x.n}},
                         x.claim == restart_claim::held};
}

rt::task<bool> group_commit_store::claim_slot(const message& m, std::size_t cap) {
    request r;
    r.kind = op::slot;
    r.id = pending_.put(m.message_id());
    r.n = static_cast<std::int64_t>(cap);
    auto pending = enqueue(r);
    store_reply x = co_await pending;
    if (!x.ok) throw std::runtime_error("store: " + x.error);
    co_return x.claim == restart_claim::proceed;
}

void group_commit_store::release_slot(const message& m) {
    if (phase_ == phase::closed) return; // it expires with its lease
    records_.add_slot_release(m.message_id());
}

void group_commit_store::watch_pause(std::chrono::milliseconds every,
                                     std::function<void(const fleet_pause*)> changed) {
    pause_.watch(loop_, every, std::move(changed), [this] {
        if (phase_ != phase::open) return false;
        request r;
        r.kind = op::read_pause;
        enqueue_unwaited(r);
        return true;
    });
}

void group_commit_store::complete(const message& m, const verdict& v) {
    if (phase_ == phase::closed) {
        stats_.unrecorded.inc();
        return;
    }
    records_.add_outcome(m, v);
}

} // namespace mayhem
