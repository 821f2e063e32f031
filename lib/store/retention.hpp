// Retention (`--retention`, README "Store"): finished requests and restarts older than the
// retention are deleted from the store, a bounded pass at a time, off the hot path: a timer
// asks the store for a pass (store::prune), the store runs it between its batches, and the
// next pass waits for the timer again unless this one came back full.
//
// What is kept, whatever its age (the rule is the store's, store.hpp prune_bounds): anything in
// flight or unfinished, and every restart a cooldown still needs. The policy here only turns
// the flags into the pass's bounds (retention_bounds), so it is tested without a loop.
//
// Threading: loop thread only.
#pragma once

#include "runtime/log_budget.hpp"
#include "runtime/loop.hpp"
#include "runtime/task.hpp"
#include "store/store.hpp"

#include <chrono>
#include <memory>

namespace mayhem {

struct retention_options {
    std::chrono::milliseconds keep{90LL * 24 * 3600 * 1000}; // --retention; 0: keep forever
    std::chrono::milliseconds cooldown{0};                   // the longest --restart-cooldown
    std::uint32_t batch = 1000;             // rows per table per pass (one short transaction)
    std::uint32_t passes_per_tick = 10;     // while passes come back full
    std::chrono::milliseconds every{10000}; // at most; half the retention when that is shorter
};

// The bounds of a pass at `now`. Restarts are kept at least as long as the cooldown: a row
// older than both is never one a cooldown needs, so a pass never walks over rows it must keep.
prune_bounds retention_bounds(std::chrono::system_clock::time_point now,
                              const retention_options& o);

class retention {
public:
    // Starts the timer, unless o.keep is 0 (keep forever: nothing is ever pruned).
    retention(rt::loop& loop, store& st, retention_options o);
    retention(const retention&) = delete;
    retention& operator=(const retention&) = delete;
    // Destroying it stops the timer and abandons a pass in progress (the store still runs it).

private:
    rt::task<void> tick();

    rt::loop& loop_;
    store& store_;
    retention_options opts_;
    bool running_ = false;
    rt::log_budget failures_{1, "retention: pass failed", "mayhem_store_healthy"};
    std::unique_ptr<rt::periodic_timer> timer_;
    rt::task_scope tasks_; // last: destroyed (its pass abandoned) before what it uses
};

} // namespace mayhem
