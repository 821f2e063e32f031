// A host-restart request and its decoding from a JSON payload.
//
// Schema: an object with required non-empty strings `message_id` and `instance_name`, optional
// strings `hostname` (else derived as <instance_name>.<domain>) and `reason`, and the optional
// strings `issued_at` and `signature` of a signed request (auth.hpp). Other fields are ignored.
// Decoding never throws: a bad payload yields a decode_error with a precise reason and a small
// fixed kind (the kind is a metric label; the reason is free text for logs).
#pragma once

#include "message/auth.hpp"
#include "runtime/hash.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace mayhem {

// A decoded request. Its four strings are stored back to back and read as views: inside the
// message itself while they fit in `inline_bytes` (a UUID id, an instance name and its derived
// hostname do), in one heap block otherwise. A message in flight is then read and freed without
// touching the heap. Copies are independent (views are offsets into the copy's own storage).
// The views are const so that `m.hostname() = x` does not compile (it would assign to a
// temporary).
class message {
public:
    static constexpr std::size_t inline_bytes = 80;

    message() = default;
    message(std::string_view message_id, std::string_view instance_name, std::string_view hostname,
            std::string_view reason = {});
    message(const message& o) { *this = o; }
    message& operator=(const message& o);
    // A moved-from message is empty (all four views).
    message(message&& o) noexcept { *this = std::move(o); }
    message& operator=(message&& o) noexcept;
    ~message() = default;

    const std::string_view message_id() const noexcept { return piece(0); }
    const std::string_view instance_name() const noexcept { return piece(1); }
    // The machine identity (below): given or derived, lower case, no trailing dot.
    const std::string_view hostname() const noexcept { return piece(2); }
    const std::string_view reason() const noexcept { return piece(3); }
    // rt::hash_key(message_id()) and rt::hash_key(hostname()), computed once: the in-flight
    // indexes and the memory store would otherwise hash them a dozen times over a message's life.
    std::uint64_t id_hash() const noexcept { return id_hash_; }
    std::uint64_t host_hash() const noexcept { return host_hash_; }

    // `hostname` is the concatenation of `host_parts` (one piece as given, or the derived
    // "<instance>.<domain>" as three), in lower case.
    void assign(std::string_view message_id, std::string_view instance_name,
                std::initializer_list<std::string_view> host_parts, std::string_view reason);

private:
    const char* data() const noexcept { return heap_ ? heap_.get() : inline_; }
    char* storage(std::size_t bytes); // room for `bytes`, inline or on the heap
    void clear() noexcept {
        heap_.reset();
        std::fill(std::begin(end_), std::end(end_), 0);
        id_hash_ = host_hash_ = rt::empty_key_hash;
    }
    std::string_view piece(int i) const noexcept {
        std::uint32_t from = i == 0 ? 0 : end_[i - 1];
        return {data() + from, end_[i] - from};
    }
    void rehash() noexcept;
    std::unique_ptr<char[]> heap_; // null: the pieces are in inline_
    std::uint64_t id_hash_ = rt::empty_key_hash, host_hash_ = rt::empty_key_hash;
    std::uint32_t end_[4] = {}; // where each piece ends
    char inline_[inline_bytes];
};

enum class decode_kind : std::uint8_t {
    too_large,
    not_utf8,
    invalid_json,
    not_object,
    missing_field,
    wrong_type,
    empty_field,
    // With keys configured, a request that is not signed by one of them (auth.hpp): counted
    // apart from the others (mayhem_auth_rejected_total).
    unsigned_request, // no signature ("unsigned")
    bad_signature,    // a signature that no key made, or over fields since changed
    expired,          // issued more than --auth-max-age ago, or too far ahead of our clock
};
inline constexpr int decode_kind_count = 10;
std::string_view to_string(decode_kind k) noexcept;
// The kinds that reject a request as not signed by a trusted producer.
constexpr bool is_auth_rejection(decode_kind k) noexcept {
    return k == decode_kind::unsigned_request || k == decode_kind::bad_signature ||
           k == decode_kind::expired;
}

struct decode_error {
    decode_kind kind;
    std::string reason;
};

struct decode_options {
    std::size_t max_bytes = 64 * 1024;
    std::string host_domain = "example.net";
    // With a key ring, every request must be signed by one of its keys and issued within
    // [now - auth_max_age, now + auth::max_clock_skew] (the system clock): checked after the
    // JSON is parsed, before any field is used. The ring is used on the decoding thread only.
    std::shared_ptr<auth::key_ring> auth_keys;
    std::chrono::milliseconds auth_max_age{10 * 60 * 1000};
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

// ---------------------------------------------------------------------------------------------
// The machine identity: one name per machine, which every rail (allow/deny, coalescing, the
// cooldown, the store's records) and the command template use. A host name is lower case and has
// no trailing dot (message::assign lowers it; decoding strips the dots); a name derived from an
// instance is <instance_name>.<host-domain>, the same way wherever it is derived.
// ---------------------------------------------------------------------------------------------

// `name` without its trailing dots (a fully qualified "web-1.example.net." is "web-1.example.net").
std::string_view without_trailing_dot(std::string_view name) noexcept;
// The pieces of the host name derived from `instance_name` (to be concatenated, then lowered).
struct derived_host {
    std::string_view instance, dot, domain;
};
derived_host derive_host(std::string_view instance_name, std::string_view domain) noexcept;
// The same, as one lower-case string: the machine an `{instance_name}` in a command names.
std::string derived_host_name(std::string_view instance_name, std::string_view domain);

// True if `s` is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool valid_utf8(std::string_view s) noexcept;

} // namespace mayhem
