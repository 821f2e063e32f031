#include "pipeline/outcome.hpp"

#include <doctest/doctest.h>

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
