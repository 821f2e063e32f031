// The store contract of store.hpp, run against every store that is shared by workers: SQLite
// (a file in a temp dir) and PostgreSQL (a fresh database on the private server whose URL is
// in MAYHEM_TEST_POSTGRES_URL; tests/integration/postgres.py starts it for ctest). Two store
// objects on one database stand for two workers; PostgreSQL also as a worker with two connections
// (sharded_store).
#include "store/postgres_store.hpp"
#include "store/sharded_store.hpp"
#include "store/sqlite_store.hpp"
#include "store_test.hpp"

#include <atomic>
#include <cstdlib>
#include <doctest/doctest.h>
#include <filesystem>
#include <libpq-fe.h>
#include <memory>
#include <optional>
#include <sqlite3.h>
#include <string>
#include <unistd.h>

using namespace mayhem;
using namespace mayhem::store_test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

struct sqlite_backend {
    static constexpr const char* name = "sqlite";
    static constexpr std::uint64_t shards = 1; // transactions a batch of many messages takes
    std::string path;
    sqlite_backend()
        : path((fs::temp_directory_path() / ("mayhem-contract-" + std::to_string(::getpid()) + "-" +
                                             std::to_string(counter()++) + ".db"))
                   .string()) {}
    ~sqlite_backend() {
        for (const char* suffix : {"", "-wal", "-shm"})
            fs::remove(path + suffix);
    }
    static int& counter() {
        static int n = 0;
        return n;
    }
    std::unique_ptr<store> open(rt::loop& loop, const char* owner,
                                std::chrono::milliseconds lease) {
        sqlite_options o;
        o.path = path;
        o.owner = owner;
        o.claim_lease = lease;
        return std::make_unique<sqlite_store>(loop, o);
    }
    void exec(const std::string& sql) {
        sqlite3* c = nullptr;
        REQUIRE(sqlite3_open_v2(path.c_str(), &c, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
        sqlite3_busy_timeout(c, 5000);
        CHECK(sqlite3_exec(c, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
        sqlite3_close(c);
    }
    std::int64_t count(const std::string& sql) {
        sqlite3* c = nullptr;
        REQUIRE(sqlite3_open_v2(path.c_str(), &c, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
        sqlite3_stmt* s = nullptr;
        REQUIRE(sqlite3_prepare_v2(c, sql.c_str(), -1, &s, nullptr) == SQLITE_OK);
        REQUIRE(sqlite3_step(s) == SQLITE_ROW);
        auto v = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
        sqlite3_close(c);
        return v;
    }
};

struct postgres_backend {
    static constexpr const char* name = "postgres";
    static constexpr std::uint64_t shards = 1;
    std::string url;
    postgres_backend() : url(fresh_pg_db("contract")) {}
    std::unique_ptr<store> open(rt::loop& loop, const char* owner,
                                std::chrono::milliseconds lease) {
        postgres_options o;
        o.url = url;
        o.owner = owner;
        o.claim_lease = lease;
        return std::make_unique<postgres_store>(loop, o);
    }
    void exec(const std::string& sql) { pg_exec(url, sql); }
    std::int64_t count(const std::string& sql) { return std::stoll(pg_exec(url, sql)); }
};

// A worker with --postgres-connections 2: two connections (two postgres stores, one owner
// name), each message id always on the same one.
struct sharded_postgres_backend : postgres_backend {
    static constexpr const char* name = "postgres, 2 connections";
    static constexpr std::uint64_t shards = 2;
    std::unique_ptr<store> open(rt::loop& loop, const char* owner,
                                std::chrono::milliseconds lease) {
        std::vector<std::unique_ptr<store>> s;
        s.push_back(postgres_backend::open(loop, owner, lease));
        s.push_back(postgres_backend::open(loop, owner, lease));
        return std::make_unique<sharded_store>(std::move(s));
    }
};

const message m{"m1", "cattle-1", "cattle-1.example.net"};
const restart_result ok{restart_status::ok, {}};

message msg(const std::string& id, const std::string& host = "cattle-1.example.net") {
    return message{id, "cattle", host};
}

// Wall clock, ms since the epoch: the stores' stamps and leases.
std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

} // namespace

#define STORES sqlite_backend, postgres_backend, sharded_postgres_backend

TEST_CASE_TEMPLATE("store contract: saves that arrive together share one transaction", B, STORES) {
    B db;
    rt::loop loop;
    auto st = db.open(loop, "a", 60s);
    std::vector<message> ms;
    for (int i = 0; i < 300; ++i)
        ms.push_back(msg("s" + std::to_string(i)));
    int saved = 0;
    {
        rt::task_scope scope;
        for (auto& mm : ms)
            scope.spawn([](store& s, const message& x, int& n) -> rt::task<void> {
                delivery d;
                auto r = co_await s.save(x, d);
                if (r.ok) ++n;
            }(*st, mm, saved));
        loop.run_until([&] { return saved == 300; });
    }
    CHECK(saved == 300);
    CHECK(st->commits().transactions == B::shards);
    CHECK(st->commits().saves == 300);
    CHECK(run(loop, st->save(ms[0], delivery{})).ok); // a redelivery counts an attempt
    run_void(loop, st->close());
    CHECK(db.count("SELECT count(*) FROM messages") == 300);
    CHECK(db.count("SELECT attempts FROM messages WHERE message_id = 's0'") == 2);
}

// A task destroyed while its request waits (a forced stop) leaves the request to the store
// (store/store_reply.hpp): a save is still written, and the answers of the others still reach
// their tasks, batch after batch.
TEST_CASE_TEMPLATE("store contract: answers reach their tasks over many transactions, some tasks "
                   "destroyed while queued",
                   B, STORES) {
    B db;
    rt::loop loop;
    auto st = db.open(loop, "a", 60s);
    std::vector<message> ms;
    for (int i = 0; i < 40; ++i)
        ms.push_back(msg("m" + std::to_string(i)));
    int answered = 0;
    for (int round = 0; round < 4; ++round) {
        rt::task_scope kept;
        {
            rt::task_scope dropped;
            for (int i = 0; i < 10; ++i)
                (i % 2 ? dropped : kept)
                    .spawn([](store& s, const message& x, int& n) -> rt::task<void> {
                        delivery d;
                        save_result r = co_await s.save(x, d);
                        n += r.ok;
                    }(*st, ms[static_cast<std::size_t>(round * 10 + i)], answered));
        } // half of this round's tasks are destroyed while their requests are queued
        wait_for(loop, [&] { return kept.size() == 0; });
    }
    CHECK(answered == 20);
    run_void(loop, st->close());
    CHECK(db.count("SELECT count(*) FROM messages") == 40); // every save still written
}

TEST_CASE_TEMPLATE("store contract: a request made once the writer has ended fails at once", B,
                   STORES) {
    B db;
    rt::loop loop;
    auto st = db.open(loop, "a", 60s);
    run_void(loop, st->close());
    save_result r = run(loop, st->save(msg("late"), delivery{}));
    CHECK_FALSE(r.ok);
    CHECK(r.error == "store closed");
}

TEST_CASE_TEMPLATE("store contract: a claim proceeds, then is done; failed and refused run again",
                   B, STORES) {
    B db;
    rt::loop loop;
    auto st = db.open(loop, "a", 60s);
    auto a = msg("a");
    CHECK(run(loop, st->save(a, delivery{})).ok);
    CHECK(run(loop, st->claim_restart(a)) == restart_claim::proceed);
    CHECK(run(loop, st->finish_restart(a, restart_result{restart_status::failed, "boom"})));
    CHECK(run(loop, st->claim_restart(a)) == restart_claim::proceed);
    CHECK(run(loop, st->finish_restart(a, restart_result{restart_status::refused, "no"})));
    CHECK(run(loop, st->claim_restart(a)) == restart_claim::proceed);
    CHECK(run(loop, st->finish_restart(a, ok)));
    CHECK(run(loop, st->claim_restart(a)) == restart_claim::done);
    st->complete(a, verdict{outcome::acked, {}, {}});
    st->complete(a, verdict{outcome::skipped, "dup", {}}); // does not hide the ack
    run_void(loop, st->close());
    CHECK(db.count("SELECT count(*) FROM restarts WHERE message_id = 'a'") == 3);
    CHECK(db.count("SELECT count(*) FROM messages WHERE outcome = 'acked'") == 1);
}

TEST_CASE_TEMPLATE("store contract: a peer does not restart while the owner's lease lives", B,
                   STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 60s);
    auto b = db.open(loop, "b", 60s);
    CHECK(run(loop, a->claim_restart(m)) == restart_claim::proceed);
    CHECK(run(loop, b->claim_restart(m)) == restart_claim::held);
    CHECK(run(loop, a->finish_restart(m, ok)));
    CHECK(run(loop, b->claim_restart(m)) == restart_claim::done);
    run_void(loop, a->close());
    run_void(loop, b->close());
}

TEST_CASE_TEMPLATE("store contract: an expired lease is unfinished; the old owner lost the claim",
                   B, STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 20ms);
    auto b = db.open(loop, "b", 60s);
    CHECK(run(loop, a->claim_restart(m)) == restart_claim::proceed);
    wait(loop, 60ms);                                                   // a stalls past its lease
    CHECK(run(loop, b->claim_restart(m)) == restart_claim::unfinished); // b's now
    CHECK_FALSE(run(loop, a->finish_restart(m, ok)));                   // a records nothing
    CHECK(run(loop, b->finish_restart(m, ok)));
    CHECK(run(loop, a->claim_restart(m)) == restart_claim::done);
    run_void(loop, a->close());
    run_void(loop, b->close());
}

// The peer asks once the first lease is over and the renewal is written; the renewal came 600 ms
// after the claim, so a stall of up to half a second on a busy machine does not end it.
TEST_CASE_TEMPLATE("store contract: renewal keeps a claim held past its first lease", B, STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 1s);
    auto b = db.open(loop, "b", 60s);
    CHECK(run(loop, a->claim_restart(m)) == restart_claim::proceed);
    const std::string lease = "SELECT lease_until FROM restarts WHERE message_id = 'm1'";
    const std::int64_t first = db.count(lease);
    wait(loop, 600ms);
    const message* ms[] = {&m};
    a->renew_claims(ms);
    wait_for(loop, [&] { return db.count(lease) > first; });
    while (now_ms() <= first + 100) // past the first lease
        wait(loop, 50ms);
    CHECK(run(loop, b->claim_restart(m)) == restart_claim::held);
    run_void(loop, a->close());
    run_void(loop, b->close());
}

TEST_CASE_TEMPLATE("store contract: a claim made without a lease is never held against a peer", B,
                   STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 0ms);
    auto b = db.open(loop, "b", 60s);
    CHECK(run(loop, a->claim_restart(m)) == restart_claim::proceed);
    CHECK(run(loop, b->claim_restart(m)) == restart_claim::unfinished);
    run_void(loop, a->close());
    run_void(loop, b->close());
}

TEST_CASE_TEMPLATE("store contract: a released claim is a first attempt again", B, STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 60s);
    auto b = db.open(loop, "b", 60s);
    CHECK(run(loop, a->claim_restart(m)) == restart_claim::proceed);
    run_void(loop, a->release_claim(m));
    CHECK(run(loop, b->claim_restart(m)) == restart_claim::proceed);
    run_void(loop, b->release_claim(m));
    run_void(loop, a->close());
    run_void(loop, b->close());
    CHECK(db.count("SELECT count(*) FROM restarts") == 0);
}

