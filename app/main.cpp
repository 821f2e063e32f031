// mayhem: the executable. It only wires the library together: parse the command line, set up
// logging, run the chosen command, turn failures into exit codes.
#include "config/config.hpp"
#include "publish.hpp"
#include "restart/exec_restarter.hpp"
#include "runtime/log.hpp"
#include "runtime/loop.hpp"
#include "sources/simulate_source.hpp"
#include "sources/tcp_source.hpp"
#include "store/fleet.hpp"
#include "store/history.hpp"
#include "version.hpp"
#include "worker/worker.hpp"

#include <CLI/CLI.hpp>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <pthread.h>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr const char* usage =
    R"(mayhem — a worker that takes host-restart requests off a message source, saves
and restarts each one concurrently, gathers both, then acks.

Usage:
  mayhem worker [flags]     run the worker (mayhem worker --help lists every flag)
  mayhem publish [flags]    send restart requests to a Redis stream (or NDJSON with --output)
  mayhem history [flags]    what the store database holds: outcomes, restarts per host (read-only)
  mayhem pause [flags]      pause restarts on every worker sharing the store (--reason TEXT)
  mayhem resume [flags]     undo mayhem pause
  mayhem status [flags]     the store's shared rails: pause, restarts running, slots, breaker
  mayhem --version          print the version
  mayhem --help             this text

Exit codes: 0 ok; 1 fatal error, or the summary or a log line could not be written; 2 bad flags
or config, or no command; 3 work was released at a drain.
)";

// A standard descriptor the caller closed (`<&-`, `>&-`, `2>&-`) would be taken by the next
// descriptor the process opens, the loop's own among them, and libuv asserts that none of its
// descriptors is 0, 1 or 2. Each closed one is opened on /dev/null instead, before anything
// else opens a descriptor: stdin is then empty, and what goes to stdout or stderr is dropped.
void open_closed_standard_descriptors() {
    for (int fd = 0; fd <= 2; ++fd) {
        if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
        // open() takes the lowest free descriptor, which is fd: the ones below it are open.
        if (::open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd)
            std::_Exit(mayhem::exit_fatal);
    }
}

// What a command printed must reach stdout, and each log line stderr: a summary or a log line
// that was lost (a pipe whose reader is gone, a full disk) makes the exit code 1. The loss is
// told on whichever of the two streams still works. Run after the command returned.
int check_output(int code) {
    bool stdout_lost = std::fflush(stdout) != 0 || std::ferror(stdout) != 0;
    if (stdout_lost)
        mayhem::log::error("could not write to stdout: the summary (or output) is lost");
    if (auto dropped = mayhem::log::dropped())
        mayhem::log::warn("log lines were dropped: stderr did not keep up", {{"dropped", dropped}});
    // Bounded: a stderr nobody reads must not hold the exit (the lines still queued are lost).
    mayhem::log::flush();
    const auto lost = mayhem::log::lost();
    if (lost.count > 0) {
        std::string text =
            "mayhem: " + std::to_string(lost.count) +
            (lost.count == 1 ? " log line" : " log lines") +
            " could not be written to stderr (last error: " + std::strerror(lost.error) + ")\n";
        bool told = std::fputs(text.c_str(), stderr) >= 0 && std::fflush(stderr) == 0;
        // stdout carries the summary; this line comes after it, only when stderr is gone.
        if (!told && !stdout_lost) {
            std::fputs(text.c_str(), stdout);
            std::fflush(stdout);
        }
    }
    return stdout_lost || lost.count > 0 ? mayhem::exit_fatal : code;
}

// Stop signals (and SIGUSR1, the in-flight dump) that arrive while the worker is still starting
// (reading its config, opening its store, connecting) are held back until its handlers are
// installed, then handled like any other: a drain with nothing in flight, exit 0. Unheld, a
// SIGTERM or SIGUSR1 in that window would kill the process. Threads started meanwhile (libuv's
// pool) keep them blocked, so signals go to the loop's thread or to threads started later.
class hold_stop_signals {
public:
    hold_stop_signals() {
        sigset_t stop;
        sigemptyset(&stop);
        for (int s : {SIGTERM, SIGINT, SIGHUP, SIGUSR1})
            sigaddset(&stop, s);
        pthread_sigmask(SIG_BLOCK, &stop, &before_);
    }
    hold_stop_signals(const hold_stop_signals&) = delete;
    hold_stop_signals& operator=(const hold_stop_signals&) = delete;
    ~hold_stop_signals() { release(); }
    void release() {
        if (std::exchange(held_, false)) pthread_sigmask(SIG_SETMASK, &before_, nullptr);
    }

private:
    sigset_t before_;
    bool held_ = true;
};

int run_worker(const std::vector<std::string>& args) {
    hold_stop_signals held;
    int code = 0;
    auto cfg = mayhem::parse_worker_config(args, std::cout, std::cerr, code);
    if (!cfg) return code;
    mayhem::log::setup(cfg->log_format == "json" ? mayhem::log::format::json
                                                 : mayhem::log::format::text,
                       mayhem::parse_log_level(cfg->log_level));
    for (const auto& name : cfg->unknown_env)
        mayhem::log::warn("environment variable matches no flag; it is ignored (a typo?)",
                          {{"variable", name}});
    // The simulated save latency belongs to the memory store; a real store's is its own.
    if (cfg->store != "memory" && cfg->given.contains("save-latency"))
        mayhem::log::warn("--save-latency applies only to --store memory; it is ignored",
                          {{"store", cfg->store}});
    try {
        mayhem::worker w(*cfg, args);
        held.release(); // its signal handlers are installed: what was held is delivered now
        return w.run();
    } catch (const mayhem::tcp_listen_error& e) {
        // Like --metrics-addr: an address in use is a setting to fix, not a failure to retry.
        mayhem::log::error(e.what(), {{"address", cfg->listen}});
        return mayhem::exit_usage;
    } catch (const std::exception& e) {
        mayhem::log::error("fatal error", {{"error", e.what()}});
        return mayhem::exit_fatal;
    }
}

