#include "store/fleet.hpp"

#include "store/history.hpp"
#include "store/store_db.hpp"

#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <pwd.h>
#include <stdexcept>
#include <unistd.h>
#include <vector>

namespace mayhem {

namespace {

using json = nlohmann::ordered_json;

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// user@host of whoever runs the command.
std::string default_who() {
    std::string user;
    if (const char* u = std::getenv("USER"); u && *u)
        user = u;
    else if (const passwd* pw = ::getpwuid(::geteuid()))
        user = pw->pw_name;
    else
        user = std::to_string(::geteuid());
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    return user + "@" + host;
}

// The database's schema version; throws unless this build's (status reads only, it does not
// migrate).
void check_current(store_db& c) {
    std::int64_t version = c.version();
    if (version == c.current_version()) return;
    if (version == 0) throw std::runtime_error(c.where() + " holds no mayhem data");
    throw std::runtime_error(c.where() + " has schema version " + std::to_string(version) +
                             (version > c.current_version()
                                  ? ", newer than this mayhem supports; use a newer mayhem"
                                  : ", older than this mayhem's; a worker of this version "
                                    "migrates it at start (or run mayhem pause/resume)"));
}

json pause_of(store_db& c) {
    auto p = c.rows("SELECT paused_by, paused_at, reason FROM fleet_pause");
    if (p.empty()) return nullptr;
    return json{{"by", p[0][0]}, {"since", p[0][1]}, {"reason", p[0][2]}};
}

json status(store_db& c, const fleet_options& o) {
    std::string now = std::to_string(now_ms()), limit = std::to_string(o.limit);
    json doc;
    doc["db"] = c.where();
    doc["paused"] = pause_of(c);
    // Claimed and not finished, the owner's lease current: running (or about to) on a worker.
    auto n = c.rows("SELECT count(*) FROM restarts WHERE finished IS NULL "
                    "AND lease_until > $1",
                    {now});
    doc["restarts_running"] = n[0][0];
    json running = json::array();
    for (auto& r : c.rows("SELECT message_id, hostname, owner, started, lease_until FROM restarts "
                          "WHERE finished IS NULL AND lease_until > $1 "
                          "ORDER BY started LIMIT $2",
                          {now, limit}))
        running.push_back(json{{"message_id", r[0]},
                               {"hostname", r[1]},
                               {"owner", r[2]},
                               {"started", r[3]},
                               {"lease_until", r[4]}});
    doc["running"] = std::move(running);
    json slots = json::array();
    for (auto& r : c.rows("SELECT slot, message_id, owner, taken, lease_until FROM restart_slots "
                          "WHERE message_id IS NOT NULL AND lease_until > $1 "
                          "ORDER BY slot",
                          {now}))
        slots.push_back(json{{"slot", r[0]},
                             {"message_id", r[1]},
                             {"owner", r[2]},
                             {"taken", r[3]},
                             {"lease_until", r[4]}});
    doc["slots_held"] = slots.size();
    doc["slots"] = std::move(slots);
    // The fleet-wide breaker: its state, since when, the trial running, the failures counted.
    // (Each worker's own with the other stores: on its /metrics.)
    doc["breaker"] = nullptr;
    if (!c.has_breaker()) return doc;
    auto b = c.rows("SELECT CASE state WHEN 0 THEN 'closed' WHEN 1 THEN 'open' "
                    "ELSE 'half-open' END, opened_at, trial_id, trial_owner, "
                    "(SELECT count(*) FROM breaker_failures) FROM fleet_breaker");
    if (!b.empty())
        doc["breaker"] = json{{"state", b[0][0]},
                              {"opened_at", b[0][1]},
                              {"trial_message_id", b[0][2]},
                              {"trial_owner", b[0][3]},
                              {"failed_hosts", b[0][4]}};
    return doc;
}

void print_status(const json& d, std::ostream& out) {
    out << "database   " << d["db"].get<std::string>() << "\n";
    if (d["paused"].is_null())
        out << "pause      not paused\n";
    else
        out << "pause      PAUSED by " << report_text(d["paused"]["by"]) << " since "
            << report_time(d["paused"]["since"]) << ": " << report_text(d["paused"]["reason"])
            << "\n";
    out << "restarts   " << d["restarts_running"] << " running\n";
    for (const auto& r : d["running"])
        out << "  " << report_text(r["message_id"]) << "  " << report_text(r["hostname"]) << "  on "
            << report_text(r["owner"]) << "  since " << report_time(r["started"]) << "\n";
    out << "slots      " << d["slots_held"] << " held (shared --max-concurrent-restarts)\n";
    for (const auto& r : d["slots"])
        out << "  " << r["slot"] << "  " << report_text(r["message_id"]) << "  on "
            << report_text(r["owner"]) << "  since " << report_time(r["taken"]) << "\n";
    const auto& b = d["breaker"];
    if (b.is_null()) {
        out << "breaker    per worker with this store: mayhem_restart_breaker_state on its "
               "/metrics\n";
        return;
    }
    out << "breaker    " << b["state"].get<std::string>();
    if (b["state"] == "closed")
        out << ", " << b["failed_hosts"] << " hosts failed in its window";
    else
        out << " since " << report_time(b["opened_at"]);
    if (!b["trial_message_id"].is_null())
        out << ", trial " << report_text(b["trial_message_id"]) << " on "
            << report_text(b["trial_owner"]);
    out << "\n";
}

} // namespace

int run_fleet_command(fleet_command cmd, const fleet_options& o, std::ostream& out,
                      std::ostream& err) {
    const char* name = cmd == fleet_command::pause    ? "mayhem pause"
                       : cmd == fleet_command::resume ? "mayhem resume"
                                                      : "mayhem status";
    try {
        auto db = o.postgres_url.empty() ? open_sqlite_db(o.db, cmd != fleet_command::status)
                                         : open_postgres_db(o.postgres_url);
        store_db& c = *db;
        if (cmd == fleet_command::status) {
            check_current(c);
            // One read-only snapshot: every number comes from the same moment.
            c.snapshot();
            json doc = status(c, o);
            c.rows("COMMIT");
            if (o.json)
                out << doc.dump() << "\n";
            else
                print_status(doc, out);
            return 0;
        }
        c.migrate(); // a fleet can be paused before its first worker starts
        json doc;
        if (cmd == fleet_command::pause) {
            std::string who = o.who.empty() ? default_who() : o.who;
            c.rows("INSERT INTO fleet_pause (paused_by, paused_at, reason) "
                   "VALUES ($1, $2, $3) ON CONFLICT (only_row) DO UPDATE SET "
                   "paused_by = excluded.paused_by, paused_at = excluded.paused_at, "
                   "reason = excluded.reason",
                   {who, std::to_string(now_ms()), o.reason});
        } else {
            c.rows("DELETE FROM fleet_pause");
        }
        doc["db"] = c.where();
        doc["paused"] = pause_of(c);
        if (o.json) {
            out << doc.dump() << "\n";
        } else if (doc["paused"].is_null()) {
            out << "resumed: workers on " << c.where() << " start restarts again within a "
                << "second\n";
        } else {
            out << "paused: no worker on " << c.where() << " starts a restart from within a "
                << "second (running ones finish); `mayhem resume` to undo\n";
        }
        return 0;
    } catch (const std::exception& e) {
        err << name << ": " << e.what() << "\n";
        return 1;
    }
}

} // namespace mayhem
