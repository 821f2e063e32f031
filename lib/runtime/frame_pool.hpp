// Coroutine frames come from per-thread free lists by size class, so a message's frames are
// recycled instead of going back to malloc at every message (the hot path allocates nothing
// in steady state). Frames are allocated and freed on the loop thread only.
//
// Every message in flight keeps several frames alive for as long as it waits, so their size is
// what concurrency costs in memory: classes are 16 bytes apart (a frame wastes at most 15 bytes
// to rounding) and new frames are carved from 64 KiB slabs (no malloc header per frame).
//
// Sanitizer builds keep the pool: they check the allocator that ships. Under AddressSanitizer a
// free slot and a slab's uncarved tail are poisoned (ASan's manual poisoning), so a use of a
// frame after it was freed is reported as a use-after-poison, until the slot is reused by the
// next frame of its size class (malloc's quarantine would delay that reuse; the pool does not).
#pragma once

#include <cstddef>
#include <new>
#include <utility>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace mayhem::rt {

namespace details {
inline constexpr std::size_t frame_granule = 16;  // also the frames' alignment (max_align_t)
inline constexpr std::size_t frame_classes = 129; // frames up to 2 KiB are pooled
inline constexpr std::size_t slab_bytes = 64 * 1024;

struct free_frame {
    free_frame* next;
};

// Memory the pool holds but no frame owns: unaddressable under ASan, nothing otherwise.
inline void poison(void* p, std::size_t n) noexcept {
#if defined(__SANITIZE_ADDRESS__)
    ASAN_POISON_MEMORY_REGION(p, n);
#else
    (void)p, (void)n;
#endif
}
inline void unpoison(void* p, std::size_t n) noexcept {
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
    (void)p, (void)n;
#endif
}

struct frame_freelists {
    free_frame* heads[frame_classes] = {};
    // Slabs are chained through their first bytes and freed when the thread ends; frames are
    // never given back to malloc before then (a worker's in-flight peak is its steady state).
    struct slab {
        slab* next;
    };
    static constexpr std::size_t slab_header =
        (sizeof(slab) + frame_granule - 1) / frame_granule * frame_granule;
    slab* slabs = nullptr;
    char* cursor = nullptr;
    std::size_t left = 0;

    void* carve(std::size_t bytes) {
        if (left < bytes) {
            auto* s = static_cast<slab*>(::operator new(slab_bytes));
            s->next = slabs;
            slabs = s;
            cursor = reinterpret_cast<char*>(s) + slab_header;
            left = slab_bytes - slab_header;
            poison(cursor, left);
        }
        void* p = cursor;
        unpoison(p, bytes);
        cursor += bytes;
        left -= bytes;
        return p;
    }
    ~frame_freelists() {
        while (slabs) {
            unpoison(slabs, slab_bytes);
            ::operator delete(std::exchange(slabs, slabs->next));
        }
    }
};

inline frame_freelists& freelists() noexcept {
    thread_local frame_freelists lists;
    return lists;
}
} // namespace details

struct pooled_frame {
    static void* operator new(std::size_t n) {
        std::size_t cls = (n + details::frame_granule - 1) / details::frame_granule;
        if (cls >= details::frame_classes) return ::operator new(n);
        auto& lists = details::freelists();
        auto*& head = lists.heads[cls];
        if (head) {
            details::unpoison(head, cls * details::frame_granule);
            return std::exchange(head, head->next);
        }
        return lists.carve(cls * details::frame_granule);
    }
    static void operator delete(void* p, std::size_t n) noexcept {
        std::size_t cls = (n + details::frame_granule - 1) / details::frame_granule;
        if (cls >= details::frame_classes) return ::operator delete(p);
        auto*& head = details::freelists().heads[cls];
        head = new (p) details::free_frame{head};
        details::poison(p, cls * details::frame_granule);
    }
};

} // namespace mayhem::rt
