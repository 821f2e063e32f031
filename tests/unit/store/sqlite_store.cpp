// sqlite_store against real SQLite files in a temp dir, on a real loop.
#include "store/sqlite_store.hpp"

#include <atomic>
#include <cstdlib>
#include <doctest/doctest.h>
#include <filesystem>
#include <memory>
#include <sqlite3.h>
#include <string>
#include <unistd.h>

using namespace mayhem;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
    fs::path path;
    temp_dir() {
        std::string tmpl = (fs::temp_directory_path() / "mayhem-store-XXXXXX").string();
        path = ::mkdtemp(tmpl.data());
    }
    ~temp_dir() { fs::remove_all(path); }
    std::string db() const { return (path / "t.db").string(); }
};

message msg(const std::string& id, const std::string& host = "cattle-1") {
    return message{id, host, host + ".example.net"};
}

// Runs `t` to completion on the loop.
template <class T>
T run(rt::loop& loop, rt::task<T> t) {
    std::optional<rt::result<T>> out;
    rt::task_scope scope;
    scope.spawn([](rt::task<T> inner, std::optional<rt::result<T>>& o) -> rt::task<void> {
        try {
            o.emplace(co_await std::move(inner));
        } catch (...) {
            o.emplace(std::current_exception());
        }
    }(std::move(t), out));
    loop.run_until([&] { return out.has_value(); });
    REQUIRE(out.has_value());
    return std::move(out->value());
}

void run(rt::loop& loop, rt::task<void> t) {
    bool done = false;
    rt::task_scope scope;
    scope.spawn([](rt::task<void> inner, bool& d) -> rt::task<void> {
        co_await std::move(inner);
        d = true;
    }(std::move(t), done));
    loop.run_until([&] { return done; });
    REQUIRE(done);
}

// Runs the loop until `pred` holds (a hang guard ends a test that would wait forever).
template <class P>
void wait_for(rt::loop& loop, P pred) {
    bool timed_out = false;
    rt::task_scope guard;
    guard.spawn([](rt::loop& l, bool& t) -> rt::task<void> {
        co_await rt::sleep_for(l, rt::millis{60000});
        t = true;
    }(loop, timed_out));
    loop.run_until([&] { return pred() || timed_out; });
    REQUIRE_FALSE(timed_out);
}

std::int64_t count(const std::string& db, const char* sql) {
    sqlite3* c = nullptr;
    REQUIRE(sqlite3_open_v2(db.c_str(), &c, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    REQUIRE(sqlite3_prepare_v2(c, sql, -1, &s, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(s) == SQLITE_ROW);
    auto v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(c);
    return v;
}

} // namespace

TEST_CASE("sqlite_store: saves that arrive together share one transaction") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{dir.db()});
    CHECK(st.healthy());
    std::vector<message> ms;
    for (int i = 0; i < 200; ++i)
        ms.push_back(msg("m" + std::to_string(i)));
    int ok = 0;
    rt::task_scope scope;
    for (auto& m : ms)
        scope.spawn([](sqlite_store& s, const message& mm, int& n) -> rt::task<void> {
            delivery d; // named: GCC 12 destroys temporaries of a co_await expression twice
            auto r = co_await s.save(mm, d);
            if (r.ok) ++n;
        }(st, m, ok));
    loop.run_until([&] { return ok == 200; });
    CHECK(ok == 200);
    CHECK(st.stats().transactions.get() == 1);
    CHECK(st.stats().saves.get() == 200);
    run(loop, st.close());
    CHECK(count(dir.db(), "SELECT count(*) FROM messages") == 200);
}

TEST_CASE("sqlite_store: a claim proceeds, then is done, and a failed restart may run again") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{dir.db()});
    auto a = msg("a");
    CHECK(run(loop, st.save(a, delivery{})).ok);
    CHECK(run(loop, st.claim_restart(a)) == restart_claim::proceed);
    run(loop, st.finish_restart(a, restart_result{restart_status::failed, "boom"}));
    CHECK(run(loop, st.claim_restart(a)) == restart_claim::proceed);
    run(loop, st.finish_restart(a, restart_result{restart_status::ok, {}}));
    CHECK(run(loop, st.claim_restart(a)) == restart_claim::done);
    st.complete(a, verdict{outcome::acked, {}, {}});
    st.complete(a, verdict{outcome::skipped, "dup", {}}); // does not hide the ack
    run(loop, st.close());
    CHECK(count(dir.db(), "SELECT count(*) FROM restarts WHERE message_id = 'a'") == 2);
    CHECK(count(dir.db(), "SELECT max(attempt) FROM restarts") == 2);
    CHECK(count(dir.db(), "SELECT count(*) FROM messages WHERE outcome = 'acked'") == 1);
}

TEST_CASE("sqlite_store: a skipped outcome is written over no outcome, never over an ack") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{dir.db()});
    auto a = msg("a"), b = msg("b");
    CHECK(run(loop, st.save(a, delivery{})).ok);
    CHECK(run(loop, st.save(b, delivery{})).ok);
    // a: restarted by a worker that died before its outcome; the redelivery is skipped.
    st.complete(a, verdict{outcome::skipped, {}, {}});
    st.complete(b, verdict{outcome::acked, {}, {}});
    CHECK(run(loop, st.save(msg("c"), delivery{})).ok); // the outcomes are written by now
    st.complete(b, verdict{outcome::skipped, {}, {}});
    run(loop, st.close());
    CHECK(count(dir.db(), "SELECT count(*) FROM messages WHERE message_id = 'a' AND "
                          "outcome = 'skipped' AND completed_at IS NOT NULL") == 1);
    CHECK(count(dir.db(), "SELECT count(*) FROM messages WHERE message_id = 'b' AND "
                          "outcome = 'acked'") == 1);
}

