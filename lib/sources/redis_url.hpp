// Where Redis is: `redis://[[user]:password@]host[:port][/db]` or `unix:///path[?db=N]`, parsed
// once at start-up (a bad URL is a usage error, never a retry). Shared by the redis source and
// `mayhem publish`. Plain data, no I/O.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace mayhem {

struct redis_endpoint {
    std::string host = "127.0.0.1"; // empty when unix_path is set
    int port = 6379;
    std::string unix_path;
    std::string user;     // ACL user name (AUTH user password); empty: AUTH password
    std::string password; // empty: no AUTH
    int db = 0;

    // The URL with the password masked, for logs.
    std::string shown() const;
};

// Parses a Redis URL; on failure returns nullopt and sets `error` to what is wrong.
std::optional<redis_endpoint> parse_redis_url(std::string_view url, std::string* error = nullptr);

} // namespace mayhem
