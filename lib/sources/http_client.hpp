// HTTP requests on the worker's loop: libcurl's multi interface, its sockets watched with uv_poll
// and its one timer on a uv_timer, so no request blocks the loop or takes a thread. libcurl
// keeps the connections and reuses them between requests (keep-alive).
//
// Threading: loop thread only.
#pragma once

#include "runtime/loop.hpp"

#include <chrono>
#include <curl/curl.h>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace mayhem {

// One request. GET when `method` is "GET" (no body), else a POST of `body`.
struct http_request {
    std::string method = "POST";
    std::string url;
    std::string body;
    std::string content_type = "application/json";
    std::vector<std::string> headers; // more header lines, "Name: value"
    std::chrono::milliseconds timeout{30000};
};

struct http_response {
    long status = 0; // 0: no response came (error says why)
    std::string body;
    std::string error; // the transport's error (refused, timed out), empty when a response came
};

class http_client {
public:
    using callback = std::function<void(http_response)>;

    explicit http_client(rt::loop& loop);
    http_client(const http_client&) = delete;
    http_client& operator=(const http_client&) = delete;
    ~http_client();

    // POSTs the JSON `body` to `url`. `done` runs later on the loop with the response, never
    // from inside post(). A non-empty `bearer` is sent as "Authorization: Bearer <bearer>".
    void post(const std::string& url, std::string body, std::chrono::milliseconds timeout,
              callback done, const std::string& bearer = {});
    // Sends `req`; `done` runs later on the loop with the response, never from inside send().
    void send(http_request req, callback done);
    // Requests under way.
    std::size_t active() const noexcept { return requests_.size(); }
    // Abandons every request under way (their callbacks never run) and frees the handles.
    void close();

private:
    struct request;
    static int on_socket(CURL* easy, curl_socket_t s, int what, void* self, void* socketp);
    static int on_timer_set(CURLM* multi, long timeout_ms, void* self);
    static void on_poll(uv_poll_t* p, int status, int events) noexcept;
    static void on_timeout(uv_timer_t* t) noexcept;
    void drive(curl_socket_t s, int flags);
    void collect();

    rt::loop& loop_;
    CURLM* multi_ = nullptr;
    rt::uv_handle<uv_timer_t> timer_;
    std::unordered_map<curl_socket_t, rt::uv_handle<uv_poll_t>> polls_;
    std::unordered_map<CURL*, std::unique_ptr<request>> requests_;
};

} // namespace mayhem