TEST_CASE("sqlite_store: a restart started and never finished is unfinished after a restart") {
    temp_dir dir;
    auto a = msg("a");
    {
        rt::loop loop;
        sqlite_store st(loop, sqlite_options{dir.db()});
        CHECK(run(loop, st.claim_restart(a)) == restart_claim::proceed);
        run(loop, st.close()); // "crash" before finish
    }
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{dir.db()});
    CHECK(run(loop, st.claim_restart(a)) == restart_claim::unfinished);
    run(loop, st.finish_restart(a, restart_result{restart_status::ok, {}})); // the retry
    CHECK(run(loop, st.claim_restart(a)) == restart_claim::done);
    run(loop, st.close());
    CHECK(count(dir.db(), "SELECT count(*) FROM restarts") == 1);
}

TEST_CASE("sqlite_store: a newer schema version is refused") {
    temp_dir dir;
    sqlite3* c = nullptr;
    REQUIRE(sqlite3_open(dir.db().c_str(), &c) == SQLITE_OK);
    REQUIRE(sqlite3_exec(c, "PRAGMA user_version = 99", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(c);
    rt::loop loop;
    CHECK_THROWS_AS(sqlite_store(loop, sqlite_options{dir.db()}), sqlite_fatal);
}

// A file as an older build left it: the shipped migrations up to `version`, then its rows.
// m-done restarted ok and acked; m-failed failed once (retried); m-dead started and never
// finished, by a worker that died (version 1 has no owner or lease).
void older_file(const std::string& db, int version) {
    sqlite3* c = nullptr;
    REQUIRE(sqlite3_open(db.c_str(), &c) == SQLITE_OK);
    for (int v = 0; v < version; ++v)
        REQUIRE(sqlite3_exec(c, sqlite_migrations()[static_cast<std::size_t>(v)], nullptr, nullptr,
                             nullptr) == SQLITE_OK);
    const char* rows = R"sql(
INSERT INTO messages (message_id, instance, hostname, first_seen, outcome, completed_at)
VALUES ('m-done', 'i', 'h1', 1000, 'acked', 2000),
       ('m-failed', 'i', 'h2', 1000, 'retried', NULL),
       ('m-dead', 'i', 'h3', 1000, NULL, NULL);
INSERT INTO restarts (message_id, attempt, hostname, started, finished, result, host_claimed)
VALUES ('m-done', 1, 'h1', 1000, 1500, 'ok', 1),
       ('m-failed', 1, 'h2', 1000, 1500, 'failed', 1),
       ('m-dead', 1, 'h3', 1000, NULL, NULL, 1);
)sql";
    REQUIRE(sqlite3_exec(c, rows, nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(c);
    REQUIRE(count(db, "PRAGMA user_version") == version);
}

TEST_CASE("sqlite_store: a file of an older schema version is migrated, its rows kept and "
          "claimed as before") {
    for (int version = 1; version < sqlite_schema_version; ++version) {
        CAPTURE(version);
        temp_dir dir;
        older_file(dir.db(), version);
        rt::loop loop;
        sqlite_options o{dir.db()};
        o.owner = "new";
        o.claim_lease = std::chrono::seconds(60);
        sqlite_store st(loop, o);
        CHECK(st.healthy());
        CHECK(count(dir.db(), "PRAGMA user_version") == sqlite_schema_version);
        CHECK(count(dir.db(), "SELECT count(*) FROM messages") == 3);
        CHECK(count(dir.db(), "SELECT count(*) FROM restarts") == 3);
        CHECK(count(dir.db(), "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name "
                              "IN ('messages_completed', 'restarts_finished')") == 2);
        CHECK(run(loop, st.claim_restart(msg("m-done", "h1"))) == restart_claim::done);
        auto failed = run(loop, st.claim_restart(msg("m-failed", "h2")));
        CHECK(failed == restart_claim::proceed);
        CHECK(failed.attempt == 2);
        // No lease on the old unfinished row: it is unfinished, closed abandoned, next attempt.
        auto dead = run(loop, st.claim_restart(msg("m-dead", "h3")));
        CHECK(dead == restart_claim::unfinished);
        CHECK(dead.attempt == 2);
        CHECK(run(loop, st.save(msg("m-new"), delivery{})).ok);
        run(loop, st.close());
        CHECK(count(dir.db(), "SELECT count(*) FROM restarts WHERE message_id = 'm-dead' AND "
                              "result = 'abandoned'") == 1);
        CHECK(count(dir.db(), "SELECT count(*) FROM messages") == 4);
    }
}

TEST_CASE("sqlite_store: a database that cannot be opened fails saves and never throws") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{(dir.path / "missing" / "t.db").string()});
    CHECK_FALSE(st.healthy());
    auto r = run(loop, st.save(msg("a"), delivery{}));
    CHECK_FALSE(r.ok);
    CHECK(r.error.str().find("open") != std::string::npos);
    CHECK_THROWS(run(loop, st.claim_restart(msg("a"))));
    CHECK(st.stats().failed_transactions.get() >= 1);
    // The directory appears: the next transaction opens the file and succeeds.
    fs::create_directory(dir.path / "missing");
    CHECK(run(loop, st.save(msg("a"), delivery{})).ok);
    // Healthy again once transactions have succeeded for a while with none failing.
    wait_for(loop, [&] { return st.healthy(); });
    run(loop, st.close());
}

TEST_CASE("sqlite_store: a task destroyed while its request is written is forgotten safely") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{dir.db()});
    auto a = msg("a"), b = msg("b");
    {
        rt::task_scope scope;
        scope.spawn([](sqlite_store& s, const message& m) -> rt::task<void> {
            delivery d;
            co_await s.save(m, d);
        }(st, a));
        scope.spawn([](sqlite_store& s, const message& m) -> rt::task<void> {
            co_await s.claim_restart(m);
        }(st, a));
    } // the tasks are destroyed while their requests are still queued
    CHECK(run(loop, st.save(b, delivery{})).ok);
    run(loop, st.close());
    CHECK(count(dir.db(), "SELECT count(*) FROM messages") == 2); // a save is still written
    CHECK(count(dir.db(), "SELECT count(*) FROM restarts") == 0); // a start that never runs not
}

