#include "sources/redis_reply.hpp"

#include <array>
#include <cstdlib>
#include <cstring>
#include <hiredis/hiredis.h>

namespace mayhem {

namespace {

// Free lists of blocks of three sizes. Blocks come from malloc one at a time and go back to it
// only past `keep` per size (after an unusually large reply), so the lists hold what the
// largest reply in steady state needs and nothing grows without bound.
class block_cache {
public:
    static constexpr std::array<std::size_t, 3> sizes{64, 128, 512};
    static constexpr std::size_t keep = 16384; // blocks per size kept for reuse

    block_cache() = default;
    block_cache(const block_cache&) = delete;
    block_cache& operator=(const block_cache&) = delete;
    ~block_cache() {
        for (auto* n : heads_) {
            while (n) {
                node* next = n->next;
                std::free(n);
                n = next;
            }
        }
    }

    void* get(std::size_t n) noexcept {
        std::size_t c = size_class(n);
        if (c == sizes.size()) return std::malloc(n);
        if (node* b = heads_[c]) {
            heads_[c] = b->next;
            --counts_[c];
            return b;
        }
        return std::malloc(sizes[c]);
    }
    void put(void* p, std::size_t n) noexcept {
        if (!p) return;
        std::size_t c = size_class(n);
        if (c == sizes.size() || counts_[c] >= keep) return std::free(p);
        auto* b = static_cast<node*>(p);
        b->next = heads_[c];
        heads_[c] = b;
        ++counts_[c];
    }

private:
    struct node {
        node* next;
    };
    static std::size_t size_class(std::size_t n) noexcept {
        std::size_t c = 0;
        while (c < sizes.size() && n > sizes[c])
            ++c;
        return c;
    }
    std::array<node*, sizes.size()> heads_{};
    std::array<std::size_t, sizes.size()> counts_{};
};

static_assert(sizeof(redisReply) <= block_cache::sizes[0]);

block_cache& cache() noexcept {
    thread_local block_cache c;
    return c;
}

// The same tree hiredis's own create functions build (hiredis.c): a child is stored into its
// parent's element array at its index.
redisReply* make(const redisReadTask* task, int type) noexcept {
    auto* r = static_cast<redisReply*>(cache().get(sizeof(redisReply)));
    if (!r) return nullptr;
    std::memset(r, 0, sizeof *r);
    r->type = type;
    if (task->parent) {
        auto* parent = static_cast<redisReply*>(task->parent->obj);
        parent->element[task->idx] = r;
    }
    return r;
}

void* create_string(const redisReadTask* task, char* s, std::size_t len) {
    auto* buf = static_cast<char*>(cache().get(len + 1));
    if (!buf) return nullptr;
    redisReply* r = make(task, task->type); // string, status or error
    if (!r) {
        cache().put(buf, len + 1);
        return nullptr;
    }
    std::memcpy(buf, s, len);
    buf[len] = '\0';
    r->str = buf;
    r->len = len;
    return r;
}

void* create_array(const redisReadTask* task, int elements) {
    redisReply** el = nullptr;
    std::size_t n = elements > 0 ? static_cast<std::size_t>(elements) : 0;
    if (n > max_reply_elements) return nullptr; // the reader fails ("Out of memory")
    if (n > 0) {
        el = static_cast<redisReply**>(cache().get(n * sizeof(redisReply*)));
        if (!el) return nullptr;
        std::memset(el, 0, n * sizeof(redisReply*)); // a reply cut off is freed half-built
    }
    redisReply* r = make(task, REDIS_REPLY_ARRAY);
    if (!r) {
        cache().put(el, n * sizeof(redisReply*));
        return nullptr;
    }
    r->elements = n;
    r->element = el;
    return r;
}

void* create_integer(const redisReadTask* task, long long value) {
    redisReply* r = make(task, REDIS_REPLY_INTEGER);
    if (r) r->integer = value;
    return r;
}

void* create_nil(const redisReadTask* task) {
    return make(task, REDIS_REPLY_NIL);
}

void free_object(void* p) {
    auto* r = static_cast<redisReply*>(p);
    if (!r) return;
    switch (r->type) {
    case REDIS_REPLY_ARRAY:
        if (r->element) {
            for (std::size_t i = 0; i < r->elements; ++i)
                free_object(r->element[i]);
            cache().put(r->element, r->elements * sizeof(redisReply*));
        }
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        if (r->str) cache().put(r->str, r->len + 1);
        break;
    default:
        break;
    }
    cache().put(r, sizeof(redisReply));
}

redisReplyObjectFunctions functions{create_string, create_array, create_integer, create_nil,
                                    free_object};

} // namespace

redisReplyObjectFunctions* pooled_replies() noexcept {
    return &functions;
}

} // namespace mayhem
