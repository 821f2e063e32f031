// `--source redis`: a consumer in a Redis Streams consumer group, so any number of workers, on
// one machine or many, share one stream. Every Redis call runs on the worker's loop through
// hiredis's async API (glue in redis_link.cpp), on two connections: `reader` only carries the
// XREADGROUPs of new entries, at most two pipelined, the first blocking (so a read waiting for
// new entries never delays an ack), `writer` carries everything else (group set-up, XACK, dead
// letters, lease renewal, reclaim). What a read brings beyond the pipeline's demand waits in
// the source (--read-ahead), so the next read is under way while the loop works on the last.
//
// What a verdict means here:
//  - acked / skipped: XACK; batched, one XACK for everything settled in a loop turn. The
//    pipeline hears `settled` only once Redis answered, so nothing is counted as acked early.
//  - dead_lettered: XADD to the dead-letter stream, then XACK, in one script that stops at a
//    failed XADD (never acked without its dead-letter entry), batched per turn too.
//  - retried / released: nothing is sent; the entry stays pending in the group and is picked
//    up by whichever worker reclaims it once it has been idle for --lease-timeout (a reclaim
//    every --reclaim-interval). The retry delay is therefore the lease timeout, not
//    --retry-backoff, and a retry survives this worker's death. A reconnect does not take it
//    back early.
//
// Entries already pending are claimed in two steps: XPENDING lists them with their delivery
// counts, then a claim takes exactly those (reclaim: XCLAIM with the lease as minimum idle time;
// this consumer's own: a script that claims only what is still pending under it). So every
// entry claimed is delivered, with its count, and none is left claimed but undelivered.
//
// Lease renewal (in-flight entries at the pipeline's call, entries read ahead on a timer) uses
// the same script with JUSTID: it renews only what is still pending under this consumer. An
// entry found in a peer's hands (our lease lapsed, a peer reclaimed it) is dropped from our
// books: read ahead, it is forgotten; delivered, the sink hears lease_lost() and its verdict is
// reported `released`, never acked here.
//
// The attempt number of a delivery is the entry's delivery count in the group (XPENDING): how
// often it was handed to a consumer, an upper bound of how often its restart started (workers
// that died with it only read ahead or queued raised it too). The source never dead-letters on
// it; an entry it takes but does not start is handed back with its count as it was.
//
// For /metrics (redis_source_stats) one timer samples the group (lag, pending entries) and
// the dead-letter stream's length on the writer, never per message and never on the reader.
//
// Its life is one state machine (`state`: connecting, setting_up, recovering, reading,
// checking_idle, draining, leaving, forced, stopped, failed, closed), each change made in one
// function and logged (`redis source state`); the diagram is in redis_source.cpp. Besides the
// state, the writer has at most one request of its own under way (`control`: setup, the pass
// over our own entries, a reclaim, the idle check, the farewell).
//
// Threading: loop thread only.
#pragma once

#include "runtime/counter.hpp"
#include "runtime/loop.hpp"
#include "sources/redis_link.hpp"
#include "sources/source.hpp"

#include <deque>
#include <list>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace mayhem {

struct redis_source_options {
    redis_endpoint endpoint;
    std::string stream = "mayhem:restarts";
    std::string group = "mayhem";
    std::string consumer;           // unique per process
    std::string dead_letter_stream; // empty: <stream>:dead
    rt::millis reclaim_interval{30000};
    rt::millis lease_timeout{60000};
    bool exit_when_idle = false;
    rt::millis block{1000};       // how long one XREADGROUP waits for new entries
    std::size_t max_read = 1000;  // entries per read at most
    std::size_t max_batch = 4096; // ids per XACK / per MULTI at most
    // New entries read beyond the demand and held here until the pipeline has room (0: read
    // only what was granted). With it, one read is under way while the last one is processed.
    std::size_t read_ahead = 512;
    rt::millis lease_extend{2000}; // how often the leases of entries held here are renewed
    // How often the group is sampled for /metrics (redis_source_stats; 0: never).
    rt::millis sample_interval{5000};
};