namespace {

std::string text_of(const std::string& db, const std::string& sql) {
    sqlite3* c = nullptr;
    REQUIRE(sqlite3_open_v2(db.c_str(), &c, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    REQUIRE(sqlite3_prepare_v2(c, sql.c_str(), -1, &s, nullptr) == SQLITE_OK);
    std::string v;
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
        v = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
    else
        v = "NULL";
    sqlite3_finalize(s);
    sqlite3_close(c);
    return v;
}

} // namespace

// Many requests of one kind in one transaction go through the multi-row statements (inserts of
// many rows, updates of an IN list per distinct values); they must answer and write exactly what
// one statement per request would.
TEST_CASE("sqlite_store: many claims, finishes and outcomes in one transaction") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{dir.db()});
    // Before: d* restarted (done), f* failed (may run again), u* started and never finished.
    std::vector<message> before;
    for (const char* p : {"d", "f", "u"})
        for (int i = 0; i < 5; ++i)
            before.push_back(msg(p + std::to_string(i)));
    for (auto& m : before) {
        REQUIRE(run(loop, st.claim_restart(m)) == restart_claim::proceed);
        if (m.message_id()[0] == 'd')
            run(loop, st.finish_restart(m, restart_result{restart_status::ok, {}}));
        if (m.message_id()[0] == 'f')
            run(loop, st.finish_restart(m, restart_result{restart_status::failed, "boom"}));
    }
    // 70 new ids with the 15 above mixed in, all claimed in the same loop turn.
    std::vector<message> ms;
    for (int i = 0; i < 70; ++i) {
        ms.push_back(msg("n" + std::to_string(100 + i), "cattle-" + std::to_string(i % 7)));
        if (i % 5 == 0) ms.push_back(before[static_cast<std::size_t>(i / 5)]);
    }
    REQUIRE(ms.size() == 84);
    ms.push_back(before.back());
    std::vector<restart_claim> claims(ms.size());
    std::size_t answered = 0;
    auto tx = st.stats().transactions.get();
    {
        rt::task_scope scope;
        for (std::size_t i = 0; i < ms.size(); ++i)
            scope.spawn([](sqlite_store& s, const message& m, restart_claim& out,
                           std::size_t& n) -> rt::task<void> {
                out = (co_await s.claim_restart(m)).kind;
                ++n;
            }(st, ms[i], claims[i], answered));
        loop.run_until([&] { return answered == ms.size(); });
    }
    REQUIRE(answered == ms.size());
    CHECK(st.stats().transactions.get() == tx + 1);
    for (std::size_t i = 0; i < ms.size(); ++i) {
        char p = ms[i].message_id()[0];
        auto want = p == 'd'   ? restart_claim::done
                    : p == 'u' ? restart_claim::unfinished
                               : restart_claim::proceed;
        CHECK_MESSAGE(claims[i] == want, ms[i].message_id());
    }
    CHECK(count(dir.db(), "SELECT count(*) FROM restarts WHERE message_id LIKE 'n%' AND "
                          "attempt = 1 AND finished IS NULL") == 70);
    CHECK(count(dir.db(), "SELECT count(*) FROM restarts WHERE message_id LIKE 'f%' AND "
                          "attempt = 2 AND finished IS NULL") == 5);
    CHECK(count(dir.db(), "SELECT count(*) FROM restarts WHERE message_id LIKE 'u%'") == 5);

