// The seam for `save`: a durable record of each request, keyed by message id, and the
// idempotency record of restarts (so a redelivered message is not restarted twice).
//
// Threading: called on the loop thread; an implementation may do its blocking work on the
// libuv thread pool but completes its tasks on the loop.
#pragma once

#include "message/message.hpp"
#include "pipeline/outcome.hpp"
#include "runtime/task.hpp"
#include "sources/source.hpp"

#include <string_view>

namespace mayhem {

// What the store knows about a restart for a message id before it runs.
enum class restart_claim : std::uint8_t {
    proceed,    // no restart recorded: recorded as started now, go ahead
    done,       // already restarted (or completed): do not restart again
    unfinished, // recorded as started but never finished (a crash in the window)
};

class store {
public:
    virtual ~store() = default;
    virtual std::string_view name() const = 0;

    // Records the request durably; completes when it is durable.
    virtual rt::task<save_result> save(const message& m, const delivery& d) = 0;
    // Before a restart: claims it (recorded as started) unless already done.
    virtual rt::task<restart_claim> claim_restart(const message& m) = 0;
    // After a restart: records how it ended.
    virtual rt::task<void> finish_restart(const message& m, const restart_result& r) = 0;
    // Records the outcome of a message (not awaited: best effort, batched).
    virtual void complete(const message& m, const verdict& v) = 0;
    // Up and writable (readiness).
    virtual bool healthy() const { return true; }
    // Flushes and closes; the loop still runs while it completes.
    virtual rt::task<void> close() = 0;
};

} // namespace mayhem