// `mayhem history`: read-only summary of a store database (lib/store/history.hpp).
int run_history(const std::vector<std::string>& args) {
    CLI::App cmd{"Show what a store database holds: counts by outcome, restarts per host, the "
                 "most recent messages. Read-only; safe while a worker writes.",
                 "mayhem history"};
    mayhem::history_options o;
    cmd.add_option("--db", o.db, "The database file")->capture_default_str();
    cmd.add_option("--postgres-url", o.postgres_url,
                   "Read this PostgreSQL database instead (libpq URI or connection string; "
                   "also MAYHEM_POSTGRES_URL); never printed")
        ->envname("MAYHEM_POSTGRES_URL");
    cmd.add_option("--limit", o.limit, "Recent messages and hosts listed")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1'000'000}))
        ->capture_default_str();
    cmd.add_flag("--json", o.json, "One JSON object on stdout");
    cmd.footer("Exit codes: 0 ok; 1 the database is missing, unreadable or not a mayhem "
               "database; 2 bad flags.");
    if (auto code = mayhem::parse_command(cmd, args, "mayhem history", std::cout, std::cerr))
        return *code;
    return mayhem::print_history(o, std::cout, std::cerr);
}

// `mayhem pause` / `resume` / `status`: the shared rails of a PostgreSQL or SQLite store
// (lib/store/fleet.hpp).
int run_fleet(mayhem::fleet_command which, const std::vector<std::string>& args) {
    const char* name = which == mayhem::fleet_command::pause    ? "mayhem pause"
                       : which == mayhem::fleet_command::resume ? "mayhem resume"
                                                                : "mayhem status";
    const char* what =
        which == mayhem::fleet_command::pause
            ? "Pause restarts on every worker sharing the store (a PostgreSQL database, or a "
              "SQLite file): within a second no worker starts a new restart (running ones "
              "finish) until `mayhem resume`."
        : which == mayhem::fleet_command::resume
            ? "Undo `mayhem pause`: the workers start restarts again within a second."
            : "Show the rails every worker sharing the store holds (a PostgreSQL database, or a "
              "SQLite file): the pause (who, when, why), the restarts running, the shared "
              "--max-concurrent-restarts slots held, the circuit breaker (PostgreSQL). "
              "Read-only.";
    CLI::App cmd{what, name};
    mayhem::fleet_options o;
    cmd.add_option("--postgres-url", o.postgres_url,
                   "The PostgreSQL store (libpq URI or connection string; also "
                   "MAYHEM_POSTGRES_URL); never printed")
        ->envname("MAYHEM_POSTGRES_URL");
    cmd.add_option("--db", o.db, "The SQLite store's file, without --postgres-url")
        ->capture_default_str();
    if (which == mayhem::fleet_command::pause) {
        cmd.add_option("--reason", o.reason,
                       "Why (shown by mayhem status and in every worker's "
                       "log)");
        cmd.add_option("--by", o.who, "Who pauses (default: $USER@hostname)");
    }
    if (which == mayhem::fleet_command::status)
        cmd.add_option("--limit", o.limit, "Restarts listed")
            ->check(CLI::Range(std::size_t{1}, std::size_t{1'000'000}))
            ->capture_default_str();
    cmd.add_flag("--json", o.json, "One JSON object on stdout");
    cmd.footer("Exit codes: 0 ok; 1 the database is unreachable or not a mayhem database of "
               "this version; 2 bad flags.");
    if (auto code = mayhem::parse_command(cmd, args, name, std::cout, std::cerr)) return *code;
    return mayhem::run_fleet_command(which, o, std::cout, std::cerr);
}

// The command named by the first argument; its exit code.
int run_command(std::vector<std::string> args) {
    // No command is a usage error (a script that lost its arguments must not pass); asked for,
    // the usage is the answer.
    if (args.empty()) {
        std::fputs(usage, stderr);
        return mayhem::exit_usage;
    }
    if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::fputs(usage, stdout);
        return 0;
    }
    if (args[0] == "--version" || args[0] == "-V") {
        std::printf("mayhem %s (%s)\n", MAYHEM_VERSION, MAYHEM_REVISION);
        return 0;
    }
    std::string cmd = args[0];
    args.erase(args.begin());
    if (cmd == "worker") return run_worker(args);
    if (cmd == "publish") return mayhem::run_publish(args);
    if (cmd == "history") return run_history(args);
    if (cmd == "pause") return run_fleet(mayhem::fleet_command::pause, args);
    if (cmd == "resume") return run_fleet(mayhem::fleet_command::resume, args);
    if (cmd == "status") return run_fleet(mayhem::fleet_command::status, args);
    std::fprintf(stderr,
                 "mayhem: unknown command '%s' (allowed: worker, publish, history, pause, "
                 "resume, status; see mayhem --help)\n",
                 cmd.c_str());
    return mayhem::exit_usage;
}

} // namespace

int main(int argc, char** argv) {
    // A write to a pipe whose reader is gone fails with EPIPE instead of killing the process:
    // the worker finishes its run and reports the loss (check_output). Restart commands start
    // with SIGPIPE at its default again: libuv resets every signal in a spawned child (the
    // exec wrapper, mayhem-exec) before it execs the command.
    std::signal(SIGPIPE, SIG_IGN);
    open_closed_standard_descriptors();
    return check_output(run_command({argv + 1, argv + argc}));
}
