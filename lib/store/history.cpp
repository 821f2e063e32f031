#include "store/history.hpp"

#include "runtime/log.hpp"
#include "store/store_db.hpp"

#include <ctime>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <vector>

namespace mayhem {

namespace {

using json = nlohmann::ordered_json;

} // namespace

std::string report_time(const nlohmann::ordered_json& ms) {
    if (!ms.is_number()) return "-";
    std::time_t t = static_cast<std::time_t>(ms.get<std::int64_t>() / 1000);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

// A value for the terminal: text from a message (a hostname, an error) is quoted and escaped
// like a log value when it holds a control character, so it can neither forge a line nor send
// the terminal an escape sequence.
std::string report_text(const nlohmann::ordered_json& v) {
    if (v.is_null()) return "-";
    if (!v.is_string()) return v.dump();
    const auto& s = v.get_ref<const std::string&>();
    if (!log::needs_escape(s)) return s;
    std::string out = "\"";
    log::json_escape(out, s);
    return out + "\"";
}

namespace {

// The restarts rows that count as restarts of their host (a string literal, spliced into the
// queries below).
#define RESTART_RAN "(finished IS NULL OR result IN ('ok', 'failed', 'unverified', 'abandoned'))"

json collect(store_db& r, const history_options& o, const std::string& db, int version) {
    auto limit = static_cast<std::int64_t>(o.limit);
    json doc;
    doc["db"] = db;
    doc["schema_version"] = version;
    doc["messages"] = r.scalar("SELECT count(*) FROM messages");
    json by_outcome = json::object();
    for (auto& row : r.rows("SELECT coalesce(outcome, 'in_progress'), count(*) FROM messages "
                            "GROUP BY 1 ORDER BY 1"))
        by_outcome[row[0].get<std::string>()] = row[1];
    doc["by_outcome"] = by_outcome;

    // A restart is a row whose command ran (ok, failed) or may have run (never finished); the
    // other rows record steps that restarted nothing (skipped by the cooldown, coalesced, dry
    // run, refused) and are only counted by result.
    json restarts = json::object();
    restarts["total"] = r.scalar("SELECT count(*) FROM restarts WHERE " RESTART_RAN);
    restarts["unfinished"] = r.scalar("SELECT count(*) FROM restarts WHERE finished IS NULL");
    // Rows of --restarter simulate: no host was restarted (restart/simulate_restarter.hpp).
    restarts["simulated"] =
        r.scalar("SELECT count(*) FROM restarts WHERE detail LIKE 'simulated%'");
    json by_result = json::object();
    for (auto& row : r.rows("SELECT result, count(*) FROM restarts WHERE result IS NOT NULL "
                            "GROUP BY 1 ORDER BY 1"))
        by_result[row[0].get<std::string>()] = row[1];
    restarts["by_result"] = by_result;
    doc["restarts"] = restarts;

    json hosts = json::array();
    for (auto& row :
         r.rows("SELECT hostname, count(*), sum(CASE WHEN result = 'ok' THEN 1 ELSE 0 END), "
                "sum(CASE WHEN result = 'failed' THEN 1 ELSE 0 END), "
                "sum(CASE WHEN finished IS NULL THEN 1 ELSE 0 END), max(started), "
                "sum(CASE WHEN detail LIKE 'simulated%' THEN 1 ELSE 0 END) FROM restarts "
                "WHERE " RESTART_RAN " GROUP BY hostname ORDER BY max(started) DESC, hostname "
                "LIMIT $1",
                {limit})) {
        hosts.push_back(json{{"hostname", row[0]},
                             {"restarts", row[1]},
                             {"ok", row[2]},
                             {"failed", row[3]},
                             {"unfinished", row[4]},
                             {"last_started", row[5]},
                             {"simulated", row[6]}});
    }
    doc["hosts"] = hosts;

    json recent = json::array();
    for (auto& row : r.rows("SELECT message_id, instance, hostname, reason, first_seen, attempts, "
                            "outcome, completed_at, last_error FROM messages "
                            "ORDER BY first_seen DESC, message_id DESC LIMIT $1",
                            {limit})) {
        recent.push_back(json{{"message_id", row[0]},
                              {"instance", row[1]},
                              {"hostname", row[2]},
                              {"reason", row[3]},
                              {"first_seen", row[4]},
                              {"attempts", row[5]},
                              {"outcome", row[6]},
                              {"completed_at", row[7]},
                              {"last_error", row[8]}});
    }
    doc["recent"] = recent;
    return doc;
}
#undef RESTART_RAN

void print_text(const json& doc, std::ostream& out) {
    out << "database " << doc["db"].get<std::string>() << ": " << doc["messages"] << " messages, "
        << doc["restarts"]["total"] << " restarts (" << doc["restarts"]["unfinished"]
        << " unfinished)\n";
    if (auto simulated = doc["restarts"]["simulated"].get<std::int64_t>(); simulated > 0)
        out << "SIMULATED: " << simulated
            << " restarts were made by --restarter simulate; no host was restarted for them\n";
    out << "\nmessages by outcome\n";
    for (auto& [k, v] : doc["by_outcome"].items())
        out << "  " << k << ": " << v << "\n";
    out << "\nrestarts by result\n";
    for (auto& [k, v] : doc["restarts"]["by_result"].items())
        out << "  " << k << ": " << v << "\n";
    out << "\nrestarts per host (most recent first)\n";
    for (auto& h : doc["hosts"]) {
        out << "  " << report_text(h["hostname"]) << "  restarts " << h["restarts"] << ", ok "
            << report_text(h["ok"]) << ", failed " << report_text(h["failed"]) << ", unfinished "
            << report_text(h["unfinished"]) << ", last started " << report_time(h["last_started"]);
        if (h["simulated"].is_number() && h["simulated"].get<std::int64_t>() > 0)
            out << " (simulated " << h["simulated"] << ")";
        out << "\n";
    }
    out << "\nrecent messages\n";
    for (auto& m : doc["recent"]) {
        out << "  " << report_time(m["first_seen"]) << "  " << report_text(m["message_id"]) << "  "
            << report_text(m["hostname"]) << "  " << report_text(m["outcome"]) << "  attempts "
            << m["attempts"];
        if (!m["last_error"].is_null()) out << "  last error: " << report_text(m["last_error"]);
        out << "\n";
    }
}

// The version of a store database and its supported maximum; throws for no mayhem data.
void check_version(const std::string& db, std::int64_t version, int supported) {
    if (version == 0) throw std::runtime_error(db + " holds no mayhem data (no schema version)");
    if (version > supported)
        throw std::runtime_error(db + " has schema version " + std::to_string(version) +
                                 ", newer than this mayhem supports (" + std::to_string(supported) +
                                 ")");
}

} // namespace

int print_history(const history_options& o, std::ostream& out, std::ostream& err) {
    try {
        json doc;
        auto r =
            o.postgres_url.empty() ? open_sqlite_db(o.db, false) : open_postgres_db(o.postgres_url);
        std::string db = r->where();
        auto version = r->version();
        check_version(db, version, r->current_version());
        // One read-only snapshot: every number comes from the same moment.
        r->snapshot();
        doc = collect(*r, o, db, static_cast<int>(version));
        r->rows("COMMIT");
        if (o.json)
            out << doc.dump() << "\n";
        else
            print_text(doc, out);
        return 0;
    } catch (const std::exception& e) {
        err << "mayhem history: " << e.what() << "\n";
        return 1;
    }
}

} // namespace mayhem