TEST_CASE_TEMPLATE("store contract: the per-host cooldown of store.hpp", B, STORES) {
    B db;
    rt::loop loop;
    auto st = db.open(loop, "a", 60s);
    auto hour = std::chrono::milliseconds(3600 * 1000);
    auto claim = [&](const message& x) {
        REQUIRE(run(loop, st->claim_restart(x)) == restart_claim::proceed);
        return run(loop, st->claim_host(x, std::chrono::system_clock::now(), hour));
    };
    auto a = msg("a", "h1"), b = msg("b", "h1"), c = msg("c", "h1"), d = msg("d", "h2");
    auto t0 = std::chrono::system_clock::now();
    CHECK(claim(a).granted);
    // Running elsewhere (not finished): blocks another message, never the same one.
    auto blocked = claim(b);
    CHECK_FALSE(blocked.granted);
    CHECK(blocked.last_restart >= t0 - 1s);
    CHECK(run(loop, st->claim_host(a, std::chrono::system_clock::now(), hour)).granted);
    // A failed restart does not count.
    CHECK(run(loop, st->finish_restart(a, restart_result{restart_status::failed, "x"})));
    CHECK(run(loop, st->claim_host(b, std::chrono::system_clock::now(), hour)).granted);
    // A successful one does, until the cooldown is over; another host is not affected.
    CHECK(run(loop, st->finish_restart(b, ok)));
    CHECK_FALSE(claim(c).granted);
    CHECK(run(loop, st->claim_host(c, std::chrono::system_clock::now() + hour + 1s, hour)).granted);
    CHECK(claim(d).granted);
    run_void(loop, st->close());
}

