// The seam for `restart`: carries out one host restart and says how it ended. Policy
// (cooldown, caps, dry-run) sits in front of it, not in it.
#pragma once

#include "message/message.hpp"
#include "pipeline/outcome.hpp"
#include "runtime/task.hpp"

#include <string_view>

namespace mayhem {

class restarter {
public:
    virtual ~restarter() = default;
    virtual std::string_view name() const = 0;
    virtual rt::task<restart_result> restart(const message& m) = 0;
};

} // namespace mayhem
