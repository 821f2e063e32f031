#include "metrics/catalogue.hpp"

#include "message/message.hpp"
#include "pipeline/outcome.hpp"
#include "restart/exec_restarter.hpp"
#include "sources/pubsub_source.hpp"
#include "sources/redis_source.hpp"
#include "sources/tcp_source.hpp"

#include <limits>
#include <prometheus/text_serializer.h>
#include <sstream>
#include <utility>

namespace mayhem::metrics {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using labels = std::vector<ClientMetric::Label>;

MetricFamily family(std::string name, std::string help, MetricType type) {
    MetricFamily f;
    f.name = std::move(name);
    f.help = std::move(help);
    f.type = type;
    return f;
}

void add_value(MetricFamily& f, double v, labels l = {}) {
    ClientMetric m;
    m.label = std::move(l);
    if (f.type == MetricType::Counter)
        m.counter.value = v;
    else
        m.gauge.value = v;
    f.metric.push_back(std::move(m));
}

MetricFamily single(std::string name, std::string help, MetricType type, double v) {
    auto f = family(std::move(name), std::move(help), type);
    add_value(f, v);
    return f;
}

void add_histogram(MetricFamily& f, const latency_histogram& h, labels l = {}) {
    ClientMetric m;
    m.label = std::move(l);
    // Buckets first, count after: a writer may land between the loads, and a count read last is
    // never below the +Inf bucket, which is what the text format expects.
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < latency_histogram::bounds.size(); ++i) {
        cumulative += h.bucket(i);
        m.histogram.bucket.push_back({cumulative, latency_histogram::bounds[i]});
    }
    cumulative += h.bucket(latency_histogram::bounds.size());
    m.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
    m.histogram.sample_count = cumulative;
    m.histogram.sample_sum = h.sum();
    f.metric.push_back(std::move(m));
}

double num(std::uint64_t v) {
    return static_cast<double>(v);
}
double num(std::int64_t v) {
    return static_cast<double>(v);
}

// The stream's figures (--source redis). Always present, so a dashboard's query never goes
// missing: 0 with another source; the sampled gauges -1 until known.
void add_redis(std::vector<MetricFamily>& out, const redis_source_stats* r) {
    auto get = [r](auto member) { return r ? num((r->*member).get()) : 0.0; };
    out.push_back(single("mayhem_redis_group_lag",
                         "Entries in the stream the consumer group has not read yet (sampled; -1 "
                         "when Redis cannot tell)",
                         MetricType::Gauge, get(&redis_source_stats::group_lag)));
    out.push_back(single("mayhem_redis_group_pending",
                         "Entries read by the group's consumers and not acked yet (sampled)",
                         MetricType::Gauge, get(&redis_source_stats::group_pending)));
    out.push_back(single("mayhem_redis_dead_letter_length",
                         "Entries in the dead-letter stream (sampled)", MetricType::Gauge,
                         get(&redis_source_stats::dead_letter_length)));
    auto reclaimed = family("mayhem_redis_reclaimed_total",
                            "Entries this worker took from the group's pending list, by cause",
                            MetricType::Counter);
    add_value(reclaimed, get(&redis_source_stats::reclaimed_orphans), {{"cause", "orphan"}});
    add_value(reclaimed, get(&redis_source_stats::reclaimed_retries), {{"cause", "retry"}});
    out.push_back(std::move(reclaimed));
    out.push_back(single("mayhem_redis_leases_lost_total",
                         "Entries held here that lease renewal found in a peer's hands",
                         MetricType::Counter, get(&redis_source_stats::leases_lost)));
    out.push_back(single("mayhem_redis_ack_failures_total",
                         "Verdicts (XACK, dead letter) Redis refused or whose reply was lost",
                         MetricType::Counter, get(&redis_source_stats::ack_failures)));
}

