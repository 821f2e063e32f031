#include "sources/simulate_source.hpp"

#include <cmath>
#include <limits>

namespace mayhem {

namespace {
constexpr char hex[] = "0123456789abcdef";
constexpr char alnum[] = "abcdefghijklmnopqrstuvwxyz0123456789";

void put_hex(char* out, std::uint64_t v, int digits) {
    for (int i = digits - 1; i >= 0; --i) {
        out[i] = hex[v & 0xF];
        v >>= 4;
    }
}
} // namespace

simulate_source::simulate_source(rt::loop& loop, simulate_options opts)
    : local_source(loop), opts_(opts), rng_(opts.seed ? opts.seed : std::random_device{}()),
      run_id_(rng_()) {
    double r = std::clamp(opts_.bad_ratio, 0.0, 1.0);
    bad_threshold_ = r >= 1.0 ? std::numeric_limits<std::uint64_t>::max()
                              : static_cast<std::uint64_t>(r * 18446744073709551616.0);
}

void simulate_source::on_start() {
    started_ms_ = loop().now();
}

bool simulate_source::exhausted() const {
    return opts_.messages != 0 && published_ >= opts_.messages;
}

// A UUID-shaped id: 48 random bits fixed per run, then the sequence number, so every id of a run
// is unique and ids of different runs differ.
void simulate_source::format_message(std::string& out, std::uint64_t seq) {
    static constexpr std::string_view head = R"({"message_id":")";
    static constexpr std::string_view mid = R"(","instance_name":"cattle-)";
    static constexpr std::string_view tail = R"("})";
    out.resize(head.size() + 36 + mid.size() + 4 + tail.size());
    char* p = out.data();
    p = std::copy(head.begin(), head.end(), p);
    put_hex(p, run_id_ >> 16, 8);
    p[8] = '-';
    put_hex(p + 9, run_id_ & 0xFFFF, 4);
    p[13] = '-';
    put_hex(p + 14, 0x4000 | ((seq >> 48) & 0x0FFF), 4);
    p[18] = '-';
    put_hex(p + 19, 0x8000 | ((seq >> 36) & 0x0FFF), 4);
    p[23] = '-';
    put_hex(p + 24, seq & 0xFFFFFFFFFULL, 12);
    p += 36;
    p = std::copy(mid.begin(), mid.end(), p);
    std::uint64_t r = rng_();
    for (int i = 0; i < 4; ++i, r >>= 8)
        *p++ = alnum[(r & 0xFF) % 36];
    std::copy(tail.begin(), tail.end(), p);
}

void simulate_source::format_bad(std::string& out, std::uint64_t seq) {
    // A mix of the ways a payload goes wrong, so every decode path is exercised.
    switch (seq % 5) {
    case 0:
        out = "not json at all";
        break;
    case 1:
        out = R"({"message_id":")" + std::to_string(seq) + R"("})";
        break; // no instance
    case 2:
        out = R"({"message_id":)" + std::to_string(seq) + R"(,"instance_name":"cattle-x"})";
        break;
    case 3:
        out = "[1,2,3]";
        break;
    default:
        out = "{\"message_id\":\"\xff\xfe\",\"instance_name\":\"cattle-x\"}";
        break;
    }
}

std::size_t simulate_source::produce(std::size_t n) {
    if (opts_.messages != 0) n = std::min<std::uint64_t>(n, opts_.messages - published_);
    if (opts_.rate > 0) {
        // Token bucket from the start time: never ahead of rate * elapsed.
        auto elapsed = static_cast<double>(loop().now() - started_ms_) / 1000.0;
        auto allowed = static_cast<std::uint64_t>(std::floor(elapsed * opts_.rate)) + 1;
        if (allowed <= published_) {
            auto next_ms = static_cast<std::int64_t>(
                               std::ceil(static_cast<double>(published_) / opts_.rate * 1000.0)) -
                           static_cast<std::int64_t>(loop().now() - started_ms_);
            if (!wake_.armed())
                loop().timers().arm(wake_, rt::millis{std::max<std::int64_t>(1, next_ms)});
            return 0;
        }
        n = std::min<std::uint64_t>(n, allowed - published_);
    }
    for (std::size_t i = 0; i < n; ++i) {
        delivery d;
        std::uint64_t seq = published_++;
        if (bad_threshold_ != 0 && rng_() < bad_threshold_)
            format_bad(d.payload, seq);
        else
            format_message(d.payload, seq);
        d.tag = seq;
        emit(std::move(d));
    }
    return n;
}

} // namespace mayhem
