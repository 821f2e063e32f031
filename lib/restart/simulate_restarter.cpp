#include "restart/simulate_restarter.hpp"

namespace mayhem {

simulate_restarter::simulate_restarter(rt::loop& loop, latency_range latency, double failure_rate,
                                       std::uint64_t seed)
    : loop_(loop), latency_(latency), failure_rate_(failure_rate),
      rng_(seed ? seed : std::random_device{}()) {}

namespace {

// The restart in flight, a leaf (no coroutine frame): its result is drawn when it starts and an
// ok result gets its detail only when its latency has passed. The detail is two allocations
// (the string and its text), and every message in flight holds its restart's leaf for the
// whole latency: ~90 B per message at 10,000 in flight (BENCHMARKS.md).
class simulated_restart final : public rt::details::leaf<restart_result> {
public:
    simulated_restart(rt::timer_queue& q, rt::millis d, restart_result r)
        : leaf<restart_result>(std::move(r)) {
        if (d.count() > 0)
            q.arm(*this, d);
        else
            fire();
    }

private:
    void fire() noexcept override {
        if (value().status == restart_status::ok)
            value().detail = std::string(simulated_detail) + ": no host was restarted";
        complete();
    }
};

} // namespace

rt::task<restart_result> simulate_restarter::restart(const message& m) {
    rt::millis delay = latency_.zero() ? rt::millis{0} : latency_.sample(rng_);
    restart_result r{restart_status::ok};
    if (failure_rate_ > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < failure_rate_)
        r = restart_result{restart_status::failed, std::string(simulated_detail) +
                                                       " failure restarting " +
                                                       std::string(m.hostname())};
    return rt::task<restart_result>{new simulated_restart(loop_.timers(), delay, std::move(r))};
}

} // namespace mayhem