// The TCP listener's figures (--source tcp); 0 with another source.
void add_tcp(std::vector<MetricFamily>& out, const tcp_source_stats* t) {
    auto get = [t](auto member) { return t ? num((t->*member).get()) : 0.0; };
    out.push_back(single("mayhem_tcp_connections", "Producers connected now (--source tcp)",
                         MetricType::Gauge, get(&tcp_source_stats::connections)));
    auto conns = family("mayhem_tcp_connections_total",
                        "Connections accepted, or refused over --max-connections (answered with "
                        "an error line and closed)",
                        MetricType::Counter);
    add_value(conns, get(&tcp_source_stats::accepted), {{"result", "accepted"}});
    add_value(conns, get(&tcp_source_stats::refused), {{"result", "refused"}});
    out.push_back(std::move(conns));
    auto closed = family("mayhem_tcp_disconnects_total",
                         "Accepted connections that ended, by cause", MetricType::Counter);
    for (int i = 0; i < tcp_close_cause_count; ++i) {
        auto cause = static_cast<tcp_close_cause>(i);
        add_value(closed, t ? num(t->disconnects[i].get()) : 0.0,
                  {{"cause", std::string(to_string(cause))}});
    }
    out.push_back(std::move(closed));
    out.push_back(single("mayhem_tcp_answers_lost_total",
                         "Answers not sent because their producer had disconnected (the work "
                         "was carried out)",
                         MetricType::Counter, get(&tcp_source_stats::answers_lost)));
}

// The subscription's figures (--source pubsub); 0 with another source.
void add_pubsub(std::vector<MetricFamily>& out, const pubsub_source_stats* p) {
    out.push_back(single("mayhem_pubsub_acks_refused_total",
                         "Acks Pub/Sub refused (exactly-once delivery: expired or invalid ack id); "
                         "those messages were not acked and are redelivered",
                         MetricType::Counter, p ? num(p->acks_refused.get()) : 0.0));
}

} // namespace

const char* not_ready_reason(const live_state& live) noexcept {
    if (live.draining.load(std::memory_order_relaxed)) return "draining";
    if (!live.source_up.load(std::memory_order_relaxed)) return "source_down";
    if (!live.store_healthy.load(std::memory_order_relaxed)) return "store_unhealthy";
    if (live.clock_behind.load(std::memory_order_relaxed)) return "clock_behind";
    return nullptr;
}

