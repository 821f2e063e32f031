// tcp_source: demand, held lines, answers and the stop, on a real loop and a real loopback socket
// (the client is a plain non-blocking socket on the test's thread: the kernel buffers both ways).
#include "sources/tcp_source.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

using namespace mayhem;

namespace {

struct recording_sink final : source_sink {
    std::vector<delivery> got;
    std::vector<outcome> settled_as;
    void deliver(delivery d) override { got.push_back(std::move(d)); }
    void settled(outcome o) override { settled_as.push_back(o); }
    void source_changed() override {}
};

struct flag_timer final : rt::timer_entry {
    bool fired = false;
    void fire() noexcept override { fired = true; }
};

class client {
public:
    explicit client(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<std::uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    }
    ~client() { ::close(fd_); }
    client(const client&) = delete;
    client& operator=(const client&) = delete;

    void send(const std::string& s) {
        REQUIRE(::send(fd_, s.data(), s.size(), MSG_DONTWAIT) == static_cast<ssize_t>(s.size()));
    }
    // What has arrived so far; `eof` once the worker closed its side.
    std::string read_available(bool* eof = nullptr) {
        char buf[65536];
        for (;;) {
            ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) {
                got_.append(buf, static_cast<std::size_t>(n));
                continue;
            }
            if (n == 0 && eof) *eof = true;
            break;
        }
        return got_;
    }

private:
    int fd_;
    std::string got_;
};

std::string line(int i) {
    return R"({"message_id":"m)" + std::to_string(i) + R"(","instance_name":"c"})";
}

tcp_source_options local_opts() {
    tcp_source_options o;
    o.listen = "127.0.0.1:0"; // any free port
    o.max_line_bytes = 100;
    return o;
}

template <class Pred>
bool run_until(rt::loop& loop, Pred done, rt::millis limit = rt::millis{5000}) {
    flag_timer guard; // a failing test ends here instead of hanging
    loop.timers().arm(guard, limit);
    loop.run_until([&] { return done() || guard.fired; });
    return done();
}

void settle_acked(tcp_source& src, delivery d, std::string_view id) {
    verdict v{outcome::acked, {}, {}};
    v.message_id = id;
    src.settle(std::move(d), v);
}

} // namespace

TEST_CASE("tcp_source: never delivers more than granted; held lines go out as demand returns") {
    rt::loop loop;
    tcp_source src(loop, local_opts());
    recording_sink sink;
    src.start(sink);
    src.request(3);
    client c(src.port());
    std::string all;
    for (int i = 0; i < 10; ++i)
        all += line(i) + "\n";
    c.send(all);

    REQUIRE(run_until(loop, [&] { return sink.got.size() == 3; }));
    // Seven lines wait in the connection; nothing more comes without demand.
    run_until(
        loop, [] { return false; }, rt::millis{30});
    CHECK(sink.got.size() == 3);

    src.request(7);
    REQUIRE(run_until(loop, [&] { return sink.got.size() == 10; }));
    for (int i = 0; i < 10; ++i) {
        CHECK(sink.got[static_cast<std::size_t>(i)].payload == line(i));
        CHECK(sink.got[static_cast<std::size_t>(i)].ref == "1:" + std::to_string(i + 1));
    }
    std::vector<delivery> got = std::move(sink.got);
    for (int i = 9; i >= 0; --i) // answers in any order: the order outcomes are known
        settle_acked(src, std::move(got[static_cast<std::size_t>(i)]), "m" + std::to_string(i));
    CHECK(sink.settled_as.size() == 10);
    REQUIRE(run_until(loop, [&] {
        auto a = c.read_available();
        return std::count(a.begin(), a.end(), '\n') == 10;
    }));
    std::string answers = c.read_available();
    CHECK(answers.starts_with("{\"message_id\":\"m9\",\"outcome\":\"acked\"}\n"));
    CHECK(answers.ends_with("{\"message_id\":\"m0\",\"outcome\":\"acked\"}\n"));
    src.close();
}

TEST_CASE("tcp_source: bad, overlong and released lines are answered; the stop closes after") {
    rt::loop loop;
    tcp_source src(loop, local_opts());
    recording_sink sink;
    src.start(sink);
    src.request(100);
    client c(src.port());
    c.send("garbage\r\n\n" + std::string(300, 'x') + "\n" + line(4) + "\n");
    REQUIRE(run_until(loop, [&] { return sink.got.size() == 3; }));
    CHECK(sink.got[0].payload == "garbage"); // the \r is dropped
    CHECK(sink.got[0].ref == "1:1");
    CHECK(sink.got[1].payload.size() == 101); // cut one byte past the limit
    CHECK(sink.got[1].ref == "1:3");          // the blank line 2 is numbered, not delivered
    CHECK(sink.got[2].ref == "1:4");

    std::vector<delivery> got = std::move(sink.got);
    src.settle(std::move(got[0]), verdict{outcome::dead_lettered, "invalid JSON", {}});
    src.settle(std::move(got[1]), verdict{outcome::dead_lettered, "too \"large\"", {}});
    // Released before the pipeline decoded it: the source names it from the payload.
    src.settle(std::move(got[2]), verdict{outcome::released, "stopped before it started", {}});
    src.stop();
    bool eof = false;
    REQUIRE(run_until(loop, [&] {
        c.read_available(&eof);
        return eof && src.drained();
    }));
    CHECK(src.finished());
    CHECK(c.read_available() ==
          R"({"message_id":null,"line":1,"outcome":"dead_lettered","error":"invalid JSON"})"
          "\n"
          R"({"message_id":null,"line":3,"outcome":"dead_lettered","error":"too \"large\""})"
          "\n"
          R"({"message_id":"m4","outcome":"released","error":"stopped before it started"})"
          "\n");
    CHECK(src.stats().disconnects[static_cast<std::size_t>(tcp_close_cause::stop)].get() == 1);
    src.close();
}
