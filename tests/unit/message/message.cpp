#include "message/message.hpp"

#include "runtime/hash.hpp"

#include <doctest/doctest.h>

using namespace mayhem;

namespace {
decode_error bad(std::string_view payload, decode_options opts = {}) {
    auto r = decode(payload, opts);
    REQUIRE(std::holds_alternative<decode_error>(r));
    return std::get<decode_error>(r);
}
} // namespace

TEST_CASE("a good message decodes and derives its hostname") {
    auto r =
        decode(R"({"message_id":"m-1","instance_name":"cattle-ab12","extra":[1,{"x":2}]})", {});
    REQUIRE(std::holds_alternative<message>(r));
    const auto& m = std::get<message>(r);
    CHECK(m.message_id() == "m-1");
    CHECK(m.instance_name() == "cattle-ab12");
    CHECK(m.hostname() == "cattle-ab12.example.net");
    CHECK(m.reason().empty());
}

TEST_CASE("an explicit hostname and reason are kept; the domain is configurable") {
    decode_options o;
    o.host_domain = "corp.internal";
    auto m =
        std::get<message>(decode(R"({"message_id":"a","instance_name":"i","reason":"kernel"})", o));
    CHECK(m.hostname() == "i.corp.internal");
    CHECK(m.reason() == "kernel");
    auto m2 =
        std::get<message>(decode(R"({"message_id":"a","instance_name":"i","hostname":"h.x"})", o));
    CHECK(m2.hostname() == "h.x");
}

TEST_CASE("one machine, one name: lower case, no trailing dot, derived the same way") {
    decode_options o;
    o.host_domain = "Example.NET.";
    auto host = [&](std::string_view payload) {
        // Both decoding paths: the plain scanner and the parser.
        auto r = decode(payload, o);
        REQUIRE(std::holds_alternative<message>(r));
        message viaparser;
        REQUIRE_FALSE(details::decode_with_parser(viaparser, payload, o));
        CHECK(viaparser.hostname() == std::get<message>(r).hostname());
        return std::string(std::get<message>(r).hostname());
    };
    CHECK(host(R"({"message_id":"a","instance_name":"web-1"})") == "web-1.example.net");
    CHECK(host(R"({"message_id":"a","instance_name":"WEB-1"})") == "web-1.example.net");
    CHECK(host(R"({"message_id":"a","instance_name":"web-1."})") == "web-1.example.net");
    CHECK(host(R"({"message_id":"a","instance_name":"i","hostname":"web-1.example.net."})") ==
          "web-1.example.net");
    CHECK(host(R"({"message_id":"a","instance_name":"i","hostname":"Web-1.Example.Net"})") ==
          "web-1.example.net");
    // The instance name itself is kept as given; only the machine identity is normalised.
    auto m = std::get<message>(decode(R"({"message_id":"a","instance_name":"WEB-1"})", o));
    CHECK(m.instance_name() == "WEB-1");
    CHECK(derived_host_name("WEB-1", "Example.NET.") == "web-1.example.net");
    CHECK(bad(R"({"message_id":"a","instance_name":"i","hostname":"."})").kind ==
          decode_kind::empty_field);
}

TEST_CASE("bad payloads give precise reasons and fixed kinds") {
    struct row {
        const char* payload;
        decode_kind kind;
        const char* reason_contains;
    };
    const row rows[] = {
        {R"({"message_id":"a"})", decode_kind::missing_field, "missing field \"instance_name\""},
        {R"({"instance_name":"a"})", decode_kind::missing_field, "missing field \"message_id\""},
        {R"({"message_id":7,"instance_name":"a"})", decode_kind::wrong_type,
         "message_id must be a string"},
        {R"({"message_id":"a","instance_name":["x"]})", decode_kind::wrong_type,
         "instance_name must be a string, got an array"},
        {R"({"message_id":"a","instance_name":null})", decode_kind::wrong_type,
         "instance_name must be a string"},
        {R"({"message_id":"a","instance_name":"b","hostname":{}})", decode_kind::wrong_type,
         "hostname must be a string"},
        {R"({"message_id":"","instance_name":"a"})", decode_kind::empty_field,
         "message_id must not be empty"},
        {R"({"message_id":"a","instance_name":""})", decode_kind::empty_field,
         "instance_name must not be empty"},
        {R"([1,2])", decode_kind::not_object, "must be a JSON object, got an array"},
        {R"("text")", decode_kind::not_object, "got a string"},
        {"42", decode_kind::not_object, "got a number"},
        {"not json", decode_kind::invalid_json, "invalid JSON"},
        {R"({"message_id":"a",)", decode_kind::invalid_json, "invalid JSON"},
        {"", decode_kind::invalid_json, "invalid JSON"},
        {"{\"message_id\":\"\xff\",\"instance_name\":\"a\"}", decode_kind::not_utf8,
         "not valid UTF-8"},
    };
    for (const auto& r : rows) {
        CAPTURE(r.payload);
        auto e = bad(r.payload);
        CHECK(e.kind == r.kind);
        CHECK(e.reason.find(r.reason_contains) != std::string::npos);
    }
}

