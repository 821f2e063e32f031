// A small HTTP server on civetweb for /metrics, /healthz and /readyz. civetweb runs its own
// threads (a listener and a couple of workers); the handler is called on those threads, never on
// the loop thread, so it must only read atomics (live_state, pipeline_stats) and never log
// (the logger belongs to the loop thread).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

struct mg_context;
struct mg_connection;

namespace mayhem::metrics {

struct http_response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

// `path` is the request path without the query string; only GET and HEAD reach the handler.
using http_handler = std::function<http_response(std::string_view path)>;

// "off", or HOST:PORT with a numeric IPv4 host and a port 1..65535. (Debian's civetweb is built
// without IPv6, so an IPv6 address could never be bound.)
bool valid_listen_address(std::string_view addr);

class http_server {
public:
    // Binds `addr` (a valid_listen_address other than "off") and starts serving. On failure
    // (address in use, no permission) returns nullptr and sets `error` to a sentence naming the
    // address.
    static std::unique_ptr<http_server> start(const std::string& addr, http_handler handler,
                                              std::string& error);
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;
    // Stops accepting, waits for requests being answered, joins the threads.
    ~http_server();

    const std::string& address() const noexcept { return addr_; }

private:
    http_server(std::string addr, http_handler handler);
    static int on_request(mg_connection* conn, void* self) noexcept;

    std::string addr_;
    http_handler handler_;
    mg_context* ctx_ = nullptr;
};

} // namespace mayhem::metrics
