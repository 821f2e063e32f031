// One store made of several stores of one kind on one shared database, each with a connection
// of its own (`--postgres-connections`): a database server runs one connection's transactions
// on one core, so a worker with one connection is bound by that one server process.
//
// The rule it relies on: its shards are stores that already hold their rails for every worker
// sharing the database (shares_slots(), the postgres store), so N shards of one worker are, to
// the database, N workers with one owner name; and every request about one message goes to one
// shard, chosen by its message id's hash, so a message's requests keep their order and no two
// shards ever write one message id's rows. The fleet-wide requests that are not about one
// message (the pause, the breaker's notes, trials and reads, retention) all go to shard 0, so
// the breaker's state is read in the order its changes committed. A trial's lease is renewed
// with its message's claim, on that message's shard: the renewal names the trial by owner and
// message id, so it holds from any connection, and does nothing once the trial has ended.
//
// Threading: loop thread only; healthy() and the counters as the shards' (any thread).
#pragma once

#include "store/store.hpp"

#include <memory>
#include <vector>

namespace mayhem {

class sharded_store final : public store {
public:
    // At least one shard; each one's own connection.
    explicit sharded_store(std::vector<std::unique_ptr<store>> shards);

    std::string_view name() const override { return shards_.front()->name(); }
    rt::task<save_result> save(const message& m, const delivery& d) override {
        return of(m).save(m, d);
    }
    rt::task<claim_answer> claim_restart(const message& m) override {
        return of(m).claim_restart(m);
    }
    rt::task<host_claim> claim_host(const message& m, std::chrono::system_clock::time_point now,
                                    std::chrono::milliseconds cooldown) override {
        return of(m).claim_host(m, now, cooldown);
    }
    rt::task<bool> finish_restart(const message& m, const restart_result& r) override {
        return of(m).finish_restart(m, r);
    }
    void renew_claims(std::span<const message* const> ms) override;
    rt::task<void> release_claim(const message& m) override { return of(m).release_claim(m); }
    bool shares_slots() const override { return shards_.front()->shares_slots(); }
    rt::task<bool> claim_slot(const message& m, std::size_t cap) override {
        return of(m).claim_slot(m, cap);
    }
    void release_slot(const message& m) override { of(m).release_slot(m); }
    void watch_pause(std::chrono::milliseconds every,
                     std::function<void(const fleet_pause*)> changed) override {
        shards_.front()->watch_pause(every, std::move(changed));
    }
    bool shares_breaker() const override { return shards_.front()->shares_breaker(); }
    void watch_breaker(std::function<void(const fleet_breaker&)> changed) override {
        shards_.front()->watch_breaker(std::move(changed));
    }
    void note_breaker(const message& m, breaker_outcome o, bool trial,
                      const breaker_rules& rules) override {
        shards_.front()->note_breaker(m, o, trial, rules);
    }
    rt::task<trial_answer> claim_trial(const message& m,
                                       std::chrono::milliseconds cooldown) override {
        return shards_.front()->claim_trial(m, cooldown);
    }
    rt::task<prune_counts> prune(prune_bounds b) override { return shards_.front()->prune(b); }
    prune_counts pruned() const override { return shards_.front()->pruned(); }
    void complete(const message& m, const verdict& v) override { of(m).complete(m, v); }
    void prefetch(const message& m) const noexcept override { of(m).prefetch(m); }
    // Up only while every shard is: a message may go to any of them.
    bool healthy() const override;
    commit_counts commits() const override;
    rt::task<void> close() override;
    void hurry() override;
    std::uint64_t unrecorded() const override;

    // The shard that takes every request about m.
    std::size_t shard_of(const message& m) const noexcept;

private:
    store& of(const message& m) const noexcept { return *shards_[shard_of(m)]; }

    std::vector<std::unique_ptr<store>> shards_;
    std::vector<const message*> renew_scratch_;
};

} // namespace mayhem
