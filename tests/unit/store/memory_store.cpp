#include "store/memory_store.hpp"

#include <doctest/doctest.h>

using namespace mayhem;
using namespace std::chrono;

namespace {
message msg(std::string id, std::string host) {
    return message{std::move(id), std::string("instance"), std::move(host), {}};
}
template <class T>
rt::task<void> store_into(rt::task<T> t, std::optional<T>& into) {
    into = co_await std::move(t);
}
// memory_store's tasks complete without suspending: run one to its end.
template <class T>
T now_(rt::task<T> t) {
    rt::task_scope scope;
    std::optional<T> out;
    scope.spawn(store_into(std::move(t), out));
    REQUIRE(out);
    return *out;
}
void finish(memory_store& s, const message& m, restart_status st) {
    CHECK(now_(s.finish_restart(m, restart_result{st, {}})));
}
} // namespace

TEST_CASE("memory_store::claim_host: the cooldown contract of store.hpp") {
    rt::loop loop;
    memory_store s(loop, latency_range{}, 1);
    auto t0 = system_clock::now();
    milliseconds week{7LL * 24 * 3600 * 1000};
    auto a = msg("a", "h1"), b = msg("b", "h1"), c = msg("c", "h1");

    CHECK(now_(s.claim_host(a, t0, week)).granted);
    // Running elsewhere (not finished): blocks another message, never the same one.
    auto blocked = now_(s.claim_host(b, t0 + 1s, week));
    CHECK_FALSE(blocked.granted);
    CHECK(blocked.last_restart == t0);
    CHECK(now_(s.claim_host(a, t0 + 1s, week)).granted);

    // A failed restart does not count.
    finish(s, a, restart_status::failed);
    CHECK(now_(s.claim_host(b, t0 + 2s, week)).granted);
    // A successful one does, until the cooldown is over.
    finish(s, b, restart_status::ok);
    CHECK_FALSE(now_(s.claim_host(c, t0 + 3s, week)).granted);
    CHECK(now_(s.claim_host(c, t0 + 2s + week + 1s, week)).granted);
    // Another host is not affected; a cooldown of 0 always grants.
    CHECK(now_(s.claim_host(msg("d", "h2"), t0, week)).granted);
    CHECK(now_(s.claim_host(msg("e", "h1"), t0, milliseconds(0))).granted);
    // A dry run never blocks the next real restart.
    CHECK(now_(s.claim_host(msg("f", "h3"), t0, week)).granted);
    finish(s, msg("f", "h3"), restart_status::dry_run);
    CHECK(now_(s.claim_host(msg("g", "h3"), t0, week)).granted);
}

TEST_CASE("memory_store: a dry run leaves no trace that a real run of the same id meets") {
    rt::loop loop;
    memory_store s(loop, latency_range{}, 1);
    auto m = msg("dry", "h1");
    CHECK(now_(s.claim_restart(m)) == restart_claim::proceed);
    finish(s, m, restart_status::dry_run);
    CHECK(now_(s.claim_restart(m)) == restart_claim::proceed); // not `done`: nothing restarted
    finish(s, m, restart_status::ok);
    CHECK(now_(s.claim_restart(m)) == restart_claim::done);
}

TEST_CASE("memory_store::claim_host: a clock behind the host's last restart is told, not guessed") {
    rt::loop loop;
    memory_store s(loop, latency_range{}, 1);
    auto t0 = system_clock::now();
    milliseconds week{7LL * 24 * 3600 * 1000};
    CHECK(now_(s.claim_host(msg("a", "h1"), t0, week)).granted);
    auto early = now_(s.claim_host(msg("b", "h1"), t0 - 1h, week)); // the clock went back
    CHECK_FALSE(early.granted);
    CHECK(early.clock_behind);
    auto later = now_(s.claim_host(msg("b", "h1"), t0 + 1h, week));
    CHECK_FALSE(later.granted);
    CHECK_FALSE(later.clock_behind); // an ordinary cooldown skip
}

TEST_CASE("memory_store: a refused restart is claimed again, so its redelivery is refused again") {
    // A request refused (dead-lettered) whose dead letter was lost comes again: it must be
    // refused and dead-lettered again, not skipped as already done. (The shared stores: the
    // store contract, tests/unit/store/contract.cpp.)
    rt::loop loop;
    memory_store s(loop, latency_range{}, 1);
    auto m = msg("m1", "h1");
    CHECK(now_(s.claim_restart(m)) == restart_claim::proceed);
    finish(s, m, restart_status::refused);
    CHECK(now_(s.claim_restart(m)) == restart_claim::proceed);
}
