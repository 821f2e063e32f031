#include "metrics/http_server.hpp"

#include <arpa/inet.h>
#include <chrono>
#include <doctest/doctest.h>
#include <mutex>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace mayhem::metrics;

namespace {

// A blocking HTTP/1.0 GET over a plain socket: the whole response, or "" on failure.
std::string get(int port, const std::string& path) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string out;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        std::string req = "GET " + path + " HTTP/1.0\r\nHost: x\r\n\r\n";
        if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
            char buf[4096];
            for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
                out.append(buf, static_cast<std::size_t>(n));
        }
    }
    ::close(fd);
    return out;
}

// A port nothing listens on now, and a socket holding another one.
int bound_port(int fd) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    return ntohs(a.sin_port);
}

} // namespace

TEST_CASE("http_server: listen addresses") {
    CHECK(valid_listen_address("off"));
    CHECK(valid_listen_address("127.0.0.1:9477"));
    CHECK(valid_listen_address("0.0.0.0:1"));
    CHECK(valid_listen_address("10.1.2.3:65535"));
    CHECK_FALSE(valid_listen_address("[::1]:9477")); // IPv4 only
    CHECK_FALSE(valid_listen_address("9477"));
    CHECK_FALSE(valid_listen_address(":9477"));
    CHECK_FALSE(valid_listen_address("localhost:9477"));
    CHECK_FALSE(valid_listen_address("127.0.0.1:0"));
    CHECK_FALSE(valid_listen_address("127.0.0.1:65536"));
    CHECK_FALSE(valid_listen_address("127.0.0.1:94x"));
    CHECK_FALSE(valid_listen_address("::1:9477"));
    CHECK_FALSE(valid_listen_address(""));
}

TEST_CASE("http_server: serves the handler's answer, 405 for other methods") {
    int probe = ::socket(AF_INET, SOCK_STREAM, 0);
    int port = bound_port(probe);
    ::close(probe);
    std::string error;
    auto s = http_server::start(
        "127.0.0.1:" + std::to_string(port),
        [](std::string_view path) {
            if (path == "/hello") return http_response{200, "text/plain", "hi\n"};
            return http_response{404, "text/plain", "no\n"};
        },
        error);
    REQUIRE_MESSAGE(s, error);
    auto ok = get(port, "/hello?x=1");
    CHECK(ok.rfind("HTTP/1.1 200", 0) == 0);
    CHECK(ok.find("\r\n\r\nhi\n") != std::string::npos);
    CHECK(get(port, "/other").rfind("HTTP/1.1 404", 0) == 0);
}

TEST_CASE("http_server: an address in use is an error naming it") {
    int holder = ::socket(AF_INET, SOCK_STREAM, 0);
    int port = bound_port(holder);
    REQUIRE(::listen(holder, 1) == 0);
    std::string addr = "127.0.0.1:" + std::to_string(port), error;
    auto s = http_server::start(
        addr, [](std::string_view) { return http_response{}; }, error);
    CHECK_FALSE(s);
    CHECK(error.find(addr) != std::string::npos);
    CHECK(error.find("in use") != std::string::npos);
    ::close(holder);
}

namespace {

// A deferred route that keeps each request's reply for the test to give, and its arguments.
struct held_replies {
    std::mutex mu;
    std::vector<http_reply> replies;
    http_args last_args;

    deferred_route route(std::string path) {
        return {std::move(path), [this](const http_args& args, http_reply reply) {
                    std::lock_guard lock(mu);
                    last_args = args;
                    replies.push_back(std::move(reply));
                }};
    }
    std::size_t count() {
        std::lock_guard lock(mu);
        return replies.size();
    }
    void wait_for(std::size_t n) {
        for (int i = 0; i < 1000 && count() < n; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        REQUIRE(count() == n);
    }
};

int unused_port() {
    int probe = ::socket(AF_INET, SOCK_STREAM, 0);
    int port = bound_port(probe);
    ::close(probe);
    return port;
}

} // namespace

TEST_CASE("http_server: a deferred request waits for its reply while other requests are served") {
    int port = unused_port();
    held_replies held;
    std::string error;
    auto s = http_server::start(
        "127.0.0.1:" + std::to_string(port),
        [](std::string_view) {
            return http_response{200, "text/plain", "now\n"};
        },
        error, held.route("/later"));
    REQUIRE_MESSAGE(s, error);
    std::string late;
    std::thread client([&] { late = get(port, "/later?limit=5&x=%41"); });
    held.wait_for(1);
    // The server thread is not held by the waiting request.
    auto now = get(port, "/other");
    CHECK(now.find("\r\n\r\nnow\n") != std::string::npos);
    CHECK(held.last_args == http_args{{"limit", "5"}, {"x", "A"}});
    // The reply comes from another thread.
    std::thread([&] { held.replies[0]({202, "text/plain", "late\n"}); }).join();
    client.join();
    CHECK(late.rfind("HTTP/1.1 202", 0) == 0);
    CHECK(late.find("\r\n\r\nlate\n") != std::string::npos);
}

TEST_CASE("http_server: a deferred request still waiting when the server stops gets 503") {
    int port = unused_port();
    held_replies held;
    std::string error;
    auto s = http_server::start(
        "127.0.0.1:" + std::to_string(port), [](std::string_view) { return http_response{}; },
        error, held.route("/later"));
    REQUIRE_MESSAGE(s, error);
    std::string late;
    std::thread client([&] { late = get(port, "/later"); });
    held.wait_for(1);
    s.reset();
    client.join();
    CHECK(late.rfind("HTTP/1.1 503", 0) == 0);
    held.replies[0]({200, "text/plain", "too late\n"}); // dropped: the server is gone
}