// What a stream operator reads on /metrics (README, "Observability"). Written by the loop
// thread, read by the HTTP threads: single-writer relaxed atomics, as pipeline_stats.
struct redis_source_stats {
    // Sampled every sample_interval on the writer (XINFO GROUPS, XPENDING, XLEN), never per
    // message. -1 until the first sample; the lag also when Redis cannot tell it (before 7.0,
    // or after entries were deleted from the stream).
    rt::gauge group_lag;          // entries in the stream the group has not read yet
    rt::gauge group_pending;      // entries read by the group's consumers and not acked
    rt::gauge dead_letter_length; // entries in the dead-letter stream
    // Entries this worker took from the group's pending list: another consumer's (an orphan,
    // its worker gone or stalled), or its own, retried and waiting out their lease.
    rt::counter reclaimed_orphans;
    rt::counter reclaimed_retries;
    // Deliveries (or entries read ahead) found in a peer's hands at lease renewal.
    rt::counter leases_lost;
    // Verdicts (XACK, dead letter) whose command Redis refused or whose reply was lost: they
    // are sent again, or given up at a forced stop (the entry stays pending).
    rt::counter ack_failures;
};

class redis_source final : public source {
public:
    redis_source(rt::loop& loop, redis_source_options opts);
    ~redis_source() override;
    std::string_view name() const override { return "redis"; }

    void start(source_sink& sink) override;
    void request(std::size_t n) override;
    void extend(std::span<const delivery* const> in_flight) override;
    void settle(delivery d, const verdict& v) override;
    void stop() override;
    bool finished() const override;
    bool drained() const override;
    bool up() const override;
    std::uint64_t reconnects() const override { return reconnects_; }
    void force_stop() override;
    std::string fatal_error() const override { return fatal_; }
    void close() override;

    // Dead-lettered without being delivered (no payload field).
    std::uint64_t dead_lettered_here() const noexcept { return dead_here_; }
    const redis_source_stats& stats() const noexcept { return stats_; }

private:
    struct entry {
        std::string id;
        std::string payload;
        bool has_payload = false;
        bool deleted = false;      // in the PEL, but the stream entry itself is gone
        std::uint32_t attempt = 1; // its delivery count in the group, this delivery included
                                   // (entries read ahead: 1)
    };
    struct ack_item {
        std::string id;
        outcome what = outcome::acked;
        bool report = true; // the pipeline awaits `settled` for it
    };
    struct dead_item {
        ack_item ack;
        std::string payload, reason, message_id;
        std::uint32_t attempts = 1;
    };
    struct batch {
        std::vector<ack_item> acks;
        std::vector<dead_item> dead;
        bool dropped = false; // reported as released by force_stop(); ignore the reply
    };
    // The source's life (the diagram and what each state does: redis_source.cpp, "Life cycle").
    enum class state : std::uint8_t {
        created,       // start() not called yet
        connecting,    // waiting for both connections (at start, after one dropped)
        setting_up,    // checking the keys' types and creating the group (start, NOGROUP)
        recovering,    // taking back this consumer's own pending entries (start, reconnect)
        reading,       // claims (reclaim) and reads of new entries for the pipeline's demand
        checking_idle, // --exit-when-idle: a read found nothing; is the group idle?
        draining,      // stop(): nothing new; what is under way finishes, verdicts go out
        leaving,       // quiet after a clean stop: the consumer leaves the group
        forced,        // force_stop(): nothing delivered; unconfirmed verdicts given up
        stopped,       // done: finished() and drained()
        failed,        // fatal_error() says why
        closed,        // close(): connections freed
    };
    // The one request of the writer's own (not a verdict, not a renewal) under way, if any.
    enum class control : std::uint8_t { none, setup, own, reclaim, idle_check, farewell };
    static std::string_view name_of(state s) noexcept;

    void enter(state next, std::string_view why);
    void fail(std::string why);
    bool running() const noexcept;
    bool delivering() const noexcept;
    bool closed() const noexcept { return state_ == state::closed; }
    // After a forced stop: verdicts Redis cannot confirm now are given up, not sent again.
    bool giving_up() const noexcept { return state_ == state::forced || state_ == state::stopped; }

    static void on_idle(uv_idle_t* h) noexcept;
    void kick();
    void turn();
    void cool_down(const std::string& what, const std::string& error);

