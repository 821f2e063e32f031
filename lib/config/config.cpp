#include "config/config.hpp"

#include "metrics/http_server.hpp"
#include "restart/command_template.hpp"
#include "restart/policy.hpp"
#include "sources/redis_url.hpp"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <libpq-fe.h>
#include <nlohmann/json.hpp>

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

CLI::Option* add_duration(CLI::App& cmd, const std::string& name, millis& target,
                          const std::string& help) {
    return add_parsed(cmd, name, target, parse_duration, help, format_duration(target),
                      "expected a duration like 250ms, 2s, 5m, 1h, 7d");
}

CLI::Option* add_range(CLI::App& cmd, const std::string& name, latency_range& target,
                       const std::string& help) {
    return add_parsed(cmd, name, target, parse_latency_range, help, format_latency_range(target),
                      "expected a duration or a range MIN..MAX like 10ms..1s (MIN <= MAX)");
}

std::optional<std::uint64_t> parse_count(std::string_view s) {
    if (s.empty() || s.size() > 12) return std::nullopt;
    std::uint64_t v = 0;
    for (char ch : s) {
        if (ch < '0' || ch > '9') return std::nullopt;
        v = v * 10 + static_cast<std::uint64_t>(ch - '0');
    }
    return v;
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
                 "/healthz answers 503 when the event loop has not turned for this long")
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
        ->check(CLI::IsMember({"simulate", "stdin", "redis"}))
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
    cmd.add_option("--on-unfinished-restart", c.on_unfinished_restart,
                   "A message whose restart was recorded as started but never finished (a crash "
                   "in between): retry = restart it again, dead-letter = do not, dead-letter it")
        ->check(CLI::IsMember({"retry", "dead-letter"}))
        ->capture_default_str()
        ->group("Store");
    cmd.add_option("--restarter", c.restarter, "How hosts are restarted")
        ->check(CLI::IsMember({"simulate", "exec"}))
        ->capture_default_str()
        ->group("Pipeline");
    cmd.add_option("--max-in-flight", c.max_in_flight,
                   "Messages processed concurrently (SIGHUP can change it)")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{10'000'000}))
        ->capture_default_str()
        ->group("Pipeline");
    cmd.add_option(
           "--queue-capacity", c.queue_capacity,
           "Messages taken from the source and waiting for room in flight; the source "
           "is not read while it is full (kept small so a drain is quick; a redis source holds "
           "up to --read-ahead more)")
        ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1'000'000}))
        ->capture_default_str()
        ->group("Pipeline");
    add_duration(cmd, "--lease-extend-interval", c.lease_extend_interval,
                 "How often the lease of an in-flight message is renewed with the source")
        ->group("Pipeline");
    cmd.add_option("--max-attempts", c.max_attempts,
                   "Deliveries of a message whose restart fails before it is dead-lettered")
        ->check(CLI::Range(1u, 1000u))
        ->capture_default_str()
        ->group("Pipeline");
    add_range(cmd, "--retry-backoff", c.retry_backoff,
              "Backoff before a retried message is delivered again: BASE..CAP, doubling per "
              "attempt with jitter")
        ->group("Pipeline");
    add_duration(cmd, "--drain-timeout", c.drain_timeout,
                 "On SIGTERM/SIGINT, how long in-flight messages may finish before they are "
                 "released")
        ->group("Pipeline");

    add_safety_options(cmd, c);

    cmd.add_option("--host-domain", c.host_domain,
                   "Domain of a host derived from instance_name: <instance_name>.<domain>")
        ->capture_default_str()
        ->group("Messages");
    add_parsed(cmd, "--max-message-bytes", c.max_message_bytes, parse_bytes,
               "Larger payloads are dead-lettered", std::to_string(c.max_message_bytes),
               "expected a size like 65536, 64KiB, 1MiB")
        ->group("Messages");

    cmd.add_option("--messages", c.messages,
                   "simulate: publish this many, exit 0 once all have an outcome (0 = forever)")
        ->capture_default_str()
        ->group("Simulation");
    cmd.add_option("--rate", c.rate, "simulate: messages per second (0 = as fast as taken)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str()
        ->group("Simulation");
    cmd.add_option("--bad-ratio", c.bad_ratio, "simulate: share of undecodable payloads (0..1)")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str()
        ->group("Simulation");
    add_range(cmd, "--save-latency", c.save_latency, "Simulated save latency, MIN..MAX")
        ->group("Simulation");
    add_range(cmd, "--restart-latency", c.restart_latency,
              "simulate restarter: restart latency, MIN..MAX")
        ->group("Simulation");
    cmd.add_option("--restart-failure-rate", c.restart_failure_rate,
                   "simulate restarter: probability that a restart fails (0..1)")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str()
        ->group("Simulation");
    cmd.add_option("--seed", c.seed, "Random seed for the simulation (0 = random)")
        ->capture_default_str()
        ->group("Simulation");

    cmd.add_option("--redis-url", c.redis_url,
                   "redis: redis://[[user]:password@]host[:port][/db] or unix:///path[?db=N]")
        ->check([](const std::string& v) {
            std::string why;
            return parse_redis_url(v, &why) ? std::string{} : "'" + v + "' is not valid: " + why;
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
                 "redis: how often entries left pending by dead workers are reclaimed")
        ->group("Redis");
    add_duration(cmd, "--lease-timeout", c.lease_timeout,
                 "redis: idle time after which a pending entry is reclaimed by any worker "
                 "(keep --lease-extend-interval well below it); every source: how long a "
                 "restart claim in the store stays this worker's without renewal")
        ->group("Redis");
    cmd.add_option("--read-ahead", c.read_ahead,
                   "redis: new entries read beyond the pipeline's free room and held until it "
                   "has room (their leases are renewed; at a drain they are not started but left "
                   "pending for any worker); 0 = read only what the queue has room for")
        ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{100'000}))
        ->capture_default_str()
        ->group("Redis");
    cmd.add_flag("--exit-when-idle", c.exit_when_idle,
                 "redis: exit 0 once the stream has no new or pending entries for the group")
        ->group("Redis");

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

std::vector<std::string> layered_args(CLI::App& cmd, const std::vector<std::string>& argv,
                                      const std::string& config_file) {
    std::vector<std::string> out;
    std::vector<CLI::Option*> options = cmd.get_options();

    if (!config_file.empty()) {
        std::ifstream in(config_file);
        if (!in) throw CLI::FileError("--config: cannot open '" + config_file + "'");
        nlohmann::json doc;
        try {
            doc = nlohmann::json::parse(in);
        } catch (const std::exception& e) {
            throw CLI::ValidationError("--config",
                                       "'" + config_file + "' is not valid JSON: " + e.what());
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
            out.push_back("--" + flag + "=" + v);
        }
    }
    for (CLI::Option* o : options) {
        std::string flag = flag_name(o);
        if (flag.empty() || flag == "help" || flag == "config") continue;
        if (const char* env = std::getenv(env_name(flag).c_str()))
            out.push_back("--" + flag + "=" + env);
    }
    out.insert(out.end(), argv.begin(), argv.end());
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
        err << name << ": " << e.what() << "\n";
        return 2;
    }
    return std::nullopt;
}

std::optional<worker_config> parse_worker_config(const std::vector<std::string>& argv,
                                                 std::ostream& out, std::ostream& err,
                                                 int& exit_code) {
    worker_config cfg;
    CLI::App cmd{"Take host-restart requests from a source, save and restart each one "
                 "concurrently, then ack.\nEvery flag can also be set with an environment "
                 "variable MAYHEM_<FLAG> (e.g. MAYHEM_MAX_IN_FLIGHT=500) or a key in the --config "
                 "file; flags win over the environment, the environment over the file.",
                 "mayhem worker"};
    cmd.footer("Exit codes: 0 done, nothing released; 3 work was released (not acked) at a "
               "drain; 2 bad flags or config; 1 fatal error.");
    add_worker_options(cmd, cfg);
    try {
        auto args = layered_args(cmd, argv, find_config_file(argv));
        std::reverse(args.begin(), args.end()); // CLI11 takes a reversed vector
        cmd.parse(args);
    } catch (const CLI::CallForHelp&) {
        out << cmd.help();
        exit_code = 0;
        return std::nullopt;
    } catch (const CLI::Error& e) {
        err << "mayhem worker: " << e.what() << "\n";
        exit_code = 2;
        return std::nullopt;
    }
    if (auto bad = check_safety(cfg)) {
        err << "mayhem worker: " << *bad << "\n";
        exit_code = 2;
        return std::nullopt;
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
