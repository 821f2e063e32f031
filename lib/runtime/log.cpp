#include "runtime/log.hpp"

#include "runtime/utf8.hpp"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <pthread.h>
#include <spdlog/async.h>
#include <spdlog/async_logger.h>
#include <spdlog/sinks/base_sink.h>
#include <thread>
#include <unistd.h>

namespace mayhem::log {

namespace {
format g_format = format::text;
std::shared_ptr<spdlog::logger> g_logger;
// Never freed: at exit its thread may be blocked in a write to a stderr nobody reads, and
// destroying the pool would join that thread and hang the exit. The process ends it instead.
std::shared_ptr<spdlog::details::thread_pool>* g_pool = nullptr;
std::atomic<std::uint64_t> g_queued{0};  // lines handed to the queue
std::atomic<std::uint64_t> g_written{0}; // lines the writer is done with, written or lost
std::atomic<std::uint64_t> g_lost_count{0};
std::atomic<int> g_lost_error{0};

bool write_all(const char* p, std::size_t n) {
    while (n > 0) {
        ssize_t w = ::write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += w;
        n -= static_cast<std::size_t>(w);
    }
    return true;
}

// Runs on spdlog's writer thread. Each line goes out with write(2), not through stderr's FILE: a
// thread blocked inside fwrite holds the FILE's lock, which exit() may want. A line that could
// not be written is counted (spdlog 1.10's own sink ignores the error) and the next one is
// tried again: a disk may have room again.
class stderr_sink final : public spdlog::sinks::base_sink<std::mutex> {
protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        spdlog::memory_buf_t line;
        formatter_->format(msg, line);
        if (!write_all(line.data(), line.size())) {
            g_lost_error.store(errno, std::memory_order_relaxed);
            g_lost_count.fetch_add(1, std::memory_order_relaxed);
        }
        g_written.fetch_add(1, std::memory_order_release);
    }
    void flush_() override {}
};

spdlog::logger& logger() {
    if (!g_logger) setup(format::text, spdlog::level::info);
    return *g_logger;
}

void append_value(std::string& out, const field& f, bool json) {
    std::visit(
        [&](const auto& v) {
            using V = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<V, std::string_view>) {
                if (json) {
                    out += '"';
                    json_escape(out, v);
                    out += '"';
                } else if (v.empty() || v.find_first_of(" =") != std::string_view::npos ||
                           needs_escape(v)) {
                    // Quoted and escaped like JSON: one value, one line, nothing a terminal
                    // acts on.
                    out += '"';
                    json_escape(out, v);
                    out += '"';
                } else {
                    out.append(v);
                }
            } else if constexpr (std::is_same_v<V, bool>) {
                out += v ? "true" : "false";
            } else if constexpr (std::is_same_v<V, double>) {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.6g", v);
                out += buf;
            } else {
                out += std::to_string(v);
            }
        },
        f.value);
}
} // namespace

namespace {

void append_u_escape(std::string& out, std::uint32_t cp) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
    out += buf;
}

// A control character: C0, DEL or C1. A terminal acts on these (ESC starts a sequence), and a
// newline would start a forged log line.
bool control(std::uint32_t cp) {
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

} // namespace

void json_escape(std::string& out, std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x80) {
            std::uint32_t cp = 0;
            std::size_t n = rt::utf8_sequence(s.substr(i), cp);
            if (n == 0) {
                out += "\xEF\xBF\xBD"; // U+FFFD for a byte that starts no valid sequence
                ++i;
            } else {
                if (control(cp))
                    append_u_escape(out, cp);
                else
                    out.append(s.substr(i, n));
                i += n;
            }
            continue;
        }
        ++i;
        switch (c) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\r':
            out += "\\r";
            break;
        case '\t':
            out += "\\t";
            break;
        default:
            if (control(c))
                append_u_escape(out, c);
            else
                out += static_cast<char>(c);
        }
    }
}

bool needs_escape(std::string_view s) noexcept {
    for (std::size_t i = 0; i < s.size();) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            if (control(c) || c == '"' || c == '\\') return true;
            ++i;
            continue;
        }
        std::uint32_t cp = 0;
        std::size_t n = rt::utf8_sequence(s.substr(i), cp);
        if (n == 0 || control(cp)) return true;
        i += n;
    }
    return false;
}

void setup(format f, spdlog::level::level_enum level) {
    g_format = f;
    if (!g_logger) {
        // The writer thread takes no signal: they are the event loop's.
        sigset_t all, before;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &before);
        g_pool = new std::shared_ptr<spdlog::details::thread_pool>(
            std::make_shared<spdlog::details::thread_pool>(queue_lines, 1));
        pthread_sigmask(SIG_SETMASK, &before, nullptr);
        g_logger = std::make_shared<spdlog::async_logger>(
            "mayhem", std::make_shared<stderr_sink>(), *g_pool,
            spdlog::async_overflow_policy::overrun_oldest);
        std::atexit([] { flush(); });
    } else {
        flush(); // lines already queued keep the format they were logged in
    }
    if (f == format::json) {
        // The message part is built by write() as the rest of the object.
        g_logger->set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v})",
                              spdlog::pattern_time_type::utc);
    } else {
        g_logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-5l%$ %v");
    }
    g_logger->set_level(level);
}

lost_lines lost() {
    return {g_lost_count.load(std::memory_order_relaxed),
            g_lost_error.load(std::memory_order_relaxed)};
}

std::uint64_t dropped() {
    return g_pool ? (*g_pool)->overrun_counter() : 0;
}

// Every line is either written (or lost) by the writer, or dropped from the queue.
bool flush(std::chrono::milliseconds timeout) {
    auto target = g_queued.load(std::memory_order_relaxed);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (g_written.load(std::memory_order_acquire) + dropped() < target) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

void set_level(spdlog::level::level_enum level) {
    logger().set_level(level);
}
spdlog::level::level_enum level() {
    return logger().level();
}
bool enabled(spdlog::level::level_enum level) {
    return logger().should_log(level);
}

void write(spdlog::level::level_enum level, std::string_view msg,
           std::initializer_list<field> fields) {
    auto& l = logger();
    if (!l.should_log(level)) return;
    std::string line;
    line.reserve(128);
    if (g_format == format::json) {
        line += "\"msg\":\"";
        json_escape(line, msg);
        line += '"';
        for (const auto& f : fields) {
            line += ",\"";
            json_escape(line, f.key);
            line += "\":";
            append_value(line, f, true);
        }
    } else {
        auto text = [&line](std::string_view t) {
            if (needs_escape(t))
                json_escape(line, t);
            else
                line.append(t);
        };
        text(msg);
        for (const auto& f : fields) {
            line += ' ';
            text(f.key);
            line += '=';
            append_value(line, f, false);
        }
    }
    g_queued.fetch_add(1, std::memory_order_relaxed);
    l.log(level, "{}", line);
}

} // namespace mayhem::log
