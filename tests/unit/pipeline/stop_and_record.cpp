// The promise under a stop and under store failures: a drain starts no new restart, and a restart
// that ran is never run again because the write of its record failed.
#include "pipeline/pipeline.hpp"
#include "restart/restart_guard.hpp"
#include "script_source.hpp"
#include "store/memory_store.hpp"
#include "store/sqlite_store.hpp"

#include <doctest/doctest.h>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <unistd.h>

using namespace mayhem;
using mayhem::testing::script_source;
using namespace std::chrono_literals;

namespace {

// Counts the restarts it starts and finishes; each takes `latency`. With `verifies` set, its
// verify() answers that the host came back.
class counting_restarter final : public restarter {
public:
    counting_restarter(rt::loop& l, rt::millis latency) : loop_(l), latency_(latency) {}
    std::string_view name() const override { return "counting"; }
    bool can_verify() const override { return verifies; }
    rt::task<restart_result> verify(const message&) override {
        ++verified;
        co_return restart_result{restart_status::ok, {}};
    }
    bool verifies = false;
    int verified = 0;
    rt::task<restart_result> restart(const message& m) override {
        ++started[std::string(m.message_id())];
        co_await rt::sleep_for(loop_, latency_);
        ++finished;
        co_return restart_result{restart_status::ok, {}};
    }
    std::map<std::string, int> started;
    int finished = 0;

    int total_started() const {
        int n = 0;
        for (const auto& [id, k] : started)
            n += k;
        return n;
    }

private:
    rt::loop& loop_;
    rt::millis latency_;
};

// A memory store whose record of a restart's end (or claim) fails the first `fail_finishes`
// (`fail_claims`) times, as a disk that is full for a while: the fault cannot be made real in a
// unit test.
class flaky_record_store final : public store {
public:
    flaky_record_store(rt::loop& l, int fail_finishes, int fail_claims = 0)
        : inner_(l, latency_range{}, 1), fail_(fail_finishes), fail_claims_(fail_claims) {}
    std::string_view name() const override { return "flaky"; }
    rt::task<save_result> save(const message& m, const delivery& d) override {
        return inner_.save(m, d);
    }
    rt::task<claim_answer> claim_restart(const message& m) override {
        if (fail_claims_ > 0) {
            --fail_claims_;
            throw std::runtime_error("store: database is locked");
        }
        return inner_.claim_restart(m);
    }
    rt::task<host_claim> claim_host(const message& m, std::chrono::system_clock::time_point now,
                                    std::chrono::milliseconds cooldown) override {
        return inner_.claim_host(m, now, cooldown);
    }
    rt::task<bool> finish_restart(const message& m, const restart_result& r) override {
        ++finish_calls;
        if (fail_ > 0) {
            --fail_;
            throw std::runtime_error("store: database or disk is full");
        }
        return inner_.finish_restart(m, r);
    }
    rt::task<void> release_claim(const message& m) override { return inner_.release_claim(m); }
    void complete(const message& m, const verdict& v) override { inner_.complete(m, v); }
    rt::task<void> close() override { return inner_.close(); }
    int finish_calls = 0;

private:
    memory_store inner_;
    int fail_, fail_claims_;
};

std::string msg(const std::string& id, const std::string& instance) {
    return R"({"message_id":")" + id + R"(","instance_name":")" + instance + R"("})";
}

} // namespace

