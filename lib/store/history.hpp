// `mayhem history`: a read-only look at a store database (SQLite opened SQLITE_OPEN_READONLY, or
// PostgreSQL in a READ ONLY transaction): counts by outcome, restarts per host, the most recent
// messages. It reads one snapshot (a read transaction), so its numbers agree with each other,
// and works while workers write.
//
// Threading: a command of its own, no loop; blocking calls are fine here.
#pragma once

#include <cstddef>
#include <nlohmann/json_fwd.hpp>
#include <ostream>
#include <string>

namespace mayhem {

struct history_options {
    std::string db = "mayhem.db";
    std::string postgres_url; // set: read this PostgreSQL database instead of `db`
    std::size_t limit = 20;   // recent messages and hosts listed
    bool json = false;
};

// Prints the history to `out`; returns 0, or 1 with the reason on `err` when the database is
// missing, unreadable, or not a mayhem database of a version this build understands.
int print_history(const history_options& opts, std::ostream& out, std::ostream& err);

// For the text output of history and status: a time in ms since the epoch as UTC ISO 8601
// ("-" for null), and a value as text, quoted and escaped when it holds a control character.
std::string report_time(const nlohmann::ordered_json& ms);
std::string report_text(const nlohmann::ordered_json& v);

} // namespace mayhem