    // Finishes with different results in one transaction: each row gets its own.
    std::size_t finished = 0;
    tx = st.stats().transactions.get();
    {
        rt::task_scope scope;
        for (std::size_t i = 0; i < ms.size(); ++i) {
            if (claims[i] == restart_claim::done) continue;
            restart_result r{restart_status::ok, {}};
            if (i % 3 == 1)
                r = restart_result{restart_status::failed,
                                   "exit 1 on " + std::string(ms[i].hostname())};
            if (i % 3 == 2 && i % 2 == 0) r = restart_result{restart_status::dry_run, "dry run"};
            scope.spawn([](sqlite_store& s, const message& m, restart_result rr,
                           std::size_t& n) -> rt::task<void> {
                co_await s.finish_restart(m, rr);
                ++n;
            }(st, ms[i], r, finished));
        }
        loop.run_until([&] { return finished == ms.size() - 5; });
    }
    CHECK(st.stats().transactions.get() == tx + 1);
    for (std::size_t i = 0; i < ms.size(); ++i) {
        std::string id(ms[i].message_id());
        std::string latest =
            "SELECT %s FROM restarts WHERE message_id = '" + id + "' ORDER BY attempt DESC LIMIT 1";
        auto col = [&](const char* c) {
            std::string q = latest;
            q.replace(q.find("%s"), 2, c);
            return text_of(dir.db(), q);
        };
        if (claims[i] == restart_claim::done) {
            CHECK(col("result") == "ok");
            continue;
        }
        std::string want = "ok", detail = "NULL";
        if (i % 3 == 1) {
            want = "failed";
            detail = "exit 1 on " + std::string(ms[i].hostname());
        } else if (i % 3 == 2 && i % 2 == 0) {
            want = "dry_run";
            detail = "dry run";
        }
        CHECK_MESSAGE(col("result") == want, id);
        CHECK_MESSAGE(col("detail") == detail, id);
        CHECK_MESSAGE(col("finished IS NOT NULL") == "1", id);
    }
    CHECK(count(dir.db(), "SELECT count(*) FROM restarts WHERE finished IS NULL") == 0);

    // Saves and outcomes: distinct ids in one transaction, then one with an id twice (a
    // duplicate's `skipped` right after the `acked`), which keeps arrival order.
    std::size_t saved = 0;
    {
        rt::task_scope scope;
        for (auto& m : ms)
            scope.spawn([](sqlite_store& s, const message& mm, std::size_t& n) -> rt::task<void> {
                delivery d;
                auto r = co_await s.save(mm, d);
                if (r.ok) ++n;
            }(st, m, saved));
        loop.run_until([&] { return saved == ms.size(); });
    }
    REQUIRE(saved == ms.size());
    for (std::size_t i = 0; i < ms.size() - 1; ++i) {
        if (i % 4 == 0)
            st.complete(ms[i], verdict{outcome::acked, {}, {}});
        else if (i % 4 == 1)
            st.complete(
                ms[i],
                verdict{outcome::retried, "store: busy " + std::string(ms[i].message_id()), {}});
        else if (i % 4 == 2)
            st.complete(ms[i], verdict{outcome::dead_lettered, "bad host", {}});
        else
            st.complete(ms[i], verdict{outcome::skipped, {}, {}});
    }
    CHECK(run(loop, st.save(msg("z"), delivery{})).ok); // the outcomes are written by now
    st.complete(ms[0], verdict{outcome::skipped, "duplicate", {}}); // does not hide the ack
    st.complete(ms[0], verdict{outcome::acked, {}, {}});
    st.complete(ms[4], verdict{outcome::acked, {}, {}});
    st.complete(ms[4], verdict{outcome::skipped, "duplicate", {}});
    run(loop, st.close());
    for (std::size_t i = 0; i < ms.size() - 1; ++i) {
        auto q = [&](const char* c) {
            return text_of(dir.db(), std::string("SELECT ") + c +
                                         " FROM messages WHERE message_id = '" +
                                         std::string(ms[i].message_id()) + "'");
        };
        const char* want[] = {"acked", "retried", "dead_lettered", "skipped"};
        CHECK_MESSAGE(q("outcome") == want[i % 4], ms[i].message_id());
        CHECK_MESSAGE(q("completed_at IS NULL") == (i % 4 == 1 ? "1" : "0"), ms[i].message_id());
        // A `skipped` after the `acked` changes nothing, not even last_error.
        std::string err = i % 4 == 1   ? "store: busy " + std::string(ms[i].message_id())
                          : i % 4 == 2 ? "bad host"
                                       : "NULL";
        CHECK_MESSAGE(q("last_error") == err, ms[i].message_id());
    }
}

// ---------------------------------------------------------------------------------------------
// A claim cancelled while its transaction is written (issue 12, case 7)
// ---------------------------------------------------------------------------------------------

