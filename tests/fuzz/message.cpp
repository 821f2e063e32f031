// The message decoder, differential: decode_into() (the plain fast path, which hands anything
// outside its shape to the parser) and details::decode_with_parser() (nlohmann's SAX parser
// alone) must agree on accept or reject, the error's kind and reason, and every field. An
// accepted payload must also be what JSON allows: one object and nothing after it but
// whitespace, no raw control byte, valid UTF-8.
#include "message/message.hpp"

#include "check.hpp"

#include <cstdint>
#include <string>
#include <string_view>

using namespace mayhem;

namespace {

bool same(const message& a, const message& b) {
    return a.message_id() == b.message_id() && a.instance_name() == b.instance_name() &&
           a.hostname() == b.hostname() && a.reason() == b.reason() && a.id_hash() == b.id_hash() &&
           a.host_hash() == b.host_hash();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view payload(reinterpret_cast<const char*>(data), size);
    decode_options opts;
    opts.max_bytes = 2048; // below libFuzzer's 4096-byte inputs: too_large is reached too
    message fast, parsed;
    auto fast_error = decode_into(fast, payload, opts);
    auto parser_error = details::decode_with_parser(parsed, payload, opts);

    FUZZ_CHECK(fast_error.has_value() == parser_error.has_value());
    if (fast_error) {
        FUZZ_CHECK(fast_error->kind == parser_error->kind);
        FUZZ_CHECK(fast_error->reason == parser_error->reason);
        FUZZ_CHECK(!fast_error->reason.empty());
        return 0;
    }
    FUZZ_CHECK(same(fast, parsed));
    FUZZ_CHECK(!fast.message_id().empty() && !fast.instance_name().empty() &&
               !fast.hostname().empty());

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
