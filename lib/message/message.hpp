// A host-restart request and its decoding from a JSON payload.
//
// Schema: an object with required non-empty strings `message_id` and `instance_name`, optional
// strings `hostname` (else derived as <instance_name>.<domain>) and `reason`. Other fields are
// ignored. Decoding never throws: a bad payload yields a decode_error with a precise reason and
// a small fixed kind (the kind is a metric label; the reason is free text for logs).
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace mayhem {

// A decoded request. Its four strings share one buffer and are read as views: one allocation,
// and 48 bytes in place (four std::strings took 128), as every message in flight holds one.
// Copies are independent (the views are offsets into the copy's own buffer). The views are
// const so that `m.hostname() = x` does not compile (it would assign to a temporary).
class message {
public:
    message() = default;
    message(std::string_view message_id, std::string_view instance_name, std::string_view hostname,
            std::string_view reason = {});

    message(const message&) = default;
    message& operator=(const message&) = default;
    // A moved-from message is empty (all four views), not views past its emptied buffer.
    message(message&& o) noexcept : buf_(std::move(o.buf_)) {
        std::copy(std::begin(o.end_), std::end(o.end_), end_);
        o.clear();
    }
    message& operator=(message&& o) noexcept {
        if (this != &o) {
            buf_ = std::move(o.buf_);
            std::copy(std::begin(o.end_), std::end(o.end_), end_);
            o.clear();
        }
        return *this;
    }
    ~message() = default;

    const std::string_view message_id() const noexcept { return piece(0); }
    const std::string_view instance_name() const noexcept { return piece(1); }
    const std::string_view hostname() const noexcept { return piece(2); } // given or derived
    const std::string_view reason() const noexcept { return piece(3); }

    // `hostname` is the concatenation of `host_parts` (one piece as given, or the derived
    // "<instance>.<domain>" as three).
    void assign(std::string_view message_id, std::string_view instance_name,
                std::initializer_list<std::string_view> host_parts, std::string_view reason);

private:
    void clear() noexcept {
        buf_.clear();
        std::fill(std::begin(end_), std::end(end_), 0);
    }
    std::string_view piece(int i) const noexcept {
        std::uint32_t from = i == 0 ? 0 : end_[i - 1];
        return {buf_.data() + from, end_[i] - from};
    }
    std::string buf_;
    std::uint32_t end_[4] = {}; // where each piece ends in buf_
};

enum class decode_kind : std::uint8_t {
    too_large,
    not_utf8,
    invalid_json,
    not_object,
    missing_field,
    wrong_type,
    empty_field,
};
inline constexpr int decode_kind_count = 7;
std::string_view to_string(decode_kind k) noexcept;

struct decode_error {
    decode_kind kind;
    std::string reason;
};

struct decode_options {
    std::size_t max_bytes = 64 * 1024;
    std::string host_domain = "example.net";
};

using decoded = std::variant<message, decode_error>;

decoded decode(std::string_view payload, const decode_options& opts);
// The same, filling `out` in place; returns the error if there is one.
std::optional<decode_error> decode_into(message& out, std::string_view payload,
                                        const decode_options& opts);

namespace details {
// The same through nlohmann_json's SAX parser alone. decode_into() takes a direct path for a
// flat object of plain strings and this one for everything else; tests compare the two.
std::optional<decode_error> decode_with_parser(message& out, std::string_view payload,
                                               const decode_options& opts);
} // namespace details

// True if `s` is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool valid_utf8(std::string_view s) noexcept;

} // namespace mayhem
