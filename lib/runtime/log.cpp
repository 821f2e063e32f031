#include "runtime/log.hpp"

#include "runtime/utf8.hpp"

#include <cerrno>
#include <cstdio>
#include <spdlog/details/null_mutex.h>
#include <spdlog/sinks/base_sink.h>

namespace mayhem::log {

namespace {
format g_format = format::text;
std::shared_ptr<spdlog::logger> g_logger;
lost_lines g_lost;

// Writes each line to stderr at once, like spdlog's stderr_sink, but counts a line that could not
// be written (spdlog 1.10's sink ignores the error). stderr is unbuffered: fwrite is the write.
class stderr_sink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        spdlog::memory_buf_t line;
        formatter_->format(msg, line);
        if (std::fwrite(line.data(), 1, line.size(), stderr) != line.size() ||
            std::fflush(stderr) != 0) {
            ++g_lost.count;
            g_lost.error = errno;
            std::clearerr(stderr); // the next line is tried again: a disk may have room again
        }
    }
    void flush_() override { std::fflush(stderr); }
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
        g_logger = std::make_shared<spdlog::logger>("mayhem", std::make_shared<stderr_sink>());
    }
    if (f == format::json) {
        // The message part is built by write() as the rest of the object.
        g_logger->set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v})",
                              spdlog::pattern_time_type::utc);
    } else {
        g_logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-5l%$ %v");
    }
    g_logger->set_level(level);
    g_logger->flush_on(spdlog::level::trace);
}

const lost_lines& lost() {
    return g_lost;
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
    l.log(level, "{}", line);
}

} // namespace mayhem::log
