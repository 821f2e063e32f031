// postgres_store on its own: the schema migration, and what a lost or missing server does. The
// private server's URL is in MAYHEM_TEST_POSTGRES_URL (tests/integration/postgres.py).
#include "store/postgres_store.hpp"

#include "store/sharded_store.hpp"
#include "store_test.hpp"

#include <atomic>
#include <cstdlib>
#include <doctest/doctest.h>
#include <libpq-fe.h>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace mayhem;
using namespace mayhem::store_test;
using namespace std::chrono_literals;

namespace {

std::string exec(const std::string& url, const std::string& sql) {
    return pg_exec(url, sql);
}

std::string fresh_db(const char* tag) {
    return fresh_pg_db(std::string("pg_") + tag);
}

// The messages holding a slot, comma-separated ("" when every slot is free).
std::string slot_holder(const std::string& url) {
    return exec(url, "SELECT coalesce(string_agg(message_id, ',' ORDER BY slot), '') "
                     "FROM restart_slots WHERE message_id IS NOT NULL");
}

postgres_options on(const std::string& url) {
    postgres_options o;
    o.url = url;
    o.owner = "t";
    o.claim_lease = 60s;
    return o;
}

message msg(const std::string& id) {
    return message{id, "cattle", "cattle.example.net"};
}

} // namespace

TEST_CASE("postgres_store: an empty database is migrated once, also by workers starting together") {
    auto url = fresh_db("migrate");
    rt::loop loop;
    {
        // Two stores, as two workers: the second finds the schema in place.
        postgres_store a(loop, on(url));
        postgres_store b(loop, on(url));
        CHECK(a.healthy());
        CHECK(run(loop, b.save(msg("x"), delivery{})).ok);
        run_void(loop, a.close());
        run_void(loop, b.close());
    }
    // One row per migration applied, each once.
    CHECK(exec(url, "SELECT count(*) FROM schema_migrations") ==
          std::to_string(postgres_schema_version));
    CHECK(exec(url, "SELECT max(version) FROM schema_migrations") ==
          std::to_string(postgres_schema_version));
    CHECK(exec(url, "SELECT count(*) FROM messages") == "1");
}

TEST_CASE("postgres_store: workers starting together on an empty database apply each migration "
          "once") {
    auto url = fresh_db("migrate_race");
    // Each thread is one worker's start: its own connection, migrating at the same moment.
    constexpr int workers = 6;
    std::vector<int> versions(workers, -1);
    std::vector<std::string> errors(workers);
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < workers; ++i)
        threads.emplace_back([&, i] {
            PGconn* c = PQconnectdb(url.c_str());
            ++ready;
            while (ready.load() < workers) // all connected, then all migrate at once
                std::this_thread::yield();
            try {
                versions[static_cast<std::size_t>(i)] = postgres_migrate(c);
            } catch (const std::exception& e) {
                errors[static_cast<std::size_t>(i)] = e.what();
            }
            PQfinish(c);
        });
    for (auto& t : threads)
        t.join();
    for (int i = 0; i < workers; ++i) {
        CHECK(errors[static_cast<std::size_t>(i)] == "");
        CHECK(versions[static_cast<std::size_t>(i)] == postgres_schema_version);
    }
    CHECK(exec(url, "SELECT count(*) FROM schema_migrations") ==
          std::to_string(postgres_schema_version));
    CHECK(exec(url, "SELECT count(DISTINCT version) FROM schema_migrations") ==
          std::to_string(postgres_schema_version));
}

