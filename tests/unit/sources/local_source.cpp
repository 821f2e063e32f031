// local_source: demand accounting and redelivery of retried messages, on a real loop.
#include "sources/local_source.hpp"

#include <doctest/doctest.h>
#include <string>
#include <vector>

using namespace mayhem;

namespace {

// Produces `total` numbered deliveries, as many per turn as it is granted.
class counting_source final : public local_source {
public:
    counting_source(rt::loop& l, std::size_t total) : local_source(l), total_(total) {}
    std::string_view name() const override { return "counting"; }

protected:
    std::size_t produce(std::size_t n) override {
        std::size_t k = std::min(n, total_ - next_);
        for (std::size_t i = 0; i < k; ++i) {
            delivery d;
            d.payload = std::to_string(next_);
            d.tag = next_++;
            emit(std::move(d));
        }
        return k;
    }
    bool exhausted() const override { return next_ >= total_; }

private:
    std::size_t total_;
    std::size_t next_ = 0;
};

// Records deliveries. Like the pipeline taking a delivery straight into flight, it grants the
// demand back from inside deliver() — here only for redeliveries, so the test controls when new
// messages are asked for.
struct recording_sink final : source_sink {
    source* src = nullptr;
    std::vector<delivery> got;
    std::size_t settled_count = 0;

    void deliver(delivery d) override {
        bool redelivery = d.attempt > 1;
        got.push_back(std::move(d));
        if (redelivery) src->request(1);
    }
    void settled(outcome) override { ++settled_count; }
    void source_changed() override {}
};

struct flag_timer final : rt::timer_entry {
    bool fired = false;
    void fire() noexcept override { fired = true; }
};

} // namespace

TEST_CASE("local_source: redeliveries that fill a whole turn do not stall new deliveries") {
    rt::loop loop;
    counting_source src(loop, 10);
    recording_sink sink;
    sink.src = &src;
    src.start(sink);

    src.request(2);
    flag_timer guard; // a failing test ends here instead of hanging
    loop.timers().arm(guard, rt::millis{5000});
    loop.run_until([&] { return sink.got.size() == 2 || guard.fired; });
    REQUIRE(sink.got.size() == 2);

    // Both fail: the source holds them and, after their zero backoff, has them ready again. No
    // demand is granted yet, so they wait in the source.
    for (std::size_t i = 0; i < 2; ++i)
        src.settle(std::move(sink.got[i]), verdict{outcome::retried, "test", rt::millis{0}});
    CHECK(sink.settled_count == 2);
    flag_timer later;
    loop.timers().arm(later, rt::millis{20});
    loop.run_until([&] { return later.fired; });
    CHECK(sink.got.size() == 2);

    // Now two deliveries are granted. The two redeliveries take the whole turn and the sink
    // grants their demand back at once: the source must go on to produce two new messages.
    src.request(2);
    loop.run_until([&] { return sink.got.size() >= 6 || guard.fired; });
    CHECK_FALSE(guard.fired);
    REQUIRE(sink.got.size() == 6);
    CHECK(sink.got[2].attempt == 2);
    CHECK(sink.got[3].attempt == 2);
    CHECK(sink.got[4].attempt == 1);
    CHECK(sink.got[5].attempt == 1);
    CHECK(sink.got[5].payload == "3");

    guard.cancel();
    src.close();
    CHECK(src.abandoned() == 0);
}
