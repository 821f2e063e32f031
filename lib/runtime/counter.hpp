// Counters and gauges written by the loop thread and read by the metrics thread.
//
// One writer, any number of readers: a relaxed load and store is enough (no read-modify-write,
// no lock prefix, no lock), so an increment on the hot path costs what a plain add costs.
#pragma once

#include <atomic>
#include <cstdint>

namespace mayhem::rt {

class counter {
public:
    void inc(std::uint64_t n = 1) noexcept {
        v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    std::uint64_t get() const noexcept { return v_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> v_{0};
};

class gauge {
public:
    void set(std::int64_t v) noexcept { v_.store(v, std::memory_order_relaxed); }
    void add(std::int64_t n) noexcept {
        v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    std::int64_t get() const noexcept { return v_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::int64_t> v_{0};
};

} // namespace mayhem::rt