TEST_CASE_TEMPLATE("store contract: two workers claiming one host at once: exactly one wins", B,
                   STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 60s);
    auto b = db.open(loop, "b", 60s);
    auto hour = std::chrono::milliseconds(3600 * 1000);
    // 20 rounds: in each, both workers claim a restart of the same host for their own message
    // in the same loop turn, so both transactions are on their way together.
    int granted_total = 0;
    for (int round = 0; round < 20; ++round) {
        std::string host = "race-" + std::to_string(round) + ".example.net";
        auto x = msg("x" + std::to_string(round), host), y = msg("y" + std::to_string(round), host);
        REQUIRE(run(loop, a->claim_restart(x)) == restart_claim::proceed);
        REQUIRE(run(loop, b->claim_restart(y)) == restart_claim::proceed);
        std::optional<host_claim> gx, gy;
        rt::task_scope scope;
        auto now = std::chrono::system_clock::now();
        scope.spawn(into(a->claim_host(x, now, hour), gx));
        scope.spawn(into(b->claim_host(y, now, hour), gy));
        loop.run_until([&] { return gx && gy; });
        REQUIRE(gx);
        REQUIRE(gy);
        CHECK(gx->granted != gy->granted);
        granted_total += gx->granted + gy->granted;
    }
    CHECK(granted_total == 20);
    run_void(loop, a->close());
    run_void(loop, b->close());
    CHECK(db.count("SELECT count(*) FROM restarts WHERE host_claimed") == 20);
}

