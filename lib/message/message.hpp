// A host-restart request and its decoding from a JSON payload.
//
// Schema: an object with required non-empty strings `message_id` and `instance_name`, optional
// strings `hostname` (else derived as <instance_name>.<domain>) and `reason`. Other fields are
// ignored. Decoding never throws: a bad payload yields a decode_error with a precise reason and
// a small fixed kind (the kind is a metric label; the reason is free text for logs).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace mayhem {

struct message {
    std::string message_id;
    std::string instance_name;
    std::string hostname; // always set after decode (given or derived)
    std::string reason;
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
