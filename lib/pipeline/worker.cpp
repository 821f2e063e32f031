#include "pipeline/worker.hpp"

#include "metrics/observability.hpp"
#include "restart/exec_restarter.hpp"
#include "restart/restart_guard.hpp"
#include "restart/simulate_restarter.hpp"
#include "runtime/log.hpp"
#include "sources/redis_source.hpp"
#include "sources/simulate_source.hpp"
#include "sources/stdin_source.hpp"
#include "store/memory_store.hpp"
#include "store/sqlite_store.hpp"

#include <csignal>
#include <cstdio>
#include <sstream>
#include <unistd.h>

namespace mayhem {

namespace {

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
        char host[256] = {};
        if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "host");
        o.consumer = std::string(host) + "-" + std::to_string(::getpid());
    }
    o.dead_letter_stream = c.dead_letter_stream;
    o.reclaim_interval = c.reclaim_interval;
    o.lease_timeout = c.lease_timeout;
    o.max_attempts = c.max_attempts;
    o.exit_when_idle = c.exit_when_idle;
    o.read_ahead = c.read_ahead;
    o.lease_extend = c.lease_extend_interval;
    if (c.lease_extend_interval * 2 > c.lease_timeout)
        log::warn("--lease-extend-interval is not well below --lease-timeout: entries in flight "
                  "may be reclaimed by other workers while this one works on them",
                  {{"lease_extend_interval", format_duration(c.lease_extend_interval)},
                   {"lease_timeout", format_duration(c.lease_timeout)}});
    return std::make_unique<redis_source>(loop, std::move(o));
}

std::unique_ptr<source> make_source(rt::loop& loop, const worker_config& c) {
    if (c.source == "redis") return make_redis_source(loop, c);
    if (c.source == "stdin")
        return std::make_unique<stdin_source>(loop, STDIN_FILENO, c.max_message_bytes);
    simulate_options o;
    o.messages = c.messages;
    o.rate = c.rate;
    o.bad_ratio = c.bad_ratio;
    o.seed = c.seed;
    return std::make_unique<simulate_source>(loop, o);
}

