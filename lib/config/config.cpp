#include "config/config.hpp"

#include "metrics/http_server.hpp"
#include "restart/command_template.hpp"
#include "restart/exec_wrapper.hpp"
#include "restart/policy.hpp"
#include "sources/pubsub_rest.hpp"
#include "sources/redis_url.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <libpq-fe.h>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <unistd.h>

namespace mayhem {

namespace {

// CLI11 validators that also convert: the option is bound to a string and parsed here, so an
// invalid value is reported with the flag's name and what is allowed.
template <class T, class Parse>
CLI::Option* add_parsed(CLI::App& cmd, const std::string& name, T& target, Parse parse,
                        const std::string& help, const std::string& shown_default,
                        const std::string& allowed) {
    auto* opt = cmd.add_option_function<std::string>(
        name,
        [&target, parse, name, allowed](const std::string& v) {
            auto parsed = parse(v);
            if (!parsed) throw CLI::ValidationError(name, "'" + v + "' is not valid: " + allowed);
            target = *parsed;
        },
        help);
    opt->default_str(shown_default);
    return opt;
}

// A duration of at least `min` (a zero interval would spin a timer or fail a probe forever).
CLI::Option* add_duration(CLI::App& cmd, const std::string& name, millis& target,
                          const std::string& help, millis min = millis{0}) {
    auto at_least = [min](std::string_view s) -> std::optional<millis> {
        auto d = parse_duration(s);
        if (!d || *d < min) return std::nullopt;
        return d;
    };
    return add_parsed(cmd, name, target, at_least, help, format_duration(target),
                      min.count() > 0
                          ? "expected a duration of at least " + format_duration(min) +
                                " like 250ms, 2s, 5m, 1h"
                          : std::string("expected a duration like 250ms, 2s, 5m, 1h, 7d"));
}

CLI::Option* add_range(CLI::App& cmd, const std::string& name, latency_range& target,
                       const std::string& help) {
    return add_parsed(cmd, name, target, parse_latency_range, help, format_latency_range(target),
                      "expected a duration or a range MIN..MAX like 10ms..1s (MIN <= MAX)");
}

// `s` with each control character (and DEL) written as an escape (\n, \t, \x1b): an error
// echoes what it was given (a key of the file, a flag's value, a template), and must stay one
// line that carries no terminal escape.
std::string printable(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);
        if (c >= 0x20 && c != 0x7f) {
            out += ch;
        } else if (ch == '\n') {
            out += "\\n";
        } else if (ch == '\r') {
            out += "\\r";
        } else if (ch == '\t') {
            out += "\\t";
        } else {
            static constexpr char hex[] = "0123456789abcdef";
            out += {'\\', 'x', hex[c >> 4], hex[c & 15]};
        }
    }
    return out;
}

} // namespace

std::optional<std::uint64_t> parse_whole_number(std::string_view s, std::uint64_t min,
                                                std::uint64_t max) {
    // Digits only, no overflow: CLI11's own conversion turns "-5" into 2^64 - 5.
    if (s.empty() || s.find_first_not_of("0123456789") != std::string_view::npos)
        return std::nullopt;
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size() || v < min || v > max) return std::nullopt;
    return v;
}

CLI::Option* add_whole_number(CLI::App& cmd, const std::string& name, std::uint64_t& target,
                              std::uint64_t min, std::uint64_t max, const std::string& help) {
    return add_parsed(
        cmd, name, target,
        [min, max](std::string_view s) { return parse_whole_number(s, min, max); }, help,
        std::to_string(target),
        "expected a whole number from " + std::to_string(min) + " to " + std::to_string(max));
}

