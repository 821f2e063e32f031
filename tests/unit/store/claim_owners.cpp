// Claims have owners and leases: two workers on one SQLite file never both restart for one
// message id while the first one's lease lives, and a worker that lost its claim learns it
// before it records anything.
#include "store/memory_store.hpp"
#include "store/sqlite_store.hpp"

#include <doctest/doctest.h>
#include <filesystem>
#include <optional>
#include <unistd.h>

using namespace mayhem;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

struct temp_db {
    std::string path;
    explicit temp_db(const char* name)
        : path((fs::temp_directory_path() /
                ("mayhem-" + std::string(name) + "-" + std::to_string(::getpid()) + ".db"))
                   .string()) {
        clean();
    }
    ~temp_db() { clean(); }
    void clean() {
        for (const char* suffix : {"", "-wal", "-shm"})
            fs::remove(path + suffix);
    }
};

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

void close(rt::loop& loop, sqlite_store& s) {
    rt::task_scope scope;
    scope.spawn(s.close());
    loop.run_until([&] { return scope.size() == 0; });
}

void wait(rt::loop& loop, std::chrono::milliseconds d) {
    rt::task_scope scope;
    scope.spawn([](rt::loop& l, std::chrono::milliseconds ms) -> rt::task<void> {
        co_await rt::sleep_for(l, ms);
    }(loop, d));
    loop.run_until([&] { return scope.size() == 0; });
}

sqlite_options worker_on(const std::string& path, const char* owner, std::chrono::milliseconds l) {
    sqlite_options o;
    o.path = path;
    o.owner = owner;
    o.claim_lease = l;
    return o;
}

const message m{"m1", "cattle-1", "cattle-1.example.net"};
const restart_result ok{restart_status::ok, {}};

} // namespace

TEST_CASE("claims: a peer does not restart while the owner's lease lives") {
    temp_db db("claims-held");
    rt::loop loop;
    sqlite_store a(loop, worker_on(db.path, "a", 60s));
    sqlite_store b(loop, worker_on(db.path, "b", 60s));
    CHECK(run(loop, a.claim_restart(m)) == restart_claim::proceed);
    CHECK(run(loop, b.claim_restart(m)) == restart_claim::held);
    CHECK(run(loop, a.finish_restart(m, ok)));
    CHECK(run(loop, b.claim_restart(m)) == restart_claim::done);
    close(loop, a);
    close(loop, b);
}

TEST_CASE("claims: an expired lease is unfinished; the old owner learns it lost the claim") {
    temp_db db("claims-lost");
    rt::loop loop;
    sqlite_store a(loop, worker_on(db.path, "a", 20ms));
    sqlite_store b(loop, worker_on(db.path, "b", 60s));
    CHECK(run(loop, a.claim_restart(m)) == restart_claim::proceed);
    wait(loop, 60ms); // a stalls past its lease (SIGSTOP, a partition)
    CHECK(run(loop, b.claim_restart(m)) == restart_claim::unfinished); // b's now
    CHECK_FALSE(run(loop, a.finish_restart(m, ok)));                   // a records nothing
    CHECK(run(loop, b.finish_restart(m, ok)));
    CHECK(run(loop, a.claim_restart(m)) == restart_claim::done);
    close(loop, a);
    close(loop, b);
}

TEST_CASE("claims: every start of an id is an attempt, also one its worker left unfinished") {
    temp_db db("claims-attempts");
    rt::loop loop;
    sqlite_store a(loop, worker_on(db.path, "a", 20ms));
    sqlite_store b(loop, worker_on(db.path, "b", 20ms));
    auto first = run(loop, a.claim_restart(m));
    CHECK(first == restart_claim::proceed);
    CHECK(first.attempt == 1);
    run(loop, a.claim_host(m, std::chrono::system_clock::now(), 1h)); // its restart began
    wait(loop, 60ms);                                                 // a died
    auto second = run(loop, b.claim_restart(m));
    CHECK(second == restart_claim::unfinished);
    CHECK(second.attempt == 2);
    {
        rt::task_scope scope; // b stops before it runs the restart again
        scope.spawn(b.release_claim(m));
        loop.run_until([&] { return scope.size() == 0; });
    }
    auto third = run(loop, a.claim_restart(m));
    CHECK(third == restart_claim::unfinished); // still unfinished, not done
    CHECK(third.attempt == 2);                 // b's start was withdrawn: it never ran
    wait(loop, 60ms); // a dies again while its restart waits for a slot: not a start
    auto waited = run(loop, b.claim_restart(m));
    CHECK(waited == restart_claim::unfinished);
    CHECK(waited.attempt == 2);
    wait(loop, 60ms);
    third = run(loop, a.claim_restart(m));
    CHECK(third.attempt == 2);
    CHECK(run(loop, a.finish_restart(m, restart_result{restart_status::failed, "exit 75"})));
    auto fourth = run(loop, b.claim_restart(m));
    CHECK(fourth == restart_claim::proceed); // after a restart that did nothing
    CHECK(fourth.attempt == 3);
    close(loop, a);
    close(loop, b);
}

TEST_CASE("claims: renewal keeps a claim held past its first lease") {
    temp_db db("claims-renewed");
    rt::loop loop;
    sqlite_store a(loop, worker_on(db.path, "a", 150ms));
    sqlite_store b(loop, worker_on(db.path, "b", 60s));
    CHECK(run(loop, a.claim_restart(m)) == restart_claim::proceed);
    const message* ms[] = {&m};
    for (int i = 0; i < 6; ++i) { // 300 ms in all, twice the lease
        wait(loop, 50ms);
        a.renew_claims(ms);
    }
    wait(loop, 20ms); // the last renewal is written
    CHECK(run(loop, b.claim_restart(m)) == restart_claim::held);
    close(loop, a);
    close(loop, b);
}

TEST_CASE("claims: a claim made without a lease is never held against a peer") {
    temp_db db("claims-unleased");
    rt::loop loop;
    sqlite_store a(loop, worker_on(db.path, "a", 0ms)); // one worker per file: no lease
    sqlite_store b(loop, worker_on(db.path, "b", 60s));
    CHECK(run(loop, a.claim_restart(m)) == restart_claim::proceed);
    CHECK(run(loop, b.claim_restart(m)) == restart_claim::unfinished);
    close(loop, a);
    close(loop, b);
}

TEST_CASE("claims: a refused restart is claimed again, so its redelivery is refused again") {
    // A request refused (dead-lettered) whose dead letter was lost with its worker comes again:
    // it must be refused and dead-lettered again, not skipped and acked as already done.
    temp_db db("claims-refused");
    rt::loop loop;
    sqlite_store a(loop, worker_on(db.path, "a", 60s));
    CHECK(run(loop, a.claim_restart(m)) == restart_claim::proceed);
    CHECK(run(loop, a.finish_restart(m, restart_result{restart_status::refused, "denied"})));
    CHECK(run(loop, a.claim_restart(m)) == restart_claim::proceed);
    close(loop, a);

    memory_store mem(loop, latency_range{}, 1);
    CHECK(run(loop, mem.claim_restart(m)) == restart_claim::proceed);
    CHECK(run(loop, mem.finish_restart(m, restart_result{restart_status::refused, "denied"})));
    CHECK(run(loop, mem.claim_restart(m)) == restart_claim::proceed);
}
