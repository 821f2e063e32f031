#include "metrics/process_stats.hpp"

#include <cstdlib>
#include <dirent.h>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <sys/resource.h>
#include <unistd.h>
#include <vector>

namespace mayhem::metrics {

namespace {

std::string slurp(const char* path) {
    std::ifstream in(path);
    if (!in) return {};
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

double boot_time_seconds() {
    std::istringstream in(slurp("/proc/stat"));
    std::string key;
    while (in >> key) {
        if (key == "btime") {
            double v = 0;
            in >> v;
            return v;
        }
        in.ignore(1 << 20, '\n');
    }
    return 0;
}

double count_open_fds() {
    DIR* d = ::opendir("/proc/self/fd");
    if (!d) return 0;
    double n = 0;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
    return n - 1; // the directory stream's own descriptor
}

} // namespace

std::optional<process_stats> parse_proc_stat(std::string_view stat, double clock_ticks,
                                             double page_size, double boot_time) {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so fields are counted
    // from the last ')'.
    auto close = stat.rfind(')');
    if (close == std::string_view::npos || clock_ticks <= 0) return std::nullopt;
    std::istringstream in(std::string(stat.substr(close + 1)));
    std::vector<std::string> f;
    for (std::string w; in >> w;)
        f.push_back(std::move(w));
    // After ')': f[0] is field 3 (state); utime 14, stime 15, starttime 22, vsize 23, rss 24.
    auto field = [&](int n) {
        return std::strtod(f[static_cast<std::size_t>(n - 3)].c_str(), nullptr);
    };
    if (f.size() < 22) return std::nullopt;
    process_stats s;
    s.cpu_seconds = (field(14) + field(15)) / clock_ticks;
    s.start_time_seconds = boot_time + field(22) / clock_ticks;
    s.virtual_bytes = field(23);
    s.resident_bytes = field(24) * page_size;
    return s;
}

std::optional<process_stats> read_process_stats() {
    std::string stat = slurp("/proc/self/stat");
    if (stat.empty()) return std::nullopt;
    auto s = parse_proc_stat(stat, static_cast<double>(::sysconf(_SC_CLK_TCK)),
                             static_cast<double>(::sysconf(_SC_PAGESIZE)), boot_time_seconds());
    if (!s) return std::nullopt;
    s->open_fds = count_open_fds();
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
        s->max_fds = static_cast<double>(lim.rlim_cur);
    return s;
}

} // namespace mayhem::metrics