std::unique_ptr<store> make_store(rt::loop& loop, const worker_config& c) {
    if (c.store == "sqlite") {
        sqlite_options o;
        o.path = c.db;
        o.synchronous_full = c.db_synchronous == "full";
        o.busy_timeout = c.db_busy_timeout;
        return std::make_unique<sqlite_store>(loop, o); // sqlite_fatal (newer schema): exit 1
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
        return std::make_unique<exec_restarter>(loop, std::move(restart), std::move(verify),
                                                exec_options{c.restart_timeout,
                                                             c.restart_kill_grace, "/proc/self/exe",
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

double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

} // namespace

worker::worker(worker_config cfg, std::vector<std::string> argv)
    : cfg_(std::move(cfg)), argv_(std::move(argv)) {
    source_ = make_source(loop_, cfg_);
    store_ = make_store(loop_, cfg_);
    restarter_ = make_restarter(loop_, cfg_);
    guard_ = make_guard(loop_, cfg_, *store_, *restarter_);
    pipeline_ =
        std::make_unique<pipeline>(loop_, make_pipeline_options(cfg_), *source_, *store_, *guard_);
    pipeline_->on_change([this] { check_done(); });
    observability_ = std::make_unique<metrics::observability>(
        loop_, make_observability_options(cfg_), *pipeline_, *source_, *store_, &guard_->stats());

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
    // Order matters: the HTTP threads read the pipeline's stats; the pipeline's tasks reference
    // the source, store and restarter.
    observability_.reset();
    pipeline_.reset();
    status_timer_.reset();
    signals_.clear();
    drain_deadline_.reset();
    if (source_) source_->close();
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
                                 {"pid", static_cast<long>(::getpid())}});
    pipeline_->start();
    check_done();
    loop_.run();
    observability_->run_finished(phase_ == phase::running
                                     ? std::nullopt
                                     : std::optional<std::chrono::nanoseconds>(
                                           std::chrono::steady_clock::now() - drain_started_));

    // The loop has stopped: nothing is in flight any more. Close the intake side, then flush the
    // store with the loop still turning for it.
    double seconds = seconds_since(started_);
    status_timer_.reset();
    drain_deadline_.reset();
    source_->close();
    bool store_closed = false;
    rt::task_scope closing([](std::exception_ptr e) {
        log::error("store did not close cleanly", {{"error", rt::describe(e)}});
    });
    closing.spawn([](store& s, bool& flag) -> rt::task<void> {
        co_await s.close();
        flag = true;
    }(*store_, store_closed));
    loop_.run_until([&] { return store_closed || closing.size() == 0; });
    signals_.clear();

    const auto& st = pipeline_->stats();
    std::uint64_t released = st.completed[static_cast<std::size_t>(outcome::released)].get();
    std::size_t abandoned = source_->abandoned();
    std::fputs((summary_json(seconds) + "\n").c_str(), stdout);
    std::fflush(stdout);

    if (phase_ == phase::draining || phase_ == phase::stopping) {
        log::info("drain finished", {{"seconds", seconds_since(drain_started_)},
                                     {"released", released},
                                     {"deadline_hit", released_by_deadline_}});
    }
    if (abandoned > 0) {
        log::warn("retried messages were waiting for redelivery at exit and are lost with this "
                  "source (it cannot redeliver after the process ends)",
                  {{"count", abandoned}, {"source", source_->name()}});
    }
    if (!store_closed || fatal_) return exit_fatal;
    return released > 0 || abandoned > 0 ? exit_released : exit_ok;
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
    bool over = false;
    if (phase_ == phase::running)
        over = source_->finished() && pipeline_->idle();
    else if (phase_ == phase::draining)
        over = pipeline_->idle() && source_->drained();
    else
        over = pipeline_->idle();
    if (over) loop_.stop();
}

void worker::begin_drain(int signum) {
    if (phase_ == phase::running) {
        phase_ = phase::draining;
        observability_->begin_drain(); // not ready from this moment
        drain_started_ = std::chrono::steady_clock::now();
        log::info("draining: intake stopped, waiting for in-flight messages",
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
    log::warn("second signal: releasing everything in flight now",
              {{"signal", signal_name(signum)}});
    force_release("second signal");
}

void worker::force_release(const char* why) {
    if (phase_ == phase::stopping) return;
    phase_ = phase::stopping;
    log::warn("releasing unfinished messages (not acked; a source that can redeliver will)",
              {{"why", why},
               {"in_flight", pipeline_->stats().in_flight.get()},
               {"queued", pipeline_->stats().queue_depth.get()}});
    pipeline_->release_all();
    check_done();
}

void worker::reload() {
    std::ostringstream out, err;
    int code = 0;
    auto fresh = parse_worker_config(argv_, out, err, code);
    if (!fresh) {
        log::error("SIGHUP: configuration not reloaded", {{"error", err.str()}});
        return;
    }
    int changes = 0;
    if (fresh->log_level != cfg_.log_level) {
        log::info("SIGHUP: log level changed",
                  {{"from", cfg_.log_level}, {"to", fresh->log_level}});
        log::set_level(parse_log_level(fresh->log_level));
        cfg_.log_level = fresh->log_level;
        ++changes;
    }
    if (fresh->max_in_flight != cfg_.max_in_flight) {
        log::info("SIGHUP: max-in-flight changed",
                  {{"from", cfg_.max_in_flight}, {"to", fresh->max_in_flight}});
        cfg_.max_in_flight = fresh->max_in_flight;
        pipeline_->set_max_in_flight(cfg_.max_in_flight);
        ++changes;
    }
    if (fresh->status_interval != cfg_.status_interval) {
        log::info("SIGHUP: status-interval changed",
                  {{"from", format_duration(cfg_.status_interval)},
                   {"to", format_duration(fresh->status_interval)}});
        cfg_.status_interval = fresh->status_interval;
        status_timer_.reset();
        if (cfg_.status_interval.count() > 0)
            status_timer_ = std::make_unique<rt::periodic_timer>(loop_, cfg_.status_interval,
                                                                 [this] { log_status(); });
        ++changes;
    }
    log::info("SIGHUP: configuration re-read", {{"changes", changes}});
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
        R"("released":%llu,"lease_extensions":%llu,"abandoned":%llu,"peak_in_flight":%lld,)"
        R"("seconds":%.3f,"msgs_per_s":%.1f})",
        static_cast<unsigned long long>(st.received.get()),
        static_cast<unsigned long long>(c(outcome::acked)),
        static_cast<unsigned long long>(c(outcome::retried)),
        static_cast<unsigned long long>(c(outcome::dead_lettered)),
        static_cast<unsigned long long>(c(outcome::skipped)),
        static_cast<unsigned long long>(c(outcome::released)),
        static_cast<unsigned long long>(st.lease_extensions.get()),
        static_cast<unsigned long long>(source_->abandoned()),
        static_cast<long long>(st.peak_in_flight.get()), seconds, rate);
    return buf;
}

} // namespace mayhem