namespace {

std::optional<std::uint64_t> parse_count(std::string_view s) {
    return parse_whole_number(s, 0, 999'999'999'999);
}

// A finite decimal number in [min, max]: "abc" is "not a number", not a range of 300 digits.
CLI::Option* add_number(CLI::App& cmd, const std::string& name, double& target, double min,
                        double max, const std::string& help, const std::string& range) {
    auto* opt = cmd.add_option_function<std::string>(
        name,
        [&target, name, min, max, range](const std::string& s) {
            double v = 0;
            auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
            if (s.empty() || ec != std::errc{} || end != s.data() + s.size() || !std::isfinite(v))
                throw CLI::ValidationError(name, "'" + s + "' is not a number (" + range + ")");
            if (v < min || v > max)
                throw CLI::ValidationError(name, "'" + s + "' is out of range: " + range);
            target = v;
        },
        help);
    char shown[32];
    std::snprintf(shown, sizeof shown, "%g", target);
    opt->default_str(shown);
    return opt;
}

// The safety rails' flags (README "Safety rails").
void add_safety_options(CLI::App& cmd, worker_config& c) {
    const char* g = "Safety rails";
    cmd.add_option("--restart-command", c.restart_command,
                   "exec: command run per host, split into argv without a shell; placeholders "
                   "{hostname} {instance_name} {message_id}")
        ->group(g);
    cmd.add_option("--verify-command", c.verify_command,
                   "exec: command run after a successful restart; must exit 0 (same rules)")
        ->group(g);
    add_duration(cmd, "--restart-timeout", c.restart_timeout,
                 "exec: a command still running after this is ended (SIGTERM, then SIGKILL) and "
                 "the restart failed")
        ->group(g);
    add_duration(cmd, "--restart-kill-grace", c.restart_kill_grace,
                 "exec: time between SIGTERM and SIGKILL when a command is ended")
        ->group(g);
    add_parsed(cmd, "--restart-cooldown", c.restart_cooldown, parse_duration,
               "Skip a host whose last restart is more recent than this (0 = off)",
               "7d with exec, 0 with simulate", "expected a duration like 30m, 12h, 7d")
        ->group(g);
    add_parsed(cmd, "--max-concurrent-restarts", c.max_concurrent_restarts, parse_count,
               "Restarts running at once; more wait, in flight (0 = unlimited)",
               "16 with exec, 0 with simulate", "expected a whole number")
        ->group(g);
    cmd.add_option("--allow-hosts", c.allow_hosts,
                   "Regex a host name must match entirely, else dead-lettered")
        ->group(g);
    cmd.add_option("--deny-hosts", c.deny_hosts,
                   "Regex: a host name matching it entirely is dead-lettered")
        ->group(g);
    cmd.add_option("--pause-file", c.pause_file,
                   "Kill switch: while this file exists no restart starts (looked for every 1s)")
        ->group(g);
    add_parsed(
        cmd, "--breaker-failures", c.breaker_failures,
        [](std::string_view s) -> std::optional<std::uint32_t> {
            auto v = parse_count(s);
            if (!v || *v > 1'000'000) return std::nullopt;
            return static_cast<std::uint32_t>(*v);
        },
        "This many failed restarts within --breaker-window open the circuit breaker (0 = off)",
        "10 with exec, 0 with simulate", "expected a whole number up to 1000000")
        ->group(g);
    add_duration(cmd, "--breaker-window", c.breaker_window,
                 "The window in which failed restarts are counted")
        ->group(g);
    add_duration(cmd, "--breaker-cooldown", c.breaker_cooldown,
                 "How long an open breaker holds restarts before one trial restart")
        ->group(g);
    cmd.add_flag("--dry-run", c.dry_run, "Everything but the restart itself (result dry_run)")
        ->group(g);
    cmd.add_flag("--allow-volatile-cooldown", c.allow_volatile_cooldown,
                 "Accept --restarter exec with --store memory and a cooldown: that cooldown and "
                 "the record of restarts last only as long as the process (refused without this "
                 "flag)")
        ->group(g);
}

std::string flag_name(const CLI::Option* opt) {
    const auto& longs = opt->get_lnames();
    return longs.empty() ? std::string{} : longs.front();
}

void add_observability_options(CLI::App& cmd, worker_config& c) {
    cmd.add_option("--metrics-addr", c.metrics_addr,
                   "HOST:PORT serving /metrics, /healthz and /readyz, or off (a numeric IPv4 host: "
                   "loopback by default, 0.0.0.0 to bind every interface)")
        ->check(CLI::Validator(
            [](std::string& v) {
                return metrics::valid_listen_address(v)
                           ? std::string{}
                           : "'" + v +
                                 "' is not valid: expected HOST:PORT with a numeric IPv4 host "
                                 "(127.0.0.1:9477, 0.0.0.0:9477) or off";
            },
            "HOST:PORT|off"))
        ->capture_default_str()
        ->group("Observability");
    add_duration(cmd, "--health-max-loop-lag", c.health_max_loop_lag,
                 "/healthz answers 503 when the event loop has not turned for this long",
                 millis{100})
        ->group("Observability");
    add_duration(cmd, "--slow-callback-warn", c.slow_callback_warn,
                 "Log a warning when one event-loop iteration is busy this long (0 = never)")
        ->group("Observability");
    // Test only: no group, so --help does not list it (README, "Observability").
    add_duration(cmd, "--debug-block-loop", c.debug_block_loop,
                 "test only: on SIGUSR1, block the event loop thread this long")
        ->group("");
}

} // namespace

spdlog::level::level_enum parse_log_level(const std::string& s) {
    if (s == "trace") return spdlog::level::trace;
    if (s == "debug") return spdlog::level::debug;
    if (s == "info") return spdlog::level::info;
    if (s == "warn") return spdlog::level::warn;
    if (s == "error") return spdlog::level::err;
    return spdlog::level::off;
}

CLI::Validator shaped(bool (*valid)(std::string_view), const std::string& shape) {
    return CLI::Validator(
        [valid, shape](std::string& v) {
            return valid(v) ? std::string{} : "'" + v + "' is not valid: expected " + shape;
        },
        shape);
}

CLI::Option* add_auth_key_files(CLI::App& cmd, std::vector<std::string>& files) {
    return cmd
        .add_option("--auth-key-file", files,
                    "Secret (>= 32 bytes, hex or raw; mode 0600) that signs requests: the worker "
                    "dead-letters any request not signed with it, publish signs with it. Give it "
                    "twice while keys rotate: either verifies, the last one signs. SIGHUP "
                    "re-reads the files")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->type_size(1)
        ->allow_extra_args(false);
}

std::variant<std::shared_ptr<auth::key_ring>, std::string>
load_auth_keys(const std::vector<std::string>& files) {
    if (files.empty()) return std::shared_ptr<auth::key_ring>{};
    try {
        return auth::key_ring::load(files);
    } catch (const std::exception& e) {
        return std::string(e.what());
    }
}

CLI::Option* add_pubsub_credentials(CLI::App& cmd, std::string& mode) {
    return cmd
        .add_option("--pubsub-credentials", mode,
                    "pubsub: auto = Application Default Credentials for an https endpoint, none "
                    "for http (an emulator); adc = always; none = never")
        ->check(CLI::IsMember({"auto", "adc", "none"}))
        ->capture_default_str();
}

std::variant<std::shared_ptr<const gcp::service_account>, std::string>
load_pubsub_key(const std::string& mode, const std::string& endpoint) {
    if (!gcp::wants_credentials(mode, pubsub::resolve_endpoint(endpoint)))
        return std::shared_ptr<const gcp::service_account>{};
    const char* file = std::getenv("GOOGLE_APPLICATION_CREDENTIALS");
    if (!file || !*file) return std::shared_ptr<const gcp::service_account>{};
    try {
        return gcp::load_service_account(file);
    } catch (const std::exception& e) {
        return std::string("GOOGLE_APPLICATION_CREDENTIALS ") + e.what();
    }
}

std::string env_name(const std::string& flag) {
    std::string out = "MAYHEM_";
    for (char c : flag)
        out += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return out;
}

void add_worker_options(CLI::App& cmd, worker_config& c) {
    cmd.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

    cmd.add_option("--config", c.config_file,
                   "JSON file of flag values, e.g. {\"max-in-flight\": 500}; flags and "
                   "MAYHEM_* environment variables override it")
        ->group("General");

    cmd.add_option("--source", c.source, "Where requests come from")
        ->check(CLI::IsMember({"simulate", "stdin", "redis", "pubsub", "tcp"}))
        ->capture_default_str()
        ->group("Pipeline");
    cmd.add_option("--store", c.store, "Where requests are saved")
        ->check(CLI::IsMember({"sqlite", "memory", "postgres"}))
        ->capture_default_str()
        ->group("Pipeline");
    cmd.add_option("--db", c.db, "sqlite store: the database file (created if missing)")
        ->capture_default_str()
        ->group("Store");
    cmd.add_option("--db-synchronous", c.db_synchronous,
                   "sqlite store: normal = a commit survives a crash of the process, full = "
                   "also a power loss (fsync per transaction)")
        ->check(CLI::IsMember({"normal", "full"}))
        ->capture_default_str()
        ->group("Store");
    add_duration(cmd, "--db-busy-timeout", c.db_busy_timeout,
                 "sqlite store: how long a transaction waits for another writer's lock before it "
                 "fails (its messages are retried)")
        ->group("Store");
    cmd.add_option("--postgres-url", c.postgres_url,
                   "postgres store: libpq connection string or URI "
                   "(postgresql://user@host:5432/db?sslmode=require); keep the password in "
                   "PGPASSFILE/~/.pgpass or MAYHEM_POSTGRES_URL, not on the command line")
        ->check([](const std::string& v) {
            // The value is never echoed: it may hold a password.
            char* err = nullptr;
            PQconninfoOption* opts = PQconninfoParse(v.c_str(), &err);
            std::string why = err ? err : "";
            PQfreemem(err);
            PQconninfoFree(opts);
            while (!why.empty() && why.back() == '\n')
                why.pop_back();
            return opts ? std::string{} : "not a libpq connection string or URI: " + why;
        })
        ->group("Store");
    add_whole_number(cmd, "--postgres-connections", c.postgres_connections, 1, 16,
                     "postgres store: connections to the database; each message id always uses "
                     "the same one, and each commits its share of the batches on its own (the "
                     "server runs one connection's transactions on one core)")
        ->group("Store");
    add_duration(cmd, "--retention", c.retention,
                 "sqlite and postgres stores: finished requests and restarts older than this are "
                 "deleted, in small batches (0 = keep forever); a cooldown's rows are kept")
        ->group("Store");
    cmd.add_option("--on-unfinished-restart", c.on_unfinished_restart,
                   "A message whose restart was recorded as started but never finished (a crash "
                   "in between): retry = restart it again, dead-letter = do not, dead-letter it")
        ->check(CLI::IsMember({"retry", "dead-letter"}))
        ->capture_default_str()
        ->group("Store");
    cmd.add_option("--restarter", c.restarter,
                   "How hosts are restarted: exec runs --restart-command, simulate restarts none")
        ->check(CLI::IsMember({"simulate", "exec"}))
        ->default_str("simulate with --source simulate; required with any other source")
        ->group("Pipeline");
    add_whole_number(cmd, "--max-in-flight", c.max_in_flight, 1, 10'000'000,
                     "Messages processed concurrently (SIGHUP can change it)")
        ->group("Pipeline");
    add_whole_number(cmd, "--queue-capacity", c.queue_capacity, 1, 1'000'000,
                     "Messages taken from the source and waiting for room in flight; the source "
                     "is not read while it is full (kept small so a drain is quick; a redis "
                     "source holds up to --read-ahead more)")
        ->group("Pipeline");
    add_duration(cmd, "--lease-extend-interval", c.lease_extend_interval,
                 "How often the lease of an in-flight message is renewed with the source",
                 millis{10})
        ->group("Pipeline");
    add_parsed(
        cmd, "--max-attempts", c.max_attempts,
        [](std::string_view s) -> std::optional<std::uint32_t> {
            if (auto v = parse_whole_number(s, 1, 1000)) return static_cast<std::uint32_t>(*v);
            return std::nullopt;
        },
        "Deliveries of a message whose restart fails before it is dead-lettered",
        std::to_string(c.max_attempts), "expected a whole number from 1 to 1000")
        ->group("Pipeline");
    add_range(cmd, "--retry-backoff", c.retry_backoff,
              "Backoff before a retried message is delivered again: BASE..CAP, doubling per "
              "attempt with jitter")
        ->group("Pipeline");
    add_duration(cmd, "--drain-timeout", c.drain_timeout,
                 "On SIGTERM/SIGINT, how long restarts already running may finish before their "
                 "messages are released (queued ones, and those whose restart has not begun, are "
                 "released at once)")
        ->group("Pipeline");

    add_safety_options(cmd, c);

    add_auth_key_files(cmd, c.auth_key_files)->group("Messages");
    add_duration(cmd, "--auth-max-age", c.auth_max_age,
                 "With --auth-key-file: a request issued longer ago than this is dead-lettered "
                 "(expired); one issued more than 1m ahead of this clock too",
                 millis{1000})
        ->group("Messages");
    cmd.add_option("--host-domain", c.host_domain,
                   "Domain of a host derived from instance_name: <instance_name>.<domain>")
        ->capture_default_str()
        ->group("Messages");
    add_parsed(
        cmd, "--max-message-bytes", c.max_message_bytes,
        [](std::string_view s) -> std::optional<std::uint64_t> {
            auto v = parse_bytes(s);
            if (!v || *v < message_bytes_min || *v > message_bytes_max) return std::nullopt;
            return v;
        },
        "Larger payloads are dead-lettered", std::to_string(c.max_message_bytes),
        "expected a size from 64 to 64MiB like 65536, 64KiB, 1MiB")
        ->group("Messages");

    add_whole_number(cmd, "--messages", c.messages, 0, messages_max,
                     "simulate: publish this many, exit once all have an outcome (0 = forever)")
        ->group("Simulation");
    add_number(cmd, "--rate", c.rate, 0, 1e9,
               "simulate: messages per second (0 = as fast as taken)",
               "messages per second from 0 to 1000000000")
        ->group("Simulation");
    add_number(cmd, "--bad-ratio", c.bad_ratio, 0, 1,
               "simulate: share of undecodable payloads (0..1)", "from 0 to 1")
        ->group("Simulation");
    add_range(cmd, "--save-latency", c.save_latency,
              "memory store: simulated save latency, MIN..MAX (other stores ignore it)")
        ->group("Simulation");
    add_range(cmd, "--restart-latency", c.restart_latency,
              "simulate restarter: restart latency, MIN..MAX")
        ->group("Simulation");
    add_number(cmd, "--restart-failure-rate", c.restart_failure_rate, 0, 1,
               "simulate restarter: probability that a restart fails (0..1)", "from 0 to 1")
        ->group("Simulation");
    add_whole_number(cmd, "--seed", c.seed, 0, std::numeric_limits<std::uint64_t>::max(),
                     "Random seed for the simulation (0 = random)")
        ->group("Simulation");

    cmd.add_option("--redis-url", c.redis_url,
                   "redis: redis://[[user]:password@]host[:port][/db] or unix:///path[?db=N]")
        ->check([](const std::string& v) {
            // The URL may hold a password: the error says what is wrong, never the value.
            std::string why;
            return parse_redis_url(v, &why) ? std::string{} : "not a valid URL: " + why;
        })
        ->capture_default_str()
        ->group("Redis");
    cmd.add_option("--stream", c.stream, "redis: the stream to consume")
        ->capture_default_str()
        ->group("Redis");
    cmd.add_option("--group", c.group, "redis: the consumer group (shared by all workers)")
        ->capture_default_str()
        ->group("Redis");
    cmd.add_option("--consumer", c.consumer,
                   "redis: this worker's consumer name, unique per process (default "
                   "<hostname>-<pid>)")
        ->group("Redis");
    cmd.add_option("--dead-letter-stream", c.dead_letter_stream,
                   "redis: where dead letters go (default <stream>:dead)")
        ->group("Redis");
    add_duration(cmd, "--reclaim-interval", c.reclaim_interval,
                 "redis: how often entries left pending by dead workers are reclaimed", millis{10})
        ->group("Redis");
    add_duration(cmd, "--lease-timeout", c.lease_timeout,
                 "redis: idle time after which a pending entry is reclaimed by any worker "
                 "(keep --lease-extend-interval well below it); every source: how long a "
                 "restart claim in the store stays this worker's without renewal",
                 millis{100})
        ->group("Redis");
    add_whole_number(cmd, "--read-ahead", c.read_ahead, 0, 100'000,
                     "redis: new entries read beyond the pipeline's free room and held until it "
                     "has room (their leases are renewed; at a drain they are not started but "
                     "left pending for any worker); 0 = read only what the queue has room for")
        ->group("Redis");
    add_duration(cmd, "--stream-sample-interval", c.stream_sample_interval,
                 "redis: how often the group's lag, pending entries and dead-letter stream "
                 "length are read for /metrics (0 = never)")
        ->group("Redis");
    cmd.add_flag("--exit-when-idle", c.exit_when_idle,
                 "redis: exit 0 once the stream has no new or pending entries for the group; "
                 "pubsub: once pulls brought nothing for 1s and nothing is in flight")
        ->group("Redis");

    cmd.add_option("--pubsub-subscription", c.pubsub_subscription,
                   "pubsub: the subscription to pull from")
        ->check(shaped(pubsub::valid_subscription, "projects/PROJECT/subscriptions/NAME"))
        ->group("Pub/Sub");
    cmd.add_option("--pubsub-endpoint", c.pubsub_endpoint,
                   "pubsub: the API's base URL (default http://$PUBSUB_EMULATOR_HOST when that "
                   "is set, else https://pubsub.googleapis.com)")
        ->check(shaped(pubsub::valid_endpoint, "http://HOST[:PORT] or https://HOST[:PORT]"))
        ->group("Pub/Sub");
    cmd.add_option("--dead-letter-topic", c.dead_letter_topic,
                   "pubsub: where dead letters are published (with a reason attribute) before "
                   "they are acked")
        ->check(shaped(pubsub::valid_topic, "projects/PROJECT/topics/NAME"))
        ->group("Pub/Sub");
    add_pubsub_credentials(cmd, c.pubsub_credentials)->group("Pub/Sub");

    cmd.add_option("--listen", c.listen,
                   "tcp: HOST:PORT to take requests on (a numeric IPv4 host; one JSON request "
                   "per line, each answered with its outcome)")
        ->check(CLI::Validator(
            [](std::string& v) {
                return v != "off" && metrics::valid_listen_address(v)
                           ? std::string{}
                           : "'" + v +
                                 "' is not valid: expected HOST:PORT with a numeric IPv4 host "
                                 "(127.0.0.1:7478, 0.0.0.0:7478)";
            },
            "HOST:PORT"))
        ->capture_default_str()
        ->group("TCP");
    add_whole_number(cmd, "--max-connections", c.max_connections, 1, 1'000'000,
                     "tcp: producers connected at once; one more is answered with an error line "
                     "and closed")
        ->group("TCP");
    add_duration(cmd, "--tcp-idle-timeout", c.tcp_idle_timeout,
                 "tcp: close a connection that sent nothing, read nothing and is owed no answer "
                 "for this long (0 = never)")
        ->group("TCP");
    add_parsed(
        cmd, "--max-answer-bytes", c.max_answer_bytes,
        [](std::string_view s) -> std::optional<std::uint64_t> {
            auto v = parse_bytes(s);
            if (!v || *v < 4096 || *v > (std::uint64_t{1} << 30)) return std::nullopt;
            return v;
        },
        "tcp: answers waiting to be written to one connection (its producer does not read "
        "them); above this the connection is closed",
        std::to_string(c.max_answer_bytes), "expected a size from 4KiB to 1GiB like 1MiB")
        ->group("TCP");

    add_duration(cmd, "--status-interval", c.status_interval,
                 "How often a status line is logged (0 = never)")
        ->group("Output");
    cmd.add_option("--log-level", c.log_level, "Log level (SIGHUP re-reads it)")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
        ->capture_default_str()
        ->group("Output");
    cmd.add_option("--log-format", c.log_format, "Log format on stderr")
        ->check(CLI::IsMember({"text", "json"}))
        ->capture_default_str()
        ->group("Output");
    add_observability_options(cmd, c);
}

std::string find_config_file(const std::vector<std::string>& argv) {
    std::string file;
    if (const char* env = std::getenv("MAYHEM_CONFIG")) file = env;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const auto& a = argv[i];
        if (a == "--config" && i + 1 < argv.size())
            file = argv[i + 1];
        else if (a.rfind("--config=", 0) == 0)
            file = a.substr(9);
    }
    return file;
}

