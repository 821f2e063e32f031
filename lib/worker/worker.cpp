#include "worker/worker.hpp"

#include "metrics/observability.hpp"
#include "restart/exec_restarter.hpp"
#include "restart/restart_guard.hpp"
#include "restart/simulate_restarter.hpp"
#include "runtime/log.hpp"
#include "sources/pubsub_rest.hpp"
#include "sources/pubsub_source.hpp"
#include "sources/redis_source.hpp"
#include "sources/simulate_source.hpp"
#include "sources/stdin_source.hpp"
#include "sources/tcp_source.hpp"
#include "store/memory_store.hpp"
#include "store/postgres_store.hpp"
#include "store/sharded_store.hpp"
#include "store/sqlite_store.hpp"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <unistd.h>

namespace mayhem {

namespace {

// <hostname>-<pid>: names this process among its peers (a consumer, a claim owner).
std::string host_and_pid() {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "host");
    return std::string(host) + "-" + std::to_string(::getpid());
}

std::unique_ptr<source> make_redis_source(rt::loop& loop, const worker_config& c) {
    redis_source_options o;
    std::string why;
    auto ep = parse_redis_url(c.redis_url, &why);
    if (!ep) throw std::runtime_error("--redis-url: " + why);
    o.endpoint = *ep;
    o.stream = c.stream;
    o.group = c.group;
    o.consumer = c.consumer;
    if (o.consumer.empty()) {
        o.consumer = host_and_pid();
    }
    o.dead_letter_stream = c.dead_letter_stream;
    o.reclaim_interval = c.reclaim_interval;
    o.lease_timeout = c.lease_timeout;
    o.exit_when_idle = c.exit_when_idle;
    o.read_ahead = c.read_ahead;
    o.lease_extend = c.lease_extend_interval;
    o.sample_interval = c.metrics_addr == "off" ? rt::millis{0} : c.stream_sample_interval;
    if (c.lease_extend_interval * 2 > c.lease_timeout)
        log::warn("--lease-extend-interval is not well below --lease-timeout: entries in flight "
                  "may be reclaimed by other workers while this one works on them",
                  {{"lease_extend_interval", format_duration(c.lease_extend_interval)},
                   {"lease_timeout", format_duration(c.lease_timeout)}});
    return std::make_unique<redis_source>(loop, std::move(o));
}

std::unique_ptr<source> make_pubsub_source(rt::loop& loop, const worker_config& c) {
    pubsub_source_options o;
    o.endpoint = pubsub::resolve_endpoint(c.pubsub_endpoint);
    o.subscription = c.pubsub_subscription;
    o.dead_letter_topic = c.dead_letter_topic;
    o.exit_when_idle = c.exit_when_idle;
    o.lease_extend = c.lease_extend_interval;
    o.ack_deadline = c.lease_timeout;
    o.credentials = gcp::wants_credentials(c.pubsub_credentials, o.endpoint);
    o.key = c.pubsub_key;
    return std::make_unique<pubsub_source>(loop, std::move(o));
}

std::unique_ptr<source> make_source(rt::loop& loop, const worker_config& c) {
    if (c.source == "redis") return make_redis_source(loop, c);
    if (c.source == "pubsub") return make_pubsub_source(loop, c);
    if (c.source == "tcp") {
        tcp_source_options o;
        o.listen = c.listen;
        o.max_connections = c.max_connections;
        o.max_line_bytes = c.max_message_bytes;
        o.idle_timeout = c.tcp_idle_timeout;
        o.max_answer_bytes = c.max_answer_bytes;
        return std::make_unique<tcp_source>(loop, std::move(o)); // tcp_listen_error: exit 2
    }
    if (c.source == "stdin")
        return std::make_unique<stdin_source>(loop, STDIN_FILENO, c.max_message_bytes);
    simulate_options o;
    o.messages = c.messages;
    o.rate = c.rate;
    o.bad_ratio = c.bad_ratio;
    o.seed = c.seed;
    return std::make_unique<simulate_source>(loop, o);
}

std::unique_ptr<store> make_store(rt::loop& loop, const worker_config& c,
                                  const std::string& owner) {
    if (c.store == "sqlite") {
        sqlite_options o;
        o.path = c.db;
        o.synchronous_full = c.db_synchronous == "full";
        o.busy_timeout = c.db_busy_timeout;
        // A claim is this process's while its message's lease lives; a peer that finds it leased
        // does not restart, and takes it over only once it has expired.
        o.owner = owner;
        o.claim_lease = c.lease_timeout;
        return std::make_unique<sqlite_store>(loop, o); // sqlite_fatal (newer schema): exit 1
    }
    if (c.store == "postgres") {
        postgres_options o;
        o.url = c.postgres_url;
        o.owner = owner;
        o.claim_lease = c.lease_timeout;
        // postgres_fatal (newer schema): exit 1
        if (c.postgres_connections <= 1) return std::make_unique<postgres_store>(loop, o);
        std::vector<std::unique_ptr<store>> shards;
        for (std::uint64_t i = 0; i < c.postgres_connections; ++i) {
            shards.push_back(std::make_unique<postgres_store>(loop, o));
            o.check_at_start = false; // the first connection has checked the schema
        }
        return std::make_unique<sharded_store>(std::move(shards));
    }
    return std::make_unique<memory_store>(loop, c.save_latency, c.seed ? c.seed + 1 : 0);
}

std::unique_ptr<restarter> make_restarter(rt::loop& loop, const worker_config& c) {
    if (c.restarter == "exec") {
        // The templates were checked by check_safety() when the flags were parsed.
        auto restart = std::get<command_template>(command_template::parse(c.restart_command));
        std::optional<command_template> verify;
        if (!c.verify_command.empty())
            verify = std::get<command_template>(command_template::parse(c.verify_command));
        return std::make_unique<exec_restarter>(
            loop, std::move(restart), std::move(verify),
            exec_options{c.restart_timeout, c.restart_kill_grace, installed_exec_wrapper(),
                         delegated_cgroup()});
    }
    return std::make_unique<simulate_restarter>(loop, c.restart_latency, c.restart_failure_rate,
                                                c.seed ? c.seed + 2 : 0);
}

// The safety rails in front of whichever restarter was chosen.
std::unique_ptr<restart_guard> make_guard(rt::loop& loop, const worker_config& c, store& st,
                                          restarter& inner) {
    auto d = resolve_safety(c);
    guard_options o;
    o.cooldown = d.restart_cooldown;
    o.max_concurrent = d.max_concurrent_restarts;
    o.allow_hosts = c.allow_hosts;
    o.deny_hosts = c.deny_hosts;
    o.host_domain = c.host_domain;
    o.pause_file = c.pause_file;
    o.breaker = breaker_options{d.breaker_failures, c.breaker_window, c.breaker_cooldown};
    o.dry_run = c.dry_run;
    return std::make_unique<restart_guard>(loop, std::move(o), st, inner);
}

pipeline_options make_pipeline_options(const worker_config& c) {
    pipeline_options o;
    o.max_in_flight = c.max_in_flight;
    o.queue_capacity = c.queue_capacity;
    o.lease_extend_interval = c.lease_extend_interval;
    o.max_attempts = c.max_attempts;
    o.backoff = backoff_policy{c.retry_backoff.min, c.retry_backoff.max};
    o.decode.max_bytes = c.max_message_bytes;
    o.decode.host_domain = c.host_domain;
    o.decode.auth_keys = c.auth_keys;
    o.decode.auth_max_age = c.auth_max_age;
    o.seed = c.seed ? c.seed + 3 : 0;
    o.on_unfinished = c.on_unfinished_restart == "dead-letter" ? unfinished_policy::dead_letter
                                                               : unfinished_policy::retry;
    return o;
}

metrics::observability_options make_observability_options(const worker_config& c) {
    metrics::observability_options o;
    o.listen = c.metrics_addr;
    o.health_max_loop_lag = c.health_max_loop_lag;
    o.slow_callback_warn = c.slow_callback_warn;
    o.debug_block_loop = c.debug_block_loop;
    return o;
}

const char* signal_name(int s) {
    switch (s) {
    case SIGTERM:
        return "SIGTERM";
    case SIGINT:
        return "SIGINT";
    case SIGHUP:
        return "SIGHUP";
    default:
        return "signal";
    }
}

// The name this process puts on its restart claims: unique per process, also across restarts
// of a worker that keeps its --consumer name.
std::string claim_owner() {
    char tag[16];
    std::snprintf(tag, sizeof tag, "%06x",
                  static_cast<unsigned>(std::random_device{}() & 0xFFFFFFu));
    return host_and_pid() + "-" + tag;
}

const exec_restarter_stats* exec_stats(const restarter& r) {
    auto* e = dynamic_cast<const exec_restarter*>(&r);
    return e ? &e->stats() : nullptr;
}

const redis_source_stats* redis_stats(const source& s) {
    auto* r = dynamic_cast<const redis_source*>(&s);
    return r ? &r->stats() : nullptr;
}

const tcp_source_stats* tcp_stats(const source& s) {
    auto* t = dynamic_cast<const tcp_source*>(&s);
    return t ? &t->stats() : nullptr;
}

const pubsub_source_stats* pubsub_stats(const source& s) {
    auto* p = dynamic_cast<const pubsub_source*>(&s);
    return p ? &p->stats() : nullptr;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

} // namespace

worker::worker(worker_config cfg, std::vector<std::string> argv)
    : cfg_(std::move(cfg)), argv_(std::move(argv)), owner_(claim_owner()) {
    source_ = make_source(loop_, cfg_);
    store_ = make_store(loop_, cfg_, owner_);
    restarter_ = make_restarter(loop_, cfg_);
    guard_ = make_guard(loop_, cfg_, *store_, *restarter_);
    pipeline_ =
        std::make_unique<pipeline>(loop_, make_pipeline_options(cfg_), *source_, *store_, *guard_);
    pipeline_->on_change([this] { check_done(); });
    retention_ = std::make_unique<retention>(
        loop_, *store_,
        retention_options{.keep = cfg_.retention,
                          .cooldown = resolve_safety(cfg_).restart_cooldown});
    observability_ = std::make_unique<metrics::observability>(
        loop_, make_observability_options(cfg_), *pipeline_, *source_, *store_, &guard_->stats(),
        exec_stats(*restarter_), redis_stats(*source_), tcp_stats(*source_),
        pubsub_stats(*source_));

    for (int s : {SIGTERM, SIGINT}) {
        signals_.push_back(
            std::make_unique<rt::signal_watch>(loop_, s, [this](int n) { begin_drain(n); }));
    }
    signals_.push_back(
        std::make_unique<rt::signal_watch>(loop_, SIGHUP, [this](int) { reload(); }));
    if (cfg_.status_interval.count() > 0)
        status_timer_ = std::make_unique<rt::periodic_timer>(loop_, cfg_.status_interval,
                                                             [this] { log_status(); });
}

worker::~worker() {
    // run() has settled or released every message while the pipeline, the source and the store
    // still existed; what is left to undo holds no message. The HTTP threads read the pipeline's
    // stats, and the pipeline references the source, store and restarter: destroyed in this
    // order. The pipeline no longer reports changes: check_done() reads it.
    if (pipeline_) pipeline_->on_change(nullptr);
    observability_.reset();
    pipeline_.reset();
    status_timer_.reset();
    notifier_.reset();
    reload_poll_.reset();
    drain_deadline_.reset();
    signals_.clear();
    if (source_ && !source_closed_) source_->close();
}

int worker::run() {
    if (auto error = observability_->start()) {
        log::error("cannot serve metrics: --metrics-addr is in use or not allowed",
                   {{"error", *error}, {"address", cfg_.metrics_addr}});
        return exit_usage;
    }
    started_ = last_status_at_ = std::chrono::steady_clock::now();
    log::info("worker started", {{"source", source_->name()},
                                 {"store", store_->name()},
                                 {"restarter", restarter_->name()},
                                 {"max_in_flight", cfg_.max_in_flight},
                                 {"queue_capacity", cfg_.queue_capacity},
                                 {"claim_owner", owner_},
                                 {"auth_keys", auth::describe(cfg_.auth_keys.get())},
                                 {"pid", static_cast<long>(::getpid())}});
    notifier_ = std::make_unique<service_notifier>(
        loop_, [this] { return !metrics::not_ready_reason(observability_->state()); });
    pipeline_->start();
    check_done();
    loop_.run();
    observability_->run_finished(phase_ == phase::running
                                     ? std::nullopt
                                     : std::optional<std::chrono::nanoseconds>(
                                           std::chrono::steady_clock::now() - drain_started_));
    double seconds = seconds_since(started_);
    bool clean = finish_stop();

    const auto& st = pipeline_->stats();
    std::uint64_t released = st.completed[static_cast<std::size_t>(outcome::released)].get();
    std::size_t abandoned = source_->abandoned();
    std::fputs((summary_json(seconds) + "\n").c_str(), stdout);
    std::fflush(stdout);

    if (drain_started_ != std::chrono::steady_clock::time_point{}) {
        log::info("drain finished", {{"seconds", seconds_since(drain_started_)},
                                     {"released", released},
                                     {"deadline_hit", released_by_deadline_}});
    }
    if (abandoned > 0) {
        log::warn("retried messages were waiting for redelivery at exit and are lost with this "
                  "source (it cannot redeliver after the process ends)",
                  {{"count", abandoned}, {"source", source_->name()}});
    }
    if (!clean || fatal_) return exit_fatal;
    return released > 0 || abandoned > 0 ? exit_released : exit_ok;
}

// ---------------------------------------------------------------------------------------------
// The stop, after the loop's run ended (the source finished, a drain ended, or the source failed),
// in one order: every message settled or released, restart commands ended and reaped, the
// source's last verdicts confirmed or given up, the source closed, the store flushed and closed.
// Every step is logged, and the whole of it ends by stop_by_: --drain-timeout after the first
// signal plus stop_margin at most. Signals that arrive meanwhile are logged and ignored.
// Returns false when a step could not finish in time (the exit code says so).
// ---------------------------------------------------------------------------------------------

bool worker::finish_stop() {
    if (phase_ == phase::running) {
        // No signal: the source finished or failed. A failure may leave messages in flight.
        phase_ = phase::stopping;
        stop_by_ = std::chrono::steady_clock::now() + stop_margin;
        if (!fatal_) stop_by_ += cfg_.drain_timeout;
    }
    phase_ = phase::closing;
    status_timer_.reset();
    retention_.reset(); // no pass starts once the stop began; one under way is abandoned
    reload_poll_.reset();
    drain_deadline_.reset();
    bool clean = true;
    if (!pipeline_->idle()) {
        log::warn("stop: releasing messages still in flight",
                  {{"in_flight", pipeline_->stats().in_flight.get()}});
        pipeline_->release_all();
    }
    if (!run_until_stop_by([&] { return pipeline_->idle(); })) {
        log::error("stop: the source did not confirm every verdict in time; unconfirmed ones "
                   "are redelivered by the broker");
        clean = false;
    }
    if (restarter_->live_processes() > 0) {
        auto grace = std::min(cfg_.restart_kill_grace, stop_kill_grace);
        log::info("stop: ending restart commands",
                  {{"processes", restarter_->live_processes()}, {"grace", format_duration(grace)}});
        restarter_->hurry(grace);
        if (run_until_stop_by([&] { return restarter_->live_processes() == 0; })) {
            log::info("stop: restart commands ended");
        } else {
            log::error("stop: restart commands still running at the deadline",
                       {{"processes", restarter_->live_processes()}});
            clean = false;
        }
    }
    source_->close();
    source_closed_ = true;
    log::info("stop: source closed", {{"source", source_->name()}});

    bool store_closed = false;
    rt::task_scope closing([](std::exception_ptr e) {
        log::error("stop: store did not close cleanly", {{"error", rt::describe(e)}});
    });
    closing.spawn([](store& st, bool& flag) -> rt::task<void> {
        co_await st.close();
        flag = true;
    }(*store_, store_closed));
    // The store writes what it holds until shortly before the end, then gives up on what it
    // could not write (counted: unrecorded) and closes.
    auto hurry_at = stop_by_ - store_hurry_margin;
    if (!run_until([&] { return store_closed || closing.size() == 0; }, hurry_at)) {
        log::warn("stop: the store is short of time; records it cannot write now are given up",
                  {{"store", store_->name()}});
        store_->hurry();
        if (!run_until_stop_by([&] { return store_closed || closing.size() == 0; })) {
            log::error("stop: the store did not close in time", {{"store", store_->name()}});
            closing.cancel_all();
        }
    }
    if (auto n = store_->unrecorded(); n > 0) {
        log::error("stop: outcome records could not be written: the database is behind the "
                   "source for these messages",
                   {{"store", store_->name()}, {"unrecorded", n}});
        clean = false;
    }
    return clean && store_closed;
}

// Runs the loop until `done` or stop_by_, whichever comes first; true if `done`.
template <class Pred>
bool worker::run_until_stop_by(Pred done) {
    return run_until(done, stop_by_);
}

// Runs the loop until `done` or `by`, whichever comes first; true if `done`.
template <class Pred>
bool worker::run_until(Pred done, std::chrono::steady_clock::time_point by) {
    if (done()) return true;
    bool late = false;
    rt::delayed_call deadline([&] { late = true; });
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        by - std::chrono::steady_clock::now());
    loop_.timers().arm(deadline, std::max(left, std::chrono::milliseconds{0}));
    loop_.run_until([&] { return late || done(); });
    return done();
}

