#include "metrics/observability.hpp"

#include "metrics/catalogue.hpp"
#include "runtime/log.hpp"
#include "version.hpp"

#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

namespace mayhem::metrics {

namespace {

// The probe timer's period: often enough that /healthz never reads a heartbeat older than a
// fraction of --health-max-loop-lag, rarely enough to cost nothing.
rt::millis probe_period(rt::millis max_lag) {
    return std::clamp(max_lag / 4, rt::millis{1}, rt::millis{100});
}

} // namespace

observability::observability(rt::loop& l, observability_options opts, const pipeline& p,
                             const source& src, const store& st, const restart_guard_stats* guard,
                             const exec_restarter_stats* exec, const redis_source_stats* redis,
                             const tcp_source_stats* tcp, const pubsub_source_stats* pubsub)
    : loop_(l), opts_(std::move(opts)), pipeline_(p), source_(src), store_(st), guard_(guard),
      exec_(exec), redis_(redis), tcp_(tcp), pubsub_(pubsub), source_name_(src.name()) {
    publish();
    monitor_ = std::make_unique<loop_monitor>(l, live_, probe_period(opts_.health_max_loop_lag),
                                              opts_.slow_callback_warn, [this] { publish(); });
    usr1_ = std::make_unique<rt::signal_watch>(loop_, SIGUSR1, [this](int) {
        log_inflight();
        if (opts_.debug_block_loop.count() > 0 && publishing_) {
            // Test only (README): lets the tests see /healthz and the loop-lag figures react to
            // a stuck loop, which is exactly what a real blocking call would do.
            log::warn("SIGUSR1: blocking the event loop (--debug-block-loop, test only)",
                      {{"ms", static_cast<std::int64_t>(opts_.debug_block_loop.count())}});
            std::this_thread::sleep_for(opts_.debug_block_loop);
        }
    });
}

observability::~observability() {
    // The HTTP threads first: they read live_ and the pipeline's stats, and the server answers
    // 503 to an in-flight request still waiting for the loop. Replies that come after are
    // dropped.
    server_.reset();
    inflight_query_.reset();
    usr1_.reset();
    monitor_.reset();
}

std::optional<std::string> observability::start() {
    if (opts_.listen == "off") return std::nullopt;
    std::string error;
    inflight_query_ = std::make_unique<loop_query>(
        loop_,
        [this](const std::string& limit) {
            return inflight_json(static_cast<std::size_t>(std::stoull(limit)));
        },
        inflight_timeout);
    deferred_route inflight{"/debug/inflight", [this](const http_args& args, http_reply reply) {
                                inflight_request(args, std::move(reply));
                            }};
    server_ = http_server::start(
        opts_.listen, [this](std::string_view path) { return answer(path); }, error,
        std::move(inflight));
    if (!server_) return error;
    log::info("serving /metrics, /healthz, /readyz and /debug/inflight",
              {{"address", opts_.listen}});
    return std::nullopt;
}

void observability::begin_drain() noexcept {
    live_.draining.store(true, std::memory_order_relaxed);
}

void observability::run_finished(std::optional<std::chrono::nanoseconds> drain_took) noexcept {
    if (drain_took) live_.drain_duration_ns.set(drain_took->count());
    live_.draining.store(true, std::memory_order_relaxed);
    publishing_ = false; // the heartbeat goes on while the store flushes
}

// ---------------------------------------------------------------------------------------------
// The in-flight dump: /debug/inflight and SIGUSR1
// ---------------------------------------------------------------------------------------------

// Loop thread: the pipeline is read only here.
std::string observability::inflight_json(std::size_t limit) const {
    auto snap = pipeline_.inflight(limit);
    nlohmann::json messages = nlohmann::json::array();
    for (const auto& e : snap.oldest) {
        nlohmann::json m = {{"message_id", e.message_id},
                            {"hostname", e.hostname},
                            {"stage", std::string(to_string(e.stage))},
                            {"saved", e.saved},
                            {"age_seconds", std::round(e.age_seconds * 1000) / 1000},
                            {"attempt", e.attempt}};
        messages.push_back(std::move(m));
    }
    nlohmann::json out = {{"in_flight", snap.in_flight},
                          {"queued", snap.queued},
                          {"shown", snap.oldest.size()},
                          {"messages", std::move(messages)}};
    return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

// Loop thread (SIGUSR1): the same summary as log lines, one per message.
void observability::log_inflight() const {
    auto snap = pipeline_.inflight(inflight_default_limit);
    log::info(
        "SIGUSR1: messages in flight, oldest first",
        {{"in_flight", snap.in_flight}, {"queued", snap.queued}, {"shown", snap.oldest.size()}});
    for (const auto& e : snap.oldest) {
        log::info("in flight", {{"message_id", e.message_id},
                                {"hostname", e.hostname},
                                {"stage", to_string(e.stage)},
                                {"saved", e.saved},
                                {"age_seconds", std::round(e.age_seconds * 1000) / 1000},
                                {"attempt", e.attempt}});
    }
}

// HTTP thread: checks ?limit= and asks the loop; never reads the pipeline itself.
void observability::inflight_request(const http_args& args, http_reply reply) {
    std::size_t limit = inflight_default_limit;
    for (const auto& [key, value] : args) {
        if (key != "limit") continue;
        const char* end = value.data() + value.size();
        auto [p, ec] = std::from_chars(value.data(), end, limit);
        if (ec != std::errc{} || p != end || limit < 1 || limit > inflight_max_limit)
            return reply({400, "text/plain; charset=utf-8",
                          "limit: expected a whole number from 1 to " +
                              std::to_string(inflight_max_limit) + "\n"});
    }
    inflight_query_->ask(std::to_string(limit), [reply](std::optional<std::string> json) {
        if (json)
            reply({200, "application/json", std::move(*json)});
        else
            reply({503, "application/json",
                   "{\"error\":\"the event loop did not answer in time\"}\n"});
    });
}

// Loop thread, on every probe tick: copies what only the loop may read into live_state.
void observability::publish() noexcept {
    live_.log_dropped.set(static_cast<std::int64_t>(log::dropped())); // also while stopping
    if (!publishing_) return;
    live_.source_up.store(source_.up(), std::memory_order_relaxed);
    live_.store_healthy.store(store_.healthy(), std::memory_order_relaxed);
    live_.clock_behind.store(guard_ && guard_->clock_behind.get() != 0, std::memory_order_relaxed);
    live_.source_reconnects.set(static_cast<std::int64_t>(source_.reconnects()));
    auto commits = store_.commits();
    live_.store_transactions.set(static_cast<std::int64_t>(commits.transactions));
    live_.store_saves.set(static_cast<std::int64_t>(commits.saves));
    auto pruned = store_.pruned();
    live_.store_pruned_messages.set(static_cast<std::int64_t>(pruned.messages));
    live_.store_pruned_restarts.set(static_cast<std::int64_t>(pruned.restarts));
    live_.max_in_flight.set(static_cast<std::int64_t>(pipeline_.max_in_flight()));
}

http_response observability::answer(std::string_view path) const {
    if (path == "/metrics") {
        catalogue_inputs in;
        in.stats = &pipeline_.stats();
        in.live = &live_;
        in.source = source_name_;
        in.version = MAYHEM_VERSION;
        in.revision = MAYHEM_REVISION;
        in.process = read_process_stats();
        in.guard = guard_;
        in.exec = exec_;
        in.redis = redis_;
        in.tcp = tcp_;
        in.pubsub = pubsub_;
        return {200, "text/plain; version=0.0.4; charset=utf-8", serialize(collect(in))};
    }
    if (path == "/healthz") {
        double age = static_cast<double>(loop_monitor::steady_ns() -
                                         live_.heartbeat_ns.load(std::memory_order_relaxed)) /
                     1e9;
        double max = static_cast<double>(opts_.health_max_loop_lag.count()) / 1e3;
        char body[160];
        bool ok = age <= max;
        std::snprintf(
            body, sizeof body,
            ok ? R"({"healthy":true,"loop_turned_seconds_ago":%.3f})"
               : R"({"healthy":false,"reason":"loop_stalled","loop_turned_seconds_ago":%.3f})",
            age);
        return {ok ? 200 : 503, "application/json", std::string(body) + "\n"};
    }
    if (path == "/readyz") {
        const char* reason = not_ready_reason(live_);
        if (!reason) return {200, "application/json", "{\"ready\":true}\n"};
        return {503, "application/json",
                std::string(R"({"ready":false,"reason":")") + reason + "\"}\n"};
    }
    return {404, "text/plain; charset=utf-8",
            "not found: try /metrics, /healthz, /readyz, /debug/inflight\n"};
}

} // namespace mayhem::metrics
