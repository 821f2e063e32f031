// The producer side of the redis source, for `mayhem publish`: XADD <stream> * payload <json>,
// pipelined (many commands per round trip) over one synchronous hiredis connection. A
// command-line tool, not the worker: blocking I/O is fine here.
#pragma once

#include "sources/redis_url.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

struct redisContext;

namespace mayhem {

class redis_publisher {
public:
    // Connects, authenticates and selects the database; throws std::runtime_error with a
    // message naming the URL (password masked) and what went wrong.
    redis_publisher(const redis_endpoint& ep, std::string stream,
                    std::chrono::milliseconds timeout = std::chrono::seconds{5},
                    std::size_t depth = 1000);
    redis_publisher(const redis_publisher&) = delete;
    redis_publisher& operator=(const redis_publisher&) = delete;
    ~redis_publisher();

    // Queues one entry; sends and waits for the replies every `depth` entries.
    void add(std::string_view payload);
    // Sends what is queued and waits for every reply. Throws on the first error reply.
    void flush();
    std::uint64_t sent() const noexcept { return sent_; }

private:
    void command(std::initializer_list<std::string_view> args, const char* what);

    redisContext* ctx_ = nullptr;
    std::string shown_;
    std::string stream_;
    std::size_t depth_;
    std::size_t queued_ = 0;
    std::uint64_t sent_ = 0;
};

} // namespace mayhem