// Called whenever the pipeline may have become idle: decides whether the run is over.
void worker::check_done() {
    if (!fatal_ && !source_->fatal_error().empty()) {
        fatal_ = true; // e.g. refused credentials: retrying will not help
        log::error("source failed",
                   {{"source", source_->name()}, {"error", source_->fatal_error()}});
        loop_.stop();
        return;
    }
    if (phase_ == phase::closing) return; // finish_stop() runs the loop itself
    bool over = false;
    if (phase_ == phase::running)
        over = source_->finished() && pipeline_->idle();
    else if (phase_ == phase::draining)
        over = pipeline_->idle() && source_->drained();
    else
        over = pipeline_->idle(); // stopping: released, waiting for the source to confirm
    if (over) loop_.stop();
}

void worker::begin_drain(int signum) {
    if (phase_ == phase::running) {
        phase_ = phase::draining;
        observability_->begin_drain(); // not ready from this moment
        if (notifier_) notifier_->stopping();
        drain_started_ = std::chrono::steady_clock::now();
        stop_by_ = drain_started_ + cfg_.drain_timeout + stop_margin;
        log::info("draining: intake stopped, no new restart starts; waiting for running restarts",
                  {{"signal", signal_name(signum)},
                   {"in_flight", pipeline_->stats().in_flight.get()},
                   {"queued", pipeline_->stats().queue_depth.get()},
                   {"drain_timeout", format_duration(cfg_.drain_timeout)}});
        drain_deadline_ = std::make_unique<rt::delayed_call>([this] {
            released_by_deadline_ = true;
            force_release("drain timeout reached");
        });
        loop_.timers().arm(*drain_deadline_, cfg_.drain_timeout);
        pipeline_->stop_intake();
        check_done();
        return;
    }
    if (phase_ == phase::draining) {
        log::warn("second signal: releasing everything in flight now",
                  {{"signal", signal_name(signum)}});
        force_release("second signal");
        return;
    }
    // A third signal must not kill the worker while its restart commands are being ended: they
    // would run on, orphaned, while their messages go to a peer.
    log::warn(
        "signal ignored: the worker is already stopping and ends its restart commands first",
        {{"signal", signal_name(signum)},
         {"processes", restarter_->live_processes()},
         {"stop_in_s",
          std::chrono::duration<double>(stop_by_ - std::chrono::steady_clock::now()).count()}});
}

