#include "metrics/catalogue.hpp"

#include <doctest/doctest.h>
#include <string>

using namespace mayhem;

namespace {

std::string scrape(const pipeline_stats& st, const metrics::live_state& live) {
    metrics::catalogue_inputs in;
    in.stats = &st;
    in.live = &live;
    in.source = "simulate";
    in.version = "1.2.3";
    in.revision = "abc";
    return metrics::serialize(metrics::collect(in));
}

bool has(const std::string& text, const std::string& line) {
    return text.find(line + "\n") != std::string::npos;
}

} // namespace

TEST_CASE("catalogue: counters carry their labels and values") {
    pipeline_stats st;
    metrics::live_state live;
    st.received.inc(10);
    st.completed[static_cast<std::size_t>(outcome::acked)].inc(7);
    st.completed[static_cast<std::size_t>(outcome::dead_lettered)].inc(3);
    st.decode_errors[static_cast<std::size_t>(decode_kind::invalid_json)].inc(2);
    st.decode_errors[static_cast<std::size_t>(decode_kind::bad_signature)].inc(6);
    st.restarts[static_cast<std::size_t>(restart_status::failed)].inc(4);
    st.retries.inc(4);
    st.in_flight.set(5);
    live.max_in_flight.set(1000);
    live.source_up.store(true);
    live.draining.store(true);
    live.drain_duration_ns.set(1'500'000'000);

    auto text = scrape(st, live);
    CHECK(has(text, R"(mayhem_messages_received_total{source="simulate"} 10)"));
    CHECK(has(text, R"(mayhem_messages_completed_total{outcome="acked",source="simulate"} 7)"));
    CHECK(has(text,
              R"(mayhem_messages_completed_total{outcome="dead_lettered",source="simulate"} 3)"));
    CHECK(has(text, R"(mayhem_messages_completed_total{outcome="released",source="simulate"} 0)"));
    CHECK(has(text, R"(mayhem_decode_errors_total{reason="invalid_json"} 2)"));
    // Requests refused by the signature check have their own family, not the decode errors'.
    CHECK(has(text, R"(mayhem_auth_rejected_total{reason="bad_signature"} 6)"));
    CHECK(has(text, R"(mayhem_auth_rejected_total{reason="unsigned"} 0)"));
    CHECK(text.find(R"(mayhem_decode_errors_total{reason="bad_signature"})") == std::string::npos);
    CHECK(has(text, R"(mayhem_restarts_total{result="failed"} 4)"));
    CHECK(has(text, "mayhem_retries_total 4"));
    CHECK(has(text, "mayhem_messages_in_flight 5"));
    CHECK(has(text, "mayhem_max_in_flight 1000"));
    CHECK(has(text, "mayhem_source_up 1"));
    CHECK(has(text, "mayhem_draining 1"));
    CHECK(has(text, "mayhem_ready 0"));
    CHECK(has(text, "mayhem_drain_duration_seconds 1.5"));
    CHECK(has(text, R"(mayhem_build_info{revision="abc",version="1.2.3"} 1)"));
    CHECK(has(text, "# TYPE mayhem_stage_duration_seconds histogram"));
    CHECK(text.find("process_") == std::string::npos); // no process figures given
}

TEST_CASE("catalogue: histograms are cumulative, cover 50 us to 30 min, count equals +Inf") {
    pipeline_stats st;
    metrics::live_state live;
    st.total_seconds.observe(0.0002); // worker overhead, below 1 ms
    st.total_seconds.observe(0.003);
    st.total_seconds.observe(0.003);
    st.total_seconds.observe(42);
    st.total_seconds.observe(600);  // a restart of 10 minutes
    st.total_seconds.observe(3600); // beyond the last bound
    live.loop_lag.observe(1.5);

    auto text = scrape(st, live);
    CHECK(has(text, R"(mayhem_stage_duration_seconds_bucket{stage="total",le="0.00025"} 1)"));
    CHECK(has(text, R"(mayhem_stage_duration_seconds_bucket{stage="total",le="0.001"} 1)"));
    CHECK(has(text, R"(mayhem_stage_duration_seconds_bucket{stage="total",le="0.005"} 3)"));
    CHECK(has(text, R"(mayhem_stage_duration_seconds_bucket{stage="total",le="60"} 4)"));
    CHECK(has(text, R"(mayhem_stage_duration_seconds_bucket{stage="total",le="600"} 5)"));
    CHECK(has(text, R"(mayhem_stage_duration_seconds_bucket{stage="total",le="1800"} 5)"));
    CHECK(has(text, R"(mayhem_stage_duration_seconds_bucket{stage="total",le="+Inf"} 6)"));
    CHECK(has(text, R"(mayhem_stage_duration_seconds_count{stage="total"} 6)"));
    CHECK(has(text, R"(mayhem_stage_duration_seconds_count{stage="save"} 0)"));
    CHECK(has(text, R"(mayhem_event_loop_lag_seconds_bucket{le="1"} 0)"));
    CHECK(has(text, R"(mayhem_event_loop_lag_seconds_bucket{le="2.5"} 1)"));
    CHECK(has(text, "mayhem_event_loop_lag_seconds_count 1"));
}

TEST_CASE("catalogue: process figures when given") {
    pipeline_stats st;
    metrics::live_state live;
    metrics::catalogue_inputs in;
    in.stats = &st;
    in.live = &live;
    in.process = metrics::process_stats{1.25, 4096, 8192, 1700000000, 12, 1024};
    auto text = metrics::serialize(metrics::collect(in));
    CHECK(has(text, "process_cpu_seconds_total 1.25"));
    CHECK(has(text, "process_resident_memory_bytes 4096"));
    CHECK(has(text, "process_open_fds 12"));
    CHECK(has(text, "process_max_fds 1024"));
}

TEST_CASE("catalogue: readiness reasons in order") {
    metrics::live_state live;
    live.source_up.store(true);
    live.store_healthy.store(true);
    CHECK(metrics::not_ready_reason(live) == nullptr);
    live.store_healthy.store(false);
    CHECK(std::string(metrics::not_ready_reason(live)) == "store_unhealthy");
    live.source_up.store(false);
    CHECK(std::string(metrics::not_ready_reason(live)) == "source_down");
    live.draining.store(true);
    CHECK(std::string(metrics::not_ready_reason(live)) == "draining");
}
