// The worker's configuration: one struct, filled from the command line, the environment
// (MAYHEM_<FLAG>) and an optional JSON file (--config), in that order of precedence.
#pragma once

#include "message/auth.hpp"
#include "runtime/duration.hpp"
#include "runtime/log.hpp"
#include "sources/gcp_credentials.hpp"

#include <CLI/CLI.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace mayhem {

struct worker_config {
    // sources, store, restarter
    std::string source = "simulate";
    std::string store = "sqlite";
    std::string restarter = "simulate";

    // sqlite store
    std::string db = "mayhem.db";
    std::string db_synchronous = "normal";
    millis db_busy_timeout{5000};
    std::string on_unfinished_restart = "retry";
    millis retention{90LL * 24 * 3600 * 1000}; // sqlite and postgres stores; 0: keep forever

    // postgres store
    std::string postgres_url; // never logged: it may hold a password
    std::uint64_t postgres_connections = 2;

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
    std::uint64_t read_ahead = 512;      // entries read beyond the pipeline's room
    millis stream_sample_interval{5000}; // how often the group is sampled for /metrics

    // pubsub source (README "Google Cloud Pub/Sub")
    std::string pubsub_subscription;         // projects/P/subscriptions/S
    std::string pubsub_endpoint;             // empty: $PUBSUB_EMULATOR_HOST, else Google's
    std::string pubsub_credentials = "auto"; // auto, adc, none (gcp::wants_credentials)
    // The key file of $GOOGLE_APPLICATION_CREDENTIALS, read when the flags are parsed when
    // credentials are used; null: none (the metadata server is asked).
    std::shared_ptr<const gcp::service_account> pubsub_key;
    std::string dead_letter_topic; // projects/P/topics/T

    // tcp source (README "TCP")
    std::string listen = "127.0.0.1:7478";
    std::uint64_t max_connections = 1024;
    millis tcp_idle_timeout{5 * 60 * 1000};   // 0: never
    std::uint64_t max_answer_bytes = 1 << 20; // per connection, answers not written yet

    // simulated latencies and failures
    latency_range save_latency{millis{0}, millis{1000}};
    latency_range restart_latency{millis{0}, millis{1000}};
    double restart_failure_rate = 0;

    // safety rails (README "Safety rails"); nullopt: the restarter's default (exec: 7d, 16,
    // 10 failures; simulate: off), see resolve_safety()
    std::string restart_command;
    std::string verify_command;
    millis restart_timeout{5 * 60 * 1000};
    millis restart_kill_grace{10 * 1000};
    std::optional<millis> restart_cooldown;
    std::optional<std::uint64_t> max_concurrent_restarts;
    std::string allow_hosts;
    std::string deny_hosts;
    std::string pause_file;
    std::optional<std::uint32_t> breaker_failures;
    millis breaker_window{10 * 60 * 1000};
    millis breaker_cooldown{5 * 60 * 1000};
    bool dry_run = false;
    // exec with the memory store: the cooldown and the record of restarts end with the process;
    // refused at start unless this says the user means it
    bool allow_volatile_cooldown = false;

    // message
    std::string host_domain = "example.net";
    std::uint64_t max_message_bytes = 64 * 1024;
    // signed requests (README "Signed requests and the trust model"): the files as given, and
    // their keys, read when the flags are parsed (so SIGHUP reads them again); null: no keys.
    std::vector<std::string> auth_key_files;
    millis auth_max_age{10 * 60 * 1000};
    std::shared_ptr<auth::key_ring> auth_keys;

    // pipeline
    std::uint64_t max_in_flight = 1000;
    std::uint64_t queue_capacity = 64;
    millis lease_extend_interval{2000};
    std::uint32_t max_attempts = 5;
    latency_range retry_backoff{millis{200}, millis{30000}};

    // observability (README, "Observability")
    std::string metrics_addr = "127.0.0.1:9477"; // "off": no HTTP port
    millis health_max_loop_lag{5000};
    millis slow_callback_warn{100};
    millis debug_block_loop{0}; // test only, hidden: SIGUSR1 blocks the loop this long

    // lifecycle and output
    millis drain_timeout{30000};
    millis status_interval{5000};
    std::string log_level = "info";
    std::string log_format = "text";
    std::string config_file;
    // MAYHEM_ variables that match no flag: a warning at start (a typo would be ignored).
    std::vector<std::string> unknown_env;
    // Every flag given by the command line, the environment or the file (name without dashes),
    // with the value that won and where it came from: what SIGHUP compares.
    struct given_value {
        std::string value;
        std::string origin; // "command line", "MAYHEM_FLAG" or "key \"flag\" in 'FILE'"
    };
    std::map<std::string, given_value, std::less<>> given;
};