std::vector<layered_arg> layered_args(CLI::App& cmd, const std::vector<std::string>& argv,
                                      const std::string& config_file,
                                      std::vector<std::string>* unknown_env) {
    std::vector<layered_arg> out;
    std::vector<CLI::Option*> options = cmd.get_options();

    if (!config_file.empty()) {
        std::ifstream in(config_file, std::ios::binary);
        if (!in) throw CLI::FileError("--config: cannot open '" + config_file + "'");
        std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
        nlohmann::json doc;
        try {
            // nlohmann takes a NUL for the end of its input: what follows one would be ignored.
            if (auto nul = text.find('\0'); nul != std::string::npos)
                throw std::runtime_error("a NUL byte at byte " + std::to_string(nul + 1));
            doc = nlohmann::json::parse(text);
        } catch (const std::exception& e) {
            // nlohmann quotes the text it last read, which may be part of a password (a Redis
            // URL): the position is enough.
            std::string why = e.what();
            why = why.substr(0, why.find("; last read:"));
            throw CLI::ValidationError("--config",
                                       "'" + config_file + "' is not valid JSON: " + why);
        }
        if (!doc.is_object())
            throw CLI::ValidationError("--config", "'" + config_file +
                                                       "' must hold a JSON object of flag values");
        for (const auto& [key, value] : doc.items()) {
            std::string flag = key;
            std::replace(flag.begin(), flag.end(), '_', '-');
            auto it = std::find_if(options.begin(), options.end(),
                                   [&](CLI::Option* o) { return flag_name(o) == flag; });
            if (it == options.end() || flag == "config")
                throw CLI::ValidationError("--config",
                                           "unknown key \"" + key + "\" in '" + config_file +
                                               "' (keys are flag names, e.g. \"max-in-flight\")");
            std::string v;
            if (value.is_string())
                v = value.get<std::string>();
            else if (value.is_boolean())
                v = value.get<bool>() ? "true" : "false";
            else if (value.is_number())
                v = value.dump();
            else
                throw CLI::ValidationError("--config", "key \"" + key + "\" in '" + config_file +
                                                           "' must be a string, number or boolean");
            // An empty value is not set (as in the environment): the layer below decides.
            if (v.empty()) continue;
            out.push_back({"--" + flag + "=" + v, "key \"" + key + "\" in '" + config_file + "'"});
        }
    }
    std::set<std::string, std::less<>> known{"MAYHEM_CONFIG"};
    for (CLI::Option* o : options) {
        std::string flag = flag_name(o);
        if (flag.empty() || flag == "help" || flag == "config") continue;
        std::string var = env_name(flag);
        // An empty variable is not set: turned into "--flag=" it would take the next argument
        // as its value, or turn a boolean flag on.
        if (const char* env = std::getenv(var.c_str()); env && *env)
            out.push_back({"--" + flag + "=" + env, var});
        known.insert(std::move(var));
    }
    if (unknown_env) {
        for (char** e = environ; *e; ++e) {
            std::string_view entry(*e);
            auto name = entry.substr(0, entry.find('='));
            if (name.starts_with("MAYHEM_") && !known.contains(name))
                unknown_env->emplace_back(name);
        }
    }
    for (const auto& a : argv)
        out.push_back({a, {}});
    return out;
}

