// RESP replies, differential: a reader with the pooled reply functions (lib/sources/
// redis_reply.cpp) and one with hiredis's own (bounded by the same max_reply_elements) must
// build the same reply trees and fail on the same input. The first byte of the input sets how the
// rest is cut into feeds (replies arrive in pieces). Blocks go back to the pools and are reused by
// later inputs, so a block freed twice or written after its free shows up under ASan.
#include "sources/redis_reply.hpp"

#include "check.hpp"

#include <cstdint>
#include <cstring>
#include <hiredis/hiredis.h>
#include <string_view>

using namespace mayhem;

namespace {

bool same(const redisReply* a, const redisReply* b) {
    if (a->type != b->type) return false;
    switch (a->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        return a->len == b->len && std::memcmp(a->str, b->str, a->len) == 0 && a->str[a->len] == 0;
    case REDIS_REPLY_INTEGER:
        return a->integer == b->integer;
    case REDIS_REPLY_ARRAY:
        if (a->elements != b->elements) return false;
        for (std::size_t i = 0; i < a->elements; ++i)
            if (!same(a->element[i], b->element[i])) return false;
        return true;
    default:
        return true;
    }
}

// hiredis's own functions, with the pooled ones' bound on an array's length.
redisReplyObjectFunctions* plain_replies() {
    static redisReplyObjectFunctions fn = [] {
        redisReader* r = redisReaderCreate();
        redisReplyObjectFunctions f = *r->fn;
        redisReaderFree(r);
        return f;
    }();
    static void* (*create_array)(const redisReadTask*, int) = fn.createArray;
    fn.createArray = [](const redisReadTask* task, int elements) -> void* {
        if (elements > 0 && static_cast<std::size_t>(elements) > max_reply_elements) return nullptr;
        return create_array(task, elements);
    };
    return &fn;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    std::size_t step = data[0] % 16 == 0 ? size : data[0] % 16;
    std::string_view wire(reinterpret_cast<const char*>(data + 1), size - 1);

    redisReader* pooled = redisReaderCreateWithFunctions(pooled_replies());
    redisReader* plain = redisReaderCreateWithFunctions(plain_replies());
    FUZZ_CHECK(pooled && plain);
    bool failed = false;
    for (std::size_t at = 0; at < wire.size() && !failed; at += step) {
        std::size_t n = std::min(step, wire.size() - at);
        FUZZ_CHECK(redisReaderFeed(pooled, wire.data() + at, n) == REDIS_OK);
        FUZZ_CHECK(redisReaderFeed(plain, wire.data() + at, n) == REDIS_OK);
        for (;;) {
            void* a = nullptr;
            void* b = nullptr;
            int ra = redisReaderGetReply(pooled, &a);
            int rb = redisReaderGetReply(plain, &b);
            FUZZ_CHECK(ra == rb);
            FUZZ_CHECK((a == nullptr) == (b == nullptr));
            if (a) {
                FUZZ_CHECK(same(static_cast<redisReply*>(a), static_cast<redisReply*>(b)));
                pooled->fn->freeObject(a);
                freeReplyObject(b);
            }
            if (ra != REDIS_OK) {
                FUZZ_CHECK(std::strcmp(pooled->errstr, plain->errstr) == 0);
                failed = true;
            }
            if (ra != REDIS_OK || !a) break;
        }
    }
    redisReaderFree(pooled);
    redisReaderFree(plain);
    return 0;
}