TEST_CASE_TEMPLATE("store contract: many claims and finishes in one transaction", B, STORES) {
    B db;
    rt::loop loop;
    auto st = db.open(loop, "a", 60s);
    // Before: d* restarted (done), f* failed (may run again), u* started and never finished.
    std::vector<message> before;
    for (const char* p : {"d", "f", "u"})
        for (int i = 0; i < 5; ++i)
            before.push_back(msg(p + std::to_string(i)));
    for (auto& x : before) {
        REQUIRE(run(loop, st->claim_restart(x)) == restart_claim::proceed);
        if (x.message_id()[0] == 'd') CHECK(run(loop, st->finish_restart(x, ok)));
        if (x.message_id()[0] == 'f')
            CHECK(run(loop, st->finish_restart(x, restart_result{restart_status::failed, "b"})));
    }
    run_void(loop, st->close());
    // Another worker (the u* leases are still a's: open b without a lease check by using the
    // same owner name, as a restarted worker with a stable name would).
    auto again = db.open(loop, "a", 60s);
    std::vector<message> ms;
    for (int i = 0; i < 70; ++i) {
        ms.push_back(msg("n" + std::to_string(100 + i)));
        if (i % 5 == 0) ms.push_back(before[static_cast<std::size_t>(i / 5)]);
    }
    std::vector<restart_claim> claims(ms.size());
    std::size_t answered = 0;
    auto tx = again->commits().transactions;
    {
        rt::task_scope scope;
        for (std::size_t i = 0; i < ms.size(); ++i)
            scope.spawn([](store& s, const message& x, restart_claim& out,
                           std::size_t& n) -> rt::task<void> {
                claim_answer c = co_await s.claim_restart(x);
                out = c.kind;
                ++n;
            }(*again, ms[i], claims[i], answered));
        loop.run_until([&] { return answered == ms.size(); });
    }
    CHECK(again->commits().transactions == tx + B::shards);
    for (std::size_t i = 0; i < ms.size(); ++i) {
        char p = ms[i].message_id()[0];
        auto want = p == 'd'   ? restart_claim::done
                    : p == 'u' ? restart_claim::unfinished
                               : restart_claim::proceed;
        CHECK_MESSAGE(claims[i] == want, ms[i].message_id());
    }
    run_void(loop, again->close());
    CHECK(db.count("SELECT count(*) FROM restarts WHERE message_id LIKE 'n%' AND attempt = 1 "
                   "AND finished IS NULL") == 70);
    CHECK(db.count("SELECT count(*) FROM restarts WHERE message_id LIKE 'f%' AND attempt = 2 "
                   "AND finished IS NULL") == 5);
    CHECK(db.count("SELECT count(*) FROM restarts WHERE message_id LIKE 'u%'") == 5);
}

