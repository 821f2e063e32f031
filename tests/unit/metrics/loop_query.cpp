#include "metrics/loop_query.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <doctest/doctest.h>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

using namespace mayhem;
using namespace std::chrono_literals;

namespace {

// What one reply brought, and on which thread.
struct reply_slot {
    std::mutex mu;
    bool called = false;
    std::optional<std::string> answer;
    std::thread::id thread;

    metrics::loop_query::reply_fn fn() {
        return [this](std::optional<std::string> a) {
            std::lock_guard lock(mu);
            CHECK_FALSE(called); // exactly once
            called = true;
            answer = std::move(a);
            thread = std::this_thread::get_id();
        };
    }
    bool done() {
        std::lock_guard lock(mu);
        return called;
    }
};

} // namespace

TEST_CASE("loop_query: the loop answers on its own thread") {
    rt::loop loop;
    metrics::loop_query q(
        loop, [](const std::string& s) { return "answer to " + s; }, 5s);
    reply_slot slot;
    std::thread asker([&] { q.ask("7", slot.fn()); });
    asker.join();
    // The loop turns (nothing else keeps it alive: the question does not) until the reply.
    rt::delayed_call stop([&] { loop.stop(); });
    for (int i = 0; i < 500 && !slot.done(); ++i) {
        loop.timers().arm(stop, 10ms);
        loop.run();
    }
    REQUIRE(slot.done());
    CHECK(slot.answer == "answer to 7");
    CHECK(slot.thread == std::this_thread::get_id());
}

TEST_CASE("loop_query: a loop that does not turn gets nothing after the timeout") {
    rt::loop loop;
    std::atomic<bool> asked_loop{false};
    metrics::loop_query q(
        loop,
        [&](const std::string&) {
            asked_loop = true;
            return std::string("late");
        },
        50ms);
    reply_slot slot;
    q.ask("1", slot.fn());
    // The loop is not run: the timekeeper answers.
    for (int i = 0; i < 500 && !slot.done(); ++i)
        std::this_thread::sleep_for(10ms);
    REQUIRE(slot.done());
    CHECK_FALSE(slot.answer);
    CHECK(slot.thread != std::this_thread::get_id());
    // The question is gone: the loop, turning now, is not asked it.
    rt::delayed_call stop([&] { loop.stop(); });
    loop.timers().arm(stop, 20ms);
    loop.run();
    CHECK_FALSE(asked_loop);
}

TEST_CASE("loop_query: too many questions at once, and the ones left at destruction, get nothing") {
    rt::loop loop;
    std::array<reply_slot, metrics::loop_query::max_waiting + 1> slots;
    {
        metrics::loop_query q(
            loop, [](const std::string&) { return std::string("x"); }, 60s);
        for (auto& s : slots)
            q.ask("q", s.fn());
        CHECK(slots.back().done()); // over the limit: at once
        CHECK_FALSE(slots.front().done());
    }
    for (auto& s : slots) {
        CHECK(s.done());
        CHECK_FALSE(s.answer);
    }
}