void worker::force_release(const char* why) {
    if (phase_ != phase::draining) return;
    phase_ = phase::stopping;
    stop_by_ = std::min(stop_by_, std::chrono::steady_clock::now() + stop_margin);
    // Restart commands get SIGTERM now (their tasks are destroyed), then SIGKILL after a grace
    // that fits in the margin.
    restarter_->hurry(std::min(cfg_.restart_kill_grace, stop_kill_grace));
    log::warn("releasing unfinished messages (not acked; a source that can redeliver will)",
              {{"why", why},
               {"in_flight", pipeline_->stats().in_flight.get()},
               {"queued", pipeline_->stats().queue_depth.get()}});
    pipeline_->release_all();
    check_done();
}

// ---------------------------------------------------------------------------------------------
// SIGHUP. The configuration is read again on a thread of its own, never on the loop: a --config
// that blocks (a FIFO, a hung network mount) must not stall the worker, its drain included. The
// loop looks for the result every reload_poll and gives up after reload_timeout; a reader that
// is still blocked then is left behind (it only holds its shared state), and further SIGHUPs are
// refused until it returns.
// ---------------------------------------------------------------------------------------------

struct worker::reload_read {
    std::mutex m;
    bool done = false;
    std::optional<worker_config> cfg;
    std::string error;
};

