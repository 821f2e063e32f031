#include "runtime/loop.hpp"

#include <doctest/doctest.h>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace mayhem::rt;
using namespace std::chrono_literals;

TEST_CASE("sleeps on the shared timer resume in deadline order") {
    loop l;
    std::vector<int> order;
    task_scope scope;
    for (int ms : {30, 10, 20}) {
        scope.spawn([](loop& lp, int d, std::vector<int>& o) -> task<void> {
            co_await sleep_for(lp, millis{d});
            o.push_back(d);
        }(l, ms, order));
    }
    CHECK(l.timers().size() == 3);
    l.run_until([&] { return scope.size() == 0; });
    CHECK(order == std::vector<int>{10, 20, 30});
    CHECK(l.timers().size() == 0);
}

TEST_CASE("destroying a sleeping task removes its timer entry") {
    loop l;
    bool resumed = false;
    {
        task_scope scope;
        scope.spawn([](loop& lp, bool& r) -> task<void> {
            co_await sleep_for(lp, 10s);
            r = true;
        }(l, resumed));
        CHECK(l.timers().size() == 1);
    }
    CHECK(l.timers().size() == 0);
    l.run(); // nothing keeps the loop alive any more: returns at once
    CHECK_FALSE(resumed);
}

TEST_CASE("offload runs on a pool thread and resumes on the loop thread") {
    loop l;
    auto loop_thread = std::this_thread::get_id();
    std::thread::id work_thread, resumed_on;
    int got = 0;
    task_scope scope;
    scope.spawn([](loop& lp, std::thread::id& wt, std::thread::id& ro, int& g) -> task<void> {
        g = co_await offload(lp, [&wt] {
            wt = std::this_thread::get_id();
            return 42;
        });
        ro = std::this_thread::get_id();
    }(l, work_thread, resumed_on, got));
    l.run_until([&] { return scope.size() == 0; });
    CHECK(got == 42);
    CHECK(work_thread != loop_thread);
    CHECK(resumed_on == loop_thread);
}

TEST_CASE("an exception in offloaded work reaches the awaiting task") {
    loop l;
    std::string error;
    task_scope scope;
    scope.spawn([](loop& lp, std::string& e) -> task<void> {
        try {
            co_await offload(lp, []() -> int { throw std::runtime_error("disk on fire"); });
        } catch (const std::exception& ex) {
            e = ex.what();
        }
    }(l, error));
    l.run_until([&] { return scope.size() == 0; });
    CHECK(error == "disk on fire");
}

TEST_CASE("an offload whose task is destroyed first is orphaned, not resumed") {
    std::atomic<bool> finished{false};
    {
        loop l;
        task_scope scope;
        scope.spawn([](loop& lp, std::atomic<bool>& f) -> task<void> {
            co_await offload(lp, [&f] {
                std::this_thread::sleep_for(50ms);
                f = true;
            });
            FAIL("resumed after being destroyed");
        }(l, finished));
        scope.cancel_all();
        // The loop's destructor runs until the orphaned work has finished and been freed.
    }
    CHECK(finished);
}

TEST_CASE("a periodic timer ticks and its handle is freed in the close callback") {
    loop l;
    int ticks = 0;
    auto t = std::make_unique<periodic_timer>(l, 5ms, [&] { ++ticks; });
    task_scope scope;
    scope.spawn([](loop& lp) -> task<void> { co_await sleep_for(lp, 60ms); }(l));
    l.run_until([&] { return scope.size() == 0; });
    CHECK(ticks >= 3);
    t.reset(); // uv_close now; freed when the loop runs the close callback (in ~loop)
}

TEST_CASE("a delayed call fires once, and not at all when cancelled") {
    loop l;
    int a = 0, b = 0;
    delayed_call first([&] { ++a; });
    delayed_call second([&] { ++b; });
    l.timers().arm(first, 5ms);
    l.timers().arm(second, 5ms);
    second.cancel();
    l.run();
    CHECK(a == 1);
    CHECK(b == 0);
}