TEST_CASE_TEMPLATE("store contract: every start of an id is an attempt, also one its worker left "
                   "unfinished",
                   B, STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 20ms);
    auto b = db.open(loop, "b", 20ms);
    const message m = msg("m1");
    auto first = run(loop, a->claim_restart(m));
    CHECK(first == restart_claim::proceed);
    CHECK(first.attempt == 1);
    run(loop, a->claim_host(m, std::chrono::system_clock::now(), 1h)); // its restart began
    wait(loop, 60ms);                                                  // a died
    auto second = run(loop, b->claim_restart(m));
    CHECK(second == restart_claim::unfinished);
    CHECK(second.attempt == 2);
    // The start closed as abandoned may have restarted its host: it counts for the cooldown.
    const message other = msg("m2");
    REQUIRE(run(loop, b->claim_restart(other)) == restart_claim::proceed);
    CHECK_FALSE(run(loop, b->claim_host(other, std::chrono::system_clock::now(), 1h)).granted);
    run_void(loop, b->release_claim(other));
    run_void(loop, b->release_claim(m)); // b stops before it runs the restart again
    auto third = run(loop, a->claim_restart(m));
    CHECK(third == restart_claim::unfinished); // still unfinished, not done
    CHECK(third.attempt == 2);                 // b's start was withdrawn: it never ran
    wait(loop, 60ms); // a dies again while its restart waits for a slot: not a start
    auto waited = run(loop, b->claim_restart(m));
    CHECK(waited == restart_claim::unfinished);
    CHECK(waited.attempt == 2);
    CHECK(run(loop, b->finish_restart(m, restart_result{restart_status::failed, "exit 75"})));
    auto fourth = run(loop, a->claim_restart(m));
    CHECK(fourth == restart_claim::proceed); // after a restart that did nothing
    CHECK(fourth.attempt == 3);
    run_void(loop, a->close());
    run_void(loop, b->close());
    CHECK(db.count("SELECT count(*) FROM restarts WHERE message_id = 'm1' AND attempt = 1 "
                   "AND result = 'abandoned'") == 1);
}

// Shared --max-concurrent-restarts: the store keeps the slots for every worker sharing it
// (store.hpp): PostgreSQL for the fleet, SQLite for the workers sharing the file.
TEST_CASE_TEMPLATE("store contract: restart slots are shared: taken once, given back, freed by a "
                   "lease",
                   B, STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 60s);
    auto b = db.open(loop, "b", 60s);
    auto c = db.open(loop, "c", 20ms);
    CHECK(a->shares_slots());
    auto held = [&](const char* id) {
        return db.count(std::string("SELECT count(*) FROM restart_slots WHERE message_id = '") +
                        id + "'");
    };
    CHECK(run(loop, a->claim_slot(msg("s1"), 2)));
    CHECK(run(loop, a->claim_slot(msg("s1"), 2))); // its own again: still one slot
    CHECK(run(loop, b->claim_slot(msg("s2"), 2)));
    CHECK_FALSE(run(loop, b->claim_slot(msg("s3"), 2))); // both held
    CHECK(held("s1") == 1);
    a->release_slot(msg("s1"));
    wait_for(loop, [&] { return held("s1") == 0; });
    CHECK(run(loop, c->claim_slot(msg("s3"), 2)));       // the slot a gave back
    CHECK_FALSE(run(loop, a->claim_slot(msg("s4"), 2))); // c's lease lives
    wait(loop, 60ms);                                    // c died
    CHECK(run(loop, a->claim_slot(msg("s4"), 2)));
    CHECK(db.count("SELECT count(*) FROM restart_slots WHERE message_id IS NOT NULL") == 2);
    for (auto* s : {&a, &b, &c})
        run_void(loop, (*s)->close());
}

