// held_records: the records of a group-committing store that nobody waits for (sqlite_store,
// postgres_store): outcome records from complete(), withdrawals of restart starts whose task
// was destroyed while their claim was written, and slot releases (both stores'
// release_slot). They join the next transaction (appended after the requests queued for it);
// when it fails they are kept, in order, and written again after a backoff (100 ms doubling to
// 1 s), or with the transaction after the next one that succeeds, until they are written or the
// store gives up on them at close. While they are held (the store cannot write), at most
// `max_held` are kept: new outcome records past that are dropped. What is dropped or given up
// is counted in `unrecorded`, except slot releases: a slot not given back comes free when its
// lease expires.
//
// Slot releases do not wait out the backoff: they join every transaction written. A release
// names a message whose slot claim committed, so it cannot be what failed a transaction. And a
// later claim of a slot for the same message must not commit before it: that claim would find
// the message's old slot still its own and keep it, and the release written after would free
// the slot of a running restart. In one transaction, the store writes releases before claims.
//
// Threading: loop thread.
#pragma once

#include "pipeline/outcome.hpp"
#include "runtime/counter.hpp"
#include "runtime/loop.hpp"
#include "store/store_batch.hpp"

#include <functional>
#include <string>

namespace mayhem {

class held_records {
public:
    // `wake` asks the store's writer for a transaction; `field`=`value` names the store in logs.
    held_records(rt::loop& loop, std::size_t max_held, rt::counter& unrecorded,
                 std::function<void()> wake, std::string field, std::string value);
    held_records(const held_records&) = delete;
    held_records& operator=(const held_records&) = delete;

    void add_outcome(const message& m, const verdict& v);
    void add_withdrawal(std::string_view message_id, std::int64_t stamp);
    void add_slot_release(std::string_view message_id);
    bool empty() const noexcept { return records_.empty(); }
    // Records are waiting and may be written now (not backing off).
    bool due() const noexcept;
    // Appends the held records to `batch` (the transaction about to be written): all of them
    // when due, else the slot releases only.
    void take_into(store_batch& batch);
    // The transaction `flying` ended. Committed: its records are written. Failed: its records
    // (its last ones, as take_into appended them) are held again, in front of newer ones.
    void ended(bool committed, const store_batch& flying);
    // Out of time at close: every record still held is given up (logged, counted).
    void give_up();

private:
    struct retry final : rt::timer_entry {
        held_records& h;
        explicit retry(held_records& r) : h(r) {}
        void fire() noexcept override;
    };
    static constexpr rt::millis backoff_min{100}, backoff_max{1000};

    rt::loop& loop_;
    std::size_t max_held_;
    rt::counter& unrecorded_;
    std::function<void()> wake_;
    std::string field_, value_;
    store_batch records_;      // oldest first
    std::size_t flying_ = 0;   // how many are in the transaction being written (its last)
    std::uint64_t due_at_ = 0; // loop time (ms); 0: with the next transaction
    rt::millis backoff_{0};    // 0: the last transaction holding records succeeded
    bool drop_logged_ = false; // "dropped" is logged once per period of holding
    retry timer_{*this};
};

} // namespace mayhem
