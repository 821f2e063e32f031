// Structured logs on stderr over spdlog: human-readable text by default, one JSON object per
// line with --log-format json. Fields are key/value pairs; every line about a message carries
// its message_id. Loop thread and start-up only.
//
// Logging never blocks the caller: a line is formatted here and queued, and one thread of
// spdlog's (its asynchronous mode) writes the queue to stderr. The queue is bounded
// (queue_lines); when a slow or blocked stderr (a full pipe to journald) lets it fill, the
// oldest line waiting is dropped and counted (dropped(), the metric mayhem_log_dropped_total).
// flush() waits, for a bounded time, until every line queued so far is written or dropped; it
// runs at exit too.
//
// A line that cannot be written (the reader of a pipe is gone, the disk is full) is counted,
// not retried: the process reports the loss by its exit code (app/main.cpp reads lost()).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <spdlog/spdlog.h>
#include <string>
#include <string_view>
#include <variant>

namespace mayhem::log {

enum class format { text, json };

struct field {
    std::string_view key;
    std::variant<std::string_view, std::int64_t, std::uint64_t, double, bool> value;

    field(std::string_view k, std::string_view v) : key(k), value(v) {}
    field(std::string_view k, const std::string& v) : key(k), value(std::string_view(v)) {}
    field(std::string_view k, const char* v) : key(k), value(std::string_view(v)) {}
    field(std::string_view k, int v) : key(k), value(std::int64_t{v}) {}
    field(std::string_view k, long v) : key(k), value(std::int64_t{v}) {}
    field(std::string_view k, long long v) : key(k), value(std::int64_t{v}) {}
    field(std::string_view k, unsigned v) : key(k), value(std::uint64_t{v}) {}
    field(std::string_view k, unsigned long v) : key(k), value(std::uint64_t{v}) {}
    field(std::string_view k, unsigned long long v) : key(k), value(std::uint64_t{v}) {}
    field(std::string_view k, double v) : key(k), value(v) {}
    field(std::string_view k, bool v) : key(k), value(v) {}
};

// Sets up the stderr logger. Safe to call again (SIGHUP) to change the level.
void setup(format f, spdlog::level::level_enum level);
void set_level(spdlog::level::level_enum level);
spdlog::level::level_enum level();
bool enabled(spdlog::level::level_enum level);

void write(spdlog::level::level_enum level, std::string_view msg,
           std::initializer_list<field> fields);

inline void debug(std::string_view msg, std::initializer_list<field> f = {}) {
    if (enabled(spdlog::level::debug)) write(spdlog::level::debug, msg, f);
}
inline void info(std::string_view msg, std::initializer_list<field> f = {}) {
    write(spdlog::level::info, msg, f);
}
inline void warn(std::string_view msg, std::initializer_list<field> f = {}) {
    write(spdlog::level::warn, msg, f);
}
inline void error(std::string_view msg, std::initializer_list<field> f = {}) {
    write(spdlog::level::err, msg, f);
}

// Log lines that could not be written to stderr, and the errno of the last such write. Call
// flush() first: the writer thread may still be writing.
struct lost_lines {
    std::uint64_t count = 0;
    int error = 0;
};
lost_lines lost();

// Lines the queue holds at most; beyond, the oldest waiting is dropped.
inline constexpr std::size_t queue_lines = 8192;
// Lines dropped because the queue was full (stderr did not keep up). Any thread.
std::uint64_t dropped();
// Waits until every line logged so far is written or dropped, at most `timeout`; false if the
// time ran out (stderr is blocked).
bool flush(std::chrono::milliseconds timeout = std::chrono::seconds(1));

// Appends `s` to `out` as the inside of a JSON string (no quotes), always valid UTF-8: a byte
// that starts no valid UTF-8 sequence becomes U+FFFD, and every control character (C0, DEL,
// C1) an escape. Text-format lines use the same escaping for a value that needs it.
void json_escape(std::string& out, std::string_view s);

// Whether json_escape would change `s`: a quote, a backslash, a control character or bytes
// that are not UTF-8.
bool needs_escape(std::string_view s) noexcept;

} // namespace mayhem::log
