#include "sources/redis_reply.hpp"

#include <doctest/doctest.h>
#include <hiredis/hiredis.h>
#include <string>
#include <string_view>

using namespace mayhem;

namespace {

std::string_view text(const redisReply* r) {
    return {r->str, r->len};
}

// Feeds `wire` to a reader that uses the pooled functions, in pieces of `step` bytes, and
// returns the one reply it makes (freed by the caller through the reader's functions).
redisReply* parse(redisReader* rd, std::string_view wire, std::size_t step) {
    void* out = nullptr;
    for (std::size_t at = 0; at < wire.size(); at += step) {
        REQUIRE(redisReaderFeed(rd, wire.data() + at, std::min(step, wire.size() - at)) ==
                REDIS_OK);
        REQUIRE(redisReaderGetReply(rd, &out) == REDIS_OK);
        if (out) break;
    }
    return static_cast<redisReply*>(out);
}

} // namespace

TEST_CASE("pooled replies build the tree hiredis builds, also when fed in pieces") {
    std::string big(2000, 'x'); // larger than the largest block: plain malloc
    std::string wire = "*2\r\n"
                       "*2\r\n$3\r\n1-0\r\n*2\r\n$7\r\npayload\r\n$5\r\nhello\r\n"
                       "*2\r\n$3\r\n2-0\r\n*-1\r\n";
    for (std::size_t step : {wire.size(), std::size_t{1}, std::size_t{7}}) {
        redisReader* rd = redisReaderCreateWithFunctions(pooled_replies());
        REQUIRE(rd);
        for (int round = 0; round < 3; ++round) { // blocks are reused from the free lists
            redisReply* r = parse(rd, wire, step);
            REQUIRE(r);
            REQUIRE(r->type == REDIS_REPLY_ARRAY);
            REQUIRE(r->elements == 2);
            const redisReply* e = r->element[0];
            REQUIRE(e->type == REDIS_REPLY_ARRAY);
            CHECK(text(e->element[0]) == "1-0");
            REQUIRE(e->element[1]->elements == 2);
            CHECK(text(e->element[1]->element[0]) == "payload");
            CHECK(text(e->element[1]->element[1]) == "hello");
            CHECK(e->element[1]->element[1]->str[5] == '\0');
            CHECK(r->element[1]->element[1]->type == REDIS_REPLY_NIL);
            rd->fn->freeObject(r);
        }
        redisReply* s = parse(rd, "$2000\r\n" + big + "\r\n", step == 1 ? 97 : step);
        REQUIRE(s);
        CHECK(text(s) == big);
        rd->fn->freeObject(s);
        redisReaderFree(rd);
    }
}

TEST_CASE("pooled replies: integers, status, errors, empty arrays, and a reply cut off") {
    redisReader* rd = redisReaderCreateWithFunctions(pooled_replies());
    REQUIRE(rd);
    redisReply* r = parse(rd, "*4\r\n:42\r\n+OK\r\n-NOGROUP no such group\r\n*0\r\n", 5);
    REQUIRE(r);
    REQUIRE(r->elements == 4);
    CHECK(r->element[0]->type == REDIS_REPLY_INTEGER);
    CHECK(r->element[0]->integer == 42);
    CHECK(r->element[1]->type == REDIS_REPLY_STATUS);
    CHECK(text(r->element[1]) == "OK");
    CHECK(r->element[2]->type == REDIS_REPLY_ERROR);
    CHECK(text(r->element[2]) == "NOGROUP no such group");
    CHECK(r->element[3]->type == REDIS_REPLY_ARRAY);
    CHECK(r->element[3]->elements == 0);
    rd->fn->freeObject(r);
    // Half a reply when the connection goes: the reader frees what it built (no leak, no
    // unset element; the sanitizer builds check it).
    std::string_view half = "*3\r\n$3\r\nabc\r\n*2\r\n:1\r\n";
    void* out = nullptr;
    REQUIRE(redisReaderFeed(rd, half.data(), half.size()) == REDIS_OK);
    REQUIRE(redisReaderGetReply(rd, &out) == REDIS_OK);
    CHECK(out == nullptr);
    redisReaderFree(rd);
}

// Found by tests/fuzz/redis_reply.cpp: the 11 bytes "*44775808\r\n" made the reader allocate
// and zero a 358 MB element array before any element arrived (and "*2147483647\r\n" 17 GB).
TEST_CASE("pooled replies: an array header past max_reply_elements fails the reader") {
    redisReader* rd = redisReaderCreateWithFunctions(pooled_replies());
    REQUIRE(rd);
    void* out = nullptr;
    std::string head = "*" + std::to_string(max_reply_elements) + "\r\n";
    REQUIRE(redisReaderFeed(rd, head.data(), head.size()) == REDIS_OK);
    CHECK(redisReaderGetReply(rd, &out) == REDIS_OK); // the largest array allowed: waits for it
    CHECK(out == nullptr);
    redisReaderFree(rd);

    for (std::string_view huge : {"*1048577\r\n", "*44775808\r\n", "*2147483647\r\n"}) {
        rd = redisReaderCreateWithFunctions(pooled_replies());
        REQUIRE(rd);
        REQUIRE(redisReaderFeed(rd, huge.data(), huge.size()) == REDIS_OK);
        CHECK(redisReaderGetReply(rd, &out) == REDIS_ERR);
        CHECK(out == nullptr);
        redisReaderFree(rd);
    }
}
