// Coroutine frames come from per-thread free lists by size class, so a message's frames are
// recycled instead of going back to malloc at every message (the hot path allocates nothing
// in steady state). Frames are allocated and freed on the loop thread only.
#pragma once

#include <cstddef>
#include <new>
#include <utility>

namespace mayhem::rt {

namespace details {
inline constexpr std::size_t frame_granule = 64;
inline constexpr std::size_t frame_classes = 32; // frames up to 2 KiB are pooled

struct free_frame {
    free_frame* next;
};

struct frame_freelists {
    free_frame* heads[frame_classes] = {};
    ~frame_freelists() {
        for (auto*& h : heads)
            while (h)
                ::operator delete(std::exchange(h, h->next));
    }
};

inline frame_freelists& freelists() noexcept {
    thread_local frame_freelists lists;
    return lists;
}
} // namespace details

struct pooled_frame {
#if defined(MAYHEM_NO_FRAME_POOL)
    // Sanitizer builds: every frame from malloc, so use-after-free of a frame is caught.
#else
    static void* operator new(std::size_t n) {
        std::size_t cls = (n + details::frame_granule - 1) / details::frame_granule;
        if (cls >= details::frame_classes) return ::operator new(n);
        auto*& head = details::freelists().heads[cls];
        if (head) return std::exchange(head, head->next);
        return ::operator new(cls* details::frame_granule);
    }
    static void operator delete(void* p, std::size_t n) noexcept {
        std::size_t cls = (n + details::frame_granule - 1) / details::frame_granule;
        if (cls >= details::frame_classes) return ::operator delete(p);
        auto*& head = details::freelists().heads[cls];
        head = new (p) details::free_frame{head};
    }
#endif
};

} // namespace mayhem::rt
