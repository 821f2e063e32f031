#include "config/config.hpp"

#include <cstdio>
#include <cstdlib>
#include <doctest/doctest.h>
#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

using namespace mayhem;
using namespace std::chrono_literals;

namespace {
std::optional<worker_config> parse(std::vector<std::string> args, std::string* err_out = nullptr) {
    std::ostringstream out, err;
    int code = -1;
    auto c = parse_worker_config(args, out, err, code);
    if (err_out) *err_out = err.str();
    if (c) CHECK(code == 0);
    return c;
}
} // namespace

TEST_CASE("durations and ranges") {
    CHECK(parse_duration("250ms") == 250ms);
    CHECK(parse_duration("2s") == 2000ms);
    CHECK(parse_duration("2") == 2000ms);
    CHECK(parse_duration("5m") == 300000ms);
    CHECK(parse_duration("7d") == 604800000ms);
    CHECK(parse_duration("1.5s") == 1500ms);
    CHECK_FALSE(parse_duration("abc"));
    CHECK_FALSE(parse_duration("-1s"));
    CHECK_FALSE(parse_duration("5 parsecs"));
    auto r = parse_latency_range("10ms..1s");
    REQUIRE(r);
    CHECK(r->min == 10ms);
    CHECK(r->max == 1000ms);
    CHECK_FALSE(parse_latency_range("1s..10ms"));
    CHECK(parse_bytes("64KiB") == 65536u);
    CHECK(parse_bytes("1MiB") == 1048576u);
    CHECK_FALSE(parse_bytes("lots"));
}

TEST_CASE("defaults are the embedded ones") {
    auto c = parse({});
    REQUIRE(c);
    CHECK(c->source == "simulate");
    CHECK(c->max_in_flight == 1000);
    CHECK(c->lease_extend_interval == 2000ms);
    CHECK(c->max_attempts == 5);
    CHECK(c->drain_timeout == 30000ms);
    CHECK(c->max_message_bytes == 65536);
    CHECK(c->read_ahead == 512);
}

TEST_CASE("bad values name the flag and what is allowed") {
    std::string err;
    CHECK_FALSE(parse({"--source", "kafka"}, &err));
    CHECK(err.find("--source") != std::string::npos);
    CHECK(err.find("simulate") != std::string::npos);
    CHECK_FALSE(parse({"--save-latency", "soon"}, &err));
    CHECK(err.find("--save-latency") != std::string::npos);
    CHECK(err.find("10ms..1s") != std::string::npos);
    CHECK_FALSE(parse({"--max-in-flight", "0"}, &err));
    CHECK(err.find("--max-in-flight") != std::string::npos);
    CHECK_FALSE(parse({"--read-ahead", "100001"}, &err));
    CHECK(err.find("--read-ahead") != std::string::npos);
    auto zero = parse({"--read-ahead", "0"});
    REQUIRE(zero);
    CHECK(zero->read_ahead == 0);
    CHECK_FALSE(parse({"--no-such-flag"}, &err));
    CHECK_FALSE(parse({"--retention", "3 months"}, &err));
    CHECK(err.find("--retention") != std::string::npos);
    CHECK(err.find("7d") != std::string::npos);
}

TEST_CASE("--retention: 90 days by default, 0 keeps forever, MAYHEM_RETENTION sets it") {
    auto c = parse({});
    REQUIRE(c);
    CHECK(c->retention == std::chrono::milliseconds{90LL * 24 * 3600 * 1000});
    auto forever = parse({"--retention", "0"});
    REQUIRE(forever);
    CHECK(forever->retention == 0ms);
    ::setenv("MAYHEM_RETENTION", "30d", 1);
    auto env = parse({});
    ::unsetenv("MAYHEM_RETENTION");
    REQUIRE(env);
    CHECK(env->retention == std::chrono::milliseconds{30LL * 24 * 3600 * 1000});
}

TEST_CASE("flags win over the environment, the environment over the config file") {
    char path[] = "/tmp/mayhem-config-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    {
        std::ofstream f(path);
        f << R"({"max-in-flight": 11, "max_attempts": 7, "messages": 3, "log-format": "json"})";
    }
    setenv("MAYHEM_MAX_ATTEMPTS", "8", 1);
    setenv("MAYHEM_MESSAGES", "4", 1);
    auto c = parse({"--config", path, "--messages", "5"});
    unsetenv("MAYHEM_MAX_ATTEMPTS");
    unsetenv("MAYHEM_MESSAGES");
    REQUIRE(c);
    CHECK(c->max_in_flight == 11);  // file only
    CHECK(c->log_format == "json"); // file only
    CHECK(c->max_attempts == 8);    // env over file
    CHECK(c->messages == 5);        // flag over env and file

    {
        std::ofstream f(path);
        f << R"({"max-in-flite": 11})";
    }
    std::string err;
    CHECK_FALSE(parse({"--config", path}, &err));
    CHECK(err.find("max-in-flite") != std::string::npos);
    std::remove(path);
}

