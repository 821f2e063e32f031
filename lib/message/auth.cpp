#include "message/auth.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdexcept>
#include <sys/stat.h>
#include <unistd.h>

namespace mayhem::auth {

namespace {

constexpr std::string_view domain_tag = "mayhem-request-v1,";
constexpr char hex_digits[] = "0123456789abcdef";

// The canonical form, piece by piece: canonical() appends them, the MAC is fed them.
template <class Put>
void for_each_piece(const signed_fields& f, Put put) {
    put(domain_tag);
    for (std::string_view v : {f.message_id, f.instance_name, f.hostname, f.reason, f.issued_at}) {
        char len[24];
        int n = std::snprintf(len, sizeof len, "%zu:", v.size());
        put(std::string_view(len, static_cast<std::size_t>(n)));
        put(v);
        put(",");
    }
}

int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

std::string to_hex(const unsigned char* p, std::size_t n) {
    std::string out;
    out.reserve(2 * n);
    for (std::size_t i = 0; i < n; ++i)
        out += {hex_digits[p[i] >> 4], hex_digits[p[i] & 15]};
    return out;
}

std::string_view trim(std::string_view s) noexcept {
    auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    while (!s.empty() && ws(s.front()))
        s.remove_prefix(1);
    while (!s.empty() && ws(s.back()))
        s.remove_suffix(1);
    return s;
}

// The hex-decoded bytes when `s` is an even number of hex digits, else nullopt.
std::optional<std::string> from_hex(std::string_view s) {
    if (s.empty() || s.size() % 2 != 0) return std::nullopt;
    std::string out(s.size() / 2, '\0');
    for (std::size_t i = 0; i < out.size(); ++i) {
        int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        out[i] = static_cast<char>(hi << 4 | lo);
    }
    return out;
}

std::string mode_text(mode_t m) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
    return buf;
}

// HMAC from the default provider, fetched once for the process.
EVP_MAC* hmac() {
    static EVP_MAC* const fetched = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (!fetched) throw std::runtime_error("OpenSSL has no HMAC");
    return fetched;
}

} // namespace

std::string canonical(const signed_fields& f) {
    std::string out;
    for_each_piece(f, [&out](std::string_view piece) { out += piece; });
    return out;
}

key_file read_key_file(const std::string& path) {
    auto failed = [&](const std::string& why) { return key_file{{}, "'" + path + "': " + why}; };
    // O_NONBLOCK: a FIFO put where the key should be must not hang the start.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return failed(std::string("cannot open it: ") + std::strerror(errno));
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } guard{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0)
        return failed(std::string("cannot stat it: ") + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return failed("not a regular file");
    if ((st.st_mode & 077) != 0)
        return failed("mode " + mode_text(st.st_mode) +
                      " lets group or others access the key; it must be readable by its owner "
                      "only (chmod 600 '" +
                      path + "')");
    std::string bytes(max_key_file_bytes + 1, '\0');
    std::size_t got = 0;
    while (got < bytes.size()) {
        ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return failed(std::string("cannot read it: ") + std::strerror(errno));
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    if (got > max_key_file_bytes)
        return failed("longer than " + std::to_string(max_key_file_bytes) +
                      " bytes: not a key file");
    bytes.resize(got);
    std::string secret;
    const char* form = "bytes";
    if (auto decoded = from_hex(trim(bytes))) {
        secret = std::move(*decoded);
        form = "bytes (hex-decoded)";
    } else {
        secret = std::move(bytes);
    }
    if (secret.size() < min_key_bytes)
        return failed("holds " + std::to_string(secret.size()) + " " + form + " of key; at least " +
                      std::to_string(min_key_bytes) +
                      " are needed (make one with: openssl rand -hex 32)");
    return key_file{std::move(secret), {}};
}

// One key: its secret loaded into an HMAC context once; each MAC re-initialises the context
// with that same key (EVP_MAC_init with no key), which skips hashing the key again.
struct key_ring::key {
    EVP_MAC_CTX* ctx = nullptr;
    ~key() { EVP_MAC_CTX_free(ctx); }
};

key_ring::key_ring(const std::vector<std::string>& secrets) {
    for (const auto& s : secrets) {
        auto k = std::make_unique<key>();
        k->ctx = EVP_MAC_CTX_new(hmac());
        char digest[] = "SHA256";
        OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                               OSSL_PARAM_construct_end()};
        if (!k->ctx || EVP_MAC_init(k->ctx, reinterpret_cast<const unsigned char*>(s.data()),
                                    s.size(), params) != 1)
            throw std::runtime_error("OpenSSL cannot set up HMAC-SHA256");
        keys_.push_back(std::move(k));
        unsigned char sum[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        if (EVP_Digest(s.data(), s.size(), sum, &n, EVP_sha256(), nullptr) != 1)
            throw std::runtime_error("OpenSSL cannot compute SHA-256");
        fingerprints_.push_back(to_hex(sum, 8));
    }
}

key_ring::~key_ring() = default;

std::variant<std::shared_ptr<key_ring>, std::string>
key_ring::load(const std::vector<std::string>& files) {
    if (files.size() > max_keys)
        return "given " + std::to_string(files.size()) + " times; at most " +
               std::to_string(max_keys) + " keys (the old and the new one while they rotate)";
    std::vector<std::string> secrets;
    for (const auto& f : files) {
        auto k = read_key_file(f);
        if (!k.error.empty()) return k.error;
        secrets.push_back(std::move(k.secret));
    }
    auto ring = std::make_shared<key_ring>(secrets);
    for (auto& s : secrets) // the HMAC contexts hold the keys now
        OPENSSL_cleanse(s.data(), s.size());
    return ring;
}

// False only if OpenSSL fails (out of memory): never an exception on the decoder's path.
bool key_ring::compute(key& k, const signed_fields& f, mac& out) noexcept {
    bool ok = EVP_MAC_init(k.ctx, nullptr, 0, nullptr) == 1;
    for_each_piece(f, [&](std::string_view piece) {
        ok = ok && EVP_MAC_update(k.ctx, reinterpret_cast<const unsigned char*>(piece.data()),
                                  piece.size()) == 1;
    });
    std::size_t n = 0;
    return ok && EVP_MAC_final(k.ctx, out.data(), &n, out.size()) == 1 && n == out.size();
}

std::string key_ring::sign(const signed_fields& f) {
    if (keys_.empty()) throw std::logic_error("key_ring::sign without a key");
    mac m{};
    if (!compute(*keys_.back(), f, m))
        throw std::runtime_error("OpenSSL failed to compute an HMAC");
    return to_hex(m.data(), m.size());
}

bool key_ring::verify(const signed_fields& f, const mac& given) noexcept {
    bool match = false;
    for (auto& k : keys_) {
        mac m{};
        match |= compute(*k, f, m) && CRYPTO_memcmp(m.data(), given.data(), m.size()) == 0;
    }
    return match;
}

std::string describe(const key_ring* ring) {
    if (!ring || ring->size() == 0) return "none";
    std::string out;
    for (const auto& f : ring->fingerprints())
        out += (out.empty() ? "" : ",") + f;
    return out;
}

std::optional<mac> parse_mac(std::string_view hex) noexcept {
    if (hex.size() != 2 * mac_bytes) return std::nullopt;
    mac out{};
    for (std::size_t i = 0; i < mac_bytes; ++i) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        out[i] = static_cast<unsigned char>(hi << 4 | lo);
    }
    return out;
}