std::vector<MetricFamily> collect(const catalogue_inputs& in) {
    const pipeline_stats& st = *in.stats;
    const live_state& live = *in.live;
    std::vector<MetricFamily> out;
    out.reserve(32);

    // Messages
    out.push_back(single("mayhem_messages_received_total",
                         "Deliveries taken from the source (redeliveries count again)",
                         MetricType::Counter, num(st.received.get())));
    out.back().metric.back().label = {{"source", in.source}};

    auto completed =
        family("mayhem_messages_completed_total",
               "Deliveries whose outcome the source carried out, by outcome", MetricType::Counter);
    for (int i = 0; i < outcome_count; ++i) {
        add_value(
            completed, num(st.completed[static_cast<std::size_t>(i)].get()),
            {{"outcome", std::string(to_string(static_cast<outcome>(i)))}, {"source", in.source}});
    }
    out.push_back(std::move(completed));

    auto decode =
        family("mayhem_decode_errors_total",
               "Payloads that did not decode (dead-lettered), by reason", MetricType::Counter);
    auto rejected =
        family("mayhem_auth_rejected_total",
               "Requests not signed by a trusted key (--auth-key-file), dead-lettered, by "
               "reason",
               MetricType::Counter);
    for (int i = 0; i < decode_kind_count; ++i) {
        auto kind = static_cast<decode_kind>(i);
        add_value(is_auth_rejection(kind) ? rejected : decode,
                  num(st.decode_errors[static_cast<std::size_t>(i)].get()),
                  {{"reason", std::string(to_string(kind))}});
    }
    out.push_back(std::move(decode));
    out.push_back(std::move(rejected));

    out.push_back(single("mayhem_messages_in_flight",
                         "Messages being processed (saved and restarted) now", MetricType::Gauge,
                         num(st.in_flight.get())));
    out.push_back(single("mayhem_queue_depth",
                         "Messages taken from the source and waiting for room in flight",
                         MetricType::Gauge, num(st.queue_depth.get())));
    out.push_back(single("mayhem_max_in_flight",
                         "The configured limit of messages in flight (--max-in-flight)",
                         MetricType::Gauge, num(live.max_in_flight.get())));

    auto stages = family("mayhem_stage_duration_seconds",
                         "Time per stage: save, restart (claim, restart, record), total "
                         "(received to outcome)",
                         MetricType::Histogram);
    add_histogram(stages, st.save_seconds, {{"stage", "save"}});
    add_histogram(stages, st.restart_seconds, {{"stage", "restart"}});
    add_histogram(stages, st.slot_wait_seconds, {{"stage", "slot_wait"}});
    add_histogram(stages, st.command_seconds, {{"stage", "command"}});
    add_histogram(stages, st.total_seconds, {{"stage", "total"}});
    out.push_back(std::move(stages));

    // Restarts, retries, leases
    auto restarts = family("mayhem_restarts_total", "Restart steps by result", MetricType::Counter);
    for (std::size_t i = 0; i < st.restarts.size(); ++i) {
        add_value(restarts, num(st.restarts[i].get()),
                  {{"result", std::string(to_string(static_cast<restart_status>(i)))}});
    }
    out.push_back(std::move(restarts));
    out.push_back(single("mayhem_retries_total", "Deliveries handed back for a later retry",
                         MetricType::Counter, num(st.retries.get())));
    out.push_back(single("mayhem_lease_extensions_total",
                         "Lease renewals of in-flight messages sent to the source",
                         MetricType::Counter, num(st.lease_extensions.get())));

    out.push_back(single("mayhem_unfinished_restarts_total",
                         "Restart claims that found a restart of the same message started but "
                         "never finished (a crash in the window; see --on-unfinished-restart)",
                         MetricType::Counter, num(st.unfinished_restarts.get())));
    out.push_back(single("mayhem_record_retries_total",
                         "Writes of a restart's end tried again after the store failed (the "
                         "restart is not run again; its message is held until it is recorded)",
                         MetricType::Counter, num(st.record_retries.get())));
    out.push_back(single("mayhem_unfinished_verified_total",
                         "Unfinished restarts that --verify-command found done: recorded ok, "
                         "not run a second time",
                         MetricType::Counter, num(st.unfinished_verified.get())));
    out.push_back(single("mayhem_claims_held_total",
                         "Restart claims found held by another live worker: not restarted here, "
                         "retried later without using up an attempt",
                         MetricType::Counter, num(st.claims_held.get())));
    out.push_back(single("mayhem_claims_lost_total",
                         "Restart claims taken over by another worker while this one's restart "
                         "ran (its lease expired: a stall); the host may have restarted twice",
                         MetricType::Counter, num(st.claims_lost.get())));
    out.push_back(single("mayhem_deliveries_lost_unstarted_total",
                         "Deliveries the source gave to a peer (their lease lapsed) before their "
                         "restart started: not restarted here, released",
                         MetricType::Counter, num(st.lost_unstarted.get())));
    // Store group commit: saves / transactions is the messages per transaction.
    out.push_back(single("mayhem_store_transactions_total",
                         "Store transactions committed (group commit; 0 for the memory store)",
                         MetricType::Counter, num(live.store_transactions.get())));
    out.push_back(single("mayhem_store_saves_total", "Saves in committed store transactions",
                         MetricType::Counter, num(live.store_saves.get())));
    auto pruned = family("mayhem_store_pruned_total",
                         "Rows deleted by --retention (finished and older than the retention), by "
                         "table",
                         MetricType::Counter);
    add_value(pruned, num(live.store_pruned_messages.get()), {{"table", "messages"}});
    add_value(pruned, num(live.store_pruned_restarts.get()), {{"table", "restarts"}});
    out.push_back(std::move(pruned));

    // Always present (0 without --restarter exec), so a dashboard's query never goes missing.
    auto signalled = family("mayhem_restart_processes_signalled_total",
                            "Processes of restart commands the worker had to end, by signal: "
                            "timed out, abandoned at a stop, or left behind by a command that "
                            "exited",
                            MetricType::Counter);
    const exec_restarter_stats* e = in.exec;
    add_value(signalled, num(e ? e->processes_terminated.get() : 0), {{"signal", "SIGTERM"}});
    add_value(signalled, num(e ? e->processes_killed.get() : 0), {{"signal", "SIGKILL"}});
    out.push_back(std::move(signalled));

    // Safety rails (README, "Safety rails")
    if (const restart_guard_stats* g = in.guard) {
        out.push_back(single("mayhem_restarts_paused",
                             "1 while the pause file or the fleet-wide pause holds every restart",
                             MetricType::Gauge, num(g->paused.get())));
        out.push_back(single("mayhem_fleet_paused",
                             "1 while the shared pause (mayhem pause) is set (sqlite, postgres)",
                             MetricType::Gauge, num(g->fleet_paused.get())));
        out.push_back(single("mayhem_restart_breaker_state",
                             "Circuit breaker, the state a new restart would meet: 0 closed, 1 "
                             "open, 2 half-open (one trial restart)",
                             MetricType::Gauge, num(g->breaker_state.get())));
        out.push_back(single("mayhem_clock_behind",
                             "1 while the clock is behind a restart recorded in the store: "
                             "cooldown claims are refused",
                             MetricType::Gauge, num(g->clock_behind.get())));
        out.push_back(single("mayhem_restart_breaker_opened_total", "Times the breaker opened",
                             MetricType::Counter, num(g->breaker_opened.get())));
        out.push_back(single("mayhem_restarts_running", "Restarts admitted and not finished",
                             MetricType::Gauge, num(g->running.get())));
        out.push_back(
            single("mayhem_restarts_waiting",
                   "Restarts waiting for admission (pause file, breaker, concurrency cap)",
                   MetricType::Gauge, num(g->waiting.get())));
        out.push_back(single("mayhem_restarts_waiting_for_slot",
                             "Restarts admitted here waiting for one of the store's fleet-wide "
                             "--max-concurrent-restarts slots (sqlite, postgres)",
                             MetricType::Gauge, num(g->slot_waiting.get())));
        out.push_back(single("mayhem_restart_slots_busy_total",
                             "Slot claims that found every shared slot held (sqlite, postgres)",
                             MetricType::Counter, num(g->slots_busy.get())));
    }

    // Source and store
    out.push_back(single("mayhem_source_up", "1 while the source is connected and can deliver",
                         MetricType::Gauge, live.source_up.load(std::memory_order_relaxed)));
    out.push_back(single("mayhem_source_reconnects_total",
                         "Times the source lost its connection and connected again",
                         MetricType::Counter, num(live.source_reconnects.get())));
    add_redis(out, in.redis);
    add_tcp(out, in.tcp);
    add_pubsub(out, in.pubsub);
    out.push_back(single("mayhem_store_healthy", "1 while the store is up and writable",
                         MetricType::Gauge, live.store_healthy.load(std::memory_order_relaxed)));

    out.push_back(single("mayhem_log_dropped_total",
                         "Log lines dropped because stderr did not keep up (the log queue was "
                         "full): logging never blocks the event loop",
                         MetricType::Counter, num(live.log_dropped.get())));

    // Event loop and lifecycle
    auto lag = family("mayhem_event_loop_lag_seconds",
                      "How late the loop's periodic probe timer fired (time the loop was busy "
                      "elsewhere)",
                      MetricType::Histogram);
    add_histogram(lag, live.loop_lag);
    out.push_back(std::move(lag));
    out.push_back(single("mayhem_event_loop_slow_iterations_total",
                         "Loop iterations busy longer than --slow-callback-warn",
                         MetricType::Counter, num(live.slow_iterations.get())));
    out.push_back(single("mayhem_ready",
                         "1 when /readyz answers 200: source up, store healthy, not draining",
                         MetricType::Gauge, not_ready_reason(live) ? 0 : 1));
    out.push_back(single("mayhem_draining", "1 from the moment a drain begins", MetricType::Gauge,
                         live.draining.load(std::memory_order_relaxed)));
    out.push_back(single("mayhem_drain_duration_seconds",
                         "How long the drain took (set when it ends, 0 before)", MetricType::Gauge,
                         num(live.drain_duration_ns.get()) / 1e9));

    out.push_back(single("mayhem_build_info", "Always 1; the labels say which build this is",
                         MetricType::Gauge, 1));
    out.back().metric.back().label = {{"revision", in.revision}, {"version", in.version}};

    if (in.process) {
        const process_stats& p = *in.process;
        out.push_back(single("process_cpu_seconds_total", "User and system CPU time spent",
                             MetricType::Counter, p.cpu_seconds));
        out.push_back(single("process_resident_memory_bytes", "Resident memory size",
                             MetricType::Gauge, p.resident_bytes));
        out.push_back(single("process_virtual_memory_bytes", "Virtual memory size",
                             MetricType::Gauge, p.virtual_bytes));
        out.push_back(single("process_start_time_seconds",
                             "Start time of the process since the Unix epoch", MetricType::Gauge,
                             p.start_time_seconds));
        out.push_back(
            single("process_open_fds", "Open file descriptors", MetricType::Gauge, p.open_fds));
        if (p.max_fds > 0) {
            out.push_back(single("process_max_fds", "Limit of open file descriptors",
                                 MetricType::Gauge, p.max_fds));
        }
    }
    return out;
}

std::string serialize(const std::vector<MetricFamily>& families) {
    std::ostringstream out;
    prometheus::TextSerializer{}.Serialize(out, families);
    return out.str();
}

} // namespace mayhem::metrics
