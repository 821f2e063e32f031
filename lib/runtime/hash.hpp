// A fast 64-bit hash for short keys (message ids, host names), eight bytes a step. std::hash of
// a string walks it at about three instructions a byte, and each message hashes its id and its
// host several times (in-flight index, running hosts, the memory store's record); this takes
// about a quarter of that. Not keyed: like std::hash, it is no defence against keys chosen to
// collide, which only slow a lookup down (the indexes compare the keys themselves).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace mayhem::rt {

constexpr std::uint64_t hash_key(std::string_view s) noexcept {
    constexpr std::uint64_t k1 = 0xbf58476d1ce4e5b9ULL, k2 = 0x94d049bb133111ebULL;
    std::uint64_t h = 0x9e3779b97f4a7c15ULL ^ (s.size() * k2);
    const char* p = s.data();
    std::size_t n = s.size();
    for (; n >= 8; p += 8, n -= 8) {
        std::uint64_t w;
        std::memcpy(&w, p, 8);
        h = (h ^ w) * k1;
        h ^= h >> 31;
    }
    // The last 1..7 bytes: the final eight bytes of the key (overlapping the last full step)
    // when it is that long, which is one load instead of a byte loop or a memcpy call.
    std::uint64_t tail = 0;
    if (n > 0 && s.size() >= 8) {
        std::memcpy(&tail, s.data() + s.size() - 8, 8);
    } else {
        for (std::size_t i = 0; i < n; ++i)
            tail |= static_cast<std::uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
    }
    h = (h ^ tail) * k2;
    h ^= h >> 29;
    h *= k1;
    h ^= h >> 32;
    return h;
}

// The hash of "" (no bytes are read, so it is a constant).
inline constexpr std::uint64_t empty_key_hash = hash_key({});

} // namespace mayhem::rt