TEST_CASE_TEMPLATE("store contract: two workers taking the last slot at once: exactly one wins", B,
                   STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 60s);
    auto b = db.open(loop, "b", 60s);
    int wins = 0;
    for (int round = 0; round < 20; ++round) {
        auto x = msg("x" + std::to_string(round)), y = msg("y" + std::to_string(round));
        std::optional<bool> gx, gy;
        {
            rt::task_scope scope;
            scope.spawn(into(a->claim_slot(x, 1), gx));
            scope.spawn(into(b->claim_slot(y, 1), gy));
            loop.run_until([&] { return gx && gy; });
        }
        REQUIRE(gx);
        REQUIRE(gy);
        CHECK(*gx != *gy);
        wins += *gx + *gy;
        (*gx ? a : b)->release_slot(*gx ? x : y);
        wait_for(loop, [&] {
            return db.count("SELECT count(*) FROM restart_slots WHERE message_id IS NOT NULL") == 0;
        });
    }
    CHECK(wins == 20);
    run_void(loop, a->close());
    run_void(loop, b->close());
}

// The fleet-wide circuit breaker (store.hpp, fleet_breaker): the PostgreSQL store keeps one.
TEST_CASE("postgres: the breaker is the fleet's: every worker's failures open it, one trial at "
          "a time, a dead worker's trial taken over") {
    postgres_backend db;
    rt::loop loop;
    auto a = db.open(loop, "a", 60s);
    auto b = db.open(loop, "b", 60s);
    // The cooldown and c's lease are long enough that a loaded machine answers each claim
    // inside them: the checks before each wait must land before it ends.
    auto c = db.open(loop, "c", 1s);
    CHECK(a->shares_breaker());
    std::optional<fleet_breaker> seen;
    b->watch_breaker([&](const fleet_breaker& x) { seen = x; });
    REQUIRE(seen);
    CHECK(seen->st == fleet_breaker::state::closed);
    const breaker_rules rules{3, 60s, 1s};
    auto state = [&] { return db.count("SELECT state FROM fleet_breaker"); };
    auto fail = [&](store& s, const char* id, const char* host) {
        s.note_breaker(msg(id, host), breaker_outcome::failed, false, rules);
    };
    // Two workers, three failures of two hosts: still closed (distinct hosts count).
    fail(*a, "f1", "h1.example.net");
    fail(*b, "f2", "h2.example.net");
    fail(*a, "f3", "h1.example.net");
    wait_for(loop, [&] { return db.count("SELECT count(*) FROM breaker_failures") == 2; });
    CHECK(state() == 0);
    // A third host, failed on b: open, for every worker.
    fail(*b, "f4", "h3.example.net");
    wait_for(loop, [&] { return seen->st == fleet_breaker::state::open; });
    CHECK(state() == 1);
    CHECK(run(loop, a->claim_trial(msg("t0"), rules.cooldown)) == trial_answer::wait); // cooling
    wait(loop, 1050ms);
    // Cooldown over: of two workers asking at once, exactly one runs the trial.
    std::optional<trial_answer> ta, tb;
    {
        rt::task_scope scope;
        scope.spawn(into(a->claim_trial(msg("t1"), rules.cooldown), ta));
        scope.spawn(into(b->claim_trial(msg("t2"), rules.cooldown), tb));
        loop.run_until([&] { return ta && tb; });
    }
    REQUIRE((ta && tb));
    CHECK(((*ta == trial_answer::trial) != (*tb == trial_answer::trial)));
    CHECK((*ta == trial_answer::wait || *tb == trial_answer::wait));
    auto& winner = *ta == trial_answer::trial ? a : b;
    auto won = msg(*ta == trial_answer::trial ? "t1" : "t2");
    // Its trial failed: open again, for another cooldown.
    winner->note_breaker(won, breaker_outcome::failed, true, rules);
    wait_for(loop, [&] { return state() == 1; });
    CHECK(run(loop, a->claim_trial(msg("t3"), rules.cooldown)) == trial_answer::wait);
    wait(loop, 1050ms);
    // c takes the trial and dies with it: after its lease, a takes it over.
    CHECK(run(loop, c->claim_trial(msg("t4"), rules.cooldown)) == trial_answer::trial);
    CHECK(run(loop, a->claim_trial(msg("t5"), rules.cooldown)) == trial_answer::wait);
    wait(loop, 1050ms);
    CHECK(run(loop, a->claim_trial(msg("t5"), rules.cooldown)) == trial_answer::trial);
    // A late word from c about its trial changes nothing: the trial is a's now.
    c->note_breaker(msg("t4"), breaker_outcome::ok, true, rules);
    a->note_breaker(msg("t5"), breaker_outcome::ok, true, rules);
    wait_for(loop, [&] { return state() == 0; });
    CHECK(db.count("SELECT count(*) FROM breaker_failures") == 0);
    // b hears of it with its next read (here the answer to its own claim).
    CHECK(seen->st != fleet_breaker::state::closed);
    CHECK(run(loop, b->claim_trial(msg("t6"), rules.cooldown)) == trial_answer::go);
    CHECK(seen->st == fleet_breaker::state::closed);
    b->watch_breaker(nullptr);
    for (auto* s : {&a, &b, &c})
        run_void(loop, (*s)->close());
}

