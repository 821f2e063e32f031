#include "metrics/process_stats.hpp"

#include <doctest/doctest.h>

using namespace mayhem::metrics;

TEST_CASE("process_stats: /proc/self/stat with a command name holding spaces and parentheses") {
    // Fields after the name: state(3) ... utime(14)=250 stime(15)=150 ... starttime(22)=1000
    // vsize(23)=104857600 rss(24)=2560.
    const char* stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 "
                       "20 0 3 0 1000 104857600 2560 18446744073709551615";
    auto s = parse_proc_stat(stat, 100, 4096, 1'700'000'000);
    REQUIRE(s);
    CHECK(s->cpu_seconds == doctest::Approx(4.0));
    CHECK(s->start_time_seconds == doctest::Approx(1'700'000'010.0));
    CHECK(s->virtual_bytes == doctest::Approx(104857600.0));
    CHECK(s->resident_bytes == doctest::Approx(2560.0 * 4096));
}

TEST_CASE("process_stats: garbage does not parse") {
    CHECK_FALSE(parse_proc_stat("", 100, 4096, 0));
    CHECK_FALSE(parse_proc_stat("1 (x) S 1 2", 100, 4096, 0));
}

TEST_CASE("process_stats: this process") {
    auto s = read_process_stats();
    REQUIRE(s);
    CHECK(s->resident_bytes > 0);
    CHECK(s->open_fds >= 3);
    CHECK(s->start_time_seconds > 1e9);
}