TEST_CASE("sqlite_store: a claim whose task is destroyed while its transaction is written "
          "leaves no unfinished start") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{dir.db(), false, std::chrono::seconds(60)});
    auto a = msg("a");
    REQUIRE(run(loop, st.save(a, delivery{})).ok); // creates the schema
    // Another connection holds the write lock, so the claim's transaction, once handed to the
    // thread pool, waits for it (in flight) until the lock is released.
    sqlite3* holder = nullptr;
    REQUIRE(sqlite3_open(dir.db().c_str(), &holder) == SQLITE_OK);
    REQUIRE(sqlite3_exec(holder, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
    auto claiming = std::make_unique<rt::task_scope>();
    bool claimed = false;
    claiming->spawn([](sqlite_store& s, const message& m, bool& c) -> rt::task<void> {
        co_await s.claim_restart(m);
        c = true;
    }(st, a, claimed));
    // The writer takes the claim into a transaction on the next loop turn (a 0 ms timer); this
    // task runs after it (a later deadline on the same timer queue) and, while the transaction
    // waits for the lock, destroys the claiming task (a forced stop), then lets the lock go.
    bool released = false;
    rt::task_scope helper;
    helper.spawn([](rt::loop& l, std::unique_ptr<rt::task_scope>& c, sqlite3* h,
                    bool& done) -> rt::task<void> {
        co_await rt::sleep_for(l, rt::millis{100});
        c.reset();
        REQUIRE(sqlite3_exec(h, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
        done = true;
    }(loop, claiming, holder, released));
    loop.run_until([&] { return released; });
    sqlite3_close(holder);
    CHECK_FALSE(claimed);
    // The redelivery: nothing ran, so the claim must go ahead, not meet a "crash in the window".
    CHECK(run(loop, st.claim_restart(a)) == restart_claim::proceed);
    run(loop, st.finish_restart(a, restart_result{restart_status::ok, {}}));
    run(loop, st.close());
    CHECK(count(dir.db(), "SELECT count(*) FROM restarts WHERE finished IS NULL") == 0);
    CHECK(count(dir.db(), "SELECT count(*) FROM restarts WHERE result = 'ok'") == 1);
}

// ---------------------------------------------------------------------------------------------
// A full disk (issue 12, case 11). A real full filesystem needs a mount (the integration test
// uses a tmpfs where it may mount one); here a VFS over the default one fails every write with
// SQLITE_FULL while `full_disk::on` is set, registered as the default VFS for the test's
// lifetime so the store under test uses it unchanged.
// ---------------------------------------------------------------------------------------------

namespace {

class full_disk {
public:
    static inline std::atomic<bool> on{false};

    full_disk() {
        real_ = sqlite3_vfs_find(nullptr);
        REQUIRE(real_ != nullptr);
        vfs_ = *real_;
        vfs_.zName = "mayhem-full-disk";
        vfs_.szOsFile = static_cast<int>(sizeof(file)) + real_->szOsFile;
        vfs_.pAppData = real_;
        vfs_.xOpen = &open;
        REQUIRE(sqlite3_vfs_register(&vfs_, 1) == SQLITE_OK);
        on = false;
    }
    ~full_disk() {
        on = false;
        sqlite3_vfs_unregister(&vfs_);
        sqlite3_vfs_register(real_, 1);
    }
    full_disk(const full_disk&) = delete;
    full_disk& operator=(const full_disk&) = delete;

private:
    // Our file, followed in the same allocation by the real VFS's file.
    struct file {
        sqlite3_file base;
        sqlite3_file* real;
    };
    static sqlite3_file* real(sqlite3_file* f) { return reinterpret_cast<file*>(f)->real; }

    static int open(sqlite3_vfs* vfs, sqlite3_filename name, sqlite3_file* f, int flags, int* out) {
        auto* p = reinterpret_cast<file*>(f);
        p->real = reinterpret_cast<sqlite3_file*>(p + 1);
        auto* r = static_cast<sqlite3_vfs*>(vfs->pAppData);
        int rc = r->xOpen(r, name, p->real, flags, out);
        p->base.pMethods = p->real->pMethods ? &methods : nullptr;
        return rc;
    }
    static int close(sqlite3_file* f) { return real(f)->pMethods->xClose(real(f)); }
    static int read(sqlite3_file* f, void* b, int n, sqlite3_int64 o) {
        return real(f)->pMethods->xRead(real(f), b, n, o);
    }
    static int write(sqlite3_file* f, const void* b, int n, sqlite3_int64 o) {
        if (on) return SQLITE_FULL;
        return real(f)->pMethods->xWrite(real(f), b, n, o);
    }
    static int truncate(sqlite3_file* f, sqlite3_int64 n) {
        return real(f)->pMethods->xTruncate(real(f), n);
    }
    static int sync(sqlite3_file* f, int fl) { return real(f)->pMethods->xSync(real(f), fl); }
    static int size(sqlite3_file* f, sqlite3_int64* n) {
        return real(f)->pMethods->xFileSize(real(f), n);
    }
    static int lock(sqlite3_file* f, int l) { return real(f)->pMethods->xLock(real(f), l); }
    static int unlock(sqlite3_file* f, int l) { return real(f)->pMethods->xUnlock(real(f), l); }
    static int reserved(sqlite3_file* f, int* r) {
        return real(f)->pMethods->xCheckReservedLock(real(f), r);
    }
    static int control(sqlite3_file* f, int op, void* a) {
        return real(f)->pMethods->xFileControl(real(f), op, a);
    }
    static int sector(sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); }
    static int device(sqlite3_file* f) {
        return real(f)->pMethods->xDeviceCharacteristics(real(f));
    }
    static int shm_map(sqlite3_file* f, int i, int sz, int ext, void volatile** p) {
        return real(f)->pMethods->xShmMap(real(f), i, sz, ext, p);
    }
    static int shm_lock(sqlite3_file* f, int off, int n, int fl) {
        return real(f)->pMethods->xShmLock(real(f), off, n, fl);
    }
    static void shm_barrier(sqlite3_file* f) { real(f)->pMethods->xShmBarrier(real(f)); }
    static int shm_unmap(sqlite3_file* f, int del) {
        return real(f)->pMethods->xShmUnmap(real(f), del);
    }
    static int fetch(sqlite3_file* f, sqlite3_int64 o, int n, void** p) {
        return real(f)->pMethods->xFetch(real(f), o, n, p);
    }
    static int unfetch(sqlite3_file* f, sqlite3_int64 o, void* p) {
        return real(f)->pMethods->xUnfetch(real(f), o, p);
    }
    static inline const sqlite3_io_methods methods = {
        3,         &close,       &read,      &write,   &truncate, &sync,   &size,
        &lock,     &unlock,      &reserved,  &control, &sector,   &device, &shm_map,
        &shm_lock, &shm_barrier, &shm_unmap, &fetch,   &unfetch};

    sqlite3_vfs* real_ = nullptr;
    sqlite3_vfs vfs_{};
};

} // namespace

TEST_CASE("sqlite_store: an outcome record whose transaction failed is written once the disk "
          "has room") {
    temp_dir dir;
    full_disk disk;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{dir.db()});
    auto a = msg("a"), b = msg("b"), c = msg("c");
    REQUIRE(run(loop, st.save(a, delivery{})).ok);
    REQUIRE(run(loop, st.save(b, delivery{})).ok);
    full_disk::on = true;
    // The source is told `acked`; the record of it cannot be written now.
    st.complete(a, verdict{outcome::acked, {}, {}});
    st.complete(b, verdict{outcome::retried, "store: disk full", {}});
    CHECK_FALSE(run(loop, st.save(c, delivery{})).ok); // the same transaction, or the next
    CHECK_FALSE(st.healthy());
    st.complete(b, verdict{outcome::acked, {}, {}}); // b's redelivery: after its retried record
    full_disk::on = false;
    CHECK(run(loop, st.save(c, delivery{})).ok);
    // The records are written again (with the next transaction after one that succeeded).
    wait_for(loop, [&] {
        return count(dir.db(), "SELECT count(*) FROM messages WHERE outcome = 'acked'") == 2;
    });
    run(loop, st.close());
    CHECK(st.unrecorded() == 0);
    CHECK(text_of(dir.db(), "SELECT outcome FROM messages WHERE message_id = 'a'") == "acked");
    CHECK(text_of(dir.db(), "SELECT outcome FROM messages WHERE message_id = 'b'") == "acked");
    CHECK(text_of(dir.db(), "SELECT last_error FROM messages WHERE message_id = 'b'") ==
          "store: disk full");
}

TEST_CASE("sqlite_store: health does not flap with each transaction while writes keep failing") {
    temp_dir dir;
    full_disk disk;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{dir.db()});
    REQUIRE(run(loop, st.save(msg("first"), delivery{})).ok);
    REQUIRE(st.healthy());
    // A disk that is full, then has room for one transaction, then is full again: as a WAL
    // that reuses its own space while the disk has none.
    int changes = 0;
    bool was = st.healthy();
    for (int i = 0; i < 40; ++i) {
        full_disk::on = i % 2 == 0;
        auto r = run(loop, st.save(msg("m" + std::to_string(i)), delivery{}));
        CHECK(r.ok == (i % 2 == 1));
        if (st.healthy() != was) ++changes;
        was = st.healthy();
    }
    full_disk::on = false;
    CHECK_FALSE(st.healthy());
    CHECK(changes == 1); // down once, not up and down 20 times
    CHECK(st.stats().outages.get() == 1);
    // Transactions that succeed for a while (nothing failing) make it healthy again.
    REQUIRE(run(loop, st.save(msg("after"), delivery{})).ok);
    wait_for(loop, [&] { return st.healthy(); });
    run(loop, st.close());
}

