#include "runtime/frame_pool.hpp"

#include <doctest/doctest.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <thread>
#endif

using mayhem::rt::pooled_frame;

namespace {
// A stand-in for a coroutine frame of n bytes (task.hpp's promises derive from pooled_frame
// the same way, so their frames come from the pool).
template <std::size_t N>
struct frame : pooled_frame {
    unsigned char bytes[N];
};
} // namespace

TEST_CASE("frame pool: a freed frame's slot is the next frame of its size class") {
    auto* a = new frame<200>;
    void* slot = a;
    delete a;
    auto* b = new frame<200>;
    CHECK(static_cast<void*>(b) == slot);
    auto* c = new frame<200>;
    CHECK(static_cast<void*>(c) != slot);
    delete c;
    delete b;
}

TEST_CASE("frame pool: frames above the largest class come from operator new") {
    auto* big = new frame<4096>;
    big->bytes[4095] = 1;
    CHECK(big->bytes[4095] == 1);
    delete big;
}

#if defined(__SANITIZE_ADDRESS__)
// The pool ships in the ASan build too: a slot is addressable exactly while a frame owns it, so
// a use of a frame after it was freed is reported.
TEST_CASE("frame pool under ASan: a freed slot is poisoned, an allocated one is not") {
    auto* f = new frame<200>;
    auto* first = reinterpret_cast<unsigned char*>(f);
    unsigned char* last = first + sizeof(frame<200>) - 1;
    CHECK(__asan_region_is_poisoned(first, sizeof(frame<200>)) == nullptr);
    delete f;
    CHECK(__asan_address_is_poisoned(first) == 1);
    CHECK(__asan_address_is_poisoned(last) == 1);
    // Poisoned as a whole slot, not only where the free list keeps its link.
    CHECK(__asan_region_is_poisoned(first, sizeof(frame<200>)) == first);

    auto* g = new frame<200>; // the same slot, handed out again
    REQUIRE(static_cast<void*>(g) == static_cast<void*>(first));
    CHECK(__asan_region_is_poisoned(first, sizeof(frame<200>)) == nullptr);
    delete g;
}

TEST_CASE("frame pool under ASan: a slab's uncarved tail is poisoned") {
    // The pool is per thread: a new thread's first frame is carved from a new slab, and what
    // follows it in the slab is no frame's yet.
    int after_first = -1, after_second = -1;
    bool adjacent = false;
    std::thread([&] {
        auto* f = new frame<192>;
        auto* end_f = reinterpret_cast<unsigned char*>(f) + sizeof(frame<192>);
        after_first = __asan_address_is_poisoned(end_f);
        auto* g = new frame<192>; // carved right after f
        adjacent = reinterpret_cast<unsigned char*>(g) == end_f;
        after_second = __asan_address_is_poisoned(end_f + sizeof(frame<192>));
        delete g;
        delete f;
    }).join();
    CHECK(after_first == 1);
    CHECK(adjacent);
    CHECK(after_second == 1);
}
#endif
