#include "message/auth.hpp"

#include "message/message.hpp"

#include <cstdio>
#include <cstdlib>
#include <doctest/doctest.h>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

using namespace mayhem;
using namespace std::chrono_literals;

namespace {

const std::string key_a = "fuzz-key-0123456789abcdef0123456789abcdef";
const std::string key_b(32, 'b');

std::shared_ptr<auth::key_ring> ring(std::vector<std::string> secrets) {
    return std::make_shared<auth::key_ring>(secrets);
}

decode_options with_keys(std::shared_ptr<auth::key_ring> keys) {
    decode_options o;
    o.auth_keys = std::move(keys);
    return o;
}

// The payload signed under `signer` as `mayhem publish` signs it, issued at `when`.
std::string signed_at(std::string_view payload, auth::key_ring& signer,
                      std::chrono::system_clock::time_point when) {
    auto s = auth::sign_request(payload, signer, when);
    REQUIRE(s);
    return *s;
}

// Both decoding paths must give the same answer; returns it.
std::optional<decode_error> check(std::string_view payload, const decode_options& o) {
    message fast, parsed;
    auto a = decode_into(fast, payload, o);
    auto b = details::decode_with_parser(parsed, payload, o);
    REQUIRE(a.has_value() == b.has_value());
    if (a) {
        CHECK(a->kind == b->kind);
        CHECK(a->reason == b->reason);
    } else {
        CHECK(fast.message_id() == parsed.message_id());
        CHECK(fast.hostname() == parsed.hostname());
    }
    return a;
}

std::string with_field(const std::string& payload, const char* key, const std::string& value) {
    auto doc = nlohmann::json::parse(payload);
    doc[key] = value;
    return doc.dump();
}

// A key file in a fresh temporary directory, with this content and mode.
struct temp_key {
    std::string dir, path;
    temp_key(const std::string& content, mode_t mode) {
        char tmpl[] = "/tmp/mayhem-auth-XXXXXX";
        REQUIRE(::mkdtemp(tmpl));
        dir = tmpl;
        path = dir + "/key";
        std::ofstream(path, std::ios::binary) << content;
        REQUIRE(::chmod(path.c_str(), mode) == 0);
    }
    ~temp_key() { std::filesystem::remove_all(dir); }
};

} // namespace

TEST_CASE("auth: the canonical form is length-prefixed, and its HMAC is the documented one") {
    auth::signed_fields f{"m-1", "web-1", "", "", "2026-12-02T14:20:42Z"};
    CHECK(auth::canonical(f) == "mayhem-request-v1,3:m-1,5:web-1,0:,0:,20:2026-12-02T14:20:42Z,");
    // Python: hmac.new(key, canonical, hashlib.sha256).hexdigest() (tests/fuzz/message/signed)
    CHECK(ring({key_a})->sign(f) ==
          "9dc94c9d7df0be8cdce3eab131f60b18433be3fb7101b0e8d07d60755e2baecb");
    // A separator inside a field cannot move bytes from one field to the next.
    CHECK(auth::canonical({"a,1:b", "c", "", "", ""}) !=
          auth::canonical({"a", "b,1:c", "", "", ""}));
}

TEST_CASE(
    "auth: a signed request decodes, and unsigned, wrong-key, tampered, expired ones do not") {
    auto keys = ring({key_a});
    auto o = with_keys(keys);
    auto now = std::chrono::system_clock::now();
    const std::string plain = R"({"message_id":"m-1","instance_name":"web-1","reason":"oom"})";
    std::string good = signed_at(plain, *keys, now);

    CHECK_FALSE(check(good, o));
    // The same request through the parser path (an escape takes it off the plain fast path).
    std::string escaped = good;
    escaped.replace(escaped.find("oom"), 3, "o\\u006fm");
    CHECK_FALSE(check(escaped, o));

    auto kind = [&](const std::string& p) {
        auto e = check(p, o);
        REQUIRE(e);
        return e->kind;
    };
    CHECK(kind(plain) == decode_kind::unsigned_request);
    CHECK(kind(signed_at(plain, *ring({key_b}), now)) == decode_kind::bad_signature);
    CHECK(kind(with_field(good, "instance_name", "db-1")) == decode_kind::bad_signature);
    CHECK(kind(with_field(good, "hostname", "db-1.example.net")) == decode_kind::bad_signature);
    CHECK(kind(with_field(good, "reason", "other")) == decode_kind::bad_signature);
    CHECK(kind(with_field(good, "message_id", "m-2")) == decode_kind::bad_signature);
    CHECK(kind(with_field(good, "signature", "zz")) == decode_kind::bad_signature);
    CHECK(kind(signed_at(plain, *keys, now - 11min)) == decode_kind::expired);
    CHECK(kind(signed_at(plain, *keys, now + 2min)) == decode_kind::expired);
    CHECK_FALSE(check(signed_at(plain, *keys, now - 9min), o));
    CHECK_FALSE(check(signed_at(plain, *keys, now + 30s), o)); // within the clock skew allowed
    auto e = check(signed_at(plain, *keys, now - 11min), o);
    CHECK(e->reason.find("more than --auth-max-age 10m") != std::string::npos);
    // Not signed comes first: a request nobody signed is reported as that, whatever else it lacks.
    CHECK(kind(R"({"message_id":"m-1"})") == decode_kind::unsigned_request);
    // A signed time far away does not overflow the clock's arithmetic.
    auto far = nlohmann::json::parse(plain);
    far["issued_at"] = "9999-12-31T23:59:59Z";
    auth::signed_fields f{"m-1", "web-1", "", "oom", "9999-12-31T23:59:59Z"};
    far["signature"] = keys->sign(f);
    CHECK(kind(far.dump()) == decode_kind::expired);
    // Without keys the signature fields are read and ignored.
    CHECK_FALSE(check(with_field(good, "signature", "zz"), decode_options{}));
}