TEST_CASE("sqlite_store: hurry() ends close() on a disk that stays full, counting what it gave "
          "up") {
    temp_dir dir;
    full_disk disk;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{dir.db()});
    auto a = msg("a"), b = msg("b");
    REQUIRE(run(loop, st.save(a, delivery{})).ok);
    REQUIRE(run(loop, st.save(b, delivery{})).ok);
    full_disk::on = true;
    st.complete(a, verdict{outcome::acked, {}, {}});
    st.complete(b, verdict{outcome::dead_lettered, "bad host", {}});
    CHECK_FALSE(run(loop, st.save(msg("c"), delivery{})).ok);
    // close() keeps trying the records while it is given time...
    bool closed = false;
    rt::task_scope closing;
    closing.spawn([](sqlite_store& s, bool& done) -> rt::task<void> {
        co_await s.close();
        done = true;
    }(st, closed));
    bool hurried = false;
    rt::task_scope timer;
    timer.spawn([](rt::loop& l, sqlite_store& s, bool& h) -> rt::task<void> {
        co_await rt::sleep_for(l, rt::millis{300});
        h = true;
        s.hurry();
    }(loop, st, hurried));
    wait_for(loop, [&] { return closed; });
    CHECK(hurried); // ...and ends once its time is up
    CHECK(st.unrecorded() == 2);
    full_disk::on = false;
    CHECK(count(dir.db(), "SELECT count(*) FROM messages WHERE outcome IS NOT NULL") == 0);
}