void worker::reload() {
    if (reload_) {
        std::lock_guard lock(reload_->m);
        if (!reload_->done) {
            log::warn("SIGHUP: ignored, the configuration is still being read");
            return;
        }
    }
    auto read = std::make_shared<reload_read>();
    std::thread([read, argv = argv_] {
        std::ostringstream out, err;
        int code = 0;
        auto fresh = parse_worker_config(argv, out, err, code);
        std::lock_guard lock(read->m);
        read->cfg = std::move(fresh);
        read->error = err.str();
        read->done = true;
    }).detach();
    reload_ = std::move(read);
    reload_deadline_ = std::chrono::steady_clock::now() + reload_timeout;
    reload_poll_ =
        std::make_unique<rt::periodic_timer>(loop_, reload_poll, [this] { poll_reload(); });
}

void worker::poll_reload() {
    std::optional<worker_config> fresh;
    std::string error;
    {
        std::lock_guard lock(reload_->m);
        if (!reload_->done) {
            if (std::chrono::steady_clock::now() < reload_deadline_) return;
            reload_poll_->stop();
            log::error("SIGHUP: configuration not reloaded",
                       {{"error", "reading it took longer than " + format_duration(reload_timeout) +
                                      " (is --config a FIFO, or on a hung mount?); the running "
                                      "configuration is kept"}});
            return;
        }
        fresh = std::move(reload_->cfg);
        error = std::move(reload_->error);
    }
    reload_poll_->stop();
    reload_.reset();
    if (!fresh) {
        while (!error.empty() && error.back() == '\n')
            error.pop_back();
        log::error("SIGHUP: configuration not reloaded", {{"error", error}});
        return;
    }
    apply_reload(*fresh);
}

