#include "store/memory_store.hpp"

#include "runtime/hash.hpp"

#include <bit>

namespace mayhem {

memory_store::table::table(std::size_t entries)
    : slots_(std::bit_ceil(entries * 2)), mask_(slots_.size() - 1), limit_(entries) {}

std::optional<memory_store::state> memory_store::table::find(std::uint64_t key) const noexcept {
    for (std::size_t i = (key >> 2) & mask_;; i = (i + 1) & mask_) {
        std::uint64_t w = slots_[i];
        if ((w & ~state_bits) == key) return static_cast<state>(w & state_bits);
        if (w == 0) return std::nullopt;
    }
}

bool memory_store::table::put(std::uint64_t key, state s) noexcept {
    std::uint64_t word = key | static_cast<std::uint64_t>(s);
    for (std::size_t i = (key >> 2) & mask_;; i = (i + 1) & mask_) {
        std::uint64_t w = slots_[i];
        if ((w & ~state_bits) == key) {
            slots_[i] = word;
            return true;
        }
        if (w == 0) {
            if (used_ >= limit_) return false;
            slots_[i] = word;
            ++used_;
            return true;
        }
    }
}

void memory_store::table::clear() noexcept {
    std::fill(slots_.begin(), slots_.end(), 0);
    used_ = 0;
}

memory_store::memory_store(rt::loop& loop, latency_range save_latency, std::uint64_t seed,
                           std::size_t capacity)
    : loop_(loop), latency_(save_latency), rng_(seed ? seed : std::random_device{}()),
      current_(std::max<std::size_t>(capacity / 2, 16)),
      previous_(std::max<std::size_t>(capacity / 2, 16)) {}

std::uint64_t memory_store::key(const message& m) noexcept {
    // Keep 0 free as the empty-slot marker and the low bits for a slot's state.
    std::uint64_t h = m.id_hash() & ~std::uint64_t{3};
    return h ? h : 4;
}

void memory_store::prefetch(const message& m) const noexcept {
    auto k = key(m);
    current_.prefetch(k);
    previous_.prefetch(k);
}

memory_store::state memory_store::lookup(std::uint64_t k) noexcept {
    // A new id misses in both generations: start loading the older one's slot now, so the two
    // cache misses overlap instead of following each other.
    previous_.prefetch(k);
    if (auto s = current_.find(k)) return *s;
    if (auto s = previous_.find(k)) return *s;
    return state::absent;
}

void memory_store::record(std::uint64_t k, state s) noexcept {
    if (current_.put(k, s)) return;
    // Current generation full: the previous one is forgotten, the current one becomes it.
    std::swap(current_, previous_);
    current_.clear();
    current_.put(k, s);
}

std::uint64_t memory_store::host_key(const message& m) noexcept {
    return m.host_hash();
}

// No coroutine frame: a save that only waits out the simulated latency.
rt::task<save_result> memory_store::save(const message&, const delivery&) {
    return rt::after(loop_, latency_.zero() ? rt::millis{0} : latency_.sample(rng_), save_result{});
}

// Attempts are not counted here (claim_answer::attempt 0): in one process, the source's
// delivery attempts count the restarts.
rt::task<claim_answer> memory_store::claim_restart(const message& m) {
    auto k = key(m);
    switch (lookup(k)) {
    case state::done:
        co_return claim_answer{restart_claim::done};
    case state::started:
        co_return claim_answer{restart_claim::unfinished};
    case state::absent:
        break;
    }
    record(k, state::started);
    co_return claim_answer{restart_claim::proceed};
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
        co_return host_claim{false, last.started, last.started > now};
    last = host_record{id, now, true};
    co_return host_claim{};
}

// One process: every claim is this worker's, so finish_restart never finds it lost.
rt::task<bool> memory_store::finish_restart(const message& m, const restart_result& r) {
    if (!hosts_.empty()) {
        if (auto it = hosts_.find(host_key(m));
            it != hosts_.end() && it->second.message == key(m)) {
            if (r.status == restart_status::ok || r.status == restart_status::unverified)
                it->second.running = false; // the host may have restarted: it blocks
            else
                hosts_.erase(it); // failed, dry run, refused...: never blocks the next restart
        }
    }
    // A failed restart may be tried again, a refused one is refused again, and a dry run
    // restarted nothing: forget them; anything else counts as done (as retried_after() in the
    // SQLite store).
    bool again = r.status == restart_status::failed || r.status == restart_status::refused ||
                 r.status == restart_status::dry_run;
    record(key(m), again ? state::absent : state::done);
    co_return true;
}

rt::task<void> memory_store::release_claim(const message& m) {
    if (lookup(key(m)) != state::started) co_return;
    if (auto it = hosts_.find(host_key(m));
        it != hosts_.end() && it->second.message == key(m) && it->second.running)
        hosts_.erase(it);
    record(key(m), state::absent);
}

void memory_store::complete(const message&, const verdict&) {}

rt::task<void> memory_store::close() {
    co_return;
}

} // namespace mayhem