TEST_CASE("auth: with two keys either verifies and the last one signs (rotation)") {
    auto old_key = ring({key_a}), new_key = ring({key_b}), both = ring({key_a, key_b});
    auto o = with_keys(both);
    const std::string plain = R"({"message_id":"m","instance_name":"i"})";
    auto now = std::chrono::system_clock::now();
    CHECK_FALSE(check(signed_at(plain, *old_key, now), o));
    CHECK_FALSE(check(signed_at(plain, *new_key, now), o));
    auth::signed_fields f{"m", "i", "", "", "2026-12-02T14:20:42Z"};
    CHECK(both->sign(f) == new_key->sign(f));
    CHECK(both->fingerprints().size() == 2);
    CHECK(auth::describe(both.get()) ==
          old_key->fingerprints()[0] + "," + new_key->fingerprints()[0]);
    CHECK(auth::describe(nullptr) == "none");
}

TEST_CASE("auth: issued_at is exactly YYYY-MM-DDTHH:MM:SSZ") {
    auto t = auth::parse_time("2026-12-02T14:20:42Z");
    REQUIRE(t);
    CHECK(auth::format_time(*t) == "2026-12-02T14:20:42Z");
    for (const char* bad : {"2026-02-30T00:00:00Z", "2026-12-02T24:00:00Z", "2026-12-02 14:20:42Z",
                            "2026-12-02T14:20:42+00:00", "2026-12-02T14:20:42.5Z", "", "x"})
        CHECK_FALSE(auth::parse_time(bad));
}

TEST_CASE("auth: a key file must be private, a regular file, and hold at least 32 bytes") {
    SUBCASE("hex, with a newline, is decoded") {
        temp_key k(std::string(64, 'a') + "\n", 0600);
        auto r = auth::read_key_file(k.path);
        CHECK(r.error.empty());
        CHECK(r.secret == std::string(32, '\xaa'));
    }
    SUBCASE("raw bytes are taken as they are") {
        temp_key k(std::string(40, '\x01'), 0400);
        auto r = auth::read_key_file(k.path);
        CHECK(r.error.empty());
        CHECK(r.secret.size() == 40);
    }
    SUBCASE("readable by group or others: refused, naming the file and the mode") {
        temp_key k(std::string(64, 'a'), 0644);
        auto r = auth::read_key_file(k.path);
        CHECK(r.error.find(k.path) != std::string::npos);
        CHECK(r.error.find("0644") != std::string::npos);
        temp_key g(std::string(64, 'a'), 0640);
        CHECK(auth::read_key_file(g.path).error.find("0640") != std::string::npos);
    }
    SUBCASE("too short") {
        temp_key k(std::string(62, 'a'), 0600); // 31 bytes once decoded
        CHECK(auth::read_key_file(k.path).error.find("at least 32") != std::string::npos);
    }
    SUBCASE("not a regular file, or missing") {
        CHECK(auth::read_key_file("/dev/null").error.find("not a regular file") !=
              std::string::npos);
        CHECK(!auth::read_key_file("/nonexistent/key").error.empty());
    }
    SUBCASE("at most two files") {
        temp_key k(std::string(64, 'a'), 0600);
        auto r = auth::key_ring::load({k.path, k.path, k.path});
        CHECK(std::holds_alternative<std::string>(r));
    }
}