namespace {

// A flag's value as it may appear in the log: a Redis URL only with its password masked.
std::string shown_value(std::string_view key, const std::string& value) {
    if (key != "redis-url") return value;
    auto ep = parse_redis_url(value);
    return ep ? ep->shown() : "(not shown: it may hold a password)";
}

bool reloadable(std::string_view key) {
    return key == "log-level" || key == "max-in-flight" || key == "status-interval" ||
           key == "auth-key-file";
}

} // namespace

void worker::apply_reload(const worker_config& fresh) {
    // A key no layer sets any more keeps its running value: taking the default instead would
    // turn "max-in-flight": 50 into 1000 because a line was deleted.
    for (const auto& [key, was] : cfg_.given) {
        if (fresh.given.contains(key)) continue;
        log::info("SIGHUP: no longer set; the running value stays until a restart",
                  {{"key", key}, {"value", shown_value(key, was.value)}, {"was_from", was.origin}});
    }
    auto set = [&](std::string_view key) {
        auto it = fresh.given.find(key);
        return it != fresh.given.end() || !cfg_.given.contains(key);
    };
    int changes = 0;
    if (set("log-level") && fresh.log_level != cfg_.log_level) {
        log::info("SIGHUP: log level changed", {{"from", cfg_.log_level}, {"to", fresh.log_level}});
        log::set_level(parse_log_level(fresh.log_level));
        cfg_.log_level = fresh.log_level;
        ++changes;
    }
    if (set("max-in-flight") && fresh.max_in_flight != cfg_.max_in_flight) {
        log::info("SIGHUP: max-in-flight changed",
                  {{"from", cfg_.max_in_flight}, {"to", fresh.max_in_flight}});
        cfg_.max_in_flight = fresh.max_in_flight;
        pipeline_->set_max_in_flight(cfg_.max_in_flight);
        ++changes;
    }
    if (set("status-interval") && fresh.status_interval != cfg_.status_interval) {
        log::info("SIGHUP: status-interval changed",
                  {{"from", format_duration(cfg_.status_interval)},
                   {"to", format_duration(fresh.status_interval)}});
        cfg_.status_interval = fresh.status_interval;
        status_timer_.reset();
        if (cfg_.status_interval.count() > 0)
            status_timer_ = std::make_unique<rt::periodic_timer>(loop_, cfg_.status_interval,
                                                                 [this] { log_status(); });
        ++changes;
    }
    // The key files were read again with the rest (rotation); a worker without keys that is
    // given some starts requiring signatures.
    if (set("auth-key-file") && fresh.auth_keys) {
        auto from = auth::describe(cfg_.auth_keys.get()),
             to = auth::describe(fresh.auth_keys.get());
        cfg_.auth_keys = fresh.auth_keys;
        pipeline_->set_auth_keys(cfg_.auth_keys);
        if (from != to) {
            log::info("SIGHUP: auth keys changed", {{"from", from}, {"to", to}});
            ++changes;
        }
    }
    // Every other key is read once, at start: a change is logged, and not applied.
    int need_restart = 0;
    for (const auto& [key, now] : fresh.given) {
        if (reloadable(key)) {
            cfg_.given[key] = now;
            continue;
        }
        auto was = cfg_.given.find(key);
        if (was != cfg_.given.end() && was->second.value == now.value) continue;
        log::warn("SIGHUP: changed, but takes effect only after a restart",
                  {{"key", key},
                   {"from", was == cfg_.given.end() ? std::string("(default)")
                                                    : shown_value(key, was->second.value)},
                   {"to", shown_value(key, now.value)},
                   {"from_source", now.origin}});
        ++need_restart;
    }
    log::info("SIGHUP: configuration re-read",
              {{"changes", changes}, {"need_restart", need_restart}});
}

