#include "pipeline/pipeline.hpp"

#include "restart/restart_guard.hpp"
#include "restart/simulate_restarter.hpp"
#include "script_source.hpp"
#include "store/memory_store.hpp"

#include <doctest/doctest.h>
#include <map>
#include <stdexcept>

using namespace mayhem;
using mayhem::testing::script_source;
using namespace std::chrono_literals;

namespace {

std::string msg(const std::string& id, const std::string& instance = "cattle-0001") {
    return R"({"message_id":")" + id + R"(","instance_name":")" + instance + R"("})";
}

struct fixture {
    rt::loop loop;
    script_source src;
    memory_store store;
    simulate_restarter restarter;
    restart_guard guard;
    pipeline_options opts;
    std::unique_ptr<pipeline> p;

    fixture(latency_range lat, std::size_t max_in_flight, std::size_t queue_capacity)
        : store(loop, lat, 1), restarter(loop, lat, 0.0, 2),
          guard(loop, guard_options{}, store, restarter) {
        opts.max_in_flight = max_in_flight;
        opts.queue_capacity = queue_capacity;
        opts.lease_extend_interval = 20ms;
        opts.seed = 3;
        p = std::make_unique<pipeline>(loop, opts, src, store, guard);
        p->start();
    }
    void run_until_idle() {
        loop.run_until([&] { return src.pending.empty() && p->idle(); });
    }
};

} // namespace

TEST_CASE("backpressure: the source is never granted more than the queue can hold") {
    fixture f({10ms, 10ms}, 2, 3);
    CHECK(f.src.demand == 3);
    std::vector<std::string> payloads;
    for (int i = 0; i < 20; ++i)
        payloads.push_back(msg("id-" + std::to_string(i)));
    f.src.feed(payloads);
    // 2 in flight, 3 queued, and no demand left: the source is paused.
    CHECK(f.p->stats().in_flight.get() == 2);
    CHECK(f.p->stats().queue_depth.get() == 3);
    CHECK(f.src.demand == 0);
    CHECK(f.src.pending.size() == 15);
    f.run_until_idle();
    // Resumed as room appeared, and all were processed.
    CHECK(f.src.delivered == 20);
    CHECK(f.src.outcomes[outcome::acked] == 20);
    CHECK(f.src.max_demand_seen <= 3);
}

TEST_CASE("every delivery is settled exactly once") {
    fixture f({0ms, 5ms}, 4, 4);
    std::vector<std::string> payloads;
    for (int i = 0; i < 50; ++i)
        payloads.push_back(i % 7 == 0 ? "garbage" : msg("m" + std::to_string(i)));
    f.src.feed(payloads);
    f.run_until_idle();
    CHECK(f.src.settles.size() == 50);
    for (const auto& [ref, n] : f.src.settles)
        CHECK(n == 1);
    CHECK(f.src.outcomes[outcome::dead_lettered] == 8);
    CHECK(f.src.outcomes[outcome::acked] == 42);
    CHECK(f.p->stats().decode_errors[static_cast<int>(decode_kind::invalid_json)].get() == 8);
}

TEST_CASE("leases are renewed while a message is in flight and stop when it completes") {
    fixture f({500ms, 500ms}, 10, 10);
    f.src.feed({msg("slow")});
    f.run_until_idle();
    int during = f.src.extends["r1"];
    CHECK(during >=
          2); // 500 ms of work, renewed every 20 ms: wide margin for slow (sanitized, loaded) runs
    CHECK(f.p->stats().lease_extensions.get() == static_cast<std::uint64_t>(during));
    // After completion, ticks go on but the lease is gone.
    rt::task_scope wait;
    wait.spawn([](rt::loop& l) -> rt::task<void> { co_await rt::sleep_for(l, 100ms); }(f.loop));
    f.loop.run_until([&] { return wait.size() == 0; });
    CHECK(f.src.extends["r1"] == during);
}

TEST_CASE("a second delivery of an id in flight shares the first one's outcome: one restart") {
    fixture f({30ms, 30ms}, 10, 10);
    f.src.feed({msg("same", "cattle-aaaa"), msg("same", "cattle-aaaa")});
    f.run_until_idle();
    CHECK(f.src.outcomes[outcome::acked] == 1);
    CHECK(f.src.outcomes[outcome::skipped] == 1);
    CHECK(f.p->stats().restarts[static_cast<int>(restart_status::ok)].get() == 1);
}

TEST_CASE("a second delivery of an id in flight has its lease renewed while it waits") {
    // Behind a long restart, a duplicate delivery whose lease lapsed would be reclaimed by a
    // peer, which would find the claim unfinished and restart the same host concurrently.
    fixture f({200ms, 200ms}, 10, 10);
    f.src.feed({msg("same", "cattle-aaaa"), msg("same", "cattle-aaaa")});
    f.run_until_idle();
    CHECK(f.src.extends["r1"] >= 2);
    CHECK(f.src.extends["r2"] >= 2);
}

