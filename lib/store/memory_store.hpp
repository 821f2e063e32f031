// `--store memory`: for tests and benchmarks. Nothing survives the process. It keeps only the
// idempotency record of restarts (a 64-bit hash of each id whose restart succeeded), so a
// redelivery within one run is still recognised. An optional simulated latency (--save-latency)
// stands in for the talk's save().
#pragma once

#include "runtime/duration.hpp"
#include "runtime/loop.hpp"
#include "store/store.hpp"

#include <random>
#include <unordered_map>

namespace mayhem {

class memory_store final : public store {
public:
    memory_store(rt::loop& loop, latency_range save_latency, std::uint64_t seed);

    std::string_view name() const override { return "memory"; }
    rt::task<save_result> save(const message& m, const delivery& d) override;
    rt::task<restart_claim> claim_restart(const message& m) override;
    rt::task<void> finish_restart(const message& m, const restart_result& r) override;
    void complete(const message& m, const verdict& v) override;
    rt::task<void> close() override;

    std::size_t saved() const noexcept { return saved_; }

private:
    enum class state : std::uint8_t { started, done };
    static std::uint64_t key(const message& m) noexcept;

    rt::loop& loop_;
    latency_range latency_;
    std::mt19937_64 rng_;
    std::unordered_map<std::uint64_t, state> restarts_;
    std::size_t saved_ = 0;
};

} // namespace mayhem
