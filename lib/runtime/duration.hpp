// Durations as people write them on command lines: "250ms", "2s", "5m", "1h", "7d", "0".
// Ranges as MIN..MAX ("10ms..1s"); a single value is a range of one.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>

namespace mayhem {

using millis = std::chrono::milliseconds;

// nullopt when `s` is not a duration; a bare number means seconds.
std::optional<millis> parse_duration(std::string_view s);
std::string format_duration(millis d);

struct latency_range {
    millis min{0};
    millis max{0};

    bool zero() const noexcept { return max.count() <= 0; }
    template <class Rng>
    millis sample(Rng& rng) const {
        if (max <= min) return min;
        auto span = static_cast<std::uint64_t>((max - min).count()) + 1;
        return min + millis{static_cast<std::int64_t>(rng() % span)};
    }
};

std::optional<latency_range> parse_latency_range(std::string_view s);
std::string format_latency_range(const latency_range& r);

// Byte sizes: "65536", "64KiB", "64k", "1MiB", "1m".
std::optional<std::uint64_t> parse_bytes(std::string_view s);

} // namespace mayhem
