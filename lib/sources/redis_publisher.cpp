#include "sources/redis_publisher.hpp"

#include <hiredis/hiredis.h>
#include <stdexcept>
#include <utility>
#include <vector>

namespace mayhem {

redis_publisher::redis_publisher(const redis_endpoint& ep, std::string stream,
                                 std::chrono::milliseconds timeout, std::size_t depth)
    : shown_(ep.shown()), stream_(std::move(stream)), depth_(depth ? depth : 1) {
    timeval tv{static_cast<time_t>(timeout.count() / 1000),
               static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    ctx_ = ep.unix_path.empty() ? redisConnectWithTimeout(ep.host.c_str(), ep.port, tv)
                                : redisConnectUnixWithTimeout(ep.unix_path.c_str(), tv);
    if (!ctx_) throw std::runtime_error("cannot connect to " + shown_ + ": out of memory");
    if (ctx_->err) {
        std::string why = ctx_->errstr;
        redisFree(std::exchange(ctx_, nullptr));
        throw std::runtime_error("cannot connect to " + shown_ + ": " + why);
    }
    redisSetTimeout(ctx_, timeval{30, 0});
    try {
        if (!ep.password.empty()) {
            if (ep.user.empty())
                command({"AUTH", ep.password}, "AUTH");
            else
                command({"AUTH", ep.user, ep.password}, "AUTH");
        }
        if (ep.db != 0) command({"SELECT", std::to_string(ep.db)}, "SELECT");
    } catch (...) {
        redisFree(std::exchange(ctx_, nullptr)); // no destructor runs for a throwing constructor
        throw;
    }
}

redis_publisher::~redis_publisher() {
    if (ctx_) redisFree(ctx_);
}

void redis_publisher::command(std::initializer_list<std::string_view> args, const char* what) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (auto a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (!r) throw std::runtime_error(std::string(what) + " on " + shown_ + ": " + ctx_->errstr);
    std::string err = r->type == REDIS_REPLY_ERROR ? std::string(r->str, r->len) : "";
    freeReplyObject(r);
    if (!err.empty()) throw std::runtime_error(std::string(what) + " on " + shown_ + ": " + err);
}

void redis_publisher::add(std::string_view payload) {
    const char* argv[] = {"XADD", stream_.c_str(), "*", "payload", payload.data()};
    std::size_t lens[] = {4, stream_.size(), 1, 7, payload.size()};
    if (redisAppendCommandArgv(ctx_, 5, argv, lens) != REDIS_OK)
        throw std::runtime_error("XADD on " + shown_ + ": " + ctx_->errstr);
    if (++queued_ >= depth_) flush();
}

void redis_publisher::flush() {
    std::string first_error;
    for (; queued_ > 0; --queued_) {
        void* reply = nullptr;
        if (redisGetReply(ctx_, &reply) != REDIS_OK)
            throw std::runtime_error("XADD on " + shown_ + ": " + ctx_->errstr);
        auto* r = static_cast<redisReply*>(reply);
        if (r->type == REDIS_REPLY_ERROR) {
            if (first_error.empty()) first_error.assign(r->str, r->len);
        } else {
            ++sent_;
        }
        freeReplyObject(r);
    }
    if (!first_error.empty()) throw std::runtime_error("XADD on " + shown_ + ": " + first_error);
}

} // namespace mayhem
