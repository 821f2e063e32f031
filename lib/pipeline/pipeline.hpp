// The pipeline: source -> bounded queue -> consumer -> one task per message that fans out
// save and restart, gathers both, decides the outcome and hands it back to the source. The
// task's frame is the only one a message keeps while it waits: the save runs as a branch (a
// leaf, for the stores here), and the restart's serial steps, the guard's among them, run in the
// message's own frame.
//
// Threading: the loop thread owns every member. The stats are also read by the metrics thread
// (single-writer relaxed atomics).
#pragma once

#include "message/message.hpp"
#include "pipeline/outcome.hpp"
#include "restart/restart_guard.hpp"
#include "runtime/counter.hpp"
#include "runtime/list.hpp"
#include "runtime/log_budget.hpp"
#include "runtime/loop.hpp"
#include "runtime/string_index.hpp"
#include "runtime/task.hpp"
#include "sources/source.hpp"
#include "store/store.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace mayhem {

struct pipeline_options {
    std::size_t max_in_flight = 1000;
    std::size_t queue_capacity = 64;
    std::chrono::milliseconds lease_extend_interval{2000};
    std::uint32_t max_attempts = 5;
    backoff_policy backoff;
    decode_options decode;
    std::uint64_t seed = 0; // 0: random
    unfinished_policy on_unfinished = unfinished_policy::retry;
    // A restart that ran but whose record could not be written: how long to wait before writing
    // it again (attempt n waits up to min(cap, base * 2^(n-1))). The message is held meanwhile.
    backoff_policy record_retry{std::chrono::milliseconds{100}, std::chrono::milliseconds{5000}};
};

// Latency histogram written by the loop thread, read by the metrics thread. Buckets are fixed:
// a fine set below 1 ms for the worker's own overhead, up to 30 minutes for real restarts
// (--restart-timeout defaults to 5 minutes).
class latency_histogram {
public:
    static constexpr std::array<double, 25> bounds = {
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
        0.05,    0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0, 20.0,
        30.0,    60.0,   120.0,   300.0,  600.0, 1200.0, 1800.0};
    void observe(double seconds) noexcept;
    std::uint64_t bucket(std::size_t i) const noexcept {
        return counts_[i].get();
    } // non-cumulative
    std::uint64_t count() const noexcept { return count_.get(); }
    double sum() const noexcept { return static_cast<double>(sum_ns_.get()) / 1e9; }

private:
    std::array<rt::counter, bounds.size() + 1> counts_;
    rt::counter count_;
    rt::counter sum_ns_;
};

struct pipeline_stats {
    rt::counter received;
    std::array<rt::counter, outcome_count> completed;         // confirmed by the source, by outcome
    std::array<rt::counter, decode_kind_count> decode_errors; // by kind, auth rejections too
    std::array<rt::counter, restart_status_count> restarts;   // by restart_status
    rt::counter retries;
    rt::counter lease_extensions;
    rt::counter unfinished_restarts; // claims that found a restart started but never finished
    rt::counter record_retries;      // writes of a restart's record tried again after a failure
    rt::counter claims_held;         // claims found held by a live peer: not restarted here
    rt::counter claims_lost;         // claims taken over by a peer while this worker's restart ran
    rt::counter unfinished_verified; // unfinished restarts the verify command found done
    rt::counter lost_unstarted;      // deliveries a peer took before their restart started
    rt::gauge in_flight;
    rt::gauge peak_in_flight; // the most in flight at once since start
    rt::gauge queue_depth;
    latency_histogram save_seconds, restart_seconds, total_seconds;
    // Within the restart step: waiting for a slot (cap, pause, breaker), and the restart itself.
    latency_histogram slot_wait_seconds, command_seconds;

    std::uint64_t completed_total() const noexcept {
        std::uint64_t n = 0;
        for (const auto& c : completed)
            n += c.get();
        return n;
    }
};

// What a message in flight is waiting for, for /debug/inflight and SIGUSR1. Its save runs
// beside these steps from the start; `saving` is a message whose restart step is over and whose
// save is not.
enum class flight_stage : std::uint8_t {
    claiming,         // the store's claim of its restart
    verifying,        // --verify-command on a restart a dead worker left unfinished
    waiting_for_slot, // the guard: --max-concurrent-restarts, the pause file, the breaker
    restarting,       // the restart itself
    recording,        // writing how the restart ended (or giving its claim back)
    saving,           // only its save is left
    duplicate,        // a second delivery of an id in flight, waiting for the first
};
std::string_view to_string(flight_stage s) noexcept;

// One message in flight as /debug/inflight shows it.
struct inflight_entry {
    std::string message_id;
    std::string hostname;
    flight_stage stage = flight_stage::claiming;
    bool saved = false;
    double age_seconds = 0; // since the pipeline took it from the source (queue included)
    std::uint32_t attempt = 0;
};

struct inflight_snapshot {
    std::size_t in_flight = 0;
    std::size_t queued = 0;
    std::vector<inflight_entry> oldest; // oldest first, at most the limit asked for
};