std::string format_time(std::chrono::system_clock::time_point t) {
    using namespace std::chrono;
    auto s = floor<seconds>(t);
    auto midnight = floor<days>(s);
    year_month_day ymd{midnight};
    hh_mm_ss hms{s - midnight};
    char buf[32];
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02dZ", static_cast<int>(ymd.year()),
                  static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                  static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                  static_cast<int>(hms.seconds().count()));
    return buf;
}

std::optional<std::chrono::sys_seconds> parse_time(std::string_view s) noexcept {
    using namespace std::chrono;
    // "YYYY-MM-DDTHH:MM:SSZ": digits where the pattern has 9, these separators elsewhere.
    constexpr std::string_view shape = "9999-99-99T99:99:99Z";
    if (s.size() != shape.size()) return std::nullopt;
    for (std::size_t i = 0; i < s.size(); ++i) {
        bool digit = s[i] >= '0' && s[i] <= '9';
        if (shape[i] == '9' ? !digit : s[i] != shape[i]) return std::nullopt;
    }
    auto num = [&](std::size_t at, std::size_t n) {
        int v = 0;
        for (std::size_t i = at; i < at + n; ++i)
            v = v * 10 + (s[i] - '0');
        return v;
    };
    year_month_day ymd{year{num(0, 4)}, month{static_cast<unsigned>(num(5, 2))},
                       day{static_cast<unsigned>(num(8, 2))}};
    int h = num(11, 2), m = num(14, 2), sec = num(17, 2);
    if (!ymd.ok() || h > 23 || m > 59 || sec > 59) return std::nullopt;
    return sys_days{ymd} + hours{h} + minutes{m} + seconds{sec};
}

std::optional<std::string> sign_request(std::string_view payload, key_ring& ring,
                                        std::chrono::system_clock::time_point now) {
    auto doc = nlohmann::json::parse(payload, nullptr, false);
    if (!doc.is_object()) return std::nullopt;
    std::string issued_at = format_time(now);
    doc["issued_at"] = issued_at;
    auto text = [&](const char* name, std::string_view& out) {
        auto it = doc.find(name);
        if (it == doc.end()) return true;
        if (!it->is_string()) return false;
        out = it->get_ref<const std::string&>();
        return true;
    };
    signed_fields f;
    if (!text("message_id", f.message_id) || !text("instance_name", f.instance_name) ||
        !text("hostname", f.hostname) || !text("reason", f.reason))
        return std::nullopt;
    f.issued_at = issued_at;
    doc["signature"] = ring.sign(f);
    return doc.dump();
}

} // namespace mayhem::auth
