// `mayhem pause`, `mayhem resume`, `mayhem status`: the fleet's rails in the PostgreSQL store.
// pause and resume write the fleet-wide pause (one row of `fleet_pause`: who, when, why) that
// every worker on the database polls with its pause-file check; status reads the pause, the
// restarts running (started, unfinished, their owner's lease current) and the fleet-wide
// --max-concurrent-restarts slots held, in one read-only snapshot.
//
// Threading: a command of its own, no loop; blocking libpq calls are fine here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>

namespace mayhem {

enum class fleet_command : std::uint8_t { pause, resume, status };

struct fleet_options {
    std::string postgres_url; // required; never printed
    std::string reason;       // pause: why
    std::string who;          // pause: who (default user@host)
    std::size_t limit = 20;   // status: restarts and slots listed
    bool json = false;
};

// Runs the command; returns 0, or 1 with the reason on `err` (the database unreachable, not a
// mayhem database, a newer schema). pause migrates an empty database first, so a fleet can be
// paused before its first worker starts.
int run_fleet_command(fleet_command c, const fleet_options& o, std::ostream& out,
                      std::ostream& err);

} // namespace mayhem
