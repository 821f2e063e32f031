#include "restart/simulate_restarter.hpp"

namespace mayhem {

simulate_restarter::simulate_restarter(rt::loop& loop, latency_range latency, double failure_rate,
                                       std::uint64_t seed)
    : loop_(loop), latency_(latency), failure_rate_(failure_rate),
      rng_(seed ? seed : std::random_device{}()) {}

// No coroutine frame: the result is drawn now and handed over when the latency has passed.
rt::task<restart_result> simulate_restarter::restart(const message& m) {
    rt::millis delay = latency_.zero() ? rt::millis{0} : latency_.sample(rng_);
    if (failure_rate_ > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < failure_rate_)
        return rt::after(loop_, delay,
                         restart_result{restart_status::failed, std::string(simulated_detail) +
                                                                    " failure restarting " +
                                                                    std::string(m.hostname())});
    return rt::after(loop_, delay,
                     restart_result{restart_status::ok,
                                    std::string(simulated_detail) + ": no host was restarted"});
}

} // namespace mayhem
