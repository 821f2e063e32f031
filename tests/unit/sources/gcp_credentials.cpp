// gcp_credentials: the plain parts of Application Default Credentials, without a server (the
// token flow against a stand-in is tests/integration/test_pubsub_auth.py).
#include "sources/gcp_credentials.hpp"

#include "sources/pubsub_rest.hpp"

#include <doctest/doctest.h>
#include <string>

using namespace mayhem;

TEST_CASE("gcp: base64url has no padding and the URL-safe alphabet") {
    CHECK(gcp::base64url("") == "");
    CHECK(gcp::base64url("ab") == "YWI");
    CHECK(gcp::base64url(std::string("\xfb\xff\xbf", 3)) == "-_-_");
}

TEST_CASE("gcp: a token reply gives the token and its life; a bad one a reason without it") {
    std::string why;
    auto t = gcp::parse_token_reply(
        R"({"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"})", &why);
    REQUIRE(t);
    CHECK(t->value == "ya29.x");
    CHECK(t->expires_in.count() == 3599);
    for (const char* bad :
         {"", "[]", R"({"expires_in":10})", R"({"access_token":"a"})",
          R"({"access_token":"a","expires_in":0})", R"({"access_token":"a b","expires_in":10})"}) {
        why.clear();
        CHECK_FALSE(gcp::parse_token_reply(bad, &why));
        CHECK_FALSE(why.empty());
    }
    why.clear();
    CHECK_FALSE(gcp::parse_token_reply(R"({"access_token":"secret tok","expires_in":1})", &why));
    CHECK(why.find("secret") == std::string::npos);
}

TEST_CASE("gcp: the token endpoint's refusal is named, its body never echoed raw") {
    CHECK(gcp::token_error_text(400, R"({"error":"invalid_grant","error_description":"bad"})") ==
          "HTTP 400: invalid_grant: bad");
    CHECK(gcp::token_error_text(503, "ya29.leaked") == "HTTP 503");
}

TEST_CASE("gcp: credentials for https endpoints under auto, always under adc, never under none") {
    CHECK(gcp::wants_credentials("auto", "https://pubsub.googleapis.com"));
    CHECK_FALSE(gcp::wants_credentials("auto", "http://127.0.0.1:8085"));
    CHECK(gcp::wants_credentials("adc", "http://127.0.0.1:8085"));
    CHECK_FALSE(gcp::wants_credentials("none", "https://pubsub.googleapis.com"));
}

TEST_CASE("gcp: a key file that is missing or not a service account is refused, naming it") {
    try {
        gcp::load_service_account("/nonexistent/key.json");
        FAIL("no error");
    } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()).find("/nonexistent/key.json") == 0);
    }
}

TEST_CASE("pubsub: an exactly-once ack refusal names the ack ids that did not take") {
    auto f = pubsub::ack_failures(
        R"({"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"@type":)"
        R"("type.googleapis.com/google.rpc.ErrorInfo","reason":"EXACTLY_ONCE_ACKID_FAILURE",)"
        R"("metadata":{"a1":"PERMANENT_FAILURE_INVALID_ACK_ID"}}]}})");
    REQUIRE(f);
    CHECK(f->size() == 1);
    CHECK(f->at("a1") == "PERMANENT_FAILURE_INVALID_ACK_ID");
    CHECK_FALSE(pubsub::ack_failures(R"({"error":{"code":400,"message":"x"}})"));
    CHECK_FALSE(pubsub::ack_failures("not json"));
}
