// pubsub_rest: the REST bodies, names and endpoint rules of the pubsub source, without a server.
#include "sources/pubsub_rest.hpp"

#include <cstdlib>
#include <doctest/doctest.h>
#include <string>
#include <vector>

using namespace mayhem;

TEST_CASE("pubsub: base64 round trip, with and without padding, refuses what is not base64") {
    for (const std::string& s :
         std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10", 3)}) {
        auto back = pubsub::base64_decode(pubsub::base64_encode(s));
        REQUIRE(back);
        CHECK(*back == s);
    }
    CHECK(pubsub::base64_encode("ab") == "YWI=");
    CHECK_FALSE(pubsub::base64_decode("YWI"));
    CHECK_FALSE(pubsub::base64_decode("Y!I="));
}

TEST_CASE("pubsub: a pull's reply gives ack id, data, delivery attempt; a bad one an error") {
    std::string why;
    auto got = pubsub::parse_pull(
        R"({"receivedMessages":[{"ackId":"a1","message":{"data":"aGk=","messageId":"7"},)"
        R"("deliveryAttempt":3},{"ackId":"a2","message":{"data":"%%%%"}}]})",
        &why);
    REQUIRE(got);
    REQUIRE(got->size() == 2);
    CHECK((*got)[0].ack_id == "a1");
    CHECK((*got)[0].payload == "hi");
    CHECK((*got)[0].message_id == "7");
    CHECK((*got)[0].attempt == 3);
    CHECK((*got)[1].attempt == 0);
    CHECK_FALSE((*got)[1].data_valid);
    CHECK((*got)[1].payload == "%%%%");
    auto empty = pubsub::parse_pull("{}", &why);
    REQUIRE(empty);
    CHECK(empty->empty());
    CHECK_FALSE(pubsub::parse_pull("<html>", &why));
    CHECK_FALSE(why.empty());
    CHECK_FALSE(pubsub::parse_pull(R"({"receivedMessages":[{"message":{}}]})", &why));
}

TEST_CASE("pubsub: resource names and endpoints") {
    CHECK(pubsub::valid_subscription("projects/p/subscriptions/s"));
    CHECK_FALSE(pubsub::valid_subscription("projects/p/topics/s"));
    CHECK_FALSE(pubsub::valid_subscription("projects//subscriptions/s"));
    CHECK_FALSE(pubsub::valid_subscription("projects/p/subscriptions/s/x"));
    CHECK_FALSE(pubsub::valid_subscription("projects/p/subscriptions/"));
    CHECK(pubsub::valid_topic("projects/p/topics/t"));
    CHECK_FALSE(pubsub::valid_topic("topics/t"));
    CHECK(pubsub::valid_endpoint("http://127.0.0.1:8085"));
    CHECK(pubsub::valid_endpoint("https://pubsub.googleapis.com/"));
    CHECK_FALSE(pubsub::valid_endpoint("ftp://x"));
    CHECK_FALSE(pubsub::valid_endpoint("http://"));
    CHECK_FALSE(pubsub::valid_endpoint("http://x/v1"));
    CHECK(pubsub::resolve_endpoint("http://h:1/") == "http://h:1");
}

TEST_CASE("pubsub: error text carries the API's message; transient statuses") {
    CHECK(pubsub::error_text(404,
                             R"({"error":{"code":404,"message":"Subscription does not exist"}})") ==
          "HTTP 404: Subscription does not exist");
    CHECK(pubsub::error_text(503, "") == "HTTP 503");
    CHECK(pubsub::transient_status(429));
    CHECK(pubsub::transient_status(503));
    CHECK_FALSE(pubsub::transient_status(404));
}

TEST_CASE("pubsub: publish body carries base64 data, ordering key and attributes") {
    std::vector<pubsub::outgoing> out{{"hi", "web-1", {{"reason", "bad \xff json"}}}};
    auto body = pubsub::publish_body(out);
    CHECK(body.find(R"("data":"aGk=")") != std::string::npos);
    CHECK(body.find(R"("orderingKey":"web-1")") != std::string::npos);
    CHECK(body.find(R"("reason":"bad)") != std::string::npos);
    CHECK(pubsub::parse_publish(R"({"messageIds":["1","2"]})") == 2u);
    CHECK_FALSE(pubsub::parse_publish("{}"));
}
