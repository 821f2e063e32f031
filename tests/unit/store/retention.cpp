// The retention policy (store/retention.hpp): the flags turned into a pass's bounds, no loop.
#include "store/retention.hpp"

#include <doctest/doctest.h>

using namespace mayhem;
using namespace std::chrono_literals;

namespace {

constexpr std::int64_t day = 24LL * 3600 * 1000;
const auto t0 = std::chrono::system_clock::time_point{std::chrono::milliseconds{1000 * day}};

} // namespace

TEST_CASE("retention: messages and restarts older than the retention go; the cooldown's are kept") {
    retention_options o;
    o.keep = std::chrono::milliseconds{90 * day};
    o.cooldown = std::chrono::milliseconds{7 * day};
    auto b = retention_bounds(t0, o);
    CHECK(b.messages_before == 910 * day);
    CHECK(b.restarts_before == 910 * day);
    CHECK(b.host_claims_since == 993 * day);
    CHECK(b.limit == 1000);
}

TEST_CASE("retention: restarts are kept as long as the cooldown when it is the longer") {
    retention_options o;
    o.keep = std::chrono::milliseconds{1 * day};
    o.cooldown = std::chrono::milliseconds{7 * day};
    o.batch = 50;
    auto b = retention_bounds(t0, o);
    CHECK(b.messages_before == 999 * day);
    // Rows finished before this started before the cooldown's reach: no pass walks over a row
    // it must keep for the cooldown.
    CHECK(b.restarts_before == 993 * day);
    CHECK(b.restarts_before <= b.host_claims_since);
    CHECK(b.limit == 50);
}

TEST_CASE("retention: without a cooldown nothing is kept for it") {
    retention_options o;
    o.keep = 1h;
    auto b = retention_bounds(t0, o);
    CHECK(b.restarts_before == 1000 * day - 3'600'000);
    CHECK(b.host_claims_since == 1000 * day);
}