void worker::log_status() {
    const auto& st = pipeline_->stats();
    auto now = std::chrono::steady_clock::now();
    std::uint64_t done = st.completed_total();
    double dt = std::chrono::duration<double>(now - last_status_at_).count();
    double rate = dt > 0 ? static_cast<double>(done - last_status_completed_) / dt : 0;
    last_status_at_ = now;
    last_status_completed_ = done;
    auto c = [&](outcome o) { return st.completed[static_cast<std::size_t>(o)].get(); };
    if (notifier_ && notifier_->enabled() && phase_ == phase::running) {
        char line[160];
        std::snprintf(line, sizeof line, "%.0f msgs/s, %lld in flight, %llu acked", rate,
                      static_cast<long long>(st.in_flight.get()),
                      static_cast<unsigned long long>(c(outcome::acked)));
        notifier_->status(line);
    }
    log::info("status", {{"msgs_per_s", rate},
                         {"in_flight", st.in_flight.get()},
                         {"queued", st.queue_depth.get()},
                         {"received", st.received.get()},
                         {"acked", c(outcome::acked)},
                         {"retried", c(outcome::retried)},
                         {"dead_lettered", c(outcome::dead_lettered)},
                         {"skipped", c(outcome::skipped)},
                         {"released", c(outcome::released)}});
}

