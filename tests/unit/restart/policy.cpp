#include "restart/policy.hpp"

#include <doctest/doctest.h>

using namespace mayhem;
using std::chrono::milliseconds;
using admission = circuit_breaker::admission;
using result = circuit_breaker::result;
using change = circuit_breaker::change;

TEST_CASE("host_filter: allow and deny match the whole host name") {
    host_filter f("web-[0-9]+", "web-1[0-9]");
    CHECK_FALSE(f.refuse("web-1"));
    CHECK(f.refuse("web-1.evil")); // a prefix match is not enough
    CHECK(f.refuse("db-1")->find("--allow-hosts") != std::string::npos);
    CHECK(f.refuse("web-13")->find("--deny-hosts") != std::string::npos);
    CHECK_FALSE(host_filter("", "").refuse("anything"));
    CHECK_THROWS_AS(host_filter("(", ""), std::regex_error);
}

TEST_CASE("in_cooldown: a restart within the cooldown blocks, an older one does not") {
    auto now = std::chrono::system_clock::now();
    auto day = std::chrono::hours(24);
    auto week = milliseconds(7 * 24 * 3600 * 1000LL);
    CHECK(in_cooldown(now - day, now, week));
    CHECK_FALSE(in_cooldown(now - 8 * day, now, week));
    CHECK_FALSE(in_cooldown(now - day, now, milliseconds(0))); // 0: off
}

TEST_CASE("circuit_breaker: N failures within the window open it") {
    circuit_breaker b({3, milliseconds(1000), milliseconds(500)});
    CHECK(b.admit(milliseconds(0)) == admission::go);
    CHECK(b.record(result::failed, false, milliseconds(0), 1) == change::none);
    CHECK(b.record(result::failed, false, milliseconds(100), 2) == change::none);
    // A success does not reset the window (the budget is failures per window)...
    CHECK(b.record(result::ok, false, milliseconds(150), 3) == change::none);
    CHECK(b.record(result::failed, false, milliseconds(200), 4) == change::opened);
    CHECK(b.state() == breaker_state::open);
    CHECK(b.admit(milliseconds(300)) == admission::wait);
    CHECK(b.trial_at() == milliseconds(700));
}

TEST_CASE("circuit_breaker: failures older than the window do not count") {
    circuit_breaker b({2, milliseconds(1000), milliseconds(500)});
    b.record(result::failed, false, milliseconds(0), 5);
    CHECK(b.record(result::failed, false, milliseconds(1500), 6) == change::none);
    CHECK(b.state() == breaker_state::closed);
    CHECK(b.record(result::failed, false, milliseconds(1600), 7) == change::opened);
}

TEST_CASE("circuit_breaker: one trial after the cooldown; success closes, failure reopens") {
    circuit_breaker b({1, milliseconds(1000), milliseconds(500)});
    CHECK(b.record(result::failed, false, milliseconds(0), 8) == change::opened);
    CHECK(b.admit(milliseconds(499)) == admission::wait);
    CHECK(b.admit(milliseconds(500)) == admission::trial);
    CHECK(b.state() == breaker_state::half_open);
    CHECK(b.admit(milliseconds(501)) == admission::wait); // only one trial
    // A restart started before the breaker opened fails now: no change.
    CHECK(b.record(result::failed, false, milliseconds(502), 9) == change::none);
    CHECK(b.record(result::failed, true, milliseconds(600), 10) == change::none);
    CHECK(b.state() == breaker_state::open);
    CHECK(b.admit(milliseconds(1099)) == admission::wait); // a full cooldown again
    CHECK(b.admit(milliseconds(1100)) == admission::trial);
    CHECK(b.record(result::ok, true, milliseconds(1200), 11) == change::closed);
    CHECK(b.state() == breaker_state::closed);
    CHECK(b.admit(milliseconds(1201)) == admission::go);
}

TEST_CASE("circuit_breaker: a trial without a verdict hands the trial to the next restart") {
    circuit_breaker b({1, milliseconds(1000), milliseconds(500)});
    b.record(result::failed, false, milliseconds(0), 12);
    CHECK(b.admit(milliseconds(600)) == admission::trial);
    CHECK(b.record(result::neutral, true, milliseconds(601), 13) == change::none);
    CHECK(b.state() == breaker_state::open);
    CHECK(b.admit(milliseconds(602)) == admission::trial);
}

TEST_CASE("circuit_breaker: it counts failed hosts, not failed restarts") {
    circuit_breaker b({2, milliseconds(1000), milliseconds(500)});
    // One unreachable host retried again and again is one failed host.
    for (int i = 0; i < 10; ++i)
        CHECK(b.record(result::failed, false, milliseconds(i), 7) == change::none);
    CHECK(b.recent_failures() == 1);
    CHECK(b.state() == breaker_state::closed);
    CHECK(b.record(result::failed, false, milliseconds(20), 8) == change::opened);
}

TEST_CASE("circuit_breaker: once the cooldown is over a new restart meets a half-open breaker") {
    circuit_breaker b({1, milliseconds(1000), milliseconds(500)});
    b.record(result::failed, false, milliseconds(0), 1);
    CHECK(b.state_at(milliseconds(499)) == breaker_state::open);
    CHECK(b.state_at(milliseconds(500)) == breaker_state::half_open);
    CHECK(b.state() == breaker_state::open); // nothing asked yet
}

TEST_CASE("host_filter: a name in any case is the same name") {
    host_filter f("", "web-1\\.example\\.net");
    CHECK(f.refuse("web-1.example.net"));
    CHECK(f.refuse("WEB-1.Example.NET"));
}

TEST_CASE("circuit_breaker: failures 0 disables it") {
    circuit_breaker b({0, milliseconds(1000), milliseconds(500)});
    for (int i = 0; i < 100; ++i)
        CHECK(b.record(result::failed, false, milliseconds(i), static_cast<std::uint64_t>(i)) ==
              change::none);
    CHECK(b.admit(milliseconds(100)) == admission::go);
}
