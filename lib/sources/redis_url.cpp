#include "sources/redis_url.hpp"

#include <charconv>

namespace mayhem {

namespace {

bool parse_int(std::string_view s, int& out, int lo, int hi) {
    if (s.empty()) return false;
    int v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || p != s.data() + s.size() || v < lo || v > hi) return false;
    out = v;
    return true;
}

// %XX escapes, so a password may hold '@', ':' or '/'.
std::optional<std::string> percent_decode(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out += s[i];
            continue;
        }
        int v = 0;
        if (i + 2 >= s.size()) return std::nullopt;
        auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
        if (ec != std::errc{} || p != s.data() + i + 3) return std::nullopt;
        out += static_cast<char>(v);
        i += 2;
    }
    return out;
}

std::nullopt_t fail(std::string* error, std::string why) {
    if (error) *error = std::move(why);
    return std::nullopt;
}

} // namespace

std::string redis_endpoint::shown() const {
    std::string auth;
    if (!user.empty() || !password.empty()) auth = user + (password.empty() ? "" : ":***") + "@";
    if (!unix_path.empty())
        return "unix://" + auth + unix_path + (db ? "?db=" + std::to_string(db) : "");
    bool v6 = host.find(':') != std::string::npos;
    return "redis://" + auth + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port) + "/" +
           std::to_string(db);
}

std::optional<redis_endpoint> parse_redis_url(std::string_view url, std::string* error) {
    redis_endpoint ep;
    std::string_view rest;
    bool is_unix = false;
    if (url.starts_with("redis://")) {
        rest = url.substr(8);
    } else if (url.starts_with("unix://")) {
        rest = url.substr(7);
        is_unix = true;
    } else if (url.starts_with("rediss://")) {
        return fail(error, "TLS (rediss://) is not supported by this build's hiredis");
    } else {
        return fail(error, "expected redis://[[user]:password@]host[:port][/db] or "
                           "unix:///path[?db=N]");
    }

    // user info: everything before the last '@' (a percent-decoded password may hold '@').
    if (auto at = rest.rfind('@'); at != std::string_view::npos) {
        std::string_view info = rest.substr(0, at);
        rest = rest.substr(at + 1);
        std::string_view user = info, pass;
        if (auto colon = info.find(':'); colon != std::string_view::npos) {
            user = info.substr(0, colon);
            pass = info.substr(colon + 1);
        } else {
            // redis://secret@host: a lone word is the password (as redis-cli -u reads it).
            pass = info;
            user = {};
        }
        auto u = percent_decode(user);
        auto p = percent_decode(pass);
        if (!u || !p) return fail(error, "bad %-escape in the user or password");
        ep.user = *u;
        ep.password = *p;
    }

    if (is_unix) {
        ep.host.clear();
        std::string_view path = rest, query;
        if (auto q = rest.find('?'); q != std::string_view::npos) {
            path = rest.substr(0, q);
            query = rest.substr(q + 1);
        }
        if (path.empty() || path.front() != '/')
            return fail(error,
                        "unix:// needs an absolute socket path, e.g. unix:///run/redis.sock");
        ep.unix_path = std::string(path);
        if (!query.empty()) {
            if (!query.starts_with("db=") || !parse_int(query.substr(3), ep.db, 0, 100000))
                return fail(error, "the only query parameter is db=N");
        }
        return ep;
    }

    std::string_view hostport = rest, db;
    if (auto slash = rest.find('/'); slash != std::string_view::npos) {
        hostport = rest.substr(0, slash);
        db = rest.substr(slash + 1);
    }
    if (!db.empty() && !parse_int(db, ep.db, 0, 100000))
        return fail(error, "the database after '/' must be a number");

    std::string_view host = hostport, port;
    if (hostport.starts_with('[')) { // [::1]:6379
        auto close = hostport.find(']');
        if (close == std::string_view::npos) return fail(error, "unclosed '[' in the host");
        host = hostport.substr(1, close - 1);
        std::string_view after = hostport.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return fail(error, "expected ':' after ']'");
            port = after.substr(1);
            if (port.empty()) return fail(error, "empty port");
        }
    } else if (auto colon = hostport.rfind(':'); colon != std::string_view::npos) {
        host = hostport.substr(0, colon);
        port = hostport.substr(colon + 1);
        if (port.empty()) return fail(error, "empty port");
    }
    if (host.empty()) return fail(error, "missing host");
    ep.host = std::string(host);
    if (!port.empty() && !parse_int(port, ep.port, 1, 65535))
        return fail(error, "the port must be a number from 1 to 65535");
    return ep;
}

} // namespace mayhem
