// `--store memory`: for tests and benchmarks. Nothing survives the process. It keeps only the
// idempotency record of restarts — a 64-bit hash of each message id whose restart started or
// succeeded — for the most recent `capacity` ids (two generations of a flat hash table, so the
// record stays small and cache-resident however long the run). A redelivery within that window
// is recognised; older ones are not (use the SQLite store for a complete record). Per host (by a
// 64-bit hash of the host name) it keeps the one restart that can block the next in claim_host.
// An optional simulated latency (--save-latency) stands in for the talk's save().
#pragma once

#include "runtime/duration.hpp"
#include "runtime/loop.hpp"
#include "store/store.hpp"

#include <chrono>
#include <optional>
#include <random>
#include <unordered_map>
#include <vector>

namespace mayhem {

class memory_store final : public store {
public:
    static constexpr std::size_t default_capacity = 1 << 18;
    memory_store(rt::loop& loop, latency_range save_latency, std::uint64_t seed,
                 std::size_t capacity = default_capacity);

    std::string_view name() const override { return "memory"; }
    void prefetch(const message& m) const noexcept override;
    rt::task<save_result> save(const message& m, const delivery& d) override;
    rt::task<claim_answer> claim_restart(const message& m) override;
    rt::task<host_claim> claim_host(const message& m, std::chrono::system_clock::time_point now,
                                    std::chrono::milliseconds cooldown) override;
    rt::task<bool> finish_restart(const message& m, const restart_result& r) override;
    rt::task<void> release_claim(const message& m) override;
    void complete(const message& m, const verdict& v) override;
    rt::task<void> close() override;

private:
    enum class state : std::uint8_t { absent, started, done };

    // Open addressing with linear probing. A slot is one word: the key's hash with its two low
    // bits holding the state (keys have them clear and are never 0), 0 marking an empty slot.
    // 8 bytes a slot keeps the tables small enough for the caches to hold more of them: every
    // new id probes both generations.
    class table {
    public:
        explicit table(std::size_t entries);
        std::optional<state> find(std::uint64_t key) const noexcept;
        void prefetch(std::uint64_t key) const noexcept {
            __builtin_prefetch(&slots_[(key >> 2) & mask_]);
        }
        // Inserts or updates; false when the table is full (the caller rotates generations).
        bool put(std::uint64_t key, state s) noexcept;
        void clear() noexcept;

    private:
        static constexpr std::uint64_t state_bits = 3;
        std::vector<std::uint64_t> slots_;
        std::size_t mask_;
        std::size_t used_ = 0, limit_;
    };

    static std::uint64_t key(const message& m) noexcept;
    state lookup(std::uint64_t k) noexcept;
    void record(std::uint64_t k, state s) noexcept;
    static std::uint64_t host_key(const message& m) noexcept;

    // The latest restart of a host that was granted: running until finish_restart says how it
    // ended; a failed one is erased. One record per host is enough: a newer grant means the
    // older record no longer blocked anything.
    struct host_record {
        std::uint64_t message = 0; // key() of the message that claimed it
        std::chrono::system_clock::time_point started;
        bool running = true;
    };

    rt::loop& loop_;
    latency_range latency_;
    std::mt19937_64 rng_;
    table current_, previous_;
    std::unordered_map<std::uint64_t, host_record> hosts_;
};

} // namespace mayhem
