// Helpers of the store tests that run on a real loop and a real database (contract.cpp,
// postgres_store.cpp): run a store request to its end, wait, and reach the private PostgreSQL
// server whose URL tests/integration/postgres.py puts in MAYHEM_TEST_POSTGRES_URL.
#pragma once

#include "runtime/loop.hpp"

#include <cstdlib>
#include <doctest/doctest.h>
#include <libpq-fe.h>
#include <optional>
#include <string>
#include <unistd.h>

namespace mayhem::store_test {

template <class T>
rt::task<void> into(rt::task<T> t, std::optional<T>& out) {
    out = co_await std::move(t);
}

// Runs one store request to its end on the loop.
template <class T>
T run(rt::loop& loop, rt::task<T> t) {
    std::optional<T> out;
    rt::task_scope scope;
    scope.spawn(into(std::move(t), out));
    loop.run_until([&] { return out.has_value(); });
    REQUIRE(out);
    return *out;
}

inline void run_void(rt::loop& loop, rt::task<void> t) {
    rt::task_scope scope;
    scope.spawn(std::move(t));
    loop.run_until([&] { return scope.size() == 0; });
}

inline void wait(rt::loop& loop, std::chrono::milliseconds d) {
    run_void(loop, [](rt::loop& l, std::chrono::milliseconds ms) -> rt::task<void> {
        co_await rt::sleep_for(l, ms);
    }(loop, d));
}

// Runs the loop until `pred` holds (a hang guard of 30 s ends a test that would wait forever).
template <class P>
void wait_for(rt::loop& loop, P pred) {
    bool timed_out = false;
    rt::task_scope guard;
    guard.spawn([](rt::loop& l, bool& t) -> rt::task<void> {
        co_await rt::sleep_for(l, rt::millis{30000});
        t = true;
    }(loop, timed_out));
    loop.run_until([&] { return pred() || timed_out; });
    REQUIRE_FALSE(timed_out);
}

// Runs one SQL statement on `url` (blocking); the first column of the first row, or "".
inline std::string pg_exec(const std::string& url, const std::string& sql) {
    PGconn* c = PQconnectdb(url.c_str());
    REQUIRE_MESSAGE(PQstatus(c) == CONNECTION_OK, PQerrorMessage(c));
    PGresult* r = PQexec(c, sql.c_str());
    auto st = PQresultStatus(r);
    std::string err = PQresultErrorMessage(r);
    std::string v = st == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    PQclear(r);
    PQfinish(c);
    REQUIRE_MESSAGE((st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK), err);
    return v;
}

// A fresh database on the private server; its URL.
inline std::string fresh_pg_db(const std::string& tag) {
    const char* u = std::getenv("MAYHEM_TEST_POSTGRES_URL");
    REQUIRE_MESSAGE(u, "MAYHEM_TEST_POSTGRES_URL is not set: run through "
                       "tests/integration/postgres.py run -- ...");
    std::string server = u;
    static int n = 0;
    std::string db = tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(n++);
    pg_exec(server, "CREATE DATABASE " + db);
    return server.substr(0, server.rfind('/') + 1) + db;
}

} // namespace mayhem::store_test
