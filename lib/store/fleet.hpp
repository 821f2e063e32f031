// `mayhem pause`, `mayhem resume`, `mayhem status`: the rails every worker sharing a store
// holds: a PostgreSQL database (the fleet) or a SQLite file (the workers of one machine).
// pause and resume write the shared pause (one row of `fleet_pause`: who, when, why) that
// every worker on the store polls with its pause-file check; status reads the pause, the
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
    std::string postgres_url;     // the PostgreSQL store (never printed); empty: the SQLite file
    std::string db = "mayhem.db"; // the SQLite store's file
    std::string reason;           // pause: why
    std::string who;              // pause: who (default user@host)
    std::size_t limit = 20;       // status: restarts and slots listed
    bool json = false;
};

// Runs the command; returns 0, or 1 with the reason on `err` (the database unreachable, not a
// mayhem database, a newer schema). pause migrates an empty database first, so a fleet can be
// paused before its first worker starts.
int run_fleet_command(fleet_command c, const fleet_options& o, std::ostream& out,
                      std::ostream& err);

} // namespace mayhem