std::string worker::summary_json(double seconds) const {
    const auto& st = pipeline_->stats();
    auto c = [&](outcome o) { return st.completed[static_cast<std::size_t>(o)].get(); };
    char buf[512];
    double rate = seconds > 0 ? static_cast<double>(st.completed_total()) / seconds : 0;
    std::snprintf(
        buf, sizeof buf,
        R"({"received":%llu,"acked":%llu,"retried":%llu,"dead_lettered":%llu,"skipped":%llu,)"
        R"("released":%llu,"lease_extensions":%llu,"abandoned":%llu,"unrecorded":%llu,)"
        R"("peak_in_flight":%lld,"seconds":%.3f,"active_seconds":%.3f,"msgs_per_s":%.1f})",
        static_cast<unsigned long long>(st.received.get()),
        static_cast<unsigned long long>(c(outcome::acked)),
        static_cast<unsigned long long>(c(outcome::retried)),
        static_cast<unsigned long long>(c(outcome::dead_lettered)),
        static_cast<unsigned long long>(c(outcome::skipped)),
        static_cast<unsigned long long>(c(outcome::released)),
        static_cast<unsigned long long>(st.lease_extensions.get()),
        static_cast<unsigned long long>(source_->abandoned()),
        static_cast<unsigned long long>(store_->unrecorded()),
        static_cast<long long>(st.peak_in_flight.get()), seconds, pipeline_->active_seconds(),
        rate);
    return buf;
}

} // namespace mayhem