TEST_CASE("postgres_store: a database of the previous schema version is migrated, its rows kept "
          "and claimed as before") {
    for (int version = 1; version < postgres_schema_version; ++version) {
        CAPTURE(version);
        auto url = fresh_db("older");
        // As the older build left it: its migrations and their version rows, then its rows.
        std::string sql = "BEGIN; CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
                          "applied_at timestamptz NOT NULL DEFAULT now());";
        for (int v = 1; v <= version; ++v)
            sql += std::string(postgres_migrations()[static_cast<std::size_t>(v - 1)]) +
                   "; INSERT INTO schema_migrations (version) VALUES (" + std::to_string(v) + ");";
        sql += R"sql(
INSERT INTO messages (message_id, instance, hostname, first_seen, outcome, completed_at)
VALUES ('m-done', 'i', 'h1', 1000, 'acked', 2000), ('m-failed', 'i', 'h2', 1000, 'retried', NULL),
       ('m-dead', 'i', 'h3', 1000, NULL, NULL);
INSERT INTO restarts (message_id, attempt, hostname, started, finished, result, host_claimed,
                      owner, lease_until)
VALUES ('m-done', 1, 'h1', 1000, 1500, 'ok', true, NULL, NULL),
       ('m-failed', 1, 'h2', 1000, 1500, 'failed', true, NULL, NULL),
       ('m-dead', 1, 'h3', 1000, NULL, NULL, true, 'dead-worker', 2000);
COMMIT;)sql";
        exec(url, sql);
        REQUIRE(exec(url, "SELECT max(version) FROM schema_migrations") == std::to_string(version));
        rt::loop loop;
        {
            postgres_store st(loop, on(url));
            CHECK(st.healthy());
            CHECK(run(loop, st.claim_restart(msg("m-done"))) == restart_claim::done);
            auto failed = run(loop, st.claim_restart(msg("m-failed")));
            CHECK(failed == restart_claim::proceed);
            CHECK(failed.attempt == 2);
            // Its owner's lease long expired: unfinished. Version 1 took the row over as it was;
            // from version 2 on, a start that passed its cooldown claim is closed abandoned and
            // the next attempt recorded.
            auto dead = run(loop, st.claim_restart(msg("m-dead")));
            CHECK(dead == restart_claim::unfinished);
            CHECK(dead.attempt == 2);
            CHECK(run(loop, st.save(msg("m-new"), delivery{})).ok);
            run_void(loop, st.close());
        }
        CHECK(exec(url, "SELECT max(version) FROM schema_migrations") ==
              std::to_string(postgres_schema_version));
        CHECK(exec(url, "SELECT count(*) FROM schema_migrations") ==
              std::to_string(postgres_schema_version));
        CHECK(exec(url, "SELECT count(*) FROM messages") == "4");
        CHECK(exec(url, "SELECT count(*) FROM restarts WHERE message_id = 'm-dead' AND "
                        "result = 'abandoned'") == "1");
        // Retention's indexes: messages by first_seen (version 5), restarts by finished (3).
        CHECK(exec(url, "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes "
                        "WHERE indexname IN ('messages_completed', 'restarts_finished', "
                        "'messages_first_seen')") == "messages_first_seen,restarts_finished");
    }
}

TEST_CASE("postgres_store: a newer schema version is refused at start") {
    auto url = fresh_db("newer");
    rt::loop loop;
    {
        postgres_store a(loop, on(url));
        run_void(loop, a.close());
    }
    exec(url, "INSERT INTO schema_migrations (version) VALUES (99)");
    CHECK_THROWS_AS(postgres_store(loop, on(url)), postgres_fatal);
}

TEST_CASE("postgres_store: a database holding someone else's messages table is refused") {
    auto url = fresh_db("foreign");
    exec(url, "CREATE TABLE messages (id integer)");
    rt::loop loop;
    CHECK_THROWS_AS(postgres_store(loop, on(url)), postgres_fatal);
}

TEST_CASE(
    "postgres_store: an unreachable server: unhealthy, saves and claims fail, nothing throws") {
    rt::loop loop;
    auto o = on("postgresql://postgres@127.0.0.1:1/postgres"); // nothing listens on port 1
    o.connect_timeout = 1000ms;
    postgres_store st(loop, o);
    CHECK_FALSE(st.healthy());
    auto r = run(loop, st.save(msg("a"), delivery{}));
    CHECK_FALSE(r.ok);
    CHECK(r.error.str().find("connect") != std::string::npos);
    st.complete(msg("a"), verdict{outcome::retried, "store", {}});
    st.release_slot(msg("a"));
    st.hurry(); // the outcome record cannot be written: given up and counted
    run_void(loop, st.close());
    CHECK(st.unrecorded() == 1); // not the slot release: the slot comes free with its lease
}

