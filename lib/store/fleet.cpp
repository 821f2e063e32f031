#include "store/fleet.hpp"

#include "store/history.hpp"
#include "store/pg_link.hpp"
#include "store/postgres_store.hpp"
#include "store/sqlite_store.hpp"

#include <chrono>
#include <cstdlib>
#include <libpq-fe.h>
#include <memory>
#include <nlohmann/json.hpp>
#include <pwd.h>
#include <sqlite3.h>
#include <stdexcept>
#include <unistd.h>
#include <vector>

namespace mayhem {

namespace {

using json = nlohmann::ordered_json;

std::string trimmed(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
        s.pop_back();
    return s;
}

using table = std::vector<std::vector<json>>;

// The store the command works on: the same statements run on both (parameters $1, $2...,
// untyped: PostgreSQL infers their types from the columns they meet).
class fleet_db {
public:
    virtual ~fleet_db() = default;
    virtual std::string where() const = 0;
    // Every row of `sql` with text parameters, each column as text, a number (integer
    // columns) or null.
    virtual table rows(const char* sql, const std::vector<std::string>& params = {}) = 0;
    // The schema version (0: no mayhem data), read without changing anything.
    virtual std::int64_t version() = 0;
    virtual int current_version() const = 0;
    // Creates or migrates the schema (pause, resume), as a worker's start does.
    virtual void migrate() = 0;
    // A read-only snapshot until rows("COMMIT"): every number from the same moment.
    virtual void snapshot() = 0;
};

// PostgreSQL: one blocking connection; the URL is never printed (where() names
// host:port/dbname).
class pg_db final : public fleet_db {
public:
    explicit pg_db(const std::string& url) : c_(PQconnectdb(url.c_str())) {
        quiet(c_);
        if (PQstatus(c_) != CONNECTION_OK) {
            std::string why = trimmed(PQerrorMessage(c_));
            PQfinish(c_);
            throw std::runtime_error("cannot connect: " + why);
        }
    }
    ~pg_db() override { PQfinish(c_); }
    pg_db(const pg_db&) = delete;
    pg_db& operator=(const pg_db&) = delete;

