// The message decoder, differential: decode_into() (the plain fast path, which hands anything
// outside its shape to the parser) and details::decode_with_parser() (nlohmann's SAX parser
// alone) must agree on accept or reject, the error's kind and reason, and every field. An
// accepted payload must also be what JSON allows: one object and nothing after it but
// whitespace, no raw control byte, valid UTF-8.
//
// Signed requests: with a key configured, both paths agree the same way on every input (nearly
// all are refused as unsigned or badly signed); and every payload accepted without a key, once
// signed as `mayhem publish --auth-key-file` signs it, is accepted with the key as the same
// message, refused as bad_signature once its instance_name is changed, and as unsigned without
// its signature.
#include "message/message.hpp"

#include "check.hpp"
#include "message/auth.hpp"

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

using namespace mayhem;

namespace {

bool same(const message& a, const message& b) {
    return a.message_id() == b.message_id() && a.instance_name() == b.instance_name() &&
           a.hostname() == b.hostname() && a.reason() == b.reason() && a.id_hash() == b.id_hash() &&
           a.host_hash() == b.host_hash();
}

const decode_options& keyed() {
    static decode_options o = [] {
        decode_options o;
        o.max_bytes = 1 << 20; // signing adds fields: the signed form of any input fits
        o.auth_keys = std::make_shared<auth::key_ring>(
            std::vector<std::string>{"fuzz-key-0123456789abcdef0123456789abcdef"});
        o.auth_max_age = std::chrono::hours{24 * 365 * 100}; // seeds' fixed issued_at stay valid
        return o;
    }();
    return o;
}

// Both paths agree on the answer, the error and every field; returns the answer (`out` holds
// the fast path's message).
std::optional<decode_error> agree(message& out, std::string_view payload, const decode_options& o) {
    message parsed;
    auto fast_error = decode_into(out, payload, o);
    auto parser_error = details::decode_with_parser(parsed, payload, o);
    FUZZ_CHECK(fast_error.has_value() == parser_error.has_value());
    if (fast_error) {
        FUZZ_CHECK(fast_error->kind == parser_error->kind);
        FUZZ_CHECK(fast_error->reason == parser_error->reason);
        FUZZ_CHECK(!fast_error->reason.empty());
        return fast_error;
    }
    FUZZ_CHECK(same(out, parsed));
    return std::nullopt;
}

void check_signed(std::string_view payload, const message& unsigned_result) {
    const decode_options& o = keyed();
    message m;
    agree(m, payload, o);
    auto signed_payload =
        auth::sign_request(payload, *o.auth_keys, std::chrono::system_clock::now());
    FUZZ_CHECK(signed_payload.has_value());
    FUZZ_CHECK(!agree(m, *signed_payload, o));
    FUZZ_CHECK(same(m, unsigned_result));

    auto doc = nlohmann::json::parse(*signed_payload);
    auto tampered = doc;
    tampered["instance_name"] = doc["instance_name"].get<std::string>() + "x";
    auto err = agree(m, tampered.dump(), o);
    FUZZ_CHECK(err && err->kind == decode_kind::bad_signature);
    doc.erase("signature");
    err = agree(m, doc.dump(), o);
    FUZZ_CHECK(err && err->kind == decode_kind::unsigned_request);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view payload(reinterpret_cast<const char*>(data), size);
    decode_options opts;
    opts.max_bytes = 2048; // below libFuzzer's 4096-byte inputs: too_large is reached too
    message fast;
    if (auto err = agree(fast, payload, opts)) {
        FUZZ_CHECK(!is_auth_rejection(err->kind)); // no key, no signature check
        message m;
        agree(m, payload, keyed());
        return 0;
    }
    FUZZ_CHECK(!fast.message_id().empty() && !fast.instance_name().empty() &&
               !fast.hostname().empty());
    check_signed(payload, fast);

    // Accepted: valid UTF-8, and no raw byte below 0x20 but JSON's whitespace (a NUL is not the
    // end of the payload).
    FUZZ_CHECK(valid_utf8(payload));
    for (char c : payload)
        FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20 || c == ' ' || c == '\t' || c == '\n' ||
                   c == '\r');
    // Whitespace after the object changes nothing; anything else after it is invalid JSON.
    if (payload.size() + 2 <= opts.max_bytes) {
        std::string more(payload);
        more += " \n";
        message again;
        FUZZ_CHECK(!decode_into(again, more, opts));
        FUZZ_CHECK(same(again, fast));
        more.back() = 'x';
        auto err = decode_into(again, more, opts);
        FUZZ_CHECK(err && err->kind == decode_kind::invalid_json);
    }
    return 0;
}