TEST_CASE("postgres_store: a connection lost between batches fails one batch, then reconnects") {
    auto url = fresh_db("lost");
    rt::loop loop;
    postgres_store st(loop, on(url));
    CHECK(run(loop, st.save(msg("a"), delivery{})).ok);
    // The server ends the store's connection (as a restart of the server would).
    exec(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
              "current_database() AND pid <> pg_backend_pid()");
    auto b = run(loop, st.save(msg("b"), delivery{}));
    CHECK_FALSE(b.ok); // not saved: its message would be retried, never acked
    CHECK_FALSE(st.healthy());
    wait_for(loop, [&] { return run(loop, st.save(msg("c"), delivery{})).ok; });
    wait_for(loop, [&] { return st.healthy(); });
    CHECK(st.reconnects() >= 1);
    run_void(loop, st.close());
    CHECK(exec(url, "SELECT string_agg(message_id, ',' ORDER BY message_id) FROM messages") ==
          "a,c");
}

// The cooldown race at its widest: worker a's transaction has checked and marked its host claim
// but cannot commit yet (a later statement of its batch waits for a row another connection
// holds), while worker b claims the same host for another message. b must wait for a's commit
// and then be refused; without the host lock it would see nothing committed and both would win.
TEST_CASE("postgres_store: a cooldown claim waits for a peer's uncommitted claim of the host") {
    auto url = fresh_db("race");
    rt::loop loop;
    postgres_store a(loop, on(url)), b(loop, on(url));
    auto hour = std::chrono::milliseconds(3600 * 1000);
    auto x = message{"x", "cattle", "h.example.net"}, y = message{"y", "cattle", "h.example.net"};
    auto r = message{"r", "cattle", "other.example.net"};
    REQUIRE(run(loop, a.claim_restart(x)) == restart_claim::proceed);
    REQUIRE(run(loop, a.claim_restart(r)) == restart_claim::proceed);
    REQUIRE(run(loop, b.claim_restart(y)) == restart_claim::proceed);
    PGconn* holder = PQconnectdb(url.c_str());
    REQUIRE(PQstatus(holder) == CONNECTION_OK);
    PQclear(PQexec(holder, "BEGIN"));
    PQclear(PQexec(holder, "SELECT 1 FROM restarts WHERE message_id = 'r' FOR UPDATE"));
    std::optional<host_claim> gx, gy;
    rt::task_scope scope;
    auto now = std::chrono::system_clock::now();
    scope.spawn(into(a.claim_host(x, now, hour), gx));
    const message* renewed[] = {&r};
    a.renew_claims(renewed); // the same batch as a's claim: it waits for the holder
    bool b_sent = false;
    rt::task_scope later;
    later.spawn([](rt::loop& l, postgres_store& s, const message& m, std::chrono::milliseconds c,
                   std::optional<host_claim>& out, bool& sent) -> rt::task<void> {
        co_await rt::sleep_for(l, rt::millis{200}); // a's transaction is under way by then
        sent = true;
        out = co_await s.claim_host(m, std::chrono::system_clock::now(), c);
    }(loop, b, y, hour, gy, b_sent));
    wait_for(loop, [&] { return b_sent; });
    // Give b every chance to answer while a's transaction is open.
    rt::task_scope pause;
    bool paused = false;
    pause.spawn([](rt::loop& l, bool& p) -> rt::task<void> {
        co_await rt::sleep_for(l, rt::millis{500});
        p = true;
    }(loop, paused));
    loop.run_until([&] { return paused; });
    PQclear(PQexec(holder, "COMMIT"));
    PQfinish(holder);
    wait_for(loop, [&] { return gx && gy; });
    CHECK(gx->granted);
    CHECK_FALSE(gy->granted);
    run_void(loop, a.close());
    run_void(loop, b.close());
}

// A batch is one transaction: when one of its statements fails, what the others wrote is rolled
// back and every request in it fails (a save reported failed is never acked).
TEST_CASE("postgres_store: a statement that fails rolls back its whole batch") {
    auto url = fresh_db("rollback");
    rt::loop loop;
    postgres_store st(loop, on(url));
    auto good = msg("good");
    auto bad = message{"bad\xff", "cattle", "cattle.example.net"}; // not UTF-8: the server refuses
    std::optional<save_result> saved;
    std::optional<rt::result<claim_answer>> claimed;
    {
        rt::task_scope scope;
        scope.spawn([](postgres_store& s, const message& m,
                       std::optional<save_result>& out) -> rt::task<void> {
            delivery d;
            out = co_await s.save(m, d);
        }(st, good, saved));
        scope.spawn([](postgres_store& s, const message& m,
                       std::optional<rt::result<claim_answer>>& out) -> rt::task<void> {
            out.emplace(co_await s.claim_restart(m).settled());
        }(st, bad, claimed));
        wait_for(loop, [&] { return saved && claimed; });
    }
    CHECK_FALSE(saved->ok); // the save's statement ran, and was rolled back with the claim's
    CHECK_FALSE(*claimed);
    CHECK(st.stats().transactions.get() == 0);
    CHECK(run(loop, st.save(msg("after"), delivery{})).ok); // the connection goes on
    run_void(loop, st.close());
    CHECK(exec(url, "SELECT string_agg(message_id, ',') FROM messages") == "after");
}

