// The process collector's usual figures (process_cpu_seconds_total, process_resident_memory_bytes,
// ...), read from /proc/self at scrape time.
//
// Threading: called on an HTTP thread; touches no loop state.
#pragma once

#include <optional>
#include <string_view>

namespace mayhem::metrics {

struct process_stats {
    double cpu_seconds = 0;        // user + system
    double resident_bytes = 0;     // RSS
    double virtual_bytes = 0;      // VSZ
    double start_time_seconds = 0; // since the Unix epoch
    double open_fds = 0;
    double max_fds = 0; // the soft RLIMIT_NOFILE
};

// Parses the text of /proc/self/stat. `clock_ticks` is sysconf(_SC_CLK_TCK), `page_size` is
// sysconf(_SC_PAGESIZE), `boot_time` the btime line of /proc/stat (seconds since the epoch).
// The open fd count and the limit are not in it and stay 0. nullopt when it does not parse.
std::optional<process_stats> parse_proc_stat(std::string_view stat, double clock_ticks,
                                             double page_size, double boot_time);

// The figures of this process, or nullopt when /proc is not readable (no figures exported then).
std::optional<process_stats> read_process_stats();

} // namespace mayhem::metrics
