// Durations, latency ranges and byte sizes as they come from flags, variables and the config
// file: no input may crash or overflow (UBSan checks the double-to-integer conversions), and
// what is accepted reads back the same from its own printed form.
#include "runtime/duration.hpp"

#include "check.hpp"

#include <cstdint>
#include <string>
#include <string_view>

using namespace mayhem;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view s(reinterpret_cast<const char*>(data), size);

    if (auto d = parse_duration(s)) {
        FUZZ_CHECK(d->count() >= 0);
        auto again = parse_duration(format_duration(*d));
        FUZZ_CHECK(again && *again == *d);
    }
    if (auto r = parse_latency_range(s)) {
        FUZZ_CHECK(r->min.count() >= 0 && r->min <= r->max);
        auto again = parse_latency_range(format_latency_range(*r));
        FUZZ_CHECK(again && again->min == r->min && again->max == r->max);
    }
    if (auto b = parse_bytes(s)) {
        auto again = parse_bytes(std::to_string(*b));
        FUZZ_CHECK(again && *again == *b);
    }
    return 0;
}
