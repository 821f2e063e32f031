// The rails of the restart guard under the faults of issue 15, with the pipeline in front: a
// store that fails or stalls the cooldown claim, a pause file that appears while a restart is
// being admitted, a thread pool that never answers the pause file's stat, a breaker fed by one
// host failing again and again.
#include "../pipeline/script_source.hpp"
#include "pipeline/pipeline.hpp"
#include "restart/restart_guard.hpp"
#include "store/memory_store.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <doctest/doctest.h>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <unistd.h>

using namespace mayhem;
using mayhem::testing::script_source;
using namespace std::chrono_literals;

namespace {

// Counts the restarts it starts; each ends with `result` after `latency`.
class scripted_restarter final : public restarter {
public:
    scripted_restarter(rt::loop& l, restart_status result, rt::millis latency = 1ms)
        : loop_(l), result_(result), latency_(latency) {}
    std::string_view name() const override { return "scripted"; }
    rt::task<restart_result> restart(const message&) override {
        ++started;
        co_await rt::sleep_for(loop_, latency_);
        co_return restart_result{result_, "scripted"};
    }
    int started = 0;

private:
    rt::loop& loop_;
    restart_status result_;
    rt::millis latency_;
};

// A memory store whose cooldown claim fails the first `fail_host_claims` times (a locked or
// full database: the fault cannot be made real in a unit test), or, while `hold_host_claims` is
// set, waits until `release` is set.
class faulty_host_store final : public store {
public:
    explicit faulty_host_store(rt::loop& l) : inner_(l, latency_range{}, 1) {}
    std::string_view name() const override { return "faulty"; }
    rt::task<save_result> save(const message& m, const delivery& d) override {
        return inner_.save(m, d);
    }
    rt::task<claim_answer> claim_restart(const message& m) override {
        return inner_.claim_restart(m);
    }
    rt::task<host_claim> claim_host(const message& m, std::chrono::system_clock::time_point now,
                                    std::chrono::milliseconds cooldown) override {
        ++host_claims;
        if (fail_host_claims > 0) {
            --fail_host_claims;
            throw std::runtime_error("store: database is locked");
        }
        if (hold_host_claims) co_await release;
        co_return co_await inner_.claim_host(m, now, cooldown);
    }
    rt::task<bool> finish_restart(const message& m, const restart_result& r) override {
        ++finishes;
        return inner_.finish_restart(m, r);
    }
    rt::task<void> release_claim(const message& m) override { return inner_.release_claim(m); }
    void complete(const message& m, const verdict& v) override { inner_.complete(m, v); }
    rt::task<void> close() override { return inner_.close(); }