TEST_CASE("text after the JSON value is invalid JSON, a NUL byte included, on both paths") {
    // issue 13 case 9: nlohmann's lexer took a NUL for the end of the input.
    using namespace std::string_literals;
    for (const std::string& payload :
         {R"({"message_id":"t1","instance_name":"y"})"s + '\0' + "GARBAGE",
          R"({"message_id":"t1","instance_name":"y"})"s + '\0',
          R"({"message_id":"t1","instance_name":"y"} )"s + '\0' + " ",
          R"({"message_id":"t1","instance_name":"y","n":1})"s + '\0' + "x",
          R"({"message_id":"t1","instance_name":"y"} x)"s}) {
        CAPTURE(payload);
        auto e = bad(payload);
        CHECK(e.kind == decode_kind::invalid_json);
        message m;
        auto slow = details::decode_with_parser(m, payload, decode_options{});
        REQUIRE(slow);
        CHECK(slow->kind == decode_kind::invalid_json);
        CHECK(slow->reason == e.reason);
    }
    // Whitespace after the value is fine.
    auto ok = decode(R"({"message_id":"t1","instance_name":"y"} )"
                     "\n\t",
                     decode_options{});
    CHECK(std::holds_alternative<message>(ok));
}

TEST_CASE("a payload over max_bytes is too large") {
    decode_options o;
    o.max_bytes = 16;
    auto e = bad(R"({"message_id":"aaaaaaaa","instance_name":"b"})", o);
    CHECK(e.kind == decode_kind::too_large);
}

TEST_CASE("UTF-8 validation") {
    CHECK(valid_utf8("plain"));
    CHECK(valid_utf8("h\xc3\xa9llo"));           // é
    CHECK(valid_utf8("\xf0\x9f\x98\x80"));       // emoji
    CHECK_FALSE(valid_utf8("\xc0\xaf"));         // overlong
    CHECK_FALSE(valid_utf8("\xed\xa0\x80"));     // surrogate
    CHECK_FALSE(valid_utf8("\xe2\x82"));         // truncated
    CHECK_FALSE(valid_utf8("\xf4\x90\x80\x80")); // above U+10FFFF
}

// ---------------------------------------------------------------------------------------------
// The plain fast path and nlohmann's parser must agree on every payload: the same fields, or
// the same error kind and reason. A corpus of shapes, each mutated byte by byte.
// ---------------------------------------------------------------------------------------------

namespace {
std::string describe_result(const message& m, const std::optional<decode_error>& e) {
    if (e) return "error " + std::string(to_string(e->kind)) + ": " + e->reason;
    return "ok id=" + std::string(m.message_id()) + " instance=" + std::string(m.instance_name()) +
           " host=" + std::string(m.hostname()) + " reason=" + std::string(m.reason());
}

void check_paths_agree(const std::string& payload, const decode_options& opts) {
    message fast, slow;
    auto fe = decode_into(fast, payload, opts);
    auto se = details::decode_with_parser(slow, payload, opts);
    INFO("payload: ", payload);
    CHECK(describe_result(fast, fe) == describe_result(slow, se));
}
} // namespace

