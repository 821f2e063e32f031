#include "store/pg_link.hpp"

#include <new>
#include <utility>

namespace mayhem {

namespace {
// What pg_stat_activity names mayhem's connections unless the URL names them.
constexpr const char* application_name = "mayhem";
} // namespace

// ---------------------------------------------------------------------------------------------
// io_wait: suspends the operation until the socket is ready for `events` or the deadline
// passes (await_resume: the ready events, 0 on timeout). Destroying the suspended task stops
// the watch and the timer.
// ---------------------------------------------------------------------------------------------
class pg_link::io_wait final : public rt::timer_entry {
public:
    io_wait(pg_link& l, int events, std::uint64_t deadline)
        : l_(l), events_(events), deadline_(deadline) {}
    io_wait(const io_wait&) = delete;
    io_wait& operator=(const io_wait&) = delete;
    ~io_wait() override { stop(); }

    bool await_ready() const noexcept { return !l_.poll_ || l_.loop_.now() >= deadline_; }
    void await_suspend(std::coroutine_handle<> h) noexcept {
        h_ = h;
        l_.waiter_ = this;
        l_.poll_->data = &l_;
        uv_poll_start(l_.poll_.get(), events_, &io_wait::on_poll);
        l_.loop_.timers().arm(*this, rt::millis(deadline_ - l_.loop_.now()));
    }
    int await_resume() const noexcept { return ready_; }
    // The link is closing: resume on the next loop turn, not ready.
    void wake() noexcept {
        stop();
        l_.loop_.timers().arm(*this, rt::millis{0});
    }

private:
    static void on_poll(uv_poll_t* p, int status, int ready) noexcept {
        auto* l = static_cast<pg_link*>(p->data);
        if (!l || !l->waiter_) return;
        io_wait* w = l->waiter_;
        w->stop();
        // An error (a reset connection) is handed to libpq as readiness: it finds the error.
        w->ready_ = status < 0 ? w->events_ : ready;
        w->h_.resume();
    }
    void fire() noexcept override {
        stop();
        h_.resume(); // ready_ stays 0: timed out
    }
    void stop() noexcept {
        cancel();
        if (l_.waiter_ != this) return;
        l_.waiter_ = nullptr;
        if (l_.poll_) uv_poll_stop(l_.poll_.get());
    }

    pg_link& l_;
    int events_;
    std::uint64_t deadline_;
    int ready_ = 0;
    std::coroutine_handle<> h_;
};

pg_link::pg_link(rt::loop& loop, std::string conninfo)
    : loop_(loop), conninfo_(std::move(conninfo)) {}

pg_link::~pg_link() {
    close();
}

void pg_link::close() noexcept {
    // The operation under way wakes up on the next loop turn to a closed link, and fails.
    if (waiter_) waiter_->wake();
    poll_.close();
    poll_fd_ = -1;
    if (conn_) PQfinish(conn_);
    conn_ = nullptr;
    pipeline_ = false;
}

std::string pg_link::fail(const std::string& what) {
    std::string msg = what;
    if (conn_) {
        std::string err = pg_error(conn_);
        if (!err.empty()) msg += ": " + err;
    }
    close();
    return msg;
}

// libpq may change the socket while it connects (another address of the host): the watch
// follows it.
void pg_link::watch_socket() {
    int fd = PQsocket(conn_);
    if (fd == poll_fd_ && poll_) return;
    poll_.close();
    poll_fd_ = -1;
    if (fd < 0) return;
    poll_ = rt::uv_handle<uv_poll_t>(
        [this, fd](uv_poll_t* h) { return uv_poll_init(loop_.get(), h, fd); }, "uv_poll_init");
    poll_->data = this;
    poll_fd_ = fd;
}

std::string pg_link::where() const {
    return conn_ ? pg_where(conn_) : "postgres";
}

rt::task<std::string> pg_link::connect(rt::millis timeout) {
    close();
    auto deadline = loop_.now() + static_cast<std::uint64_t>(timeout.count());
    const char* keys[] = {"dbname", "fallback_application_name", nullptr};
    const char* values[] = {conninfo_.c_str(), application_name, nullptr};
    conn_ = PQconnectStartParams(keys, values, 1);
    if (!conn_) co_return "postgres: out of memory";
    if (PQstatus(conn_) == CONNECTION_BAD) co_return fail("postgres connect");
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED) co_return fail("postgres connect");
        try {
            watch_socket();
        } catch (const std::exception& e) {
            co_return fail(std::string("postgres connect: ") + e.what());
        }
        io_wait w(*this, st == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE, deadline);
        if (co_await w == 0) co_return fail("postgres connect: timed out");
        if (!conn_) co_return "postgres connect: closed";
        st = PQconnectPoll(conn_);
    }
    quiet(conn_);
    if (PQsetnonblocking(conn_, 1) != 0 || PQenterPipelineMode(conn_) != 1)
        co_return fail("postgres: pipeline mode");
    watch_socket();
    pipeline_ = true;
    co_return std::string{};
}

