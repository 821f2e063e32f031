// A blocking connection to a store's database for the commands that read or write it outside a
// worker (`mayhem history`, `pause`, `resume`, `status`): a PostgreSQL database or a SQLite
// file, behind one interface, so each command is written once for both. The statements are
// written for both: `$1`, `$2`... parameters (untyped: PostgreSQL infers their types from what
// they meet), no boolean sums, no casts.
//
// Threading: a command of its own, no loop; blocking calls are fine here.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mayhem {

class store_db {
public:
    using table = std::vector<std::vector<nlohmann::ordered_json>>;

    virtual ~store_db() = default;
    // host:port/dbname (never the URL: it may hold a password), or the file's path.
    virtual std::string where() const = 0;
    // Every row of `sql`, each column as text, a number (integer columns) or null; `params` are
    // $1, $2, ... Throws std::runtime_error on failure.
    virtual table rows(const char* sql, const std::vector<std::string>& params) = 0;
    table rows(const char* sql, std::initializer_list<std::int64_t> params = {});
    std::int64_t scalar(const char* sql); // the first column of the first row, 0 if none
    // The schema version (0: no mayhem data), read without changing anything; throws for a
    // file that is not mayhem's.
    virtual std::int64_t version() = 0;
    // The version this build writes.
    virtual int current_version() const = 0;
    // Keeps the fleet-wide circuit breaker (postgres: store.hpp, shares_breaker).
    virtual bool has_breaker() const { return false; }
    // Creates or migrates the schema as a worker's start does (needs a writable connection).
    virtual void migrate() = 0;
    // Starts a read-only snapshot, until rows("COMMIT"): every number from the same moment.
    virtual void snapshot() = 0;
};

// `url` is a libpq URI or connection string; throws std::runtime_error when it cannot connect.
std::unique_ptr<store_db> open_postgres_db(const std::string& url);
// Opened on first use, read-only unless `write`; a missing file is an error (not created).
std::unique_ptr<store_db> open_sqlite_db(const std::string& path, bool write);

} // namespace mayhem
