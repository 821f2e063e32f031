// --on-unfinished-restart: what decide() and the pipeline do with a message whose restart was
// recorded as started but never finished.
#include "pipeline/outcome.hpp"
#include "pipeline/pipeline.hpp"
#include "restart/simulate_restarter.hpp"
#include "store/sqlite_store.hpp"

#include <doctest/doctest.h>
#include <filesystem>
#include <unistd.h>
#include <vector>

using namespace mayhem;
namespace fs = std::filesystem;

TEST_CASE("decide: a permanent restart failure is dead-lettered on the first attempt") {
    decide_inputs in;
    in.attempt = 1;
    in.max_attempts = 5;
    in.saved = save_result{};
    in.restarted = restart_result{restart_status::failed, "never finished", true};
    auto v = decide(in, backoff_policy{}, 0);
    CHECK(v.what == outcome::dead_lettered);
    CHECK(v.reason.find("never finished") != std::string::npos);

    in.restarted.permanent = false;
    CHECK(decide(in, backoff_policy{}, 0).what == outcome::retried);

    in.saved = save_result{false, "disk full"}; // a failed save still wins: retried, not lost
    in.restarted.permanent = true;
    CHECK(decide(in, backoff_policy{}, 0).what == outcome::retried);
}

namespace {

// Delivers fixed payloads on the next loop turn, records the verdicts.
class fake_source final : public source {
public:
    fake_source(rt::loop& l, std::vector<std::string> payloads)
        : loop_(l), payloads_(std::move(payloads)) {}
    std::string_view name() const override { return "fake"; }
    void start(source_sink& s) override {
        sink_ = &s;
        loop_.timers().arm(push_, rt::millis{0});
    }
    void request(std::size_t) override {}
    void settle(delivery, const verdict& v) override {
        verdicts.push_back(v);
        sink_->settled(v.what);
    }
    void stop() override {}
    bool finished() const override { return verdicts.size() == payloads_.size(); }
    void close() override {}
    std::vector<verdict> verdicts;

private:
    rt::loop& loop_;
    std::vector<std::string> payloads_;
    source_sink* sink_ = nullptr;
    rt::delayed_call push_{[this] {
        for (auto& p : payloads_)
            sink_->deliver(delivery{p, {}, 1, 0, 0});
    }};
};

// `starts` workers each claim m1's restart and "die" before it ends; then a pipeline with
// `policy` gets m1.
verdict run_with_policy(const std::string& db, unfinished_policy policy, int starts = 1,
                        std::uint32_t max_attempts = 5) {
    message m{"m1", "cattle-1", "cattle-1.example.net"};
    for (int i = 0; i < starts; ++i) {
        rt::loop loop;
        sqlite_store st(loop, sqlite_options{db});
        bool done = false;
        rt::task_scope scope;
        scope.spawn([](sqlite_store& s, message mm, bool& d) -> rt::task<void> {
            co_await s.claim_restart(mm);
            // Past the cooldown claim: the restart began (with a cooldown set, as with exec).
            co_await s.claim_host(mm, std::chrono::system_clock::now(), std::chrono::hours{1});
            co_await s.close();
            d = true;
        }(st, m, done));
        loop.run_until([&] { return done; });
    }
    rt::loop loop;
    sqlite_store st(loop, sqlite_options{db});
    fake_source src(loop, {R"({"message_id":"m1","instance_name":"cattle-1"})"});
    simulate_restarter rs(loop, latency_range{}, 0, 1);
    restart_guard guard(loop, guard_options{}, st, rs);
    pipeline_options o;
    o.on_unfinished = policy;
    o.max_attempts = max_attempts;
    o.seed = 1;
    pipeline p(loop, o, src, st, guard);
    p.start();
    loop.run_until([&] { return src.finished() && p.idle(); });
    CHECK(p.stats().unfinished_restarts.get() == 1);
    bool closed = false;
    rt::task_scope scope;
    scope.spawn([](sqlite_store& s, bool& c) -> rt::task<void> {
        co_await s.close();
        c = true;
    }(st, closed));
    loop.run_until([&] { return closed; });
    REQUIRE(src.verdicts.size() == 1);
    return src.verdicts[0];
}

} // namespace

TEST_CASE("pipeline: an unfinished restart is retried or dead-lettered per the policy") {
    std::string tmpl = (fs::temp_directory_path() / "mayhem-unfinished-XXXXXX").string();
    fs::path dir = ::mkdtemp(tmpl.data());
    CHECK(run_with_policy((dir / "retry.db").string(), unfinished_policy::retry).what ==
          outcome::acked);
    auto v = run_with_policy((dir / "dl.db").string(), unfinished_policy::dead_letter);
    CHECK(v.what == outcome::dead_lettered);
    CHECK(v.reason.find("never finished") != std::string::npos);
    fs::remove_all(dir);
}

TEST_CASE("pipeline: a request whose every start died with its worker is dead-lettered, not run "
          "again forever") {
    // A request that kills the worker running it: each worker that takes it over starts it and
    // dies. The store counts the starts; past --max-attempts the next worker dead-letters it.
    std::string tmpl = (fs::temp_directory_path() / "mayhem-poison-XXXXXX").string();
    fs::path dir = ::mkdtemp(tmpl.data());
    CHECK(run_with_policy((dir / "two.db").string(), unfinished_policy::retry, 2, 3).what ==
          outcome::acked);
    auto v = run_with_policy((dir / "three.db").string(), unfinished_policy::retry, 3, 3);
    CHECK(v.what == outcome::dead_lettered);
    CHECK(v.reason.find("started 3 times and never finished") != std::string::npos);
    fs::remove_all(dir);
}
