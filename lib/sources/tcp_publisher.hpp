// `mayhem publish --tcp HOST:PORT`: sends requests to a worker's tcp source over K connections
// and reads every answer (README, "TCP"). Each connection keeps at most `window` requests
// unanswered, writes in batches, and counts the answers by outcome. With `retry`, a request
// answered `retried` (after its retry_after_ms) or `released`, or left unanswered by a connection
// that closed, is sent again, on a new connection if need be.
//
// Threading: runs its own loop on the calling thread until every request is answered or given up.
#pragma once

#include "pipeline/outcome.hpp"

#include <array>
#include <cstdint>
#include <functional>
#include <string>

namespace mayhem {

struct tcp_publish_options {
    std::string address; // numeric IPv4 HOST:PORT
    std::size_t connections = 1;
    bool retry = false;
    std::size_t window = 8192; // unanswered requests per connection at most
    // Connections in a row that failed or were refused, 200 ms apart, before giving up (with
    // retry); an answer resets the count.
    int max_connect_failures = 50;
};

struct tcp_publish_result {
    std::uint64_t sent = 0;                             // requests sent (a resend counts again)
    std::uint64_t requests = 0;                         // distinct requests taken from the input
    std::array<std::uint64_t, outcome_count> answers{}; // by outcome, every answer
    std::uint64_t unanswered = 0; // sent and never answered (a connection closed first)
    std::uint64_t refused = 0;    // connections the worker refused (--max-connections)
    std::uint64_t done = 0;       // requests whose last answer was acked, skipped, dead_lettered
    bool gave_up = false; // input was left unsent: no connection was open or could be opened
    std::string error;    // the last connection error, if any
};

// `next` fills its argument with the next request and returns false at the end of the input.
tcp_publish_result publish_tcp(const tcp_publish_options& opts,
                               const std::function<bool(std::string&)>& next);

} // namespace mayhem