namespace {
// A VFS over the default one that counts the syncs of WAL files: what `PRAGMA synchronous`
// decides is whether a commit fsyncs the WAL (FULL) or leaves it in the page cache (NORMAL),
// and a power loss cannot be made real in a test. Registered as the default while it lives.
class wal_sync_counter {
public:
    wal_sync_counter() {
        real_ = sqlite3_vfs_find(nullptr);
        REQUIRE(real_ != nullptr);
        vfs_ = *real_;
        vfs_.zName = "mayhem-count-wal-syncs";
        vfs_.szOsFile = static_cast<int>(sizeof(file)) + real_->szOsFile;
        vfs_.xOpen = &open;
        vfs_.pNext = nullptr;
        methods_ = sqlite3_io_methods{
            2, // no xFetch/xUnfetch: SQLite then reads without mmap, fine for a test
            [](sqlite3_file* f) { return real(f)->pMethods->xClose(real(f)); },
            [](sqlite3_file* f, void* p, int n, sqlite3_int64 off) {
                return real(f)->pMethods->xRead(real(f), p, n, off);
            },
            [](sqlite3_file* f, const void* p, int n, sqlite3_int64 off) {
                return real(f)->pMethods->xWrite(real(f), p, n, off);
            },
            [](sqlite3_file* f, sqlite3_int64 n) {
                return real(f)->pMethods->xTruncate(real(f), n);
            },
            [](sqlite3_file* f, int flags) {
                if (reinterpret_cast<file*>(f)->wal) syncs.fetch_add(1);
                return real(f)->pMethods->xSync(real(f), flags);
            },
            [](sqlite3_file* f, sqlite3_int64* n) {
                return real(f)->pMethods->xFileSize(real(f), n);
            },
            [](sqlite3_file* f, int l) { return real(f)->pMethods->xLock(real(f), l); },
            [](sqlite3_file* f, int l) { return real(f)->pMethods->xUnlock(real(f), l); },
            [](sqlite3_file* f, int* out) {
                return real(f)->pMethods->xCheckReservedLock(real(f), out);
            },
            [](sqlite3_file* f, int op, void* arg) {
                return real(f)->pMethods->xFileControl(real(f), op, arg);
            },
            [](sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); },
            [](sqlite3_file* f) { return real(f)->pMethods->xDeviceCharacteristics(real(f)); },
            [](sqlite3_file* f, int pg, int sz, int extend, void volatile** p) {
                return real(f)->pMethods->xShmMap(real(f), pg, sz, extend, p);
            },
            [](sqlite3_file* f, int off, int n, int flags) {
                return real(f)->pMethods->xShmLock(real(f), off, n, flags);
            },
            [](sqlite3_file* f) { real(f)->pMethods->xShmBarrier(real(f)); },
            [](sqlite3_file* f, int del) { return real(f)->pMethods->xShmUnmap(real(f), del); },
            nullptr,
            nullptr,
        };
        self_ = this;
        REQUIRE(sqlite3_vfs_register(&vfs_, 1) == SQLITE_OK);
    }
    wal_sync_counter(const wal_sync_counter&) = delete;
    wal_sync_counter& operator=(const wal_sync_counter&) = delete;
    ~wal_sync_counter() {
        sqlite3_vfs_unregister(&vfs_);
        sqlite3_vfs_register(real_, 1);
        self_ = nullptr;
    }
    static inline std::atomic<int> syncs{0};

private:
    struct file {
        sqlite3_file base;
        bool wal;
    };
    static sqlite3_file* real(sqlite3_file* f) {
        return reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(f) + sizeof(file));
    }
    static int open(sqlite3_vfs*, const char* name, sqlite3_file* f, int flags, int* out) {
        auto* mine = reinterpret_cast<file*>(f);
        mine->wal = (flags & SQLITE_OPEN_WAL) != 0;
        int rc = self_->real_->xOpen(self_->real_, name, real(f), flags, out);
        mine->base.pMethods = real(f)->pMethods ? &self_->methods_ : nullptr;
        return rc;
    }
    static inline wal_sync_counter* self_ = nullptr;
    sqlite3_vfs* real_ = nullptr;
    sqlite3_vfs vfs_{};
    sqlite3_io_methods methods_{};
};
} // namespace

TEST_CASE("sqlite_store: a transaction that holds a restart claim is fsynced, even with "
          "--db-synchronous normal") {
    wal_sync_counter counter;
    temp_dir dir;
    rt::loop loop;
    sqlite_options o{dir.db()};
    o.synchronous_full = false;
    sqlite_store st(loop, o);
    auto a = msg("a"), b = msg("b");
    int before = wal_sync_counter::syncs.load();
    CHECK(run(loop, st.save(a, delivery{})).ok); // a save alone: NORMAL, no fsync
    CHECK(wal_sync_counter::syncs.load() == before);
    CHECK(run(loop, st.claim_restart(a)) == restart_claim::proceed); // a claim: FULL
    int after_claim = wal_sync_counter::syncs.load();
    CHECK(after_claim > before);
    CHECK(run(loop, st.claim_host(a, std::chrono::system_clock::now(), std::chrono::hours(1)))
              .granted);
    CHECK(wal_sync_counter::syncs.load() > after_claim);
    int after_host = wal_sync_counter::syncs.load();
    CHECK(run(loop, st.finish_restart(a, restart_result{restart_status::ok, {}})));
    CHECK(wal_sync_counter::syncs.load() > after_host);
    int after_finish = wal_sync_counter::syncs.load();
    CHECK(run(loop, st.save(b, delivery{})).ok); // back to NORMAL for a save alone
    CHECK(wal_sync_counter::syncs.load() == after_finish);
    run(loop, st.close());
}