TEST_CASE("a redelivery of a completed id is skipped without a second restart") {
    fixture f({0ms, 0ms}, 10, 10);
    f.src.feed({msg("again")});
    f.run_until_idle();
    f.src.feed({msg("again")});
    f.run_until_idle();
    CHECK(f.src.outcomes[outcome::acked] == 1);
    CHECK(f.src.outcomes[outcome::skipped] == 1);
    CHECK(f.p->stats().restarts[static_cast<int>(restart_status::ok)].get() == 1);
    CHECK(f.p->stats().restarts[static_cast<int>(restart_status::skipped_duplicate)].get() == 1);
}

TEST_CASE("release_all releases queued and in-flight deliveries, each once") {
    fixture f({10s, 10s}, 3, 2);
    std::vector<std::string> payloads;
    for (int i = 0; i < 10; ++i)
        payloads.push_back(msg("r" + std::to_string(i)));
    f.src.feed(payloads);
    CHECK(f.p->stats().in_flight.get() == 3);
    f.p->release_all();
    CHECK(f.src.stopped);
    CHECK(f.src.outcomes[outcome::released] == 5);
    CHECK(f.p->stats().completed[static_cast<int>(outcome::released)].get() == 5);
    CHECK(f.p->idle());
    CHECK(f.loop.timers().size() == 0); // the sleeping tasks' timers are gone too
}

TEST_CASE("stats: received equals the sum of outcomes") {
    fixture f({0ms, 2ms}, 8, 8);
    std::vector<std::string> payloads;
    for (int i = 0; i < 100; ++i)
        payloads.push_back(i % 10 == 0 ? "[]" : msg("s" + std::to_string(i)));
    f.src.feed(payloads);
    f.run_until_idle();
    const auto& st = f.p->stats();
    CHECK(st.received.get() == 100);
    CHECK(st.completed_total() == 100);
}

namespace {
// A restarter whose restart throws: at once, or after a sleep (from inside a resumed frame).
class throwing_restarter final : public restarter {
public:
    explicit throwing_restarter(rt::loop& l) : loop_(l) {}
    std::string_view name() const override { return "throwing"; }
    rt::task<restart_result> restart(const message& m) override {
        if (m.message_id() == "late") co_await rt::sleep_for(loop_, 5ms);
        throw std::runtime_error("restart of " + std::string(m.hostname()) + " blew up");
    }

private:
    rt::loop& loop_;
};
} // namespace

TEST_CASE("a restarter that throws is a failed restart: retried with its reason, never acked") {
    for (bool cooldown : {false, true}) {
        CAPTURE(cooldown); // with a cooldown, the restart starts from the guard's wait()
        rt::loop loop;
        script_source src;
        memory_store store(loop, latency_range{}, 1);
        throwing_restarter inner(loop);
        guard_options g;
        if (cooldown) g.cooldown = 1ms;
        restart_guard guard(loop, g, store, inner);
        pipeline_options opts;
        opts.seed = 3;
        pipeline p(loop, opts, src, store, guard);
        p.start();
        // Two hosts, so neither restart is coalesced with the other.
        src.feed({msg("early", "cattle-1"), msg("late", "cattle-2")});
        loop.run_until([&] { return src.pending.empty() && p.idle(); });
        CHECK(src.outcomes[outcome::retried] == 2);
        CHECK(src.outcomes[outcome::acked] == 0);
        CHECK(p.stats().restarts[static_cast<std::size_t>(restart_status::failed)].get() == 2);
        CHECK(guard.stats().running.get() == 0);
    }
}

TEST_CASE("two messages for one host at once: one restart, the second coalesced with it") {
    rt::loop loop;
    script_source src;
    latency_range lat{20ms, 20ms};
    memory_store store(loop, lat, 1);
    simulate_restarter inner(loop, lat, 0.0, 2);
    restart_guard guard(loop, guard_options{}, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    pipeline p(loop, opts, src, store, guard);
    p.start();
    src.feed(
        {msg("first", "cattle-same"), msg("second", "cattle-same"), msg("other", "cattle-else")});
    loop.run_until([&] { return src.pending.empty() && p.idle(); });
    CHECK(src.outcomes[outcome::acked] == 3);
    auto restarts = [&](restart_status s) {
        return p.stats().restarts[static_cast<std::size_t>(s)].get();
    };
    CHECK(restarts(restart_status::ok) == 2);
    CHECK(restarts(restart_status::coalesced) == 1);
    CHECK(guard.stats().coalesced.get() == 1);
}
