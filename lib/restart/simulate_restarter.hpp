// `--restarter simulate` (the default with --source simulate, like the talk): a restart takes a
// random time within --restart-latency and fails with probability --restart-failure-rate. No
// host is touched, and every result says so: its detail starts with `simulated_detail`, which
// the store keeps with the restart and `mayhem history` counts.
#pragma once

#include "restart/restarter.hpp"
#include "runtime/duration.hpp"
#include "runtime/loop.hpp"

#include <random>

namespace mayhem {

inline constexpr std::string_view simulated_detail = "simulated";

class simulate_restarter final : public restarter {
public:
    simulate_restarter(rt::loop& loop, latency_range latency, double failure_rate,
                       std::uint64_t seed);
    std::string_view name() const override { return "simulate"; }
    rt::task<restart_result> restart(const message& m) override;

private:
    rt::loop& loop_;
    latency_range latency_;
    double failure_rate_;
    std::mt19937_64 rng_;
};

} // namespace mayhem
