#include "store/memory_store.hpp"

namespace mayhem {

memory_store::memory_store(rt::loop& loop, latency_range save_latency, std::uint64_t seed)
    : loop_(loop), latency_(save_latency), rng_(seed ? seed : std::random_device{}()) {}

std::uint64_t memory_store::key(const message& m) noexcept {
    return std::hash<std::string>{}(m.message_id);
}

std::uint64_t memory_store::host_key(const message& m) noexcept {
    return std::hash<std::string>{}(m.hostname);
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

// The contract is in store.hpp; on the loop thread, one step is atomic by construction.
rt::task<host_claim> memory_store::claim_host(const message& m,
                                              std::chrono::system_clock::time_point now,
                                              std::chrono::milliseconds cooldown) {
    auto id = key(m);
    auto [it, inserted] = hosts_.try_emplace(host_key(m), host_record{id, now, true});
    if (inserted) co_return host_claim{};
    host_record& last = it->second;
    if (last.message != id && cooldown.count() > 0 && last.started > now - cooldown)
        co_return host_claim{false, last.started};
    last = host_record{id, now, true};
    co_return host_claim{};
}

rt::task<void> memory_store::finish_restart(const message& m, const restart_result& r) {
    if (auto it = hosts_.find(host_key(m)); it != hosts_.end() && it->second.message == key(m)) {
        if (r.status == restart_status::ok)
            it->second.running = false;
        else
            hosts_.erase(it); // failed, dry run, refused...: never blocks the next restart
    }
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
