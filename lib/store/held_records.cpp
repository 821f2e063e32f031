#include "store/held_records.hpp"

#include "runtime/log.hpp"

#include <algorithm>
#include <utility>

namespace mayhem {

held_records::held_records(rt::loop& loop, std::size_t max_held, rt::counter& unrecorded,
                           std::function<void()> wake, std::string field, std::string value)
    : loop_(loop), max_held_(max_held), unrecorded_(unrecorded), wake_(std::move(wake)),
      field_(std::move(field)), value_(std::move(value)) {}

void held_records::add_outcome(const message& m, const verdict& v) {
    // Only while records are held (the store cannot write) is their number bounded: a healthy
    // store writes them with the next transaction.
    if (backoff_.count() > 0 && records_.size() + flying_ >= max_held_) {
        unrecorded_.inc();
        if (!std::exchange(drop_logged_, true))
            log::error("store cannot write and holds too many outcome records: new ones are "
                       "dropped until it writes again (counted in unrecorded)",
                       {{field_, value_}, {"max_held_records", max_held_}});
        return;
    }
    store_request r;
    r.kind = store_op::complete;
    r.id = records_.put(m.message_id());
    r.a = records_.put(to_string(v.what));
    r.b = records_.put(v.reason);
    records_.reqs.push_back(r);
    if (due()) wake_();
}

void held_records::add_withdrawal(std::string_view message_id, std::int64_t stamp) {
    store_request w;
    w.kind = store_op::unclaim;
    w.id = records_.put(message_id);
    w.n = stamp; // the stamp the start was written with
    records_.reqs.push_back(w);
    wake_();
}

void held_records::add_slot_release(std::string_view message_id) {
    store_request r;
    r.kind = store_op::unslot;
    r.id = records_.put(message_id);
    records_.reqs.push_back(r);
    if (due()) wake_();
}

bool held_records::due() const noexcept {
    return !records_.empty() && (due_at_ == 0 || loop_.now() >= due_at_);
}

void held_records::take_into(store_batch& batch) {
    if (due()) {
        for (const auto& r : records_)
            copy_request(batch, records_, r);
        flying_ = records_.size();
        records_.clear();
        return;
    }
    auto release = [](const store_request& r) { return r.kind == store_op::unslot; };
    if (std::none_of(records_.begin(), records_.end(), release)) return;
    store_batch kept;
    for (const auto& r : records_) {
        if (!release(r)) {
            copy_request(kept, records_, r);
            continue;
        }
        copy_request(batch, records_, r);
        ++flying_;
    }
    swap(kept, records_);
}

void held_records::ended(bool committed, const store_batch& flying) {
    if (committed) {
        flying_ = 0;
        backoff_ = rt::millis{0};
        due_at_ = 0;
        drop_logged_ = false;
        timer_.cancel();
        return;
    }
    if (flying_ > 0) {
        store_batch held;
        for (std::size_t i = flying.size() - flying_; i < flying.size(); ++i)
            copy_request(held, flying, flying.reqs[i]);
        for (const auto& r : records_)
            copy_request(held, records_, r);
        swap(held, records_);
        flying_ = 0;
    }
    if (records_.empty()) return;
    backoff_ = std::clamp(backoff_ * 2, backoff_min, backoff_max);
    due_at_ = loop_.now() + static_cast<std::uint64_t>(backoff_.count());
    loop_.timers().arm(timer_, backoff_);
}

// The backoff is over: the held records go with the next transaction.
void held_records::retry::fire() noexcept {
    h.due_at_ = 0;
    h.wake_();
}

void held_records::give_up() {
    std::uint64_t outcomes = 0, withdrawals = 0, releases = 0;
    for (const auto& r : records_)
        (r.kind == store_op::complete  ? outcomes
         : r.kind == store_op::unclaim ? withdrawals
                                       : releases) += 1;
    if (!records_.empty())
        log::error("store closing out of time: records not written",
                   {{field_, value_},
                    {"outcome_records", outcomes},
                    {"withdrawn_restart_starts", withdrawals},
                    {"slot_releases", releases}});
    unrecorded_.inc(outcomes + withdrawals);
    records_.clear();
    timer_.cancel();
}

} // namespace mayhem
