#include "pipeline/outcome.hpp"

#include <doctest/doctest.h>

using namespace mayhem;
using namespace std::chrono_literals;

namespace {
decide_inputs inputs(std::uint32_t attempt, save_result s, restart_result r) {
    decide_inputs in;
    in.attempt = attempt;
    in.max_attempts = 3;
    in.saved = std::move(s);
    in.restarted = std::move(r);
    return in;
}
const backoff_policy backoff{100ms, 1000ms};
} // namespace

TEST_CASE("saved and restarted is acked") {
    auto v = decide(inputs(1, {}, {restart_status::ok, {}}), backoff, 0);
    CHECK(v.what == outcome::acked);
}

TEST_CASE("restart skipped by policy or dry run is acked; a duplicate is skipped") {
    for (auto s :
         {restart_status::dry_run, restart_status::skipped_cooldown, restart_status::coalesced})
        CHECK(decide(inputs(1, {}, {s, {}}), backoff, 0).what == outcome::acked);
    CHECK(decide(inputs(1, {}, {restart_status::skipped_duplicate, {}}), backoff, 0).what ==
          outcome::skipped);
}

TEST_CASE("a failed save is retried, never acked, even on the last attempt") {
    auto v = decide(inputs(3, {false, "disk full"}, {restart_status::ok, {}}), backoff, 0);
    CHECK(v.what == outcome::retried);
    CHECK(v.reason.find("disk full") != std::string::npos);
    decide_inputs threw = inputs(1, {}, {});
    threw.saved.reset();
    threw.save_exception = "boom";
    CHECK(decide(threw, backoff, 0).what == outcome::retried);
}

TEST_CASE("a failed restart is retried while attempts are left, then dead-lettered") {
    restart_result failed{restart_status::failed, "ssh: timeout"};
    CHECK(decide(inputs(1, {}, failed), backoff, 0).what == outcome::retried);
    CHECK(decide(inputs(2, {}, failed), backoff, 0).what == outcome::retried);
    auto v = decide(inputs(3, {}, failed), backoff, 0);
    CHECK(v.what == outcome::dead_lettered);
    CHECK(v.reason.find("ssh: timeout") != std::string::npos);
    CHECK(v.reason.find("attempt 3 of 3") != std::string::npos);
}

TEST_CASE("backoff doubles per attempt, is jittered within [ceiling/2, ceiling] and capped") {
    for (std::uint64_t r : {0ull, 1ull, 12345ull, ~0ull}) {
        auto d1 = backoff.delay(1, r);
        CHECK(d1 >= 50ms);
        CHECK(d1 <= 100ms);
        auto d3 = backoff.delay(3, r);
        CHECK(d3 >= 200ms);
        CHECK(d3 <= 400ms);
        auto d30 = backoff.delay(30, r);
        CHECK(d30 >= 500ms);
        CHECK(d30 <= 1000ms);
    }
}

TEST_CASE("decide: a refused restart is dead-lettered at once, whatever the attempts left") {
    using namespace mayhem;
    decide_inputs in;
    in.attempt = 1;
    in.max_attempts = 5;
    in.saved = save_result{};
    in.restarted = restart_result{restart_status::refused, "hostname \"$(id)\" is unsafe"};
    verdict v = decide(in, backoff_policy{}, 0);
    CHECK(v.what == outcome::dead_lettered);
    CHECK(v.reason == "restart refused: hostname \"$(id)\" is unsafe");
    in.restarted = restart_result{restart_status::skipped_cooldown, "restarted 1h ago"};
    CHECK(decide(in, backoff_policy{}, 0).what == outcome::acked);
    in.restarted = restart_result{restart_status::coalesced, {}};
    CHECK(decide(in, backoff_policy{}, 0).what == outcome::acked);
    // A failed save still wins: the request is not durable, so it is retried.
    in.saved = save_result{false, "disk full"};
    in.restarted = restart_result{restart_status::refused, "x"};
    CHECK(decide(in, backoff_policy{}, 0).what == outcome::retried);
}
