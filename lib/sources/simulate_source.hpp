// `--source simulate` (the default): the talk's publisher. Generates restart requests with
// unique ids and random `cattle-xxxx` instance names, at --rate per second (0: as fast as the
// pipeline takes them), --messages in all (0: forever), with --bad-ratio of them undecodable.
// Payloads are formatted straight into their buffer: the simulator must not dominate what a
// benchmark measures.
#pragma once

#include "sources/local_source.hpp"

#include <random>

namespace mayhem {

struct simulate_options {
    std::uint64_t messages = 0; // 0: forever
    double rate = 0;            // per second; 0: unlimited
    double bad_ratio = 0;
    std::uint64_t seed = 0;
};

class simulate_source final : public local_source {
public:
    simulate_source(rt::loop& loop, simulate_options opts);
    std::string_view name() const override { return "simulate"; }

    std::uint64_t published() const noexcept { return published_; }

    // Formats one generated payload into `out` (exposed for `mayhem publish` and tests).
    void format_message(std::string& out, std::uint64_t seq);
    void format_bad(std::string& out, std::uint64_t seq);

protected:
    std::size_t produce(std::size_t n) override;
    bool exhausted() const override;
    void on_start() override;

private:
    struct wake final : rt::timer_entry {
        simulate_source& s;
        explicit wake(simulate_source& src) : s(src) {}
        void fire() noexcept override { s.resume(); }
    };

    simulate_options opts_;
    std::mt19937_64 rng_;
    std::uint64_t run_id_;
    std::uint64_t published_ = 0;
    std::uint64_t bad_threshold_; // a message is bad when rng() < this
    std::uint64_t started_ms_ = 0;
    wake wake_{*this};
};

} // namespace mayhem
