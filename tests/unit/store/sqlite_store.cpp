// sqlite_store against real SQLite files in a temp dir, on a real loop.
#include "store/sqlite_store.hpp"

#include <cstdlib>
#include <doctest/doctest.h>
#include <filesystem>
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
    message m;
    m.message_id = id;
    m.instance_name = host;
    m.hostname = host + ".example.net";
    return m;
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

TEST_CASE("sqlite_store: a database that cannot be opened fails saves and never throws") {
    temp_dir dir;
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{(dir.path / "missing" / "t.db").string()});
    CHECK_FALSE(st.healthy());
    auto r = run(loop, st.save(msg("a"), delivery{}));
    CHECK_FALSE(r.ok);
    CHECK(r.error.find("open") != std::string::npos);
    CHECK_THROWS(run(loop, st.claim_restart(msg("a"))));
    CHECK(st.stats().failed_transactions.get() >= 1);
    // The directory appears: the next transaction opens the file and succeeds.
    fs::create_directory(dir.path / "missing");
    CHECK(run(loop, st.save(msg("a"), delivery{})).ok);
    CHECK(st.healthy());
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