    int fail_host_claims = 0;
    bool hold_host_claims = false;
    rt::event release;
    int host_claims = 0, finishes = 0;

private:
    memory_store inner_;
};

std::string msg(const std::string& id, const std::string& instance) {
    return R"({"message_id":")" + id + R"(","instance_name":")" + instance + R"("})";
}

// A temporary directory for a pause file, removed at the end.
struct temp_dir {
    std::filesystem::path path;
    temp_dir() {
        std::string t = (std::filesystem::temp_directory_path() / "mayhem-rails-XXXXXX").string();
        REQUIRE(mkdtemp(t.data()) != nullptr);
        path = t;
    }
    ~temp_dir() { std::filesystem::remove_all(path); }
};

void touch(const std::filesystem::path& p) {
    std::ofstream(p).put('\n');
}

// Keeps the loop turning (the guard's pause timer does not keep it alive by itself) while it
// lives: a ref'd libuv timer every 5 ms.
class keep_alive {
public:
    explicit keep_alive(rt::loop& loop) : loop_(loop) {
        uv_timer_init(loop.get(), &t_);
        uv_timer_start(
            &t_, [](uv_timer_t*) {}, 5, 5);
    }
    keep_alive(const keep_alive&) = delete;
    keep_alive& operator=(const keep_alive&) = delete;
    ~keep_alive() {
        t_.data = &closed_;
        uv_close(reinterpret_cast<uv_handle_t*>(&t_),
                 [](uv_handle_t* h) { *static_cast<bool*>(h->data) = true; });
        loop_.run_until([&] { return closed_; });
    }

private:
    rt::loop& loop_;
    uv_timer_t t_{};
    bool closed_ = false;
};

// Runs the loop until `done()` or `limit` has passed (so a rail that does not hold fails the
// test instead of hanging it).
template <class Pred>
void turn_until(rt::loop& loop, Pred done, std::chrono::milliseconds limit = 5000ms) {
    keep_alive k(loop);
    auto until = std::chrono::steady_clock::now() + limit;
    loop.run_until([&] { return done() || std::chrono::steady_clock::now() >= until; });
}

void run_for(rt::loop& loop, std::chrono::milliseconds d) {
    turn_until(
        loop, [] { return false; }, d);
}

std::uint64_t restarts(const pipeline& p, restart_status s) {
    return p.stats().restarts[static_cast<std::size_t>(s)].get();
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Case 3: a store error in the cooldown claim is a store error, not a failed restart.
// ---------------------------------------------------------------------------------------------

TEST_CASE(
    "rails: a store error in the cooldown claim uses no attempt and never feeds the breaker") {
    rt::loop loop;
    script_source src;
    faulty_host_store store(loop);
    store.fail_host_claims = 3;
    scripted_restarter inner(loop, restart_status::ok);
    guard_options g;
    g.cooldown = 1h;
    g.breaker = breaker_options{1, 10min, 5min}; // one failure would open it
    restart_guard guard(loop, g, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    opts.max_attempts = 1; // a failed restart would be dead-lettered at once
    pipeline p(loop, opts, src, store, guard);
    p.start();
    src.feed({msg("a", "cattle-a"), msg("b", "cattle-b"), msg("c", "cattle-c")});
    turn_until(loop, [&] { return src.pending.empty() && p.idle(); });

    CHECK(store.host_claims == 3);
    CHECK(inner.started == 0);
    CHECK(src.outcomes[outcome::retried] == 3); // not dead-lettered: no attempt was used
    CHECK(src.outcomes[outcome::dead_lettered] == 0);
    CHECK(guard.breaker() == breaker_state::closed);
    CHECK(guard.stats().breaker_opened.get() == 0);
    CHECK(restarts(p, restart_status::failed) == 0); // no restart ran, none failed
    CHECK(store.finishes == 0);                      // nothing recorded as a restart's end
}

// ---------------------------------------------------------------------------------------------
// Case 4: the pause holds every restart not yet spawned, and a stat that never answers pauses.
// ---------------------------------------------------------------------------------------------

TEST_CASE("rails: a pause file that appears while a restart is being admitted holds it") {
    temp_dir dir;
    auto pause = dir.path / "pause";
    rt::loop loop;
    script_source src;
    faulty_host_store store(loop);
    store.hold_host_claims = true;
    scripted_restarter inner(loop, restart_status::ok);
    guard_options g;
    g.cooldown = 1h;
    g.pause_file = pause.string();
    g.pause_check = 10ms;
    restart_guard guard(loop, g, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    pipeline p(loop, opts, src, store, guard);
    p.start();
    src.feed({msg("a", "cattle-a")});
    // Admitted (a slot, the breaker closed, no pause): now in the cooldown claim.
    turn_until(loop, [&] { return store.host_claims == 1; });
    CHECK(guard.stats().running.get() == 1);
    touch(pause);
    turn_until(loop, [&] { return guard.paused(); });
    REQUIRE(guard.paused());
    store.release.set(); // the claim answers while the pause is on
    run_for(loop, 100ms);
    CHECK(inner.started == 0);
    CHECK(guard.stats().running.get() == 0); // it gave its slot back and waits again
    CHECK(guard.stats().waiting.get() == 1);

    std::filesystem::remove(pause);
    turn_until(loop, [&] { return src.pending.empty() && p.idle(); });
    CHECK(inner.started == 1);
    CHECK(src.outcomes[outcome::acked] == 1);
}

namespace {
// Occupies every thread of libuv's pool until released, as a stat hanging on a dead NFS server
// would occupy one: work queued behind them (the pause file's stat) does not run.
struct pool_blocker {
    std::mutex mu;
    std::condition_variable cv;
    bool released = false;
    std::atomic<int> running{0};
    std::vector<uv_work_t> reqs;

    pool_blocker(rt::loop& loop) {
        int n = 4; // libuv's default pool size
        if (const char* s = std::getenv("UV_THREADPOOL_SIZE")) n = std::max(n, std::atoi(s));
        reqs.resize(static_cast<std::size_t>(n));
        for (auto& r : reqs) {
            r.data = this;
            uv_queue_work(
                loop.get(), &r,
                [](uv_work_t* w) {
                    auto* self = static_cast<pool_blocker*>(w->data);
                    ++self->running;
                    std::unique_lock lock(self->mu);
                    self->cv.wait(lock, [&] { return self->released; });
                },
                [](uv_work_t* w, int) { --static_cast<pool_blocker*>(w->data)->running; });
        }
        while (running.load() < n)
            std::this_thread::sleep_for(1ms);
    }
    void release() {
        {
            std::lock_guard lock(mu);
            released = true;
        }
        cv.notify_all();
    }
};
} // namespace

TEST_CASE("rails: a pause file whose stat never answers counts as present") {
    temp_dir dir;
    rt::loop loop;
    faulty_host_store store(loop);
    scripted_restarter inner(loop, restart_status::ok);
    guard_options g;
    g.pause_file = (dir.path / "pause").string(); // absent
    g.pause_check = 10ms;
    g.pause_timeout = 50ms;
    restart_guard guard(loop, g, store, inner);
    CHECK_FALSE(guard.paused());
    pool_blocker blocker(loop);
    turn_until(loop, [&] { return guard.paused(); });
    CHECK(guard.stats().paused.get() == 1);
    blocker.release(); // the stat answers (no such file): restarts resume
    turn_until(loop, [&] { return !guard.paused() && blocker.running.load() == 0; });
    CHECK(blocker.running.load() == 0);
    CHECK(guard.stats().paused.get() == 0);
}

// ---------------------------------------------------------------------------------------------
// Case 7: the breaker counts failed hosts, and its gauge shows what a new restart would meet.
// ---------------------------------------------------------------------------------------------

TEST_CASE("rails: one host failing again and again does not open the breaker; two hosts do") {
    rt::loop loop;
    script_source src;
    memory_store store(loop, latency_range{}, 1);
    scripted_restarter inner(loop, restart_status::failed);
    guard_options g;
    g.breaker = breaker_options{2, 10min, 50ms};
    restart_guard guard(loop, g, store, inner);
    pipeline_options opts;
    opts.seed = 3;
    opts.max_attempts = 1;
    opts.max_in_flight = 1; // one after the other: no coalescing
    pipeline p(loop, opts, src, store, guard);
    p.start();
    src.feed({msg("a1", "cattle-a"), msg("a2", "cattle-a"), msg("a3", "cattle-a")});
    turn_until(loop, [&] { return src.pending.empty() && p.idle(); });
    CHECK(inner.started == 3);
    CHECK(guard.breaker() == breaker_state::closed);

    src.feed({msg("b1", "cattle-b")});
    turn_until(loop, [&] { return src.pending.empty() && p.idle(); });
    CHECK(guard.stats().breaker_opened.get() == 1);
    CHECK(guard.stats().breaker_state.get() == 1);
    // No traffic: once the cooldown is over, a new restart would be the trial (half-open).
    turn_until(loop, [&] { return guard.stats().breaker_state.get() != 1; });
    CHECK(guard.stats().breaker_state.get() == 2);
}
