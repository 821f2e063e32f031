// One PostgreSQL connection on the worker's loop: libpq in non-blocking mode, its socket
// (PQsocket) watched by a uv_poll_t, no thread. Statements go out in pipeline mode (libpq 14+):
// run() sends a whole list of statements and one Sync, then reads every result, so a batch is
// one round trip and, up to its Sync, one (implicit) transaction: a statement that fails
// aborts the ones after it and the Sync rolls back the lot.
//
// Threading: loop thread only. One operation (connect or run) at a time.
#pragma once

#include "runtime/loop.hpp"

#include <libpq-fe.h>
#include <memory>
#include <string>
#include <vector>

namespace mayhem {

struct pg_result_free {
    void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using pg_result = std::unique_ptr<PGresult, pg_result_free>;

// One statement: SQL with $1.. placeholders and its parameters, all as text.
struct pg_statement {
    const char* sql = nullptr;
    std::vector<std::string> params;
};

class pg_link {
public:
    // `conninfo`: a libpq connection string or URI (never logged: it may hold a password).
    pg_link(rt::loop& loop, std::string conninfo);
    ~pg_link();
    pg_link(const pg_link&) = delete;
    pg_link& operator=(const pg_link&) = delete;

    bool connected() const noexcept { return conn_ != nullptr && pipeline_; }
    // Connects within `timeout`. Empty on success, else why not (libpq's message).
    rt::task<std::string> connect(rt::millis timeout);
    // Sends `stmts` as one pipeline with one Sync and reads every result within `timeout`;
    // results[i] is the last result of statement i. Empty on success, else the first error. A
    // connection error or the timeout closes the link (the server rolls back what was not
    // committed).
    rt::task<std::string> run(const std::vector<pg_statement>& stmts,
                              std::vector<pg_result>& results, rt::millis timeout);
    // Drops the connection at once; an operation under way fails.
    void close() noexcept;
    // host:port/dbname of the connection (no password), for the log.
    std::string where() const;

private:
    class io_wait;
    void watch_socket();
    std::string fail(const std::string& what);

    rt::loop& loop_;
    std::string conninfo_;
    PGconn* conn_ = nullptr;
    bool pipeline_ = false;
    rt::uv_handle<uv_poll_t> poll_;
    int poll_fd_ = -1;
    io_wait* waiter_ = nullptr; // the operation waiting for the socket
};

// libpq's last error on `c` (or a null connection's), without its trailing newline.
std::string pg_error(const PGconn* c);
// host:port/dbname of a connection (no password), for the log.
std::string pg_where(const PGconn* c);
// Connects blocking (a worker's start-up check, the command-line tools), giving up after
// `connect_timeout_s` seconds unless the URL sets its own `connect_timeout`. The connection
// shows as `mayhem` in pg_stat_activity unless the URL names it. Never null; check PQstatus.
PGconn* pg_connect_blocking(const std::string& url, long connect_timeout_s);

// Drops the server's notices (NOTICE: relation already exists) instead of printing them on
// stderr: they are not errors, and the log has its own format.
void quiet(PGconn* c) noexcept;

// Appends `v` to `out` as an element of a PostgreSQL array literal ("..." with \ and " escaped).
void pg_array_element(std::string& out, std::string_view v);

// Builds the text of an array parameter ({"a","b"}) from n elements given by `get(i)`.
template <class Get>
std::string pg_array(std::size_t n, Get get) {
    std::string out = "{";
    for (std::size_t i = 0; i < n; ++i) {
        if (i) out += ',';
        pg_array_element(out, get(i));
    }
    out += '}';
    return out;
}

} // namespace mayhem
