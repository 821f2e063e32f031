#include "store/memory_store.hpp"

namespace mayhem {

memory_store::memory_store(rt::loop& loop, latency_range save_latency, std::uint64_t seed)
    : loop_(loop), latency_(save_latency), rng_(seed ? seed : std::random_device{}()) {}

std::uint64_t memory_store::key(const message& m) noexcept {
    return std::hash<std::string>{}(m.message_id);
}

rt::task<save_result> memory_store::save(const message&, const delivery&) {
    if (!latency_.zero()) co_await rt::sleep_for(loop_, latency_.sample(rng_));
    ++saved_;
    co_return save_result{};
}

rt::task<restart_claim> memory_store::claim_restart(const message& m) {
    auto [it, inserted] = restarts_.try_emplace(key(m), state::started);
    if (inserted) co_return restart_claim::proceed;
    co_return it->second == state::done ? restart_claim::done : restart_claim::unfinished;
}

rt::task<void> memory_store::finish_restart(const message& m, const restart_result& r) {
    if (r.status == restart_status::failed) {
        restarts_.erase(key(m)); // a failed restart may be tried again
    } else {
        restarts_[key(m)] = state::done;
    }
    co_return;
}

void memory_store::complete(const message&, const verdict&) {}

rt::task<void> memory_store::close() {
    co_return;
}

} // namespace mayhem