TEST_CASE_TEMPLATE("store contract: the shared pause is read at start and polled", B, STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 60s); // migrates
    db.exec("INSERT INTO fleet_pause (paused_by, paused_at, reason) "
            "VALUES ('alice', 1700000000000, 'maintenance')");
    auto b = db.open(loop, "b", 60s);
    std::optional<fleet_pause> seen;
    int calls = 0;
    b->watch_pause(20ms, [&](const fleet_pause* p) {
        ++calls;
        seen = p ? std::optional<fleet_pause>(*p) : std::nullopt;
    });
    REQUIRE(calls == 1); // at once, with what the start read
    REQUIRE(seen);
    CHECK(seen->who == "alice");
    CHECK(seen->reason == "maintenance");
    CHECK(seen->since_ms == 1700000000000);
    db.exec("DELETE FROM fleet_pause");
    wait_for(loop, [&] { return !seen; });
    CHECK(calls == 2);
    b->watch_pause(20ms, nullptr);
    run_void(loop, a->close());
    run_void(loop, b->close());
}

// ---------------------------------------------------------------------------------------------
// Retention (store.hpp, prune_bounds)
// ---------------------------------------------------------------------------------------------

TEST_CASE_TEMPLATE("store contract: retention prunes finished rows past the cutoff in bounded "
                   "passes and keeps what is in flight, unfinished or needed by a cooldown",
                   B, STORES) {
    B db;
    rt::loop loop;
    auto st = db.open(loop, "a", 60s);
    auto acked = verdict{outcome::acked, {}, {}};
    auto restart = [&](const message& x, restart_status how) {
        CHECK(run(loop, st->claim_restart(x)) == restart_claim::proceed);
        CHECK(run(loop, st->finish_restart(x, restart_result{how, {}})));
    };
    // Gone once old: restarted and acked (p0..p4), acked after a failed first attempt (two
    // restarts rows, gone together), dead-lettered without a restart.
    for (int i = 0; i < 5; ++i) {
        auto p = msg("p" + std::to_string(i));
        CHECK(run(loop, st->save(p, delivery{})).ok);
        restart(p, restart_status::ok);
        st->complete(p, acked);
    }
    auto twice = msg("twice"), dl = msg("dl");
    CHECK(run(loop, st->save(twice, delivery{})).ok);
    restart(twice, restart_status::failed);
    restart(twice, restart_status::ok);
    st->complete(twice, acked);
    CHECK(run(loop, st->save(dl, delivery{})).ok);
    st->complete(dl, verdict{outcome::dead_lettered, "bad", {}});
    // Kept: in flight (no outcome; its restart done), retried after a failure, acked with its
    // restart unfinished, and a cooldown claim within the cooldown (its message row goes).
    auto fly = msg("fly"), again = msg("again"), running = msg("running"),
         cool = msg("cool", "cool.example.net");
    CHECK(run(loop, st->save(fly, delivery{})).ok);
    restart(fly, restart_status::ok);
    CHECK(run(loop, st->save(again, delivery{})).ok);
    restart(again, restart_status::failed);
    st->complete(again, verdict{outcome::retried, "boom", {}});
    CHECK(run(loop, st->save(running, delivery{})).ok);
    CHECK(run(loop, st->claim_restart(running)) == restart_claim::proceed);
    st->complete(running, acked);
    CHECK(run(loop, st->save(cool, delivery{})).ok);
    CHECK(run(loop, st->claim_restart(cool)) == restart_claim::proceed);
    CHECK(run(loop, st->claim_host(cool, std::chrono::system_clock::now(), 1h)).granted);
    CHECK(run(loop, st->finish_restart(cool, ok)));
    st->complete(cool, acked);

    // Everything above finished "before" an hour from now; the cooldown reaches an hour back.
    auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    prune_bounds b{now + 3'600'000, now + 3'600'000, now - 3'600'000, 3};
    prune_counts total;
    std::vector<prune_counts> passes;
    for (int i = 0; i < 10; ++i) {
        auto c = run(loop, st->prune(b));
        passes.push_back(c);
        CHECK(c.messages <= 3); // bounded: at most `limit` rows, and `limit` ids' restarts
        CHECK(c.restarts <= 3 * 2);
        total.messages += c.messages;
        total.restarts += c.restarts;
        if (c == prune_counts{}) break;
    }
    REQUIRE(passes.size() >= 3);
    CHECK(passes[0].messages == 3); // 8 were old enough: the first pass takes its limit
    CHECK(passes.back() == prune_counts{});
    CHECK(total == prune_counts{8, 7});
    CHECK(st->pruned() == total);
    // The kept record still decides: the retried message's next claim is its second attempt.
    auto next = run(loop, st->claim_restart(again));
    CHECK(next == restart_claim::proceed);
    CHECK(next.attempt == 2);
    run_void(loop, st->close());
    CHECK(db.count("SELECT count(*) FROM messages WHERE message_id IN ('fly', 'again', "
                   "'running')") == 3);
    CHECK(db.count("SELECT count(*) FROM messages") == 3);
    CHECK(db.count("SELECT count(*) FROM restarts WHERE message_id IN ('fly', 'again', "
                   "'running', 'cool')") == 5); // again: its failed attempt and the new one
    CHECK(db.count("SELECT count(*) FROM restarts") == 5);
}