TEST_CASE("a drain starts no new restart: messages waiting for a restart slot are released") {
    rt::loop loop;
    script_source src;
    memory_store store(loop, latency_range{}, 1);
    counting_restarter inner(loop, 200ms);
    guard_options g;
    g.max_concurrent = 2;
    restart_guard guard(loop, g, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    pipeline p(loop, opts, src, store, guard);
    p.start();
    std::vector<std::string> payloads;
    for (int i = 0; i < 10; ++i)
        payloads.push_back(msg("m" + std::to_string(i), "cattle-" + std::to_string(i)));
    src.feed(payloads);
    loop.run_until([&] { return inner.total_started() == 2; });
    CHECK(guard.stats().waiting.get() == 8);

    p.stop_intake(); // the drain begins while 2 restarts run and 8 wait for a slot
    loop.run_until([&] { return p.idle(); });

    CHECK(inner.total_started() == 2); // no restart began after the drain did
    CHECK(inner.finished == 2);        // the running ones were waited for
    CHECK(src.outcomes[outcome::acked] == 2);
    CHECK(src.outcomes[outcome::released] == 8);
    CHECK(guard.stats().waiting.get() == 0);
    CHECK(guard.stats().running.get() == 0);
}

TEST_CASE("a delivery whose lease a peer took is not restarted here, queued or waiting") {
    rt::loop loop;
    script_source src;
    memory_store store(loop, latency_range{}, 1);
    counting_restarter inner(loop, 100ms);
    guard_options g;
    g.max_concurrent = 1;
    restart_guard guard(loop, g, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    opts.max_in_flight = 3;
    opts.queue_capacity = 4;
    pipeline p(loop, opts, src, store, guard);
    p.start();
    std::vector<std::string> payloads;
    for (int i = 1; i <= 5; ++i)
        payloads.push_back(msg("m" + std::to_string(i), "cattle-" + std::to_string(i)));
    src.feed(payloads); // r1 restarts, r2 and r3 wait for the slot, r4 and r5 are queued
    loop.run_until([&] { return inner.total_started() == 1; });
    REQUIRE(guard.stats().waiting.get() == 2);
    src.lose("r2"); // waiting for a slot
    src.lose("r4"); // queued
    loop.run_until([&] { return p.idle() && src.pending.empty(); });
    CHECK(inner.total_started() == 3); // r1, r3, r5
    CHECK(src.outcomes[outcome::acked] == 3);
    CHECK(src.outcomes[outcome::released] == 2);
    CHECK(p.stats().lost_unstarted.get() == 2);
}

TEST_CASE("a drain lets a message waiting on its host's running restart share its result") {
    rt::loop loop;
    script_source src;
    memory_store store(loop, latency_range{}, 1);
    counting_restarter inner(loop, 100ms);
    restart_guard guard(loop, guard_options{}, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    pipeline p(loop, opts, src, store, guard);
    p.start();
    src.feed({msg("first", "cattle-same"), msg("second", "cattle-same")});
    loop.run_until([&] { return inner.total_started() == 1; });
    p.stop_intake();
    loop.run_until([&] { return p.idle(); });
    CHECK(inner.total_started() == 1);
    CHECK(src.outcomes[outcome::acked] == 2); // the second shared the running restart's result
}

TEST_CASE("a restart whose record fails is not run again: the record is retried until written") {
    rt::loop loop;
    script_source src;
    flaky_record_store store(loop, 3);
    counting_restarter inner(loop, 1ms);
    restart_guard guard(loop, guard_options{}, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    opts.record_retry = backoff_policy{1ms, 5ms};
    pipeline p(loop, opts, src, store, guard);
    p.start();
    src.feed({msg("once", "cattle-1")});
    loop.run_until([&] { return src.pending.empty() && p.idle(); });

    CHECK(inner.total_started() == 1);
    CHECK(store.finish_calls == 4); // three failures, then written
    CHECK(src.outcomes[outcome::acked] == 1);
    CHECK(src.outcomes[outcome::retried] == 0);
    CHECK(p.stats().record_retries.get() == 3);
    CHECK(p.stats().restarts[static_cast<std::size_t>(restart_status::ok)].get() == 1);
}

TEST_CASE("a drain waits for a restart's record to be written, and renews its lease meanwhile") {
    rt::loop loop;
    script_source src;
    flaky_record_store store(loop, 5);
    counting_restarter inner(loop, 1ms);
    restart_guard guard(loop, guard_options{}, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    opts.record_retry = backoff_policy{20ms, 20ms};
    pipeline p(loop, opts, src, store, guard);
    p.start();
    src.feed({msg("held", "cattle-1")});
    loop.run_until([&] { return inner.finished == 1; });
    p.stop_intake();
    loop.run_until([&] { return p.idle(); });
    CHECK(inner.total_started() == 1);
    CHECK(src.outcomes[outcome::acked] == 1);
    CHECK(src.outcomes[outcome::released] == 0);
}

namespace {
rt::task<void> claim_into(store& s, message m, restart_claim& out) {
    out = (co_await s.claim_restart(m)).kind;
}
} // namespace

TEST_CASE("a restart the drain kept from starting gives its claim back to the store") {
    rt::loop loop;
    script_source src;
    memory_store store(loop, latency_range{}, 1);
    counting_restarter inner(loop, 100ms);
    guard_options g;
    g.max_concurrent = 1;
    restart_guard guard(loop, g, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    pipeline p(loop, opts, src, store, guard);
    p.start();
    src.feed({msg("runs", "cattle-1"), msg("waits", "cattle-2")});
    loop.run_until([&] { return inner.total_started() == 1; });
    p.stop_intake();
    loop.run_until([&] { return p.idle(); });
    REQUIRE(src.outcomes[outcome::released] == 1);

    // Its redelivery is a first claim, not a restart that died half-way.
    restart_claim waits = restart_claim::done, runs = restart_claim::proceed;
    rt::task_scope scope;
    scope.spawn(claim_into(store, message{"waits", "cattle-2", "cattle-2.example.net"}, waits));
    scope.spawn(claim_into(store, message{"runs", "cattle-1", "cattle-1.example.net"}, runs));
    loop.run_until([&] { return scope.size() == 0; });
    CHECK(waits == restart_claim::proceed);
    CHECK(runs == restart_claim::done);
}

TEST_CASE("sqlite: release_claim removes an unfinished start, never a finished restart") {
    auto db = (std::filesystem::temp_directory_path() /
               ("mayhem-release-claim-" + std::to_string(::getpid()) + ".db"))
                  .string();
    std::filesystem::remove(db);
    {
        rt::loop loop;
        sqlite_store st(loop, sqlite_options{db});
        message a{"a", "cattle-1", "cattle-1.example.net"};
        message b{"b", "cattle-2", "cattle-2.example.net"};
        std::vector<restart_claim> seen;
        rt::task_scope scope;
        scope.spawn([](sqlite_store& s, message x, message y,
                       std::vector<restart_claim>& out) -> rt::task<void> {
            out.push_back((co_await s.claim_restart(x)).kind); // proceed
            co_await s.release_claim(x);
            out.push_back((co_await s.claim_restart(x)).kind); // proceed again: nothing ran
            out.push_back((co_await s.claim_restart(y)).kind); // proceed
            co_await s.finish_restart(y, restart_result{restart_status::ok, {}});
            co_await s.release_claim(y);                       // finished: stays
            out.push_back((co_await s.claim_restart(y)).kind); // done
            co_await s.close();
        }(st, a, b, seen));
        loop.run_until([&] { return scope.size() == 0; });
        REQUIRE(seen.size() == 4);
        CHECK(seen[0] == restart_claim::proceed);
        CHECK(seen[1] == restart_claim::proceed);
        CHECK(seen[2] == restart_claim::proceed);
        CHECK(seen[3] == restart_claim::done);
    }
    for (const char* suffix : {"", "-wal", "-shm"})
        std::filesystem::remove(db + suffix);
}

TEST_CASE("a restart the store could not claim is retried without using up an attempt") {
    rt::loop loop;
    script_source src;
    flaky_record_store store(loop, 0, 1);
    counting_restarter inner(loop, 1ms);
    restart_guard guard(loop, guard_options{}, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    opts.max_attempts = 1; // the last attempt: a failed restart would be dead-lettered
    pipeline p(loop, opts, src, store, guard);
    p.start();
    src.feed({msg("locked", "cattle-1")});
    loop.run_until([&] { return src.pending.empty() && p.idle(); });
    CHECK(inner.total_started() == 0);
    CHECK(src.outcomes[outcome::retried] == 1);
    CHECK(src.outcomes[outcome::dead_lettered] == 0);
}

TEST_CASE("an unfinished restart the verify command finds done is not run a second time") {
    rt::loop loop;
    script_source src;
    memory_store store(loop, latency_range{}, 1);
    counting_restarter inner(loop, 1ms);
    inner.verifies = true;
    restart_guard guard(loop, guard_options{}, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    pipeline p(loop, opts, src, store, guard);
    p.start();
    // A worker claimed the restart and died before it recorded the end.
    restart_claim first = restart_claim::held;
    rt::task_scope scope;
    scope.spawn(claim_into(store, message{"left", "cattle-1", "cattle-1.example.net"}, first));
    loop.run_until([&] { return scope.size() == 0; });
    REQUIRE(first == restart_claim::proceed);

    src.feed({msg("left", "cattle-1")});
    loop.run_until([&] { return src.pending.empty() && p.idle(); });
    CHECK(inner.verified == 1);
    CHECK(inner.total_started() == 0);
    CHECK(src.outcomes[outcome::acked] == 1);
    CHECK(p.stats().unfinished_verified.get() == 1);
    CHECK(p.stats().restarts[static_cast<std::size_t>(restart_status::ok)].get() == 1);

    inner.verifies = false; // without a verify command the redelivery runs it again
    restart_claim again = restart_claim::held;
    scope.spawn(claim_into(store, message{"left2", "cattle-2", "cattle-2.example.net"}, again));
    loop.run_until([&] { return scope.size() == 0; });
    src.feed({msg("left2", "cattle-2")});
    loop.run_until([&] { return src.pending.empty() && p.idle(); });
    CHECK(inner.total_started() == 1);
}