// A slot release is not awaited (restart_guard gives the slot back as its restart ends): when
// the batch carrying it fails, the release is held and written with a later batch, as outcome
// records are. A release lost with its batch would keep the slot until its lease ran out (an
// hour here), one restart fewer for the whole fleet meanwhile.
TEST_CASE("postgres_store: a slot release whose batch lost its connection is written after the "
          "reconnect") {
    auto url = fresh_db("unslot_lost");
    rt::loop loop;
    auto o = on(url);
    o.claim_lease = 3600s;
    postgres_store st(loop, o);
    auto x = msg("x"), y = msg("y");
    REQUIRE(run(loop, st.claim_slot(x, 1)));
    REQUIRE_FALSE(run(loop, st.claim_slot(y, 1)));
    // The server ends the store's connection; the next batch, the release's, finds it gone.
    const std::string others = "FROM pg_stat_activity WHERE datname = current_database() AND "
                               "pid <> pg_backend_pid()";
    exec(url, "SELECT pg_terminate_backend(pid) " + others);
    for (int i = 0; exec(url, "SELECT count(*) " + others) != "0"; ++i) {
        REQUIRE(i < 3000);
        usleep(10000);
    }
    auto failed = st.stats().failed_transactions.get();
    st.release_slot(x);
    wait_for(loop, [&] { return st.stats().failed_transactions.get() > failed; });
    CHECK(slot_holder(url) == "x");
    // Reconnected: the first batch that commits carries the release.
    wait_for(loop, [&] { return run(loop, st.save(msg("c"), delivery{})).ok; });
    CHECK(slot_holder(url).empty());
    CHECK(run(loop, st.claim_slot(y, 1)));
    run_void(loop, st.close());
}

TEST_CASE("postgres_store: a slot release whose batch failed on a statement is written with the "
          "next batch") {
    auto url = fresh_db("unslot_rollback");
    rt::loop loop;
    auto o = on(url);
    o.claim_lease = 3600s;
    postgres_store st(loop, o);
    auto x = msg("x"), y = msg("y");
    auto bad = message{"bad\xff", "cattle", "cattle.example.net"}; // not UTF-8: the server refuses
    REQUIRE(run(loop, st.claim_slot(x, 1)));
    // Queued in one loop turn: the release and the refused claim go in one batch.
    st.release_slot(x);
    std::optional<rt::result<claim_answer>> claimed;
    {
        rt::task_scope scope;
        scope.spawn([](postgres_store& s, const message& m,
                       std::optional<rt::result<claim_answer>>& out) -> rt::task<void> {
            out.emplace(co_await s.claim_restart(m).settled());
        }(st, bad, claimed));
        wait_for(loop, [&] { return claimed.has_value(); });
    }
    REQUIRE_FALSE(*claimed);
    CHECK(slot_holder(url) == "x");
    CHECK(run(loop, st.save(msg("after"), delivery{})).ok);
    CHECK(slot_holder(url).empty());
    CHECK(run(loop, st.claim_slot(y, 1)));
    run_void(loop, st.close());
}

// A release held after its batch failed goes with the next batch, before that batch's claims:
// were a new claim of the same message's slot written first, it would keep the old slot as its
// own, and the release written after would free the slot of a running restart.
TEST_CASE("postgres_store: a slot release held after a failed batch goes before a new claim of "
          "the same message's slot") {
    auto url = fresh_db("unslot_order");
    rt::loop loop;
    auto o = on(url);
    o.claim_lease = 3600s;
    postgres_store st(loop, o);
    auto x = msg("x");
    auto bad = message{"bad\xff", "cattle", "cattle.example.net"}; // not UTF-8: the server refuses
    REQUIRE(run(loop, st.claim_slot(x, 1)));
    st.release_slot(x);
    CHECK_FALSE(run(loop, st.save(bad, delivery{})).ok); // the release's batch
    // x's message is delivered again at once, and its restart takes a slot.
    CHECK(run(loop, st.claim_slot(x, 1)));
    run_void(loop, st.close()); // writes whatever it still holds
    CHECK(slot_holder(url) == "x");
}

