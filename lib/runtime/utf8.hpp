// UTF-8 decoding of one sequence, shared by the message decoder (which refuses payloads that are
// not UTF-8) and the logger (which writes U+FFFD for bytes that are not).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace mayhem::rt {

// The length of the valid UTF-8 sequence at the start of `s`, and in `cp` the code point it
// encodes; 0 when `s` is empty or starts with no valid sequence (a stray continuation byte, a
// truncated, overlong or surrogate sequence, a code point above U+10FFFF).
inline std::size_t utf8_sequence(std::string_view s, std::uint32_t& cp) noexcept {
    if (s.empty()) return 0;
    auto c = static_cast<unsigned char>(s[0]);
    std::size_t n;
    if (c < 0x80) {
        cp = c;
        return 1;
    }
    if ((c & 0xE0) == 0xC0) {
        n = 2;
        cp = c & 0x1Fu;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3;
        cp = c & 0x0Fu;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4;
        cp = c & 0x07u;
    } else {
        return 0;
    }
    if (s.size() < n) return 0;
    for (std::size_t i = 1; i < n; ++i) {
        auto b = static_cast<unsigned char>(s[i]);
        if ((b & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (b & 0x3Fu);
    }
    static constexpr std::uint32_t min_for[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

} // namespace mayhem::rt