TEST_CASE("sqlite_store: a retention pass gives way to another writer's lock instead of waiting "
          "--db-busy-timeout") {
    temp_dir dir;
    rt::loop loop;
    sqlite_options o{dir.db()};
    o.busy_timeout = std::chrono::minutes(10); // a pass that waited this long would hang here
    sqlite_store st(loop, o);
    CHECK(run(loop, st.save(msg("a"), delivery{})).ok);
    sqlite3* peer = nullptr;
    REQUIRE(sqlite3_open(dir.db().c_str(), &peer) == SQLITE_OK);
    REQUIRE(sqlite3_exec(peer, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
    prune_bounds b{1, 1, 1, 1000};
    CHECK_THROWS_WITH(run(loop, st.prune(b)), doctest::Contains("locked"));
    REQUIRE(sqlite3_exec(peer, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(peer);
    CHECK(run(loop, st.prune(b)) == prune_counts{}); // the next pass runs
    run(loop, st.close());
}

// ---------------------------------------------------------------------------------------------
// Slot releases (store.hpp, release_slot). A release is not awaited (restart_guard gives the
// slot back as its restart ends): when the transaction carrying it fails, the release is held
// and written with a later one, as outcome records are. A release lost with its transaction
// would keep the slot until its lease ran out (an hour here), one restart fewer for every worker
// on the file meanwhile. The fault is real: a peer connection holds the file's write lock past
// the store's busy timeout, so the store's BEGIN IMMEDIATE fails with SQLITE_BUSY.
// ---------------------------------------------------------------------------------------------

namespace {

// A second connection on the file that holds its write lock while it lives.
class write_lock {
public:
    explicit write_lock(const std::string& db) {
        REQUIRE(sqlite3_open(db.c_str(), &peer_) == SQLITE_OK);
        REQUIRE(sqlite3_exec(peer_, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr) == SQLITE_OK);
    }
    ~write_lock() {
        sqlite3_exec(peer_, "COMMIT", nullptr, nullptr, nullptr);
        sqlite3_close(peer_);
    }
    write_lock(const write_lock&) = delete;
    write_lock& operator=(const write_lock&) = delete;

private:
    sqlite3* peer_ = nullptr;
};

sqlite_options slot_options(const std::string& db) {
    sqlite_options o{db};
    o.claim_lease = std::chrono::hours(1); // only a real release frees a slot
    o.busy_timeout = std::chrono::milliseconds(50);
    return o;
}

std::string slot_holder(const std::string& db) {
    return text_of(db, "SELECT coalesce(group_concat(message_id), '') FROM restart_slots "
                       "WHERE message_id IS NOT NULL");
}

} // namespace

TEST_CASE("sqlite_store: a slot release whose transaction failed on a locked file is written "
          "once the lock is gone") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, slot_options(dir.db()));
    auto x = msg("x"), y = msg("y");
    REQUIRE(run(loop, st.claim_slot(x, 1)));
    REQUIRE_FALSE(run(loop, st.claim_slot(y, 1)));
    {
        write_lock peer(dir.db());
        auto failed = st.stats().failed_transactions.get();
        st.release_slot(x);
        wait_for(loop, [&] { return st.stats().failed_transactions.get() > failed; });
    }
    CHECK(slot_holder(dir.db()) == "x");
    // The lock is gone: the next transaction carries the release, before the claim in it.
    CHECK(run(loop, st.claim_slot(y, 1)));
    CHECK(slot_holder(dir.db()) == "y");
    run(loop, st.close());
    CHECK(st.unrecorded() == 0);
}

// A release held after its transaction failed goes with the next transaction, before that
// transaction's claims: were a new claim of the same message's slot written first, it would
// keep the old slot as its own, and the release written after would free the slot of a running
// restart.
TEST_CASE("sqlite_store: a slot release held after a failed transaction goes before a new claim "
          "of the same message's slot") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, slot_options(dir.db()));
    auto x = msg("x");
    REQUIRE(run(loop, st.claim_slot(x, 1)));
    {
        write_lock peer(dir.db());
        st.release_slot(x);
        CHECK_FALSE(run(loop, st.save(msg("a"), delivery{})).ok); // the release's transaction
    }
    // x's message is delivered again at once, and its restart takes a slot.
    CHECK(run(loop, st.claim_slot(x, 1)));
    run(loop, st.close()); // writes whatever it still holds
    CHECK(slot_holder(dir.db()) == "x");
}

TEST_CASE("sqlite_store: a slot release not written by close is given up without counting it as "
          "unrecorded") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, slot_options(dir.db()));
    auto x = msg("x");
    REQUIRE(run(loop, st.claim_slot(x, 1)));
    write_lock peer(dir.db()); // held until the end: nothing more is written
    st.release_slot(x);
    CHECK_FALSE(run(loop, st.save(msg("a"), delivery{})).ok);
    st.complete(x, verdict{outcome::acked, {}, {}});
    st.hurry();
    run(loop, st.close());
    CHECK(st.unrecorded() == 1); // the outcome record, not the release: the slot has a lease
}
