// What the HTTP threads need to know about the worker beyond the pipeline's own stats: the
// loop's heartbeat and lag, readiness, drain figures. Every field is a single-writer relaxed
// atomic written by the loop thread and read by the HTTP threads, so a scrape or a probe takes
// no lock and never waits for the loop (a stuck loop must still get an answer).
#pragma once

#include "pipeline/pipeline.hpp"
#include "runtime/counter.hpp"

#include <atomic>
#include <cstdint>

namespace mayhem::metrics {

struct live_state {
    // steady_clock nanoseconds of the loop's last heartbeat (the monitor's periodic timer).
    std::atomic<std::int64_t> heartbeat_ns{0};
    // Readiness inputs, published by the loop (draining also the moment a drain begins).
    std::atomic<bool> draining{false};
    std::atomic<bool> source_up{false};
    std::atomic<bool> store_healthy{false};
    std::atomic<bool> clock_behind{false}; // the cooldown met a restart after the clock
    // Copies of loop-owned figures, refreshed by the monitor's timer.
    rt::gauge max_in_flight;
    rt::gauge source_reconnects;
    rt::gauge store_transactions;
    rt::gauge store_saves;
    rt::gauge store_pruned_messages; // rows deleted by --retention (store::pruned())
    rt::gauge store_pruned_restarts;
    rt::gauge log_dropped; // log lines dropped: stderr did not keep up (log::dropped())
    // Set once, when a drain ends; 0 before.
    rt::gauge drain_duration_ns;
    // How late the monitor's timer fired, and loop iterations that ran longer than
    // --slow-callback-warn without waiting for I/O.
    latency_histogram loop_lag;
    rt::counter slow_iterations;
};

} // namespace mayhem::metrics
