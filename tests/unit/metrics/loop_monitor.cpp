#include "metrics/loop_monitor.hpp"

#include <chrono>
#include <doctest/doctest.h>
#include <thread>

using namespace mayhem;
using namespace std::chrono_literals;

TEST_CASE("loop_monitor: a blocked loop shows as lag and as a slow iteration") {
    rt::loop loop;
    metrics::live_state live;
    int ticks = 0;
    {
        metrics::loop_monitor mon(loop, live, 10ms, 50ms, [&] { ++ticks; });
        auto before = live.heartbeat_ns.load();
        bool blocked = false;
        // A callback that hogs the loop, then one that ends the run after a few more ticks.
        rt::delayed_call block([&] {
            std::this_thread::sleep_for(200ms);
            blocked = true;
        });
        rt::delayed_call stop([&] { loop.stop(); });
        loop.timers().arm(block, 30ms);
        loop.timers().arm(stop, 400ms);
        loop.run();
        CHECK(blocked);
        CHECK(ticks >= 3);
        CHECK(live.heartbeat_ns.load() > before);
        CHECK(live.slow_iterations.get() >= 1);
        // The tick after the block fired at least ~150 ms late.
        std::uint64_t late = 0;
        for (std::size_t i = 0; i < latency_histogram::bounds.size() + 1; ++i) {
            if (i == latency_histogram::bounds.size() || latency_histogram::bounds[i] > 0.1)
                late += live.loop_lag.bucket(i);
        }
        CHECK(late >= 1);
        CHECK(live.loop_lag.count() == static_cast<std::uint64_t>(ticks));
    }
}

TEST_CASE("loop_monitor: an idle loop waiting for I/O is not slow") {
    rt::loop loop;
    metrics::live_state live;
    {
        metrics::loop_monitor mon(loop, live, 10ms, 50ms, {});
        // Nothing to do for 300 ms but wait on the timer: long iterations of pure waiting.
        rt::delayed_call stop([&] { loop.stop(); });
        loop.timers().arm(stop, 300ms);
        loop.run();
    }
    CHECK(live.slow_iterations.get() == 0);
}