rt::task<std::string> pg_link::run(const std::vector<pg_statement>& stmts,
                                   std::vector<pg_result>& results, rt::millis timeout) {
    results.clear();
    results.resize(stmts.size());
    if (!connected()) co_return "postgres: not connected";
    auto deadline = loop_.now() + static_cast<std::uint64_t>(timeout.count());
    std::vector<const char*> values;
    for (const auto& s : stmts) {
        values.clear();
        for (const auto& p : s.params)
            values.push_back(p.c_str());
        if (PQsendQueryParams(conn_, s.sql, static_cast<int>(values.size()), nullptr, values.data(),
                              nullptr, nullptr, 0) != 1)
            co_return fail("postgres send");
    }
    if (PQpipelineSync(conn_) != 1) co_return fail("postgres send");
    // Write everything; the server may answer before it has read it all, so input is read
    // meanwhile (libpq keeps it).
    for (;;) {
        int f = PQflush(conn_);
        if (f < 0) co_return fail("postgres send");
        if (f == 0) break;
        io_wait w(*this, UV_READABLE | UV_WRITABLE, deadline);
        int ready = co_await w;
        if (!conn_) co_return "postgres: closed";
        if (ready == 0)
            co_return fail("postgres: no answer within " + std::to_string(timeout.count()) + " ms");
        if ((ready & UV_READABLE) && PQconsumeInput(conn_) != 1) co_return fail("postgres receive");
    }
    // Read: each statement's results end with a null result; the Sync's result ends the lot.
    std::string error;
    std::size_t idx = 0;
    for (;;) {
        if (PQconsumeInput(conn_) != 1) co_return fail("postgres receive");
        while (!PQisBusy(conn_)) {
            pg_result r(PQgetResult(conn_));
            if (!r) {
                ++idx;
                continue;
            }
            auto status = PQresultStatus(r.get());
            if (status == PGRES_PIPELINE_SYNC) co_return error;
            if (status == PGRES_FATAL_ERROR && error.empty()) {
                error = PQresultErrorMessage(r.get());
                while (!error.empty() && (error.back() == '\n' || error.back() == ' '))
                    error.pop_back();
                if (error.empty()) error = "postgres: statement failed";
            } else if (status == PGRES_PIPELINE_ABORTED && error.empty()) {
                error = "postgres: pipeline aborted";
            }
            if (idx < results.size()) results[idx] = std::move(r);
        }
        io_wait w(*this, UV_READABLE, deadline);
        int ready = co_await w;
        if (!conn_) co_return "postgres: closed";
        if (ready == 0)
            co_return fail("postgres: no answer within " + std::to_string(timeout.count()) + " ms");
    }
}

std::string pg_error(const PGconn* c) {
    std::string s = PQerrorMessage(c);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
        s.pop_back();
    return s;
}

std::string pg_where(const PGconn* c) {
    std::string w = PQhost(c) ? PQhost(c) : "";
    if (const char* p = PQport(c); p && *p) w += std::string(":") + p;
    if (const char* d = PQdb(c)) w += std::string("/") + d;
    return w;
}

PGconn* pg_connect_blocking(const std::string& url, long connect_timeout_s) {
    std::string timeout = std::to_string(connect_timeout_s);
    // Expanded in order: the URL's own connect_timeout and application_name win.
    const char* keys[] = {"connect_timeout", "dbname", "fallback_application_name", nullptr};
    const char* values[] = {timeout.c_str(), url.c_str(), application_name, nullptr};
    PGconn* c = PQconnectdbParams(keys, values, 1);
    if (!c) throw std::bad_alloc();
    quiet(c);
    return c;
}

void quiet(PGconn* c) noexcept {
    PQsetNoticeProcessor(
        c, [](void*, const char*) {}, nullptr);
}

void pg_array_element(std::string& out, std::string_view v) {
    out += '"';
    for (char c : v) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    out += '"';
}

} // namespace mayhem
