// The worker process: builds the source, store, restarter and pipeline from the
// configuration, runs the loop, and owns the lifecycle — signals, the drain, the status line
// and the summary line printed at exit.
//
// Shutdown (README "Shutdown and signals", lib/README.md "The stop"): SIGTERM/SIGINT stop intake
// and start no new restart; restarts already running may finish up to --drain-timeout; then the
// rest is released, restart commands are ended and reaped, the source's verdicts are confirmed or
// given up, the store is flushed, and the process exits: all of it within --drain-timeout plus
// stop_margin. A second signal releases everything at once; later ones are logged and ignored.
// SIGHUP re-reads the configuration and applies what can change at run time. Threading: loop
// thread only.
#pragma once

#include "config/config.hpp"
#include "pipeline/pipeline.hpp"
#include "pipeline/service_notifier.hpp"
#include "restart/restart_guard.hpp"
#include "restart/restarter.hpp"
#include "runtime/loop.hpp"
#include "sources/source.hpp"
#include "store/retention.hpp"
#include "store/store.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mayhem {

namespace metrics {
class observability;
}

enum exit_code : int { exit_ok = 0, exit_fatal = 1, exit_usage = 2, exit_released = 3 };

// The stop's fixed margin past --drain-timeout (README), and the most a restart command is given
// between SIGTERM and SIGKILL once the drain deadline has passed (within the margin).
inline constexpr std::chrono::milliseconds stop_margin{2000};
inline constexpr std::chrono::milliseconds stop_kill_grace{1000};
// How long before the end of the stop the store is told to give up on what it cannot write.
inline constexpr std::chrono::milliseconds store_hurry_margin{300};

// SIGHUP reads the configuration off the loop: it gives up after reload_timeout, and the loop
// looks for the result every reload_poll.
inline constexpr std::chrono::milliseconds reload_timeout{5000};
inline constexpr std::chrono::milliseconds reload_poll{20};

class worker {
public:
    // `argv` is kept to re-read the configuration on SIGHUP.
    worker(worker_config cfg, std::vector<std::string> argv);
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;
    ~worker();

    // Runs until the source is finished or a drain ends; prints the summary line on stdout and
    // returns the process exit code.
    int run();

    // The safety rails' gauges and counters, for the metrics exporter.
    const restart_guard_stats& safety_stats() const noexcept { return guard_->stats(); }

private:
    // running -> draining (first signal) -> stopping (second signal or drain deadline: released)
    // -> closing (finish_stop: children, source, store). A run that ends without a signal goes
    // from running to closing.
    enum class phase { running, draining, stopping, closing };

    void check_done();
    bool finish_stop();
    template <class Pred>
    bool run_until_stop_by(Pred done);
    template <class Pred>
    bool run_until(Pred done, std::chrono::steady_clock::time_point by);
    void begin_drain(int signum);
    void force_release(const char* why);
    void reload();
    void poll_reload();
    void apply_reload(const worker_config& fresh);
    void log_status();
    std::string summary_json(double seconds) const;

    worker_config cfg_;
    std::vector<std::string> argv_;
    std::string owner_; // this process's name on its restart claims
    rt::loop loop_;
    std::unique_ptr<source> source_;
    std::unique_ptr<store> store_;
    std::unique_ptr<restarter> restarter_;
    std::unique_ptr<restart_guard> guard_; // in front of restarter_; destroyed before it
    std::unique_ptr<pipeline> pipeline_;
    std::unique_ptr<retention> retention_; // --retention's passes on store_; stopped at the stop
    // /metrics, /healthz, /readyz and the loop monitor; its HTTP threads read the pipeline's
    // stats, so it is destroyed first.
    std::unique_ptr<metrics::observability> observability_;
    std::vector<std::unique_ptr<rt::signal_watch>> signals_;
    std::unique_ptr<rt::periodic_timer> status_timer_;
    std::unique_ptr<rt::delayed_call> drain_deadline_;
    std::unique_ptr<service_notifier> notifier_; // systemd: READY, STATUS, STOPPING, WATCHDOG
    // SIGHUP: the configuration read under way on its own thread (worker.cpp), shared with it.
    struct reload_read;
    std::shared_ptr<reload_read> reload_;
    std::unique_ptr<rt::periodic_timer> reload_poll_;
    std::chrono::steady_clock::time_point reload_deadline_;

    phase phase_ = phase::running;
    bool released_by_deadline_ = false;
    bool fatal_ = false; // the source reported an error retrying cannot fix
    bool source_closed_ = false;
    std::chrono::steady_clock::time_point stop_by_; // the whole stop ends by then
    std::chrono::steady_clock::time_point started_, drain_started_;
    std::uint64_t last_status_completed_ = 0;
    std::chrono::steady_clock::time_point last_status_at_;
};

} // namespace mayhem
