// timer_entry: one deadline in the loop's shared timer queue (runtime/loop.hpp). Its own header
// because a leaf (runtime/task.hpp) is one: a step that is a value after a delay.
#pragma once

#include <cstdint>

namespace mayhem::rt {

class timer_queue;
struct timer_lane;

class timer_entry {
public:
    timer_entry() = default;
    timer_entry(const timer_entry&) = delete;
    timer_entry& operator=(const timer_entry&) = delete;
    virtual ~timer_entry();

    bool armed() const noexcept { return lane_ != nullptr; }
    void cancel() noexcept;

protected:
    // Called on the loop thread when the entry is due; the entry is already disarmed.
    virtual void fire() noexcept = 0;

private:
    friend class timer_queue;
    timer_lane* lane_ = nullptr; // set while armed
    timer_entry* prev_ = nullptr;
    timer_entry* next_ = nullptr;
    // One word, as every message in flight has its waiting steps' entries: the deadline (loop
    // time, ms; 48 bits last 8,900 years) and the firing pass it was armed in (mod 2^16).
    std::uint64_t due_ : 48 = 0;
    std::uint64_t epoch_ : 16 = 0;
};

} // namespace mayhem::rt