    std::string where() const override {
        return std::string(PQhost(c_)) + ":" + PQport(c_) + "/" + PQdb(c_);
    }
    table rows(const char* sql, const std::vector<std::string>& params = {}) override {
        std::vector<const char*> values;
        for (const auto& p : params)
            values.push_back(p.c_str());
        pg_result r(PQexecParams(c_, sql, static_cast<int>(values.size()), nullptr, values.data(),
                                 nullptr, nullptr, 0));
        auto st = PQresultStatus(r.get());
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
            throw std::runtime_error("query failed: " + trimmed(PQerrorMessage(c_)));
        table out;
        for (int i = 0; i < PQntuples(r.get()); ++i) {
            std::vector<json> row;
            for (int c = 0; c < PQnfields(r.get()); ++c) {
                const char* v = PQgetvalue(r.get(), i, c);
                auto type = PQftype(r.get(), c);
                if (PQgetisnull(r.get(), i, c))
                    row.emplace_back(nullptr);
                else if (type == 20 || type == 21 || type == 23) // int8, int2, int4
                    row.emplace_back(std::strtoll(v, nullptr, 10));
                else
                    row.emplace_back(v);
            }
            out.push_back(std::move(row));
        }
        return out;
    }
    std::int64_t version() override {
        auto has = rows("SELECT to_regclass('schema_migrations') IS NOT NULL");
        if (has.empty() || has[0][0] != "t") return 0;
        auto v = rows("SELECT max(version) FROM schema_migrations");
        return v.empty() || !v[0][0].is_number() ? 0 : v[0][0].get<std::int64_t>();
    }
    int current_version() const override { return postgres_schema_version; }
    void migrate() override { postgres_migrate(c_); }
    void snapshot() override { rows("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); }

private:
    PGconn* c_;
};

// SQLite: the file every worker on this machine shares (WAL: read and written while they run).
class sqlite_db final : public fleet_db {
public:
    sqlite_db(std::string path, bool write) : path_(std::move(path)), write_(write) {}
    ~sqlite_db() override { sqlite3_close(c_); }
    sqlite_db(const sqlite_db&) = delete;
    sqlite_db& operator=(const sqlite_db&) = delete;

    std::string where() const override { return path_; }
    table rows(const char* sql, const std::vector<std::string>& params = {}) override {
        open();
        sqlite3_stmt* s = nullptr;
        if (sqlite3_prepare_v2(c_, sql, -1, &s, nullptr) != SQLITE_OK)
            throw std::runtime_error(std::string("query failed: ") + sqlite3_errmsg(c_));
        for (std::size_t i = 0; i < params.size(); ++i) {
            int at = sqlite3_bind_parameter_index(s, ("$" + std::to_string(i + 1)).c_str());
            if (at > 0)
                sqlite3_bind_text(s, at, params[i].data(), static_cast<int>(params[i].size()),
                                  SQLITE_STATIC);
        }
        table out;
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
            std::vector<json> row;
            for (int c = 0; c < sqlite3_column_count(s); ++c) {
                switch (sqlite3_column_type(s, c)) {
                case SQLITE_NULL:
                    row.emplace_back(nullptr);
                    break;
                case SQLITE_INTEGER:
                    row.emplace_back(static_cast<std::int64_t>(sqlite3_column_int64(s, c)));
                    break;
                default:
                    row.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(s, c)));
                }
            }
            out.push_back(std::move(row));
        }
        sqlite3_finalize(s);
        if (rc != SQLITE_DONE)
            throw std::runtime_error(std::string("query failed: ") + sqlite3_errmsg(c_));
        return out;
    }
    std::int64_t version() override {
        auto v = rows("PRAGMA user_version");
        std::int64_t version = v.empty() ? 0 : v[0][0].get<std::int64_t>();
        if (version > 0 && rows("SELECT 1 FROM sqlite_schema WHERE name = 'messages'").empty())
            throw std::runtime_error(path_ + " is not a mayhem database");
        return version;
    }
    int current_version() const override { return sqlite_schema_version; }
    void migrate() override {
        sqlite3_close(c_);
        c_ = nullptr;
        sqlite_migrate(path_);
    }
    void snapshot() override { rows("BEGIN"); }

private:
    // Opened on first use: a missing file is an error, not created (status), unless migrate()
    // created it first.
    void open() {
        if (c_) return;
        int flags = write_ ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY;
        if (sqlite3_open_v2(path_.c_str(), &c_, flags, nullptr) != SQLITE_OK) {
            std::string why = c_ ? sqlite3_errmsg(c_) : "out of memory";
            sqlite3_close(c_);
            c_ = nullptr;
            throw std::runtime_error("cannot open " + path_ + ": " + why);
        }
        sqlite3_busy_timeout(c_, 5000);
    }
    std::string path_;
    bool write_;
    sqlite3* c_ = nullptr;
};

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
void check_current(fleet_db& c) {
    std::int64_t version = c.version();
    if (version == c.current_version()) return;
    if (version == 0) throw std::runtime_error(c.where() + " holds no mayhem data");
    throw std::runtime_error(c.where() + " has schema version " + std::to_string(version) +
                             (version > c.current_version()
                                  ? ", newer than this mayhem supports; use a newer mayhem"
                                  : ", older than this mayhem's; a worker of this version "
                                    "migrates it at start (or run mayhem pause/resume)"));
}

json pause_of(fleet_db& c) {
    auto p = c.rows("SELECT paused_by, paused_at, reason FROM fleet_pause");
    if (p.empty()) return nullptr;
    return json{{"by", p[0][0]}, {"since", p[0][1]}, {"reason", p[0][2]}};
}

json status(fleet_db& c, const fleet_options& o) {
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
    // Not shared yet: each worker has its own breaker.
    doc["breaker"] = "per worker: mayhem_restart_breaker_state on each worker's /metrics";
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
    out << "breaker    " << d["breaker"].get<std::string>() << "\n";
}

} // namespace

int run_fleet_command(fleet_command cmd, const fleet_options& o, std::ostream& out,
                      std::ostream& err) {
    const char* name = cmd == fleet_command::pause    ? "mayhem pause"
                       : cmd == fleet_command::resume ? "mayhem resume"
                                                      : "mayhem status";
    try {
        std::unique_ptr<fleet_db> db;
        if (!o.postgres_url.empty())
            db = std::make_unique<pg_db>(o.postgres_url);
        else
            db = std::make_unique<sqlite_db>(o.db, cmd != fleet_command::status);
        fleet_db& c = *db;
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
