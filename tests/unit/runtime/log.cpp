#include "runtime/log.hpp"

#include "message/message.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <string>
#include <unistd.h>

using namespace mayhem;

namespace {

// What the logger writes to stderr (descriptor 2) while it lives.
class stderr_capture {
public:
    stderr_capture() {
        std::fflush(stderr);
        saved_ = ::dup(2);
        file_ = std::tmpfile();
        REQUIRE(file_);
        ::dup2(::fileno(file_), 2);
    }
    stderr_capture(const stderr_capture&) = delete;
    stderr_capture& operator=(const stderr_capture&) = delete;
    ~stderr_capture() { restore(); }
    std::string text() {
        restore();
        std::string out;
        std::rewind(file_);
        char buf[4096];
        std::size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, file_)) > 0)
            out.append(buf, n);
        return out;
    }

private:
    void restore() {
        if (saved_ < 0) return;
        REQUIRE(log::flush()); // the writer thread has written every line logged so far
        std::fflush(stderr);
        ::dup2(saved_, 2);
        ::close(saved_);
        saved_ = -1;
    }
    int saved_ = -1;
    std::FILE* file_ = nullptr;
};

// A hostile value: a newline that would start a forged line, a tab, ESC sequences, DEL, a C1
// control (U+009B, CSI), bytes that are not UTF-8, and a valid é.
const std::string hostile = "a\nb 2026-01-01 00:00:00.000 error forged\tx\x1b[31mred\x7f\xc2\x9b"
                            "2J \xff\xfe\xc3\x28 \xed\xa0\x80 caf\xc3\xa9";

// What two lines holding `hostile` look like in format `f`; the logger is text/info after.
std::string logged_hostile(log::format f) {
    std::string out;
    {
        stderr_capture cap;
        log::setup(f, spdlog::level::info);
        log::info("restart failed", {{"hostname", hostile}, {"error", std::string_view("\xff")}});
        log::info(hostile, {{hostile, 1}});
        out = cap.text();
    }
    log::setup(log::format::text, spdlog::level::info);
    return out;
}

} // namespace

TEST_CASE("log: every JSON line is valid UTF-8 JSON, bad bytes become U+FFFD") {
    // issue 13 case 5
    std::string out = logged_hostile(log::format::json);
    int lines = 0;
    std::size_t start = 0;
    for (std::size_t nl; (nl = out.find('\n', start)) != std::string::npos; start = nl + 1) {
        std::string line = out.substr(start, nl - start);
        CAPTURE(line);
        CHECK(valid_utf8(line));
        auto doc = nlohmann::json::parse(line, nullptr, false);
        REQUIRE_FALSE(doc.is_discarded());
        ++lines;
        if (lines == 1) {
            auto host = doc["hostname"].get<std::string>();
            CHECK(host.find("\xef\xbf\xbd") != std::string::npos); // U+FFFD
            CHECK(host.find("caf\xc3\xa9") != std::string::npos);  // valid UTF-8 kept
            CHECK(host.find('\n') != std::string::npos);           // escaped, decoded back
            CHECK(doc["error"] == "\xef\xbf\xbd");
        }
    }
    CHECK(lines == 2);
    CHECK(start == out.size());
}

TEST_CASE("log: text lines escape every control character") {
    // issue 13 case 7: a newline split a line in two; tabs and ESC passed raw.
    std::string out = logged_hostile(log::format::text);
    CHECK(std::count(out.begin(), out.end(), '\n') == 2);
    for (std::size_t i = 0; i < out.size(); ++i) {
        auto c = static_cast<unsigned char>(out[i]);
        CAPTURE(i);
        CHECK((c >= 0x20 || c == '\n'));
        CHECK(c != 0x7f);
    }
    CHECK(out.find("\xc2\x9b") == std::string::npos); // C1 CSI
    CHECK(out.find("hostname=\"a\\nb 2026") != std::string::npos);
    CHECK(valid_utf8(out));
}

TEST_CASE("log: a stderr nobody reads never blocks the caller: lines are dropped and counted") {
    // stderr becomes a pipe with a small buffer that nobody reads until the end.
    int p[2];
    REQUIRE(::pipe(p) == 0);
    ::fcntl(p[1], F_SETPIPE_SZ, 4096);
    REQUIRE(::fcntl(p[0], F_SETFL, O_NONBLOCK) == 0);
    log::setup(log::format::text, spdlog::level::info);
    REQUIRE(log::flush());
    std::fflush(stderr);
    int saved = ::dup(2);
    ::dup2(p[1], 2);
    auto dropped_before = log::dropped();
    auto lost_before = log::lost().count;
    // Twice the queue: whatever the writer managed before the pipe filled, the rest overflows.
    for (std::size_t i = 0; i < 2 * log::queue_lines; ++i)
        log::info("a line nobody reads", {{"i", i}});
    CHECK(log::dropped() > dropped_before);
    CHECK_FALSE(log::flush(std::chrono::milliseconds(50))); // bounded: the writer is blocked
    // Now read it all, so the writer finishes; only then give stderr back.
    std::size_t read_bytes = 0;
    char buf[65536];
    for (int i = 0; i < 10000; ++i) {
        for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;)
            read_bytes += static_cast<std::size_t>(n);
        if (log::flush(std::chrono::milliseconds(1))) break;
    }
    CHECK(log::flush(std::chrono::milliseconds(0)));
    ::dup2(saved, 2);
    ::close(saved);
    ::close(p[0]);
    ::close(p[1]);
    CHECK(read_bytes > 0);
    CHECK(log::lost().count == lost_before); // dropped is not lost: no write failed
}
