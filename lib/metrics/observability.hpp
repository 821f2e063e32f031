// The worker's observability: the loop monitor, the readiness state, the HTTP port with
// /metrics, /healthz, /readyz and /debug/inflight, and the in-flight dump on SIGUSR1 (README,
// "Observability"). The worker owns one and tells it when a drain begins and ends; everything
// else it reads for itself.
//
// Threading: constructed, started, told and destroyed on the loop thread. The HTTP threads call
// answer() and read only atomics (live_state, pipeline_stats); /debug/inflight is asked of the
// loop (loop_query), which builds it. The destructor stops the HTTP server (joining its threads)
// before anything it reads can go away, so the owner destroys it before the pipeline.
#pragma once

#include "metrics/catalogue.hpp"
#include "metrics/http_server.hpp"
#include "metrics/live_state.hpp"
#include "metrics/loop_monitor.hpp"
#include "metrics/loop_query.hpp"
#include "pipeline/pipeline.hpp"
#include "restart/restart_guard.hpp"
#include "runtime/loop.hpp"
#include "sources/source.hpp"
#include "store/store.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace mayhem::metrics {

struct observability_options {
    std::string listen = "127.0.0.1:9477"; // "off": no HTTP port
    rt::millis health_max_loop_lag{5000};
    rt::millis slow_callback_warn{100};
    rt::millis debug_block_loop{0}; // test only: SIGUSR1 blocks the loop this long
};

class observability {
public:
    observability(rt::loop& l, observability_options opts, const pipeline& p, const source& src,
                  const store& st, const restart_guard_stats* guard = nullptr,
                  const exec_restarter_stats* exec = nullptr,
                  const redis_source_stats* redis = nullptr, const tcp_source_stats* tcp = nullptr,
                  const pubsub_source_stats* pubsub = nullptr);
    observability(const observability&) = delete;
    observability& operator=(const observability&) = delete;
    ~observability();

    // Binds the HTTP port (unless it is off). On failure returns a sentence naming the address.
    std::optional<std::string> start();
    // Readiness flips to "draining" at once, before the drain does anything else.
    void begin_drain() noexcept;
    // The loop's main run is over (source finished or drain ended) and the source is about to
    // close: stop reading the source and store (their contract allows no call after close), keep
    // serving. /readyz says "draining" from here on. `drain_took` is set if a drain ended it.
    void run_finished(std::optional<std::chrono::nanoseconds> drain_took) noexcept;

    const live_state& state() const noexcept { return live_; }
    // The answer to a GET of `path`; called on the HTTP threads.
    http_response answer(std::string_view path) const;

    // /debug/inflight: what `?limit=` allows, and what it is when absent.
    static constexpr std::size_t inflight_default_limit = 100;
    static constexpr std::size_t inflight_max_limit = 10000;
    // How long /debug/inflight waits for the loop before it answers 503.
    static constexpr std::chrono::milliseconds inflight_timeout{1000};
    // Loop thread: the in-flight dump as one JSON object.
    std::string inflight_json(std::size_t limit) const;

private:
    void publish() noexcept;
    void log_inflight() const;
    void inflight_request(const http_args& args, http_reply reply);

    rt::loop& loop_;
    observability_options opts_;
    const pipeline& pipeline_;
    const source& source_;
    const store& store_;
    const restart_guard_stats* guard_;
    const exec_restarter_stats* exec_;
    const redis_source_stats* redis_;
    const tcp_source_stats* tcp_;
    const pubsub_source_stats* pubsub_;
    const std::string source_name_;
    live_state live_;
    bool publishing_ = true; // loop thread: false once the source may be closed
    std::unique_ptr<loop_monitor> monitor_;
    std::unique_ptr<rt::signal_watch> usr1_;
    std::unique_ptr<loop_query> inflight_query_;
    std::unique_ptr<http_server> server_;
};

} // namespace mayhem::metrics
