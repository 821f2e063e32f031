// The per-message cost of the signature check (issue 19): decode_into() on the same request
// unsigned without keys, signed with one key configured, and signed with two (rotation: every
// key is tried). A bench tool, not part of mayhem: built beside build/mayhem, run by
// `scripts/bench --only auth`. Prints one JSON line of nanoseconds per decode, each the best of
// --reps repetitions of --count decodes, timed with the thread's CPU clock (a loaded machine
// slows the wall clock more than this).
#include "message/auth.hpp"
#include "message/message.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>

namespace {

double thread_cpu_ns() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

// Best per-decode time over `reps` runs of `count` decodes; exits 1 if a decode fails.
double per_decode_ns(const std::string& payload, const mayhem::decode_options& o,
                     std::uint64_t count, int reps) {
    double best = 1e300;
    mayhem::message m;
    for (int r = 0; r < reps; ++r) {
        double t0 = thread_cpu_ns();
        for (std::uint64_t i = 0; i < count; ++i) {
            if (auto err = mayhem::decode_into(m, payload, o)) {
                std::fprintf(stderr, "decode_bench: %s\n", err->reason.c_str());
                std::exit(1);
            }
        }
        best = std::min(best, (thread_cpu_ns() - t0) / static_cast<double>(count));
    }
    return best;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"Nanoseconds per decode of a request: unsigned, signed (1 key), signed (2 keys)"};
    std::uint64_t count = 200'000;
    int reps = 5;
    app.add_option("--count", count, "decodes per repetition")->capture_default_str();
    app.add_option("--reps", reps, "repetitions (the best is kept)")->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    // The simulator's shape: a UUID id, an instance name, a reason.
    const std::string plain = R"({"message_id":"0b6f7c1e-3a5d-4e8f-9c2b-7d1a6e4f8a90",)"
                              R"("instance_name":"cattle-k7oo","reason":"kernel update"})";
    auto one =
        std::make_shared<mayhem::auth::key_ring>(std::vector<std::string>{std::string(32, 'n')});
    auto two = std::make_shared<mayhem::auth::key_ring>(
        std::vector<std::string>{std::string(32, 'o'), std::string(32, 'n')});
    // Signed now: valid for the default 10 minutes, far longer than the run.
    auto signed_payload =
        *mayhem::auth::sign_request(plain, *one, std::chrono::system_clock::now());

    mayhem::decode_options none, with_one, with_two;
    with_one.auth_keys = one;
    with_two.auth_keys = two;
    double u = per_decode_ns(plain, none, count, reps);
    double s1 = per_decode_ns(signed_payload, with_one, count, reps);
    double s2 = per_decode_ns(signed_payload, with_two, count, reps);
    std::printf(R"({"unsigned_ns":%.1f,"signed_ns":%.1f,"signed_two_keys_ns":%.1f,"count":%llu,)"
                R"("reps":%d})"
                "\n",
                u, s1, s2, static_cast<unsigned long long>(count), reps);
    return 0;
}
