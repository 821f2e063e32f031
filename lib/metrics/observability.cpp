#include "metrics/observability.hpp"

#include "metrics/catalogue.hpp"
#include "runtime/log.hpp"
#include "version.hpp"

#include <csignal>
#include <cstdio>
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
                             const exec_restarter_stats* exec, const redis_source_stats* redis)
    : loop_(l), opts_(std::move(opts)), pipeline_(p), source_(src), store_(st), guard_(guard),
      exec_(exec), redis_(redis), source_name_(src.name()) {
    publish();
    monitor_ = std::make_unique<loop_monitor>(l, live_, probe_period(opts_.health_max_loop_lag),
                                              opts_.slow_callback_warn, [this] { publish(); });
    if (opts_.debug_block_loop.count() > 0) {
        // Test only (README): lets the tests see /healthz and the loop-lag figures react to a
        // stuck loop, which is exactly what a real blocking call would do.
        debug_block_ = std::make_unique<rt::signal_watch>(loop_, SIGUSR1, [this](int) {
            log::warn("SIGUSR1: blocking the event loop (--debug-block-loop, test only)",
                      {{"ms", static_cast<std::int64_t>(opts_.debug_block_loop.count())}});
            std::this_thread::sleep_for(opts_.debug_block_loop);
        });
    }
}

observability::~observability() {
    server_.reset(); // joins the HTTP threads first: they read live_ and the pipeline's stats
    debug_block_.reset();
    monitor_.reset();
}

std::optional<std::string> observability::start() {
    if (opts_.listen == "off") return std::nullopt;
    std::string error;
    server_ = http_server::start(
        opts_.listen, [this](std::string_view path) { return answer(path); }, error);
    if (!server_) return error;
    log::info("serving /metrics, /healthz and /readyz", {{"address", opts_.listen}});
    return std::nullopt;
}

void observability::begin_drain() noexcept {
    live_.draining.store(true, std::memory_order_relaxed);
}

void observability::run_finished(std::optional<std::chrono::nanoseconds> drain_took) noexcept {
    if (drain_took) live_.drain_duration_ns.set(drain_took->count());
    live_.draining.store(true, std::memory_order_relaxed);
    publishing_ = false; // the heartbeat goes on while the store flushes
    debug_block_.reset();
}

// Loop thread, on every probe tick: copies what only the loop may read into live_state.
void observability::publish() noexcept {
    if (!publishing_) return;
    live_.source_up.store(source_.up(), std::memory_order_relaxed);
    live_.store_healthy.store(store_.healthy(), std::memory_order_relaxed);
    live_.clock_behind.store(guard_ && guard_->clock_behind.get() != 0, std::memory_order_relaxed);
    live_.source_reconnects.set(static_cast<std::int64_t>(source_.reconnects()));
    auto commits = store_.commits();
    live_.store_transactions.set(static_cast<std::int64_t>(commits.transactions));
    live_.store_saves.set(static_cast<std::int64_t>(commits.saves));
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
    return {404, "text/plain; charset=utf-8", "not found: try /metrics, /healthz, /readyz\n"};
}

} // namespace mayhem::metrics
