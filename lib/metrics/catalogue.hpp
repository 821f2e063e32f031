// The metric catalogue (README, "Observability"): every mayhem_* family, built at scrape time
// from the pipeline's stats and the live state, plus build info and the process_* figures.
//
// Threading: called on an HTTP thread. It only loads single-writer relaxed atomics that the
// loop thread writes, so the hot path pays nothing for a scrape and a scrape never waits. A
// scrape may see counters from slightly different instants; each one is still monotonic.
#pragma once

#include "metrics/live_state.hpp"
#include "metrics/process_stats.hpp"
#include "pipeline/pipeline.hpp"
#include "restart/restart_guard.hpp"

#include <optional>
#include <prometheus/metric_family.h>
#include <string>
#include <vector>

namespace mayhem {
struct exec_restarter_stats;
struct redis_source_stats;
struct tcp_source_stats;
struct pubsub_source_stats;
} // namespace mayhem

namespace mayhem::metrics {

struct catalogue_inputs {
    const pipeline_stats* stats = nullptr;
    const live_state* live = nullptr;
    std::string source;   // label value of {source}
    std::string version;  // mayhem_build_info labels
    std::string revision; //
    std::optional<process_stats> process;
    const restart_guard_stats* guard = nullptr;  // the safety rails in front of the restarter
    const exec_restarter_stats* exec = nullptr;  // with --restarter exec
    const redis_source_stats* redis = nullptr;   // with --source redis
    const tcp_source_stats* tcp = nullptr;       // with --source tcp
    const pubsub_source_stats* pubsub = nullptr; // with --source pubsub
};

std::vector<prometheus::MetricFamily> collect(const catalogue_inputs& in);

// Why the worker is not ready ("draining", "source_down", "store_unhealthy", "clock_behind"), or
// nullptr when it is: /readyz and mayhem_ready say the same thing.
const char* not_ready_reason(const live_state& live) noexcept;

// The families in the Prometheus text format (prometheus-cpp's TextSerializer).
std::string serialize(const std::vector<prometheus::MetricFamily>& families);

} // namespace mayhem::metrics