// Bounds of the worker's counts (README "Flags"): a payload limit below the smallest message
// would dead-letter everything; a count past these is a typo, not a plan.
inline constexpr std::uint64_t message_bytes_min = 64;
inline constexpr std::uint64_t message_bytes_max = 64ULL * 1024 * 1024;
inline constexpr std::uint64_t messages_max = 1'000'000'000'000ULL;

// A whole number in [min, max] written with digits only ("-5", "+5", " 5", "5x" are not).
std::optional<std::uint64_t> parse_whole_number(std::string_view s, std::uint64_t min,
                                                std::uint64_t max);
// An option bound to `target` that takes such a number; an error names the flag and the range.
CLI::Option* add_whole_number(CLI::App& cmd, const std::string& name, std::uint64_t& target,
                              std::uint64_t min, std::uint64_t max, const std::string& help);

// A check that a value has the shape `valid` accepts; the error shows the value and `shape`
// ("'x' is not valid: expected projects/PROJECT/topics/NAME").
CLI::Validator shaped(bool (*valid)(std::string_view), const std::string& shape);
// --auth-key-file FILE, given up to auth::max_keys times (worker and publish).
CLI::Option* add_auth_key_files(CLI::App& cmd, std::vector<std::string>& files);
// The key ring of `files` (read now), or the error that names the bad file; null when `files`
// is empty.
std::variant<std::shared_ptr<auth::key_ring>, std::string>
load_auth_keys(const std::vector<std::string>& files);

// --pubsub-credentials auto|adc|none (worker and publish).
CLI::Option* add_pubsub_credentials(CLI::App& cmd, std::string& mode);
// Application Default Credentials' key file for a Pub/Sub `endpoint` under `mode`: the service
// account of $GOOGLE_APPLICATION_CREDENTIALS (read now), null when credentials are not used or
// that variable is unset (the metadata server), or the error naming the file.
std::variant<std::shared_ptr<const gcp::service_account>, std::string>
load_pubsub_key(const std::string& mode, const std::string& endpoint);

// The environment variable that sets a flag: --max-in-flight -> MAYHEM_MAX_IN_FLIGHT.
std::string env_name(const std::string& flag);

// Registers every worker flag on `cmd`, bound to `cfg`. Flags take their defaults from `cfg`.
void add_worker_options(CLI::App& cmd, worker_config& cfg);

// One argument to parse, and where a value from the file or environment came from.
struct layered_arg {
    std::string arg;    // "--flag=value", or an argument of the command line as given
    std::string origin; // "MAYHEM_FLAG" or "key \"flag\" in 'FILE'"; empty: the command line
};

// Layers the configuration file and the environment under the command line: returns the
// arguments to parse, file values first, then environment values, then `argv` itself, with
// every option of `cmd` set to take the last value given. An empty value in the file or the
// environment is not set. Throws CLI::ValidationError naming the file and key for a bad file.
// Adds to `unknown_env` the MAYHEM_ variables that match no option.
std::vector<layered_arg> layered_args(CLI::App& cmd, const std::vector<std::string>& argv,
                                      const std::string& config_file,
                                      std::vector<std::string>* unknown_env = nullptr);

// The value of --config (or MAYHEM_CONFIG) in `argv`, if any.
std::string find_config_file(const std::vector<std::string>& argv);

// Parses the worker's flags from `argv` (program name and "worker" excluded), with the
// environment and config file layered in. On --help prints the help to `out` and returns
// nullopt with exit_code 0; on a bad flag, value or file prints the error (naming the flag and
// what is allowed) to `err` and returns nullopt with exit_code 2.
// Parses `args` (program name and command excluded) into `cmd`, the way every mayhem command
// does: on --help prints the help to `out` and returns 0; on a bad flag prints
// "<name>: <error>" to `err` and returns 2; returns nullopt when parsing succeeded.
std::optional<int> parse_command(CLI::App& cmd, const std::vector<std::string>& args,
                                 const char* name, std::ostream& out, std::ostream& err);

std::optional<worker_config> parse_worker_config(const std::vector<std::string>& argv,
                                                 std::ostream& out, std::ostream& err,
                                                 int& exit_code);

spdlog::level::level_enum parse_log_level(const std::string& s);

// The safety rails' values after the restarter's defaults are applied: a flag not given is
// 7d / 16 / 10 failures with --restarter exec, and off with --restarter simulate (a simulation
// touches no host, and its failure rate is a load-test knob, not a fleet's health).
struct safety_defaults {
    millis restart_cooldown;
    std::uint64_t max_concurrent_restarts; // 0: unlimited
    std::uint32_t breaker_failures;        // 0: no breaker
};
safety_defaults resolve_safety(const worker_config& c);

// Checks the safety flags together (templates, regexes, the restart program on $PATH); the
// message says what is wrong and which flag to change, or nullopt when all is well.
std::optional<std::string> check_safety(const worker_config& c);

} // namespace mayhem
