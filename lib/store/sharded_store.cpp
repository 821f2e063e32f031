#include "store/sharded_store.hpp"

#include <cassert>
#include <exception>

namespace mayhem {

sharded_store::sharded_store(std::vector<std::unique_ptr<store>> shards)
    : shards_(std::move(shards)) {
    assert(!shards_.empty());
}

// The id's hash is computed once per message; its high half, so the shard does not follow the
// low bits the in-flight indexes bucket by.
std::size_t sharded_store::shard_of(const message& m) const noexcept {
    return static_cast<std::size_t>((m.id_hash() >> 32) % shards_.size());
}

void sharded_store::renew_claims(std::span<const message* const> ms) {
    for (std::size_t s = 0; s < shards_.size(); ++s) {
        renew_scratch_.clear();
        for (const message* m : ms)
            if (shard_of(*m) == s) renew_scratch_.push_back(m);
        if (!renew_scratch_.empty()) shards_[s]->renew_claims(renew_scratch_);
    }
}

bool sharded_store::healthy() const {
    for (const auto& s : shards_)
        if (!s->healthy()) return false;
    return true;
}

store::commit_counts sharded_store::commits() const {
    commit_counts sum;
    for (const auto& s : shards_) {
        auto c = s->commits();
        sum.transactions += c.transactions;
        sum.saves += c.saves;
    }
    return sum;
}

// Every shard closes at once, so a stop waits for the slowest one's last batch and held
// records, not for the sum of them.
rt::task<void> sharded_store::close() {
    std::vector<std::unique_ptr<rt::branch<void>>> closing;
    for (auto& s : shards_) {
        closing.push_back(std::make_unique<rt::branch<void>>());
        closing.back()->start(s->close());
    }
    std::exception_ptr first;
    for (auto& b : closing) {
        rt::branch<void>& shard_closed = *b; // named: GCC 12 copies an awaited `*b`
        co_await shard_closed;
        if (auto e = shard_closed.take().error(); e && !first) first = e;
    }
    if (first) std::rethrow_exception(first);
}

void sharded_store::hurry() {
    for (auto& s : shards_)
        s->hurry();
}

std::uint64_t sharded_store::unrecorded() const {
    std::uint64_t n = 0;
    for (const auto& s : shards_)
        n += s->unrecorded();
    return n;
}

} // namespace mayhem
