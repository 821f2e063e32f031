#include "restart/simulate_restarter.hpp"

namespace mayhem {

simulate_restarter::simulate_restarter(rt::loop& loop, latency_range latency, double failure_rate,
                                       std::uint64_t seed)
    : loop_(loop), latency_(latency), failure_rate_(failure_rate),
      rng_(seed ? seed : std::random_device{}()) {}

rt::task<restart_result> simulate_restarter::restart(const message& m) {
    if (!latency_.zero()) co_await rt::sleep_for(loop_, latency_.sample(rng_));
    if (failure_rate_ > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < failure_rate_)
        co_return restart_result{restart_status::failed,
                                 "simulated failure restarting " + m.hostname};
    co_return restart_result{restart_status::ok, {}};
}

} // namespace mayhem
