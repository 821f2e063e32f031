// Signed requests (README "Signed requests and the trust model"): HMAC-SHA256 through OpenSSL's
// libcrypto over a canonical form of the fields that decide what happens, under a secret shared
// by producers (`mayhem publish --auth-key-file`) and workers (`mayhem worker --auth-key-file`).
// The decoder checks the signature (message.cpp, check_signature) before any field is used.
//
// The canonical form is "mayhem-request-v1," followed by message_id, instance_name, hostname,
// reason and issued_at, each as a netstring "<length in bytes>:<bytes>," of the value the JSON
// carries (after unescaping; before the worker trims or lowers anything), an absent field as the
// empty string. Length prefixes keep it unambiguous: no two field lists have the same form.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace mayhem::auth {

// A key shorter than this is refused: 256 bits, the size of the MAC.
inline constexpr std::size_t min_key_bytes = 32;
// A key file longer than this is not a key (a wrong path, say).
inline constexpr std::size_t max_key_file_bytes = 4096;
// How far ahead of the worker's clock a request's issued_at may be (producers' clocks drift).
inline constexpr std::chrono::seconds max_clock_skew{60};
// --auth-key-file may be given this many times: the old key and the new one while they rotate.
inline constexpr std::size_t max_keys = 2;

inline constexpr std::size_t mac_bytes = 32;
using mac = std::array<unsigned char, mac_bytes>;

// The signed fields of a request, as it carries them; an absent field is empty.
struct signed_fields {
    std::string_view message_id, instance_name, hostname, reason, issued_at;
};

// The exact bytes a signature covers (the MAC is computed over the same pieces without building
// this string; tests and other producers use it).
std::string canonical(const signed_fields& f);

// A key file's secret: its bytes, hex-decoded when the file holds only hex digits (and
// surrounding whitespace), else the file's bytes exactly. The file must be a regular file that
// neither group nor others may access (mode 0600 or 0400, as ssh asks of a private key), and
// the secret at least min_key_bytes long. `error` names the file and what is wrong.
struct key_file {
    std::string secret;
    std::string error; // empty: read
};
key_file read_key_file(const std::string& path);

// The keys a worker accepts and a producer signs with, each with its HMAC state prepared once.
// Not thread-safe: one thread uses a ring at a time (the loop thread in the worker; a ring read
// on SIGHUP's thread is handed over whole).
class key_ring {
public:
    // `secrets` in the order given: the last one signs, any of them verifies.
    explicit key_ring(const std::vector<std::string>& secrets);
    key_ring(const key_ring&) = delete;
    key_ring& operator=(const key_ring&) = delete;
    ~key_ring();

    // Reads each file (read_key_file); an error names the first bad file.
    static std::variant<std::shared_ptr<key_ring>, std::string>
    load(const std::vector<std::string>& files);

    std::size_t size() const noexcept { return keys_.size(); }
    // The MAC of `f` under the signing key (the last one), as 64 lower-case hex digits.
    std::string sign(const signed_fields& f);
    // True when `given` is the MAC of `f` under one of the keys; each comparison takes the same
    // time whatever the bytes (CRYPTO_memcmp), and every key is tried. Never throws.
    bool verify(const signed_fields& f, const mac& given) noexcept;
    // Each key's fingerprint: the first 8 bytes of its SHA-256, in hex (safe to log; lets an
    // operator see that producers and workers hold the same keys).
    const std::vector<std::string>& fingerprints() const noexcept { return fingerprints_; }

private:
    struct key;
    static bool compute(key& k, const signed_fields& f, mac& out) noexcept;
    std::vector<std::unique_ptr<key>> keys_;
    std::vector<std::string> fingerprints_;
};

// The ring's fingerprints joined by commas, or "none" without a ring: for logs.
std::string describe(const key_ring* ring);

// 64 hex digits (either case) as a MAC; nullopt for anything else.
std::optional<mac> parse_mac(std::string_view hex) noexcept;

// issued_at: a UTC time written exactly as "2026-12-02T14:20:42Z" (RFC 3339, whole seconds).
std::string format_time(std::chrono::system_clock::time_point t);
std::optional<std::chrono::sys_seconds> parse_time(std::string_view s) noexcept;

// `payload` (a JSON object) with "issued_at" set to `now` and "signature" to its MAC under the
// ring's signing key: what `mayhem publish --auth-key-file` sends. nullopt when the payload is
// not a JSON object whose signed fields are strings (it is then sent as it is, unsigned).
std::optional<std::string> sign_request(std::string_view payload, key_ring& ring,
                                        std::chrono::system_clock::time_point now);

} // namespace mayhem::auth
