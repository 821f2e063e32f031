#include "runtime/loop.hpp"

#include <doctest/doctest.h>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
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

// The worker's stop waits with run_until for conditions that a store's or the pipeline's timer
// callbacks make true (the last task resumed, a batch committed); it must not then sleep until
// the next event (the stop deadline).
TEST_CASE("run_until notices a predicate a timer made true, without waiting for the next event") {
    loop l;
    bool done = false, later = false;
    delayed_call now([&] { done = true; });
    delayed_call guard([&] { later = true; });
    l.timers().arm(guard, 2s);
    l.timers().arm(now, 0ms);
    l.run_until([&] { return done || later; });
    CHECK(done);
    CHECK_FALSE(later); // returned at once, not at the next timer
    guard.cancel();
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

namespace {
// A delayed call that records its name in a shared log when it fires.
struct named_call : delayed_call {
    named_call(std::vector<std::string>& log, std::string name)
        : delayed_call([&log, name] { log.push_back(name); }) {}
};
} // namespace

TEST_CASE("entries of several delays fire in deadline order, FIFO within one delay") {
    loop l;
    std::vector<std::string> log;
    named_call a1(log, "a1"), a2(log, "a2"), b1(log, "b1"), c1(log, "c1"), a3(log, "a3");
    auto& q = l.timers();
    q.arm(a1, 20ms); // lane 20 ms
    q.arm(b1, 5ms);  // lane 5 ms
    q.arm(a2, 20ms);
    q.arm(c1, 40ms); // lane 40 ms
    q.arm(a3, 20ms);
    CHECK(q.size() == 5);
    l.run();
    CHECK(log == std::vector<std::string>{"b1", "a1", "a2", "a3", "c1"});
    CHECK(q.size() == 0);
}

TEST_CASE("cancelling the first entry of a lane lets a later lane fire first") {
    loop l;
    std::vector<std::string> log;
    named_call early(log, "early"), late(log, "late"), middle(log, "middle"), re(log, "re");
    auto& q = l.timers();
    q.arm(early, 5ms); // lane 5 ms, first
    q.arm(middle, 15ms);
    q.arm(late, 5ms); // lane 5 ms, behind `early`
    early.cancel();   // the 5 ms lane now starts at `late`: still before `middle`
    q.arm(re, 30ms);
    q.arm(re, 1ms); // re-arming moves it to another lane
    CHECK(q.size() == 3);
    l.run();
    CHECK(log == std::vector<std::string>{"re", "late", "middle"});
}

namespace {
// Re-arms itself with zero delay from its own callback, twice.
struct respinner final : timer_entry {
    respinner(timer_queue& queue, std::vector<std::string>& out) : q(queue), log(out) {}
    void fire() noexcept override {
        log.push_back("spin");
        if (++fired < 3) q.arm(*this, 0ms);
    }
    timer_queue& q;
    std::vector<std::string>& log;
    int fired = 0;
};
} // namespace

TEST_CASE("an entry re-armed with zero delay by its callback waits for what was already due") {
    loop l;
    std::vector<std::string> log;
    respinner spin(l.timers(), log);
    named_call other(log, "other");
    l.timers().arm(spin, 0ms);
    l.timers().arm(other, 0ms);
    l.run();
    CHECK(log == std::vector<std::string>{"spin", "other", "spin", "spin"});
}

TEST_CASE("entries of two delays due at the same time fire in the order they were armed") {
    loop l;
    std::vector<std::string> log;
    named_call first(log, "first"), second(log, "second");
    auto& q = l.timers();
    q.arm(first, 30ms);
    // Sleep until the loop's clock moved on by 10 ms, then arm a 20 ms entry: both due at +30.
    auto start = q.now();
    while (q.now() < start + 10)
        uv_update_time(l.get());
    q.arm(second, millis{30 - static_cast<int>(q.now() - start)});
    l.run();
    CHECK(log == std::vector<std::string>{"first", "second"});
}

TEST_CASE("a delay too long for a deadline's 48 bits waits, it does not wrap and fire at once") {
    loop l;
    std::vector<std::string> log;
    named_call forever(log, "forever"), soon(log, "soon");
    l.timers().arm(forever, millis{std::numeric_limits<std::int64_t>::max() / 2});
    l.timers().arm(soon, 5ms);
    l.run_until([&] { return !log.empty(); });
    CHECK(log == std::vector<std::string>{"soon"});
    CHECK(forever.armed());
    forever.cancel();
}

TEST_CASE("many distinct delays (lanes are freed when empty) all fire, in order") {
    loop l;
    std::vector<std::string> log;
    std::vector<std::unique_ptr<named_call>> calls;
    for (int i = 600; i > 0; --i) {
        calls.push_back(std::make_unique<named_call>(log, std::to_string(i)));
        l.timers().arm(*calls.back(), millis{i / 2}); // 300 lanes
    }
    calls[10]->cancel(); // delay 295 ms (i = 590)
    l.run();
    REQUIRE(log.size() == 599);
    for (std::size_t k = 1; k < log.size(); ++k)
        CHECK(std::stoi(log[k - 1]) / 2 <= std::stoi(log[k]) / 2);
    CHECK(l.timers().size() == 0);
    // The queue still works after lanes were freed.
    named_call again(log, "again");
    l.timers().arm(again, 1ms);
    l.run();
    CHECK(log.back() == "again");
}

// ---------------------------------------------------------------------------------------------
// after(): a task with a value after a delay and no coroutine frame (a leaf).
// ---------------------------------------------------------------------------------------------

namespace {
task<int> after_plus_one(loop& l, millis d, int v) {
    int got = co_await after(l, d, v);
    co_return got + 1;
}
task<void> gather_leaf_and_frame(loop& l, std::string& out) {
    auto both = gather(after(l, 20ms, std::string("leaf")), after_plus_one(l, 5ms, 1));
    auto [a, b] = co_await both;
    out = *a + " " + std::to_string(*b);
}
} // namespace

TEST_CASE("after() completes with its value once the delay has passed") {
    loop l;
    task_scope scope;
    int result = 0;
    auto start = l.now();
    scope.spawn([](loop& lp, int& r) -> task<void> {
        r = co_await after_plus_one(lp, 20ms, 41);
    }(l, result));
    CHECK(l.timers().size() == 1);
    l.run_until([&] { return scope.size() == 0; });
    CHECK(result == 42);
    CHECK(l.now() - start >= 19);
    CHECK(l.timers().size() == 0);
}

TEST_CASE("after() with no delay is ready at once and arms nothing") {
    loop l;
    task_scope scope;
    int result = 0;
    scope.spawn([](loop& lp, int& r) -> task<void> { r = co_await after(lp, 0ms, 7); }(l, result));
    CHECK(result == 7); // finished inside spawn, without a loop turn
    CHECK(scope.size() == 0);
    CHECK(l.timers().size() == 0);
}

TEST_CASE("a leaf and a coroutine gathered: both results, the parent resumed once") {
    loop l;
    task_scope scope;
    std::string out;
    scope.spawn(gather_leaf_and_frame(l, out));
    l.run_until([&] { return scope.size() == 0; });
    CHECK(out == "leaf 2");
}

TEST_CASE("destroying a task whose leaf waits cancels its timer") {
    loop l;
    {
        auto t = after(l, 10s, 1);
        CHECK(l.timers().size() == 1);
    }
    CHECK(l.timers().size() == 0);
    task_scope scope;
    bool resumed = false;
    scope.spawn([](loop& lp, bool& r) -> task<void> {
        (void)co_await after(lp, 10s, 1);
        r = true;
    }(l, resumed));
    CHECK(l.timers().size() == 1);
    scope.cancel_all();
    CHECK(l.timers().size() == 0);
    l.run();
    CHECK_FALSE(resumed);
}

TEST_CASE("a leaf whose delay passed before it was awaited returns at once") {
    loop l;
    auto t = after(l, 5ms, 3);
    task_scope scope;
    scope.spawn([](loop& lp) -> task<void> { co_await sleep_for(lp, 30ms); }(l));
    l.run_until([&] { return scope.size() == 0; }); // the leaf's timer fired meanwhile
    CHECK(l.timers().size() == 0);
    int result = 0;
    scope.spawn([](task<int> leaf, int& r) -> task<void> {
        r = co_await std::move(leaf);
    }(std::move(t), result));
    CHECK(result == 3);
    CHECK(scope.size() == 0);
}