std::optional<int> parse_command(CLI::App& cmd, const std::vector<std::string>& args,
                                 const char* name, std::ostream& out, std::ostream& err) {
    try {
        std::vector<std::string> rev(args.rbegin(), args.rend()); // CLI11 takes it reversed
        cmd.parse(rev);
    } catch (const CLI::CallForHelp&) {
        out << cmd.help();
        return 0;
    } catch (const CLI::Error& e) {
        err << name << ": " << printable(e.what()) << "\n";
        return 2;
    }
    return std::nullopt;
}

namespace {

// A value from the file or the environment, parsed alone: an error names where it came from
// (the variable, or the key and file), not the flag it stands for.
void check_layered_value(const layered_arg& a) {
    worker_config scratch;
    CLI::App one;
    add_worker_options(one, scratch);
    try {
        one.parse(std::vector<std::string>{a.arg});
    } catch (const CLI::Error& e) {
        std::string what = e.what();
        std::string flag = a.arg.substr(0, a.arg.find('='));
        if (what.starts_with(flag + ": ")) what.erase(0, flag.size() + 2);
        // CLI11 names the flag inside some messages too ("Could not convert: --dry-run = x").
        std::string name = a.origin.starts_with("MAYHEM_") ? a.origin : flag.substr(2);
        for (auto at = what.find(flag); at != std::string::npos; at = what.find(flag, at))
            what.replace(at, flag.size(), name);
        throw CLI::ValidationError(a.origin, what);
    }
}

// Each option given by some layer, with its winning value (options take the last one) and the
// layer it came from: the command line comes last, then the environment, then the file.
void record_given(CLI::App& cmd, const std::vector<layered_arg>& layered,
                  std::map<std::string, worker_config::given_value, std::less<>>& given) {
    for (CLI::Option* o : cmd.get_options()) {
        std::string flag = flag_name(o);
        if (flag.empty() || flag == "help" || o->count() == 0 || o->results().empty()) continue;
        std::string dashed = "--" + flag;
        std::string origin;
        for (const auto& a : layered) {
            if (a.arg == dashed || a.arg.starts_with(dashed + "="))
                origin = a.origin.empty() ? "command line" : a.origin;
        }
        given[flag] = {o->results().back(), origin};
    }
}

// A flag that may be given more than once takes all its values from one layer: the highest that
// gives any. Values add up within the command line, but an --auth-key-file on the command line
// must replace the one in the environment, not join it (that key would stay trusted).
void keep_last_layer(std::vector<std::string>& values, const std::vector<layered_arg>& layered,
                     const std::string& flag) {
    // The file's and the environment's values come first, one per entry, then the command
    // line's (parse order).
    std::vector<std::string> origins;
    for (const auto& a : layered)
        if (!a.origin.empty() && a.arg.starts_with(flag + "=")) origins.push_back(a.origin);
    origins.resize(values.size(), "command line");
    std::vector<std::string> kept;
    for (std::size_t i = 0; i < values.size(); ++i)
        if (origins[i] == origins.back()) kept.push_back(std::move(values[i]));
    values = std::move(kept);
}

} // namespace

