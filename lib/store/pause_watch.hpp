// The shared pause (`mayhem pause`) as a store last read it, and who to tell when it changes
// (store.hpp, watch_pause), for the stores that keep one (sqlite, postgres): the store reads it
// at start, queues one small read per poll into its next transaction, and hands each answer to
// saw(). While a read fails the last answer stands.
//
// Threading: loop thread only.
#pragma once

#include "runtime/loop.hpp"
#include "store/store.hpp"

#include <chrono>
#include <functional>
#include <memory>
#include <optional>

namespace mayhem {

class pause_watch {
public:
    // Tells `changed` the pause as last read at once, then polls every `every`: `queue_read`
    // queues a read unless one is on its way (false: the store no longer takes requests). A
    // null `changed` stops the watch.
    void watch(rt::loop& loop, std::chrono::milliseconds every,
               std::function<void(const fleet_pause*)> changed, std::function<bool()> queue_read) {
        changed_ = std::move(changed);
        poll_.reset();
        if (!changed_) return;
        changed_(now_ ? &*now_ : nullptr);
        poll_ = std::make_unique<rt::periodic_timer>(loop, every,
                                                     [this, queue = std::move(queue_read)] {
                                                         if (!read_queued_) read_queued_ = queue();
                                                     });
    }
    void stop() { poll_.reset(); }
    // An answer (the start's read, or a read in a batch that committed).
    void saw(std::optional<fleet_pause> now) {
        if (now == now_) return;
        now_ = std::move(now);
        if (changed_) changed_(now_ ? &*now_ : nullptr);
    }
    // The batch that held the queued read has ended (committed or not): the next poll reads.
    void read_ended() noexcept { read_queued_ = false; }
    bool read_queued() const noexcept { return read_queued_; }

private:
    std::optional<fleet_pause> now_;
    std::function<void(const fleet_pause*)> changed_;
    std::unique_ptr<rt::periodic_timer> poll_;
    bool read_queued_ = false;
};

} // namespace mayhem