// Found by tests/fuzz/duration.cpp: "18446744073709551616" (2^64) converted a double past
// UINT64_MAX to an integer (undefined; on x86-64 it came out as 0 or 2^63).
TEST_CASE("a size of 2^64 bytes or more is refused, not wrapped") {
    CHECK(parse_bytes("18446744073709549568") ==
          18446744073709549568u); // the largest double below 2^64
    CHECK_FALSE(parse_bytes("18446744073709551616"));
    CHECK_FALSE(parse_bytes("99999999999999999999"));
    CHECK_FALSE(parse_bytes("20000000000000000M"));
    CHECK_FALSE(parse_bytes(std::string(400, '9'))); // strtod: infinity
}

// Found by tests/fuzz/config.cpp: a key or value of the file (or a flag's value) with a control
// character was echoed raw in the error, so the one-line error became two lines or carried a
// terminal escape.
TEST_CASE("an error echoes the file's keys and values with control characters escaped") {
    char path[] = "/tmp/mayhem-config-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    close(fd);
    auto one_line = [](const std::string& e) {
        REQUIRE(!e.empty());
        CHECK(e.back() == '\n');
        for (std::size_t i = 0; i + 1 < e.size(); ++i)
            CHECK_MESSAGE(static_cast<unsigned char>(e[i]) >= 0x20, "byte ", i, " of ", e);
    };
    std::string err;
    {
        std::ofstream f(path);
        f << R"({"max-in\nflight": 1})";
    }
    CHECK_FALSE(parse({"--config", path}, &err));
    one_line(err);
    CHECK(err.find(R"("max-in\nflight")") != std::string::npos);
    {
        std::ofstream f(path);
        f << R"({"source": "\u001b[31mredis"})";
    }
    CHECK_FALSE(parse({"--config", path}, &err));
    one_line(err);
    CHECK(err.find(R"(\x1b[31mredis)") != std::string::npos);
    std::remove(path);

    CHECK_FALSE(parse({"--restarter", "exec", "--restart-command", "ssh\x7f {host\r}"}, &err));
    one_line(err);
    CHECK(err.find(R"(ssh\x7f {host\r})") != std::string::npos);
}

// --auth-key-file may be given twice on the command line (rotation), but a layer replaces the
// keys of the layers below it: the environment's key must not stay trusted beside the command
// line's.
TEST_CASE(
    "--auth-key-file: values add up within a layer, and a higher layer replaces a lower one") {
    char dir[] = "/tmp/mayhem-keys-XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string a = std::string(dir) + "/a", b = std::string(dir) + "/b",
                e = std::string(dir) + "/e";
    for (const auto& p : {a, b, e}) {
        std::ofstream(p) << std::string(64, p.back()); // 'a', 'b', 'e': hex digits
        chmod(p.c_str(), 0600);
    }
    setenv("MAYHEM_AUTH_KEY_FILE", e.c_str(), 1);
    auto c = parse({"--auth-key-file", a, "--auth-key-file=" + b});
    auto env_only = parse({});
    unsetenv("MAYHEM_AUTH_KEY_FILE");
    REQUIRE(c);
    CHECK(c->auth_key_files == std::vector<std::string>{a, b});
    REQUIRE(c->auth_keys);
    CHECK(c->auth_keys->size() == 2);
    REQUIRE(env_only);
    CHECK(env_only->auth_key_files == std::vector<std::string>{e});
    CHECK(c->auth_max_age == 600000ms);

    chmod(a.c_str(), 0644);
    std::string err;
    CHECK_FALSE(parse({"--auth-key-file", a}, &err));
    CHECK(err.find(a) != std::string::npos);
    CHECK(err.find("0644") != std::string::npos);
    std::string args_err;
    CHECK_FALSE(parse({"--auth-max-age", "0"}, &args_err));
    CHECK(args_err.find("--auth-max-age") != std::string::npos);
    for (const auto& p : {a, b, e})
        std::remove(p.c_str());
    rmdir(dir);
}
