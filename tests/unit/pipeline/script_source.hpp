// A scripted source for the pipeline's unit tests: a test double for the seam, standing in for a
// broker.
#pragma once

#include "sources/source.hpp"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

namespace mayhem::testing {

// A scripted source: holds payloads to deliver, honours demand exactly, and records everything
// the pipeline asks of it. A test double for the seam, standing in for a broker.
class script_source final : public source {
public:
    std::vector<std::string> pending; // payloads not yet delivered
    std::size_t demand = 0;
    std::size_t max_demand_seen = 0;
    std::size_t delivered = 0;
    std::map<std::string, int> settles; // ref -> times settled
    std::map<outcome, int> outcomes;
    std::map<std::string, int> extends; // ref -> times extended
    bool stopped = false;

    void feed(std::vector<std::string> payloads) {
        for (auto& p : payloads)
            pending.push_back(std::move(p));
        pump();
    }
    std::string_view name() const override { return "script"; }
    void start(source_sink& s) override { sink = &s; }
    void request(std::size_t n) override {
        demand += n;
        max_demand_seen = std::max(max_demand_seen, demand);
        pump();
    }
    void extend(std::span<const delivery* const> ds) override {
        for (const auto* d : ds)
            ++extends[d->ref];
    }
    void settle(delivery d, const verdict& v) override {
        ++settles[d.ref];
        ++outcomes[v.what];
        sink->settled(v.what);
    }
    void stop() override { stopped = true; }
    // The transport gave delivery `ref` to a peer (its lease lapsed).
    void lose(const std::string& ref) { sink->lease_lost(ref); }
    bool finished() const override { return pending.empty(); }
    void close() override {}

private:
    void pump() {
        if (pumping || !sink) return;
        pumping = true;
        while (demand > 0 && !pending.empty() && !stopped) {
            delivery d;
            d.payload = std::move(pending.front());
            pending.erase(pending.begin());
            d.ref = "r" + std::to_string(++delivered);
            --demand;
            sink->deliver(std::move(d));
        }
        pumping = false;
    }
    source_sink* sink = nullptr;
    bool pumping = false;
};

} // namespace mayhem::testing