    void setup();
    void flush_acks();
    void flush_dead();
    bool send_batch(std::list<batch>::iterator it, int argc, const char** argv,
                    const std::size_t* lens, const char* what);
    void confirmed(batch& b);
    void requeue(batch& b);
    void read_new();
    void on_read_new(redisReply* r, std::size_t asked);
    void deliver_ahead();
    template <class IdOf>
    std::size_t xclaim(std::size_t n, IdOf id_of, std::initializer_list<std::string_view> options,
                       const redis_link::reply_fn& on_reply);
    template <class IdOf>
    void renew(std::size_t n, IdOf id_of, const char* what);
    void renew_ahead();
    void on_lease_lost(const std::string& id);
    void leave_ahead();
    void leave(std::vector<entry> entries);
    void take_own();
    void reclaim();
    bool claim_failed(const redisReply* r, std::size_t reserved, const char* what);
    void claim_done(std::size_t reserved, std::size_t used);
    std::size_t deliver_claimed(std::vector<entry>& entries);
    bool deliver_one(std::string_view id, std::string_view payload, bool has_payload,
                     std::uint32_t attempt);
    void dead_letter_here(std::string id, std::string payload, std::string reason,
                          std::uint32_t attempts);
    void check_idle();
    void sample();
    bool quiet() const;
    void say_farewell();
    void release_unconfirmed();
    void report(const ack_item& a, outcome o);
    bool handle_nogroup(const std::string& error);
    void prune_waiting();

    void link_up(const char* role);
    void link_down(const char* role, const std::string& why);
    void link_rejected(const char* role, const std::string& why);

    rt::loop& loop_;
    redis_source_options opts_;
    source_sink* sink_ = nullptr;
    redis_link reader_;
    redis_link writer_;
    rt::uv_handle<uv_idle_t> idle_;
    std::unique_ptr<rt::periodic_timer> reclaim_timer_;
    std::unique_ptr<rt::periodic_timer> ahead_timer_;  // renews the leases of ahead_
    std::unique_ptr<rt::periodic_timer> sample_timer_; // samples the group for stats_
    rt::delayed_call cool_timer_;
    rt::delayed_call force_timer_;

    std::size_t demand_ = 0;               // granted, neither delivered nor reserved by a request
    std::size_t unconfirmed_ = 0;          // verdicts from the pipeline not yet reported settled
    std::unordered_set<std::string> held_; // entry ids delivered (or dead-lettered here) and not
                                           // yet confirmed: never delivered twice at once
    // Delivered entries whose lease renewal found them in a peer's hands: not acked here.
    std::unordered_set<std::string> lost_;
    // Entries this worker left pending after a verdict (retried, released), with when their
    // lease runs out: until then they wait out their retry delay, and a reconnect does not take
    // them back early (after it, a reclaim takes them like any orphan).
    std::unordered_map<std::string, std::uint64_t> waiting_;
    std::vector<ack_item> acks_;
    std::vector<dead_item> dead_;
    std::list<batch> sent_; // dead-letter / XACK batches awaiting their reply

    // Read ahead: new entries read beyond the demand, in the order read. They are in held_ (ours,
    // pending in the group, leases renewed by ahead_timer_) and go to the pipeline as demand
    // comes. Bounded: ahead_ plus what reads under way asked for stays within demand_ +
    // read_ahead. Never started at a drain: left pending, idle, for any worker to reclaim.
    std::deque<entry> ahead_;
    std::size_t reading_ = 0; // COUNT of the reads of new entries under way, summed
    unsigned reads_ = 0;      // reads of new entries under way (at most 2, pipelined)
    bool last_full_ = true;   // the last read returned all it asked for: more are waiting
    unsigned releases_ = 0;   // XCLAIM ... IDLE of entries left at a drain, awaiting a reply
    unsigned samples_ = 0;    // replies of the last sample still awaited (one sample at a time)

    state state_ = state::created;
    control control_ = control::none;
    // This consumer's own pending entries not in hand, taken in state recovering: at start (an
    // earlier run under the same name left them) and after a reconnect (a read or claim whose
    // reply was lost).
    std::string own_cursor_ = "-";
    std::uint64_t own_pass_ = 0; // bumped when a pass starts over; a stale reply keeps out
    std::string reclaim_cursor_ = "-";
    bool reclaim_due_ = true;  // a reclaim pass is due (at start, then every --reclaim-interval)
    bool group_ready_ = false; // the group is known to exist (until NOGROUP)
    bool ever_up_ = false;     // reached `recovering` once: credentials work, a drop is an outage
    std::string fatal_;
    std::uint64_t dead_here_ = 0;
    redis_source_stats stats_;
    std::uint64_t reconnects_ = 0; // outages the source came back from (not each link, not
                                   // each failed attempt)
};

} // namespace mayhem