// Version 5's mayhem_take_slots creates the slot rows only when some are missing. Version 4's
// inserted every slot in every call (INSERT ... ON CONFLICT DO NOTHING), and that insert waits
// for the transaction of a peer that has taken one of them and not committed yet: two workers
// whose batches each held a row the other needed then deadlocked, and the server aborted one
// batch. Here a peer's open transaction holds slot 1; taking the free slot 2 must not wait for
// it (lock_timeout makes a wait an error, so a wait fails the test instead of hanging it).
TEST_CASE("postgres_store: taking a free slot does not wait for a peer's open transaction that "
          "took another") {
    auto url = fresh_db("slot_wait");
    using conn = std::unique_ptr<PGconn, decltype(&PQfinish)>;
    auto connect = [&] {
        conn c(PQconnectdb(url.c_str()), &PQfinish);
        REQUIRE_MESSAGE(PQstatus(c.get()) == CONNECTION_OK, PQerrorMessage(c.get()));
        return c;
    };
    // Runs `sql`; its first value, or its error prefixed with "error: ".
    auto query = [](const conn& c, const std::string& sql) {
        mayhem::pg_result r(PQexec(c.get(), sql.c_str()));
        auto st = PQresultStatus(r.get());
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
            return "error: " + std::string(PQresultErrorMessage(r.get()));
        return std::string(
            st == PGRES_TUPLES_OK && PQntuples(r.get()) > 0 ? PQgetvalue(r.get(), 0, 0) : "");
    };
    auto a = connect(), b = connect();
    REQUIRE(postgres_migrate(a.get()) == postgres_schema_version);
    // The slot rows exist: a slot was taken and given back before.
    auto take = [](const char* id, const char* who) {
        return std::string("SELECT count(*) FROM mayhem_take_slots('{") + id + "}', '{2}', '" +
               who + "', 5000, 3600000)";
    };
    REQUIRE(query(a, take("earlier", "a")) == "0");
    REQUIRE(query(a, "UPDATE restart_slots SET message_id = NULL, owner = NULL, lease_until = 0") ==
            "");
    // Worker a takes slot 1 in a batch that has not committed yet.
    REQUIRE(query(a, "BEGIN") == "");
    REQUIRE(query(a, take("x", "a")) == "0");
    // Worker b takes slot 2 meanwhile, without waiting for a.
    REQUIRE(query(b, "SET lock_timeout = '2s'") == "");
    CHECK(query(b, take("y", "b")) == "0");
    REQUIRE(query(a, "COMMIT") == "");
    CHECK(query(a, "SELECT string_agg(slot || ':' || message_id || ':' || owner, ',' ORDER BY "
                   "slot) FROM restart_slots") == "1:x:a,2:y:b");
}

// A start nobody will run is not left behind: a claim whose task is destroyed while it is
// queued is not written; one whose task is destroyed while its batch is on its way is withdrawn
// once the batch has committed.
TEST_CASE("postgres_store: a claim whose task is destroyed while queued or in flight leaves no "
          "start") {
    auto url = fresh_db("orphan_claims");
    rt::loop loop;
    postgres_store st(loop, on(url));
    auto x = msg("x"), y = msg("y"), r = msg("r");
    REQUIRE(run(loop, st.claim_restart(r)) == restart_claim::proceed);
    {
        rt::task_scope scope;
        scope.spawn([](postgres_store& s, const message& m) -> rt::task<void> {
            co_await s.claim_restart(m);
        }(st, y));
    } // destroyed while queued
    // x's claim goes in one batch with a renewal of r, whose row another connection holds: the
    // batch stays on its way until that connection commits.
    PGconn* holder = PQconnectdb(url.c_str());
    REQUIRE(PQstatus(holder) == CONNECTION_OK);
    PQclear(PQexec(holder, "BEGIN"));
    PQclear(PQexec(holder, "SELECT 1 FROM restarts WHERE message_id = 'r' FOR UPDATE"));
    auto sent = st.stats().transactions.get();
    {
        rt::task_scope scope;
        scope.spawn([](postgres_store& s, const message& m) -> rt::task<void> {
            co_await s.claim_restart(m);
        }(st, x));
        const message* renewed[] = {&r};
        st.renew_claims(renewed);
        // The batch is on its way once the store's connection waits for the holder's lock.
        for (int i = 0; exec(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                  "current_database() AND wait_event_type = 'Lock'") == "0";
             ++i) {
            REQUIRE(i < 1500);
            wait(loop, 20ms);
        }
        CHECK(st.stats().transactions.get() == sent);
    } // destroyed while its batch is in flight
    PQclear(PQexec(holder, "COMMIT"));
    PQfinish(holder);
    wait_for(loop, [&] { return st.stats().withdrawn.get() == 1; });
    run_void(loop, st.close()); // writes the withdrawal
    CHECK(exec(url, "SELECT count(*) FROM restarts WHERE message_id IN ('x', 'y')") == "0");
    CHECK(exec(url, "SELECT count(*) FROM restarts WHERE message_id = 'r'") == "1");
}

