// A small HTTP server on libmicrohttpd for /metrics, /healthz, /readyz and /debug/inflight. One
// thread of its own polls every connection with epoll, so connections that are idle or send
// slowly cost a file descriptor each and hold nothing up: the probes answer whatever else is
// connected (idle ones are closed after connection_timeout). The handler is called on that
// thread, never on the loop thread, so it must only read atomics (live_state, pipeline_stats),
// answer quickly, and never log (the logger belongs to the loop thread).
//
// An answer only another thread can give (the loop's view of what is in flight) is deferred:
// the connection is suspended, the deferred handler is given a reply function, and the server
// thread goes on serving everyone else until the reply comes, from any thread.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct MHD_Daemon;
struct MHD_Connection;

namespace mayhem::metrics {

struct http_response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

// `path` is the request path without the query string; only GET and HEAD reach the handler.
using http_handler = std::function<http_response(std::string_view path)>;

// The query string's arguments, decoded, in order.
using http_args = std::vector<std::pair<std::string, std::string>>;
// Sends the answer of a deferred request; callable from any thread, once. A reply that comes
// after the server stopped (it answered 503 itself) is dropped.
using http_reply = std::function<void(http_response)>;
// A route answered later: `handler` runs on the server thread and must not block; it hands
// `reply` to whoever will answer.
struct deferred_route {
    std::string path;
    std::function<void(const http_args& args, http_reply reply)> handler;
};

// "off", or HOST:PORT with a numeric IPv4 host and a port 1..65535.
bool valid_listen_address(std::string_view addr);

class http_server {
public:
    // Binds `addr` (a valid_listen_address other than "off") and starts serving. On failure
    // (address in use, no permission) returns nullptr and sets `error` to a sentence naming the
    // address.
    static std::unique_ptr<http_server> start(const std::string& addr, http_handler handler,
                                              std::string& error, deferred_route deferred = {});
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;
    // Answers 503 to every deferred request still waiting, stops accepting, waits for the
    // request being answered, joins the thread.
    ~http_server();

    // Idle connections are closed after this long; at most max_connections are open at once
    // (more are refused until some close).
    static constexpr unsigned connection_timeout_s = 5;
    static constexpr unsigned max_connections = 1000;

    const std::string& address() const noexcept { return addr_; }

    struct deferred_request;
    struct deferred_registry;

private:
    http_server(std::string addr, http_handler handler, deferred_route deferred);
    static int on_request(void* self, MHD_Connection* conn, const char* url, const char* method,
                          const char* version, const char* upload, std::size_t* upload_size,
                          void** state) noexcept;
    static void on_completed(void* self, MHD_Connection* conn, void** state, int why) noexcept;
    std::optional<http_response> defer(MHD_Connection* conn, void** state);

    std::string addr_;
    http_handler handler_;
    deferred_route deferred_;
    // Shared with every reply function handed out, which may outlive the server.
    std::shared_ptr<deferred_registry> registry_;
    MHD_Daemon* daemon_ = nullptr;
};

} // namespace mayhem::metrics