std::optional<worker_config> parse_worker_config(const std::vector<std::string>& argv,
                                                 std::ostream& out, std::ostream& err,
                                                 int& exit_code) {
    worker_config cfg;
    CLI::App cmd{"Take host-restart requests from a source, save and restart each one "
                 "concurrently, then ack.\nEvery flag can also be set with an environment "
                 "variable MAYHEM_<FLAG> (e.g. MAYHEM_MAX_IN_FLIGHT=500) or a key in the --config "
                 "file; flags win over the environment, the environment over the file; an empty "
                 "value counts as not set.",
                 "mayhem worker"};
    cmd.footer("Exit codes: 0 done, nothing released; 3 work was released (not acked) at a "
               "drain; 2 bad flags or config; 1 fatal error.");
    add_worker_options(cmd, cfg);
    try {
        auto layered = layered_args(cmd, argv, find_config_file(argv), &cfg.unknown_env);
        std::vector<std::string> args;
        for (auto it = layered.rbegin(); it != layered.rend(); ++it) { // CLI11 takes it reversed
            if (!it->origin.empty()) check_layered_value(*it);
            args.push_back(it->arg);
        }
        cmd.parse(args);
        record_given(cmd, layered, cfg.given);
        keep_last_layer(cfg.auth_key_files, layered, "--auth-key-file");
    } catch (const CLI::CallForHelp&) {
        out << cmd.help();
        exit_code = 0;
        return std::nullopt;
    } catch (const CLI::Error& e) {
        err << "mayhem worker: " << printable(e.what()) << "\n";
        exit_code = 2;
        return std::nullopt;
    }
    // A real source with the simulated restarter would ack real requests and restart nothing.
    if (cmd.get_option("--restarter")->count() == 0 && cfg.source != "simulate") {
        err << "mayhem worker: --source " << cfg.source
            << " needs --restarter: exec (with --restart-command) restarts hosts, simulate "
               "restarts none and only records that it would\n";
        exit_code = 2;
        return std::nullopt;
    }
    if (auto bad = check_safety(cfg)) {
        // A check of several flags names the first; say where its value came from.
        for (const auto& [flag, v] : cfg.given) {
            std::string dashed = "--" + flag;
            if (v.origin != "command line" && bad->starts_with(dashed) &&
                (bad->size() == dashed.size() || (*bad)[dashed.size()] == ' ' ||
                 (*bad)[dashed.size()] == ':')) {
                bad->replace(0, dashed.size(), v.origin);
                break;
            }
        }
        err << "mayhem worker: " << printable(*bad) << "\n";
        exit_code = 2;
        return std::nullopt;
    }
    auto keys = load_auth_keys(cfg.auth_key_files);
    if (auto* bad = std::get_if<std::string>(&keys)) {
        err << "mayhem worker: --auth-key-file " << printable(*bad) << "\n";
        exit_code = 2;
        return std::nullopt;
    }
    cfg.auth_keys = std::get<std::shared_ptr<auth::key_ring>>(std::move(keys));
    if (cfg.source == "pubsub") {
        auto key = load_pubsub_key(cfg.pubsub_credentials, cfg.pubsub_endpoint);
        if (auto* bad = std::get_if<std::string>(&key)) {
            err << "mayhem worker: " << printable(*bad) << "\n";
            exit_code = 2;
            return std::nullopt;
        }
        cfg.pubsub_key = std::get<std::shared_ptr<const gcp::service_account>>(std::move(key));
    }
    exit_code = 0;
    return cfg;
}