// --postgres-connections: the rule sharded_store relies on. Every request about one message
// goes to one connection (its message id's), so a message's requests keep their order (a slot
// release queued on one connection cannot be overtaken by a claim of the same slot on another);
// the fleet-wide requests that are about no one message all go to the first connection.
TEST_CASE("sharded_store: every request about one message goes to its id's connection; the "
          "breaker and retention to the first") {
    auto url = fresh_db("sharded");
    rt::loop loop;
    std::vector<postgres_store*> pg;
    std::vector<std::unique_ptr<store>> shards;
    for (int i = 0; i < 3; ++i) {
        shards.push_back(std::make_unique<postgres_store>(loop, on(url)));
        pg.push_back(static_cast<postgres_store*>(shards.back().get()));
    }
    sharded_store st(std::move(shards));
    auto requests = [&] {
        std::vector<std::uint64_t> n;
        for (auto* p : pg)
            n.push_back(p->stats().requests.get());
        return n;
    };
    std::vector<int> used(3, 0);
    for (int i = 0; i < 24; ++i) {
        auto m = msg("r" + std::to_string(i));
        auto at = st.shard_of(m);
        ++used[at];
        auto before = requests();
        CHECK(run(loop, st.save(m, delivery{})).ok);
        CHECK(run(loop, st.claim_restart(m)) == restart_claim::proceed);
        CHECK(run(loop, st.claim_slot(m, 2)));
        const message* ms[] = {&m};
        st.renew_claims(ms);
        CHECK(run(loop, st.finish_restart(m, restart_result{restart_status::ok, {}})));
        st.release_slot(m);
        st.complete(m, verdict{outcome::acked, {}});
        // save, claim, slot, renewal, finish, slot release and outcome, all on one connection.
        wait_for(loop, [&] { return requests()[at] == before[at] + 7; });
        for (std::size_t s = 0; s < pg.size(); ++s)
            if (s != at) CHECK_MESSAGE(requests()[s] == before[s], "connection ", s);
    }
    for (int n : used)
        CHECK(n > 0); // every connection took some messages
    CHECK(exec(url, "SELECT count(*) FROM messages WHERE outcome = 'acked'") == "24");
    CHECK(exec(url, "SELECT count(*) FROM restarts WHERE result = 'ok'") == "24");
    CHECK(slot_holder(url).empty());

    // A message the first connection does not take: its trial and breaker note still go there.
    auto other = msg("r0");
    for (int i = 0; st.shard_of(other) == 0; ++i)
        other = msg("t" + std::to_string(i));
    auto before = requests();
    CHECK(run(loop, st.claim_trial(other, 1s)) == trial_answer::go);
    st.note_breaker(other, breaker_outcome::failed, false, breaker_rules{5, 60s, 60s});
    CHECK(run(loop, st.prune(prune_bounds{0, 0, 0, 10})) == prune_counts{});
    wait_for(loop, [&] { return requests()[0] == before[0] + 3; });
    CHECK(requests()[1] == before[1]);
    CHECK(requests()[2] == before[2]);
    CHECK(exec(url, "SELECT count(*) FROM breaker_failures") == "1");
    run_void(loop, st.close());
}