class pipeline final : private source_sink {
public:
    pipeline(rt::loop& loop, pipeline_options opts, source& src, store& st, restart_guard& guard);
    pipeline(const pipeline&) = delete;
    pipeline& operator=(const pipeline&) = delete;
    ~pipeline() override;

    // Starts the source and grants it the queue's room.
    void start();
    // Drain, step 1: take nothing new from the source and start no new restart. Queued messages
    // and those whose restart has not begun are released; restarts already running go on, and
    // their messages settle when they end.
    void stop_intake();
    // Forced: every queued and in-flight delivery is released (not acked) at once.
    void release_all();

    // Nothing queued, nothing in flight, nothing waiting for the source's confirmation.
    bool idle() const noexcept;
    bool intake_stopped() const noexcept { return intake_stopped_; }

    // Limits that can change at run time (SIGHUP).
    void set_max_in_flight(std::size_t n);
    std::size_t max_in_flight() const noexcept { return opts_.max_in_flight; }
    // The keys requests must be signed with (SIGHUP re-reads the key files); null: none.
    void set_auth_keys(std::shared_ptr<auth::key_ring> keys);

    const pipeline_stats& stats() const noexcept { return stats_; }
    // Seconds from the first delivery received to the last outcome the source confirmed: the
    // run without its start-up and its idle end (0 before any). Loop thread only.
    double active_seconds() const noexcept;
    // The `limit` oldest messages in flight, with their stage. Loop thread only.
    inflight_snapshot inflight(std::size_t limit) const;
    // Called (on the loop) when the pipeline may have become idle or the source changed.
    void on_change(std::function<void()> fn) { on_change_ = std::move(fn); }

private:
    struct flight;

    // source_sink
    void deliver(delivery d) override;
    void settled(outcome o) override;
    void source_changed() override;
    void lease_lost(std::string_view ref) override;

    void pump();
    void release_unstarted(delivery d, const char* why);
    void release_queued(const char* why);
    rt::task<void> process(delivery d);
    rt::task<bool> wait_for_slot(flight& f);
    rt::task<void> close_claim(flight& f);
    rt::task<void> unclaim(flight& f);
    void claim_lost(flight& f);
    bool admit(flight& f);
    flight* in_flight_with_id(const message& m);
    rt::task<void> follow(flight& f);
    void settle_duplicate(flight& f, const flight& first);
    void hold(flight& f);
    void lease(flight& f);
    void conclude(flight& f);
    // After the claim: verify an unfinished restart first; run the restart; record `r` as the
    // claim's end without running one (counted by result or not); or settle with `r`, counted
    // by result or not.
    enum class claim_step : std::uint8_t {
        verify,
        restart,
        record,
        record_counted,
        counted,
        uncounted
    };
    rt::task<claim_step> claim(flight& f);
    rt::task<claim_step> verify_unfinished(flight& f);
    claim_step after_claim(flight& f, claim_answer claim);
    static void restart_failed(restart_result& r);
    static claim_step store_failed(restart_result& r);
    // `now`: the steady clock in ns if the caller has just read it, else 0.
    void settle(flight& f, verdict v, std::uint64_t now = 0);
    void renew_leases();
    void warm(const flight& f, bool ending) const noexcept;
    void notify();
    static std::uint64_t now_ns() noexcept;

    rt::loop& loop_;
    pipeline_options opts_;
    source& source_;
    store& store_;
    restart_guard& guard_;

    std::deque<delivery> queue_;
    std::size_t in_flight_ = 0;
    std::size_t unconfirmed_ = 0; // verdicts handed to the source, not yet confirmed
    bool pumping_ = false;
    bool intake_stopped_ = false;
    bool releasing_ = false;

    // Message ids in flight, for coalescing a second delivery of the same id.
    static std::string_view id_of(const flight& f) noexcept;
    static std::uint64_t id_hash_of(const flight& f) noexcept;
    rt::string_index<flight, &pipeline::id_of, &pipeline::id_hash_of> by_id_;
    // In-flight messages in order of their next lease renewal (all share one interval).
    rt::intrusive_list leases_;
    rt::periodic_timer lease_timer_;
    std::vector<const delivery*> lease_batch_;
    std::vector<const message*> claim_batch_;

    // Undecodable messages and store failures are logged one line each, but at most this many
    // per second: a flood of bad input or a failing disk must not turn into a flood of log lines.
    rt::log_budget bad_log_{100, "undecodable message dead-lettered", "mayhem_decode_errors_total"};
    rt::log_budget auth_log_{100, "request not signed by a trusted key: dead-lettered",
                             "mayhem_auth_rejected_total"};
    rt::log_budget store_log_{10, "restart record not written", "mayhem_record_retries_total"};

    std::mt19937_64 rng_;
    pipeline_stats stats_;
    std::uint64_t first_received_ns_ = 0; // active_seconds()
    std::uint64_t last_settled_ns_ = 0;
    std::function<void()> on_change_;
    rt::task_scope tasks_;
};

} // namespace mayhem