TEST_CASE_TEMPLATE("store contract: a retention pass before the cutoff deletes nothing", B,
                   STORES) {
    B db;
    rt::loop loop;
    auto st = db.open(loop, "a", 60s);
    auto a = msg("a");
    CHECK(run(loop, st->save(a, delivery{})).ok);
    CHECK(run(loop, st->claim_restart(a)) == restart_claim::proceed);
    CHECK(run(loop, st->finish_restart(a, ok)));
    st->complete(a, verdict{outcome::acked, {}, {}});
    auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    // Finished now: not older than an hour.
    CHECK(run(loop, st->prune(prune_bounds{now - 3'600'000, now - 3'600'000, now, 1000})) ==
          prune_counts{});
    run_void(loop, st->close());
    CHECK(db.count("SELECT count(*) FROM messages") == 1);
    CHECK(db.count("SELECT count(*) FROM restarts") == 1);
}

TEST_CASE_TEMPLATE("store contract: a renewed claim keeps its slot past its first lease", B,
                   STORES) {
    B db;
    rt::loop loop;
    auto a = db.open(loop, "a", 60s);
    auto c = db.open(loop, "c", 1s);
    rt::periodic_timer tick(loop, 50ms, [] {}); // see "restart slots are shared" above
    auto s1 = msg("s1");
    CHECK(run(loop, c->save(s1, delivery{})).ok);
    CHECK(run(loop, c->claim_restart(s1)) == restart_claim::proceed);
    CHECK(run(loop, c->claim_slot(s1, 1)));
    // As "renewal keeps a claim held past its first lease": renewed 600 ms in, asked once the
    // renewal is written and the first lease is over.
    const std::string lease = "SELECT lease_until FROM restart_slots WHERE message_id = 's1'";
    const std::int64_t first = db.count(lease);
    wait(loop, 600ms);
    const message* ms[] = {&s1};
    c->renew_claims(ms);
    wait_for(loop, [&] { return db.count(lease) > first; });
    while (now_ms() <= first + 100)
        wait(loop, 50ms);
    CHECK_FALSE(run(loop, a->claim_slot(msg("s2"), 1)));
    c->release_slot(s1);
    wait_for(loop, [&] {
        return db.count("SELECT count(*) FROM restart_slots WHERE message_id IS NOT NULL") == 0;
    });
    CHECK(run(loop, a->claim_slot(msg("s2"), 1)));
    run_void(loop, a->close());
    run_void(loop, c->close());
}
