// A small HTTP server on libmicrohttpd for /metrics, /healthz and /readyz. One thread of its own
// polls every connection with epoll, so connections that are idle or send slowly cost a file
// descriptor each and hold nothing up: the probes answer whatever else is connected (idle ones
// are closed after connection_timeout). The handler is called on that thread, never on the
// loop thread, so it must only read atomics (live_state, pipeline_stats), answer quickly, and
// never log (the logger belongs to the loop thread).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

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

// "off", or HOST:PORT with a numeric IPv4 host and a port 1..65535.
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
    // Stops accepting, waits for the request being answered, joins the thread.
    ~http_server();

    // Idle connections are closed after this long; at most max_connections are open at once
    // (more are refused until some close).
    static constexpr unsigned connection_timeout_s = 5;
    static constexpr unsigned max_connections = 1000;

    const std::string& address() const noexcept { return addr_; }

private:
    http_server(std::string addr, http_handler handler);
    static int on_request(void* self, MHD_Connection* conn, const char* url, const char* method,
                          const char* version, const char* upload, std::size_t* upload_size,
                          void** state) noexcept;

    std::string addr_;
    http_handler handler_;
    MHD_Daemon* daemon_ = nullptr;
};

} // namespace mayhem::metrics