TEST_CASE("the plain path and the parser agree on a mutated corpus") {
    const std::string bases[] = {
        R"({"message_id":"4f9c-1","instance_name":"cattle-k7oo"})",
        // Strings of several 8-byte words, so a special byte lands in every word position.
        R"({"message_id":"0123456789abcdef0123456789abcdef-4f9c","instance_name":"cattle-k7oo-x"})",
        R"({"message_id":"a","instance_name":"b","hostname":"h.x","reason":"kernel update"})",
        " \t\n{ \"message_id\" : \"a\" ,\r\n \"instance_name\" : \"b\" } \n",
        R"({"instance_name":"b","message_id":"a","extra":"ignored"})",
        R"({"message_id":"a","message_id":"b","instance_name":"i","instance_name":"j"})",
        R"({"message_id":"caf\u00e9","instance_name":"i"})",
        "{\"message_id\":\"caf\xC3\xA9\",\"instance_name\":\"\xF0\x9F\x90\x84\"}",
        R"({"message_id":"a\"b","instance_name":"i\\j"})",
        R"({"message_id":"a","instance_name":"i","n":1,"f":-1.5e3,"t":true,"z":null})",
        R"({"message_id":"a","instance_name":"i","nested":{"message_id":"x"},"arr":[1,"2"]})",
        R"({"message_id":"","instance_name":"i"})",
        R"({"message_id":"a","instance_name":"i","hostname":""})",
        R"({"message_id":7,"instance_name":"i"})",
        R"({})",
        R"([])",
        R"("message_id")",
        R"({"":"","message_id":"a","instance_name":"i","reason":""})",
    };
    // Bytes that matter to a JSON scanner, and some that do not.
    const std::string specials = std::string("\"{}[],: \t\r\n\\/0a-eE.+u") + '\0' + "\x1f\x7f" +
                                 "\x80\xC3\xA9\xED\xA0\x80\xF4\x90\xFF";
    decode_options opts;
    opts.max_bytes = 120;
    std::size_t cases = 0;
    for (const auto& base : bases) {
        check_paths_agree(base, opts);
        for (std::size_t i = 0; i <= base.size(); ++i) {
            check_paths_agree(base.substr(0, i), opts); // truncated
            if (i < base.size()) check_paths_agree(base.substr(0, i) + base.substr(i + 1), opts);
            for (char c : specials) {
                check_paths_agree(base.substr(0, i) + c + base.substr(i), opts); // inserted
                if (i < base.size()) {
                    std::string replaced = base;
                    replaced[i] = c;
                    check_paths_agree(replaced, opts);
                }
            }
            cases += 2 + 2 * specials.size();
        }
    }
    CHECK(cases > 20000);
}

TEST_CASE("a message's copies are independent, and a moved-from message is empty") {
    message a{"id-1", "cattle-1", "cattle-1.example.net", "kernel panic"};
    message b = a;
    a = message{"id-2", "i", "h"};
    CHECK(b.message_id() == "id-1");
    CHECK(b.instance_name() == "cattle-1");
    CHECK(b.hostname() == "cattle-1.example.net");
    CHECK(b.reason() == "kernel panic");
    CHECK(a.hostname() == "h");
    CHECK(a.reason().empty());
    message c = std::move(b);
    CHECK(c.hostname() == "cattle-1.example.net");
    CHECK(b.message_id().empty()); // NOLINT(bugprone-use-after-move): what a move leaves
    CHECK(b.hostname().empty());
    CHECK(b.reason().empty());
}

TEST_CASE("a message too long to keep inline: the same views, copies and moves") {
    std::string reason(200, 'r');
    message a{"id-1", "cattle-1", "cattle-1.example.net", reason};
    message b = a;
    message c = std::move(a);
    for (const message* m : {&b, &c}) {
        CHECK(m->message_id() == "id-1");
        CHECK(m->hostname() == "cattle-1.example.net");
        CHECK(m->reason() == reason);
    }
    CHECK(a.reason().empty());     // NOLINT(bugprone-use-after-move): what a move leaves
    b = message{"id-2", "i", "h"}; // back to inline storage
    CHECK(b.message_id() == "id-2");
    CHECK(b.hostname() == "h");
    c = b;
    CHECK(c.reason().empty());
    CHECK(c.instance_name() == "i");
}

TEST_CASE("a message's id and host hashes are those of its views, through copies and moves") {
    auto check = [](const message& m) {
        CHECK(m.id_hash() == rt::hash_key(m.message_id()));
        CHECK(m.host_hash() == rt::hash_key(m.hostname()));
    };
    message empty;
    check(empty);
    auto d = std::get<message>(decode(R"({"message_id":"m-1","instance_name":"cattle-ab12"})", {}));
    check(d);
    CHECK(d.host_hash() == rt::hash_key("cattle-ab12.example.net"));
    message copy = d;
    check(copy);
    message moved = std::move(copy);
    check(moved);
    check(copy); // NOLINT(bugprone-use-after-move): a moved-from message is empty
    message big{"id", "i", std::string(300, 'h')};
    check(big);
}

// Found by tests/fuzz/message.cpp within seconds (issue 13, case 9, whose fix is its own
// change): nlohmann's lexer takes a NUL for the end of the input, so an object followed by a NUL
// and anything at all was accepted, on both paths (the plain one hands it to the parser).
TEST_CASE("a NUL after the object, and whatever follows it, is invalid JSON on both paths") {
    using namespace std::string_literals;
    const std::string object = R"({"message_id":"t1","instance_name":"y"})";
    for (const std::string& payload :
         {object + '\0', object + "\0GARBAGE"s, object + " \0 "s, object + "\0\0\0\0"s}) {
        INFO("payload: ", payload);
        message m;
        auto fast = decode_into(m, payload, {});
        REQUIRE(fast);
        CHECK(fast->kind == decode_kind::invalid_json);
        auto parsed = details::decode_with_parser(m, payload, {});
        REQUIRE(parsed);
        CHECK(parsed->kind == decode_kind::invalid_json);
    }
}
