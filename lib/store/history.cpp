#include "store/history.hpp"

#include "runtime/log.hpp"
#include "store/postgres_store.hpp"
#include "store/sqlite_store.hpp"

#include <cstdlib>
#include <ctime>
#include <libpq-fe.h>
#include <nlohmann/json.hpp>
#include <sqlite3.h>
#include <stdexcept>
#include <vector>

namespace mayhem {

namespace {

using json = nlohmann::ordered_json;

// A read-only connection to a store database. The queries below are written for both SQLite and
// PostgreSQL: `$1` parameters (SQLite numbers them in order of appearance), no boolean sums.
class reader {
public:
    virtual ~reader() = default;
    // Runs `sql` with its integer parameters and returns every row, each column as JSON.
    virtual std::vector<std::vector<json>> rows(const char* sql,
                                                std::initializer_list<std::int64_t> args = {}) = 0;
    std::int64_t scalar(const char* sql) {
        auto r = rows(sql);
        return r.empty() || !r[0][0].is_number() ? 0 : r[0][0].get<std::int64_t>();
    }
};

class sqlite_reader final : public reader {
public:
    explicit sqlite_reader(const std::string& path) {
        int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY, nullptr);
        if (rc != SQLITE_OK) {
            std::string why = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
            sqlite3_close_v2(db_); // a failed open still returns a handle to free
            throw std::runtime_error("cannot open " + path + ": " + why);
        }
        sqlite3_busy_timeout(db_, 5000);
    }
    ~sqlite_reader() override { sqlite3_close_v2(db_); }
    sqlite_reader(const sqlite_reader&) = delete;
    sqlite_reader& operator=(const sqlite_reader&) = delete;

    std::vector<std::vector<json>> rows(const char* sql,
                                        std::initializer_list<std::int64_t> args = {}) override {
        sqlite3_stmt* s = nullptr;
        if (sqlite3_prepare_v2(db_, sql, -1, &s, nullptr) != SQLITE_OK)
            throw std::runtime_error(std::string("query failed: ") + sqlite3_errmsg(db_));
        int i = 1;
        for (auto a : args)
            sqlite3_bind_int64(s, i++, a);
        std::vector<std::vector<json>> out;
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            std::vector<json> row;
            for (int c = 0; c < sqlite3_column_count(s); ++c) {
                switch (sqlite3_column_type(s, c)) {
                case SQLITE_INTEGER:
                    row.emplace_back(sqlite3_column_int64(s, c));
                    break;
                case SQLITE_FLOAT:
                    row.emplace_back(sqlite3_column_double(s, c));
                    break;
                case SQLITE_NULL:
                    row.emplace_back(nullptr);
                    break;
                default:
                    row.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(s, c)));
                }
            }
            out.push_back(std::move(row));
        }
        std::string err = sqlite3_errmsg(db_);
        sqlite3_finalize(s);
        if (rc != SQLITE_DONE) throw std::runtime_error("query failed: " + err);
        return out;
    }

private:
    sqlite3* db_ = nullptr;
};

class postgres_reader final : public reader {
public:
    // `url` is never printed (it may hold a password): where() names host:port/dbname.
    explicit postgres_reader(const std::string& url) : conn_(PQconnectdb(url.c_str())) {
        quiet(conn_);
        if (PQstatus(conn_) != CONNECTION_OK)
            throw std::runtime_error(std::string("cannot connect: ") + PQerrorMessage(conn_));
    }
    ~postgres_reader() override { PQfinish(conn_); }
    postgres_reader(const postgres_reader&) = delete;
    postgres_reader& operator=(const postgres_reader&) = delete;

    std::string where() const {
        return std::string(PQhost(conn_)) + ":" + PQport(conn_) + "/" + PQdb(conn_);
    }
    std::vector<std::vector<json>> rows(const char* sql,
                                        std::initializer_list<std::int64_t> args = {}) override {
        std::vector<std::string> text;
        for (auto a : args)
            text.push_back(std::to_string(a));
        std::vector<const char*> values;
        for (auto& t : text)
            values.push_back(t.c_str());
        pg_result r(PQexecParams(conn_, sql, static_cast<int>(values.size()), nullptr,
                                 values.data(), nullptr, nullptr, 0));
        auto st = PQresultStatus(r.get());
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
            throw std::runtime_error(std::string("query failed: ") + PQerrorMessage(conn_));
        std::vector<std::vector<json>> out;
        for (int i = 0; i < PQntuples(r.get()); ++i) {
            std::vector<json> row;
            for (int c = 0; c < PQnfields(r.get()); ++c) {
                const char* v = PQgetvalue(r.get(), i, c);
                switch (PQftype(r.get(), c)) {
                case 20:   // int8
                case 21:   // int2
                case 23:   // int4
                case 1700: // numeric (a sum of bigints)
                    if (PQgetisnull(r.get(), i, c))
                        row.emplace_back(nullptr);
                    else
                        row.emplace_back(std::strtoll(v, nullptr, 10));
                    break;
                default:
                    if (PQgetisnull(r.get(), i, c))
                        row.emplace_back(nullptr);
                    else
                        row.emplace_back(v);
                }
            }
            out.push_back(std::move(row));
        }
        return out;
    }

private:
    PGconn* conn_;
};

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

json collect(reader& r, const history_options& o, const std::string& db, int version) {
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
        if (!o.postgres_url.empty()) {
            postgres_reader r(o.postgres_url);
            std::string db = r.where();
            auto has = r.rows("SELECT to_regclass('schema_migrations') IS NOT NULL");
            auto version = has.empty() || has[0][0] != "t"
                               ? 0
                               : r.scalar("SELECT max(version) FROM schema_migrations");
            check_version(db, version, postgres_schema_version);
            // One read-only snapshot: every number comes from the same moment.
            r.rows("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
            doc = collect(r, o, db, static_cast<int>(version));
            r.rows("COMMIT");
        } else {
            sqlite_reader r(o.db);
            auto version = r.scalar("PRAGMA user_version");
            check_version(o.db, version, sqlite_schema_version);
            // One read transaction: every number comes from the same snapshot.
            r.rows("BEGIN");
            doc = collect(r, o, o.db, static_cast<int>(version));
            r.rows("COMMIT");
        }
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
