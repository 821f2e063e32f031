// A log line that a flood could repeat (bad input, a store that keeps failing) is written at most
// `per_second` times a second; what is held back is counted, and the first line of a later
// second says how many were. The metrics still count every event: the budget only spares the log.
//
// Threading: one owner thread (the loop's).
#pragma once

#include "runtime/log.hpp"

#include <cstdint>
#include <string_view>

namespace mayhem::rt {

class log_budget {
public:
    // `what` names the lines in the "held back" report; `see` the metric that counts every event.
    log_budget(std::uint32_t per_second, std::string_view what, std::string_view see)
        : per_second_(per_second), what_(what), see_(see) {}

    // `now_ms`: the loop's clock. True when one more line may be written now.
    bool allow(std::uint64_t now_ms) {
        if (now_ms - window_ms_ >= 1000 || window_ms_ == 0) {
            if (held_ > 0)
                log::warn("log lines held back",
                          {{"what", what_}, {"count", held_}, {"see", see_}});
            window_ms_ = now_ms == 0 ? 1 : now_ms;
            written_ = 0;
            held_ = 0;
        }
        if (written_ < per_second_) {
            ++written_;
            return true;
        }
        ++held_;
        return false;
    }

private:
    std::uint32_t per_second_;
    std::string_view what_, see_;
    std::uint64_t window_ms_ = 0;
    std::uint32_t written_ = 0;
    std::uint64_t held_ = 0;
};

} // namespace mayhem::rt
