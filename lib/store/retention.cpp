#include "store/retention.hpp"

#include "runtime/duration.hpp"
#include "runtime/log.hpp"

#include <algorithm>

namespace mayhem {

prune_bounds retention_bounds(std::chrono::system_clock::time_point now,
                              const retention_options& o) {
    auto ms = [](auto d) {
        return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
    };
    std::int64_t t = ms(now.time_since_epoch());
    prune_bounds b;
    b.messages_before = t - ms(o.keep);
    b.restarts_before = t - ms(std::max(o.keep, o.cooldown));
    b.host_claims_since = t - ms(o.cooldown);
    b.limit = o.batch;
    return b;
}

retention::retention(rt::loop& loop, store& st, retention_options o)
    : loop_(loop), store_(st), opts_(o), tasks_([](std::exception_ptr e) {
          log::error("retention: pass ended unexpectedly", {{"error", rt::describe(e)}});
      }) {
    if (opts_.keep.count() <= 0) return;
    auto every = std::clamp(opts_.keep / 2, std::chrono::milliseconds{100}, opts_.every);
    timer_ = std::make_unique<rt::periodic_timer>(loop_, every, [this] {
        if (!running_) tasks_.spawn(tick());
    });
}

// Passes until one comes back short of the batch (caught up) or passes_per_tick were run; one
// log line when something went.
rt::task<void> retention::tick() {
    running_ = true;
    struct done_guard {
        bool& r;
        ~done_guard() { r = false; }
    } guard{running_};
    prune_counts total;
    for (std::uint32_t i = 0; i < opts_.passes_per_tick; ++i) {
        prune_counts c;
        std::string error;
        try {
            auto pending = store_.prune(retention_bounds(std::chrono::system_clock::now(), opts_));
            c = co_await pending; // named: GCC 12 and co_await temporaries
        } catch (const std::exception& e) {
            error = e.what();
        }
        if (!error.empty()) {
            // The store is down or locked: the next tick tries again. At most a line a second.
            if (failures_.allow(loop_.now()))
                log::warn("retention: pass failed; the next tick tries again", {{"error", error}});
            break;
        }
        total.messages += c.messages;
        total.restarts += c.restarts;
        if (c.messages < opts_.batch && c.restarts < opts_.batch) break;
    }
    if (total.messages || total.restarts)
        log::info("retention: pruned finished requests",
                  {{"messages", total.messages},
                   {"restarts", total.restarts},
                   {"retention", format_duration(opts_.keep)}});
}

} // namespace mayhem
