// One asynchronous Redis connection on the worker's loop (hiredis's async API on a uv_poll_t:
// no extra thread), with the hand-shake (AUTH, SELECT, CLIENT SETNAME, CLIENT ID, PING), a connect
// timeout and reconnection with capped exponential backoff.
//
// Ownership: the hiredis context is freed only by hiredis itself (after a lost connection) or by
// close()/a failed hand-shake; its uv_poll_t is an rt::uv_handle owned by the glue in
// redis_link.cpp (not hiredis's libuv adapter, which ignores poll errors). Every reply callback is
// called exactly once: with the reply, or with nullptr when the connection went away first (or
// close() freed it), so a caller can requeue what it sent. close() must not be called from
// inside one of this link's reply callbacks (hiredis would defer the free past the link's
// lifetime). Threading: loop thread only.
#pragma once

#include "runtime/loop.hpp"
#include "sources/redis_url.hpp"

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct redisAsyncContext;
struct redisReply;

namespace mayhem {

class redis_link {
public:
    using reply_fn = std::function<void(redisReply*)>;
    struct hooks {
        std::function<void()> up;                         // hand-shake done
        std::function<void(const std::string&)> down;     // lost or failed; a retry is scheduled
        std::function<void(const std::string&)> rejected; // AUTH/ACL refused (retry scheduled)
    };

    redis_link(rt::loop& loop, redis_endpoint ep, std::string role, hooks h);
    redis_link(const redis_link&) = delete;
    redis_link& operator=(const redis_link&) = delete;
    ~redis_link();

    // Starts connecting (and keeps reconnecting until close()).
    void open();
    // Frees the connection; pending callbacks run now with nullptr. No reconnect after it.
    void close();

    bool up() const noexcept { return up_; }
    long long client_id() const noexcept { return client_id_; }
    std::uint64_t connects() const noexcept { return connects_; }

    // Sends one command; false (and `fn` is not called) when the link is not up.
    bool send(int argc, const char** argv, const std::size_t* lens, reply_fn fn);
    bool send(const std::vector<std::string>& args, reply_fn fn);
    bool send(std::initializer_list<std::string_view> args, reply_fn fn);

    // A reply's text when it is an error (or the connection was lost); empty when fine.
    static std::string error_of(const redisReply* r);

private:
    struct pending;
    struct resolve;
    static void on_connect(const redisAsyncContext* c, int status);
    static void on_disconnect(const redisAsyncContext* c, int status);
    static void on_reply(redisAsyncContext* c, void* reply, void* privdata);

    void connect_to(const std::string& address);
    bool raw_send(int argc, const char** argv, const std::size_t* lens, reply_fn fn);
    bool raw_send_list(std::initializer_list<std::string> args, reply_fn fn);
    void handshake();
    // The current connection is gone or must go: forget it and schedule a reconnect.
    void drop(const std::string& why, bool free_it);
    void retry_later();

    rt::loop& loop_;
    redis_endpoint ep_;
    std::string role_;
    hooks hooks_;
    redisAsyncContext* ctx_ = nullptr;
    resolve* resolving_ = nullptr;
    std::uint64_t gen_ = 0; // bumped per connection attempt
    bool up_ = false;
    bool closed_ = false;
    bool opened_ = false;
    long long client_id_ = -1;
    std::uint32_t failures_ = 0; // consecutive, for the backoff
    std::uint64_t connects_ = 0;
    rt::delayed_call retry_timer_;
    rt::delayed_call connect_timeout_;
};

} // namespace mayhem
