#include "runtime/duration.hpp"

#include <cctype>
#include <charconv>

namespace mayhem {

namespace {
std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
        s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
        s.remove_suffix(1);
    return s;
}

// Splits "12.5ms" into 12.5 and "ms".
bool split_number(std::string_view s, double& value, std::string_view& unit) {
    s = trim(s);
    std::size_t i = 0;
    while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.'))
        ++i;
    if (i == 0) return false;
    std::string num(s.substr(0, i));
    char* end = nullptr;
    value = std::strtod(num.c_str(), &end);
    if (end != num.c_str() + num.size() || value < 0) return false;
    unit = trim(s.substr(i));
    return true;
}
} // namespace

std::optional<millis> parse_duration(std::string_view s) {
    double v;
    std::string_view unit;
    if (!split_number(s, v, unit)) return std::nullopt;
    double ms;
    if (unit.empty() || unit == "s")
        ms = v * 1000;
    else if (unit == "ms")
        ms = v;
    else if (unit == "us")
        ms = v / 1000;
    else if (unit == "m" || unit == "min")
        ms = v * 60'000;
    else if (unit == "h")
        ms = v * 3'600'000;
    else if (unit == "d")
        ms = v * 86'400'000;
    else
        return std::nullopt;
    if (ms > 1e15) return std::nullopt;
    return millis{static_cast<std::int64_t>(ms + 0.5)};
}

std::string format_duration(millis d) {
    auto ms = d.count();
    if (ms == 0) return "0";
    if (ms % 86'400'000 == 0) return std::to_string(ms / 86'400'000) + "d";
    if (ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
    if (ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
    if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

std::optional<latency_range> parse_latency_range(std::string_view s) {
    auto dots = s.find("..");
    if (dots == std::string_view::npos) {
        auto d = parse_duration(s);
        if (!d) return std::nullopt;
        return latency_range{*d, *d};
    }
    auto lo = parse_duration(s.substr(0, dots));
    auto hi = parse_duration(s.substr(dots + 2));
    if (!lo || !hi || *hi < *lo) return std::nullopt;
    return latency_range{*lo, *hi};
}

std::string format_latency_range(const latency_range& r) {
    if (r.min == r.max) return format_duration(r.min);
    return format_duration(r.min) + ".." + format_duration(r.max);
}

std::optional<std::uint64_t> parse_bytes(std::string_view s) {
    double v;
    std::string_view unit;
    if (!split_number(s, v, unit)) return std::nullopt;
    double mult;
    if (unit.empty() || unit == "B")
        mult = 1;
    else if (unit == "k" || unit == "K" || unit == "KiB" || unit == "kB")
        mult = 1024;
    else if (unit == "m" || unit == "M" || unit == "MiB" || unit == "MB")
        mult = 1024.0 * 1024;
    else
        return std::nullopt;
    double bytes = v * mult;
    // 2^64 is exact as a double; from there up the conversion would be undefined.
    if (!(bytes < 18446744073709551616.0)) return std::nullopt;
    return static_cast<std::uint64_t>(bytes);
}

} // namespace mayhem
