#include "store/store_db.hpp"

#include "store/pg_link.hpp"
#include "store/postgres_store.hpp"
#include "store/sqlite_store.hpp"

#include <charconv>
#include <cstdlib>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdexcept>

namespace mayhem {

namespace {

using json = nlohmann::ordered_json;

class postgres_db final : public store_db {
public:
    // A server that does not answer is given up after connect_timeout_s (the URL's own
    // connect_timeout wins), so a command never hangs on a host that drops packets.
    explicit postgres_db(const std::string& url) : c_(pg_connect_blocking(url, connect_timeout_s)) {
        if (PQstatus(c_) != CONNECTION_OK) {
            std::string why = pg_error(c_);
            PQfinish(c_);
            throw std::runtime_error("cannot connect: " + why);
        }
    }
    ~postgres_db() override { PQfinish(c_); }
    postgres_db(const postgres_db&) = delete;
    postgres_db& operator=(const postgres_db&) = delete;

    std::string where() const override { return pg_where(c_); }
    using store_db::rows;
    table rows(const char* sql, const std::vector<std::string>& params) override {
        std::vector<const char*> values;
        for (const auto& p : params)
            values.push_back(p.c_str());
        pg_result r(PQexecParams(c_, sql, static_cast<int>(values.size()), nullptr, values.data(),
                                 nullptr, nullptr, 0));
        auto st = PQresultStatus(r.get());
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
            throw std::runtime_error("query failed: " + pg_error(c_));
        table out;
        for (int i = 0; i < PQntuples(r.get()); ++i) {
            std::vector<json> row;
            for (int c = 0; c < PQnfields(r.get()); ++c) {
                const char* v = PQgetvalue(r.get(), i, c);
                if (PQgetisnull(r.get(), i, c)) {
                    row.emplace_back(nullptr);
                    continue;
                }
                switch (PQftype(r.get(), c)) {
                case 20:   // int8
                case 21:   // int2
                case 23:   // int4
                case 1700: // numeric (a sum of bigints)
                    row.emplace_back(std::strtoll(v, nullptr, 10));
                    break;
                default:
                    row.emplace_back(v);
                }
            }
            out.push_back(std::move(row));
        }
        return out;
    }
    std::int64_t version() override {
        auto has = rows("SELECT to_regclass('schema_migrations') IS NOT NULL");
        if (has.empty() || has[0][0] != "t") return 0;
        return scalar("SELECT max(version) FROM schema_migrations");
    }
    int current_version() const override { return postgres_schema_version; }
    bool has_breaker() const override { return true; }
    void migrate() override { postgres_migrate(c_); }
    void snapshot() override { rows("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); }

private:
    static constexpr long connect_timeout_s = 10;
    PGconn* c_;
};

class sqlite_db final : public store_db {
public:
    sqlite_db(std::string path, bool write) : path_(std::move(path)), write_(write) {}
    ~sqlite_db() override { sqlite3_close_v2(c_); }
    sqlite_db(const sqlite_db&) = delete;
    sqlite_db& operator=(const sqlite_db&) = delete;

    std::string where() const override { return path_; }
    using store_db::rows;
    table rows(const char* sql, const std::vector<std::string>& params) override {
        open();
        sqlite3_stmt* s = nullptr;
        if (sqlite3_prepare_v2(c_, sql, -1, &s, nullptr) != SQLITE_OK)
            throw std::runtime_error(std::string("query failed: ") + sqlite3_errmsg(c_));
        for (std::size_t i = 0; i < params.size(); ++i) {
            int at = sqlite3_bind_parameter_index(s, ("$" + std::to_string(i + 1)).c_str());
            const std::string& p = params[i];
            std::int64_t n = 0;
            auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), n);
            if (at <= 0) continue;
            if (!p.empty() && ec == std::errc{} && end == p.data() + p.size())
                sqlite3_bind_int64(s, at, n); // numbers as numbers: LIMIT, comparisons
            else
                sqlite3_bind_text(s, at, p.data(), static_cast<int>(p.size()), SQLITE_STATIC);
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
                case SQLITE_FLOAT:
                    row.emplace_back(sqlite3_column_double(s, c));
                    break;
                default:
                    row.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(s, c)));
                }
            }
            out.push_back(std::move(row));
        }
        std::string err = sqlite3_errmsg(c_);
        sqlite3_finalize(s);
        if (rc != SQLITE_DONE) throw std::runtime_error("query failed: " + err);
        return out;
    }
    std::int64_t version() override {
        std::int64_t version = scalar("PRAGMA user_version");
        if (version > 0 &&
            scalar("SELECT count(*) FROM sqlite_schema WHERE name = 'messages'") == 0)
            throw std::runtime_error(path_ + " is not a mayhem database");
        return version;
    }
    int current_version() const override { return sqlite_schema_version; }
    void migrate() override {
        sqlite3_close_v2(c_);
        c_ = nullptr;
        sqlite_migrate(path_);
    }
    void snapshot() override { rows("BEGIN"); }

private:
    void open() {
        if (c_) return;
        int flags = write_ ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY;
        int rc = sqlite3_open_v2(path_.c_str(), &c_, flags, nullptr);
        if (rc != SQLITE_OK) {
            std::string why = c_ ? sqlite3_errmsg(c_) : sqlite3_errstr(rc);
            sqlite3_close_v2(c_); // a failed open still returns a handle to free
            c_ = nullptr;
            throw std::runtime_error("cannot open " + path_ + ": " + why);
        }
        sqlite3_busy_timeout(c_, 5000);
    }
    std::string path_;
    bool write_;
    sqlite3* c_ = nullptr;
};

} // namespace

store_db::table store_db::rows(const char* sql, std::initializer_list<std::int64_t> params) {
    std::vector<std::string> text;
    for (auto p : params)
        text.push_back(std::to_string(p));
    return rows(sql, text);
}

std::int64_t store_db::scalar(const char* sql) {
    auto r = rows(sql);
    return r.empty() || r[0].empty() || !r[0][0].is_number() ? 0 : r[0][0].get<std::int64_t>();
}

std::unique_ptr<store_db> open_postgres_db(const std::string& url) {
    return std::make_unique<postgres_db>(url);
}

std::unique_ptr<store_db> open_sqlite_db(const std::string& path, bool write) {
    return std::make_unique<sqlite_db>(path, write);
}

} // namespace mayhem
