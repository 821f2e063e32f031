// The worker's configuration: one struct, filled from the command line, the environment
// (MAYHEM_<FLAG>) and an optional JSON file (--config), in that order of precedence.
#pragma once

#include "runtime/duration.hpp"
#include "runtime/log.hpp"

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace mayhem {

struct worker_config {
    // sources, store, restarter
    std::string source = "simulate";
    std::string store = "memory";
    std::string restarter = "simulate";

    // simulate source
    std::uint64_t messages = 0;
    double rate = 0;
    double bad_ratio = 0;
    std::uint64_t seed = 0;

    // redis source (README "Redis Streams")
    std::string redis_url = "redis://127.0.0.1:6379/0";
    std::string stream = "mayhem:restarts";
    std::string group = "mayhem";
    std::string consumer;           // empty: <hostname>-<pid>
    std::string dead_letter_stream; // empty: <stream>:dead
    millis reclaim_interval{30000};
    millis lease_timeout{60000};
    bool exit_when_idle = false;

    // simulated latencies and failures
    latency_range save_latency{millis{0}, millis{1000}};
    latency_range restart_latency{millis{0}, millis{1000}};
    double restart_failure_rate = 0;

    // message
    std::string host_domain = "example.net";
    std::uint64_t max_message_bytes = 64 * 1024;

    // pipeline
    std::uint64_t max_in_flight = 1000;
    std::uint64_t queue_capacity = 64;
    millis lease_extend_interval{2000};
    std::uint32_t max_attempts = 5;
    latency_range retry_backoff{millis{200}, millis{30000}};

    // lifecycle and output
    millis drain_timeout{30000};
    millis status_interval{5000};
    std::string log_level = "info";
    std::string log_format = "text";
    std::string config_file;
};

// The environment variable that sets a flag: --max-in-flight -> MAYHEM_MAX_IN_FLIGHT.
std::string env_name(const std::string& flag);

// Registers every worker flag on `cmd`, bound to `cfg`. Flags take their defaults from `cfg`.
void add_worker_options(CLI::App& cmd, worker_config& cfg);

// Layers the configuration file and the environment under the command line: returns the
// arguments to parse, file values first, then environment values, then `argv` itself, with
// every option of `cmd` set to take the last value given. Throws CLI::ValidationError naming the
// file and key for a bad file.
std::vector<std::string> layered_args(CLI::App& cmd, const std::vector<std::string>& argv,
                                      const std::string& config_file);

// The value of --config (or MAYHEM_CONFIG) in `argv`, if any.
std::string find_config_file(const std::vector<std::string>& argv);

// Parses the worker's flags from `argv` (program name and "worker" excluded), with the
// environment and config file layered in. On --help prints the help to `out` and returns
// nullopt with exit_code 0; on a bad flag, value or file prints the error (naming the flag and
// what is allowed) to `err` and returns nullopt with exit_code 2.
std::optional<worker_config> parse_worker_config(const std::vector<std::string>& argv,
                                                 std::ostream& out, std::ostream& err,
                                                 int& exit_code);

spdlog::level::level_enum parse_log_level(const std::string& s);

} // namespace mayhem