safety_defaults resolve_safety(const worker_config& c) {
    bool exec = c.restarter == "exec";
    safety_defaults d;
    d.restart_cooldown =
        c.restart_cooldown.value_or(exec ? millis{7LL * 24 * 3600 * 1000} : millis{0});
    d.max_concurrent_restarts = c.max_concurrent_restarts.value_or(exec ? 16 : 0);
    d.breaker_failures = c.breaker_failures.value_or(exec ? 10 : 0);
    return d;
}

std::optional<std::string> check_safety(const worker_config& c) {
    auto check_template = [](const std::string& flag,
                             const std::string& text) -> std::optional<std::string> {
        auto t = command_template::parse(text);
        if (auto* bad = std::get_if<std::string>(&t)) return flag + " \"" + text + "\": " + *bad;
        const auto& prog = std::get<command_template>(t).program();
        if (!find_program(prog))
            return flag + ": program '" + prog +
                   "' not found (not executable, or not on $PATH); fix the command before any "
                   "message is taken";
        return std::nullopt;
    };
    if (c.source == "pubsub" && c.pubsub_subscription.empty())
        return std::string("--source pubsub needs --pubsub-subscription (or "
                           "MAYHEM_PUBSUB_SUBSCRIPTION), e.g. projects/my-project/subscriptions/"
                           "restarts");
    if (c.source == "pubsub" && c.dead_letter_topic.empty())
        return std::string("--source pubsub needs --dead-letter-topic (or "
                           "MAYHEM_DEAD_LETTER_TOPIC), e.g. projects/my-project/topics/"
                           "restarts-dead: a message that cannot be done is published there");
    if (c.store == "postgres" && c.postgres_url.empty())
        return std::string("--store postgres needs --postgres-url (or MAYHEM_POSTGRES_URL), e.g. "
                           "postgresql://mayhem@db.example.net:5432/mayhem");
    if (c.restarter == "exec") {
        if (c.restart_command.empty())
            return std::string("--restarter exec needs --restart-command, e.g. "
                               "--restart-command 'ssh -o BatchMode=yes {hostname} sudo "
                               "systemctl reboot'");
        if (auto bad = check_template("--restart-command", c.restart_command)) return bad;
        if (!c.verify_command.empty())
            if (auto bad = check_template("--verify-command", c.verify_command)) return bad;
        if (c.restart_timeout.count() <= 0)
            return std::string("--restart-timeout must be more than 0: every command ends");
        if (c.store == "memory" && resolve_safety(c).restart_cooldown.count() > 0 &&
            !c.allow_volatile_cooldown)
            return std::string(
                "--restarter exec with --store memory: the cooldown and the record of restarts "
                "would last only as long as this process, so a restarted worker restarts hosts "
                "again; use --store sqlite, or give --allow-volatile-cooldown to accept that");
        // Last: what the user wrote is checked first; this is the installation.
        if (installed_exec_wrapper().empty())
            return std::string("--restarter exec: the helper program '") + exec_wrapper_program +
                   "' is not next to the mayhem binary; install both from the build directory "
                   "(see deploy/README.md)";
    } else if (!c.restart_command.empty() || !c.verify_command.empty()) {
        return std::string("--restart-command and --verify-command need --restarter exec");
    }
    for (auto [flag, re] :
         {std::pair{"--allow-hosts", &c.allow_hosts}, std::pair{"--deny-hosts", &c.deny_hosts}}) {
        try {
            host_filter f(*re, "");
        } catch (const std::regex_error& e) {
            return std::string(flag) + " \"" + *re + "\" is not a valid regex: " + e.what();
        }
    }
    return std::nullopt;
}

} // namespace mayhem
