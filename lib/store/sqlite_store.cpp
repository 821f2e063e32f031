#include "store/sqlite_store.hpp"

#include "runtime/log.hpp"

#include <algorithm>
#include <functional>
#include <iterator>
#include <optional>
#include <sqlite3.h>
#include <thread>
#include <utility>

namespace mayhem {

// ---------------------------------------------------------------------------------------------
// The schema (version 1). Times are milliseconds since the Unix epoch (UTC).
//
// messages: one row per message id, written by the save (first_seen, attempts = deliveries
//   saved) and by complete (outcome, completed_at, last_error). WITHOUT ROWID: the id is the
//   key, so an insert maintains one b-tree, not two.
// restarts: one row per restart attempt of a message (attempt 1, 2, ... after failures, and
//   after a start a dead worker left unfinished, closed with result 'abandoned'), inserted as
//   started (finished NULL) before the restart runs and finished after it, so a crash in between
//   is visible and every start is counted. Version 2: `owner` names the worker process holding an
//   unfinished row and `lease_until` how long it holds it (renewed while its message is in
//   flight); a peer restarts only when that lease has expired, and the owner records the end
//   only while the row is still its own. Keyed (message_id, attempt) WITHOUT ROWID: the latest row
//   of an id, its idempotency record, is one b-tree probe and no second index is kept in step.
//   restarts_host_claims answers the per-host cooldown ("did this host restart, or is it
//   restarting, within the cooldown?") in one probe: claim_host checks it and marks its own row
//   in one transaction. Partial (host_claimed = 1 only), so without a cooldown nothing pays for
//   it.
// ---------------------------------------------------------------------------------------------

namespace {

constexpr const char* schema_v1 = R"sql(
CREATE TABLE messages (
    message_id   TEXT PRIMARY KEY NOT NULL,
    instance     TEXT NOT NULL,
    hostname     TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    first_seen   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 1,
    outcome      TEXT,
    completed_at INTEGER,
    last_error   TEXT
) WITHOUT ROWID;
CREATE TABLE restarts (
    message_id TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    hostname   TEXT NOT NULL,
    started    INTEGER NOT NULL,
    finished   INTEGER,
    result     TEXT,
    detail     TEXT,
    host_claimed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, attempt)
) WITHOUT ROWID;
-- The per-host cooldown looks only at restarts that passed claim_host: the index holds just
-- those, so it costs nothing when no cooldown is configured.
CREATE INDEX restarts_host_claims ON restarts (hostname, started) WHERE host_claimed = 1;
PRAGMA user_version = 1;
)sql";

constexpr const char* schema_v2 = R"sql(
ALTER TABLE restarts ADD COLUMN owner TEXT;
ALTER TABLE restarts ADD COLUMN lease_until INTEGER;
PRAGMA user_version = 2;
)sql";

// Version 3: retention (store/retention.hpp): a pass walks the rows that finished longest ago,
// oldest first, through the two indexes; partial, so rows still in flight cost them nothing.
// And the rails every worker sharing the file holds, as in the postgres store: restart_slots,
// the --max-concurrent-restarts slots (a row with an owner and a lease per slot), and
// fleet_pause, `mayhem pause` (one row while paused).
constexpr const char* schema_v3 = R"sql(
CREATE INDEX messages_completed ON messages (completed_at) WHERE completed_at IS NOT NULL;
CREATE INDEX restarts_finished ON restarts (finished) WHERE finished IS NOT NULL;
CREATE TABLE restart_slots (
    slot        INTEGER PRIMARY KEY,
    message_id  TEXT,
    owner       TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0,
    taken       INTEGER
);
CREATE TABLE fleet_pause (
    only_row  INT PRIMARY KEY NOT NULL DEFAULT 1 CHECK (only_row = 1),
    paused_by TEXT NOT NULL,
    paused_at INTEGER NOT NULL,
    reason    TEXT NOT NULL DEFAULT ''
);
PRAGMA user_version = 3;
)sql";

// A retention pass (store.hpp, prune_bounds). ?1 messages_before, ?2 restarts_before, ?3 the
// limit, ?4 host_claims_since. A messages row goes once final and old, unless a restart of its
// id is unfinished; an id's restarts rows go together (the latest row is the idempotency
// record, and attempt 1 missing would read as "never restarted"), only when all are finished
// and old, none is a host claim a cooldown still needs, and the id is not in flight.
constexpr const char* prune_messages_sql = R"sql(
DELETE FROM messages WHERE message_id IN (
    SELECT c.message_id FROM messages AS c
     WHERE c.completed_at < ?1 AND c.outcome IN ('acked', 'dead_lettered', 'skipped')
       AND NOT EXISTS (SELECT 1 FROM restarts AS r
                        WHERE r.message_id = c.message_id AND r.finished IS NULL)
     ORDER BY c.completed_at LIMIT ?3)
)sql";
constexpr const char* prune_restarts_sql = R"sql(
DELETE FROM restarts WHERE message_id IN (
    SELECT c.message_id FROM restarts AS c
     WHERE c.finished < ?2
       AND NOT EXISTS (SELECT 1 FROM restarts AS x WHERE x.message_id = c.message_id
                          AND (x.finished IS NULL OR x.finished >= ?2
                               OR (x.host_claimed = 1 AND x.started >= ?4)))
       AND NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.message_id = c.message_id
                          AND (m.outcome IS NULL
                               OR m.outcome NOT IN ('acked', 'dead_lettered', 'skipped')))
     ORDER BY c.finished LIMIT ?3)
)sql";

constexpr const char* migrations[] = {schema_v1, schema_v2, schema_v3};
static_assert(std::size(migrations) == sqlite_schema_version);

// A failed SQLite call, carried to the end of the transaction (pool thread only).
struct db_error {
    int code;
    std::string what;
};

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// A message whose latest restart ended so is claimed again: a failure may be retried, a
// refusal must be met again (dead-lettered again), not taken for a restart already done, and a
// dry run restarted nothing, so it leaves no trace that a real run of the same id meets.
bool retried_after(std::string_view result) {
    return result == "failed" || result == "refused" || result == "dry_run";
}

// Errors after which the connection is closed and opened again by the next transaction: the
// file may have been fixed (made writable, remounted) in the meantime.
bool reopen_after(int code) {
    switch (code & 0xFF) {
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
        return true;
    default:
        return false;
    }
}

} // namespace

std::span<const char* const> sqlite_migrations() {
    return migrations;
}

// ---------------------------------------------------------------------------------------------
// shared: the connection and the batch in flight. Owned through a shared_ptr so that a
// transaction still running on the pool when the store is destroyed keeps what it touches.
// ---------------------------------------------------------------------------------------------

struct sqlite_store::shared {
    // Rows per multi-row statement: a run of requests of one kind goes max_rows at a time, the
    // rest in one statement of its own size. 64 costs ~5% fewer instructions per message than
    // 32; 128 no fewer than 64. (At most 4 x 63 statements once every size was used; the
    // benchmark's peak RSS did not change.)
    static constexpr int max_rows = 64;
    // The kinds written by multi-row statements (index into `multi`): inserts of n rows of
    // VALUES, and updates of the n ids of an IN list that set the same values (the outcome and
    // its reason; the restart's result and detail), one statement per distinct values. (An
    // UPDATE ... FROM (VALUES ...) with its own values per row costs more than one UPDATE each:
    // SQLite writes it in two passes through an ephemeral table.)
    enum multi_kind : std::uint8_t { m_save, m_claim, m_complete, m_finish, m_renew, m_kinds };
    sqlite_options opts;
    sqlite3* conn = nullptr;
    sqlite3_stmt *begin = nullptr, *commit = nullptr, *rollback = nullptr, *save = nullptr,
                 *last_restart = nullptr, *start_restart = nullptr, *finish = nullptr,
                 *complete = nullptr, *host_blocker = nullptr, *host_claim_row = nullptr,
                 *first_restart = nullptr, *unclaim = nullptr, *take_over = nullptr,
                 *take_waiting = nullptr, *renew = nullptr, *prune_messages = nullptr,
                 *prune_restarts = nullptr, *slot_rows = nullptr, *slot_renew = nullptr,
                 *slot_take = nullptr, *slot_release = nullptr, *pause_read = nullptr;
    // multi[k][n]: kind k for n rows (2..max_rows), prepared on first use.
    sqlite3_stmt* multi[m_kinds][max_rows + 1] = {};
    batch flying;                      // the batch being written
    bool synchronous_full_now = false; // the connection's PRAGMA synchronous (pool thread)
    // Set by hurry() (loop thread): a wait for another writer's lock gives up at once.
    std::atomic<bool> hurry{false};
    std::chrono::steady_clock::time_point busy_since; // pool thread
    // How long the busy handler waits now: busy_timeout, or prune_busy_wait during a retention
    // pass, which gives way to the workers' batches rather than hold up this one's (pool thread).
    static constexpr std::chrono::milliseconds prune_busy_wait{50};
    bool pruning = false;
    // Scratch of write(), reused batch after batch (pool thread).
    std::vector<request*> saves_, completes_, claims_, finishes_, renews_;
    std::vector<std::size_t> ids_;
    std::vector<std::string> returned_; // ids a RETURNING clause named
    // The retention pass asked for (store.hpp, prune): set on the loop thread before its request
    // is queued, read by the pool thread while that request is written (one pass at a time);
    // why it failed, read back once its batch has ended.
    prune_bounds prune_next;
    std::string prune_error;
    // The fleet pause as the last read_pause read it (pool thread; the loop reads it once the
    // batch holding that read has ended, or at start-up).
    std::optional<fleet_pause> pause_seen;

    explicit shared(sqlite_options o) : opts(std::move(o)) {}
    ~shared() { close_conn(); }

    [[noreturn]] void fail(int code, const std::string& what) {
        throw db_error{code, what + ": " + (conn ? sqlite3_errmsg(conn) : sqlite3_errstr(code))};
    }
    void check(int rc, const char* what) {
        if (rc != SQLITE_OK) fail(rc, what);
    }
    void exec(const char* sql, const char* what) {
        check(sqlite3_exec(conn, sql, nullptr, nullptr, nullptr), what);
    }
    sqlite3_stmt* prepare(const char* sql) {
        sqlite3_stmt* s = nullptr;
        check(sqlite3_prepare_v3(conn, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr), "prepare");
        return s;
    }
    // Steps a statement to its end and resets it; the step's error, if any, is thrown.
    void run(sqlite3_stmt* s, const char* what) {
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc != SQLITE_DONE && rc != SQLITE_ROW) fail(rc, what);
    }
    // Binds a string of the batch being written.
    void text(sqlite3_stmt* s, int i, text_ref v) {
        sqlite3_bind_text(s, i, flying.text.data() + v.off, static_cast<int>(v.len), SQLITE_STATIC);
    }

    void close_conn() noexcept {
        for (auto** s :
             {&begin,          &commit,         &rollback,  &save,         &last_restart,
              &start_restart,  &finish,         &complete,  &host_blocker, &host_claim_row,
              &first_restart,  &unclaim,        &take_over, &take_waiting, &renew,
              &prune_messages, &prune_restarts, &slot_rows, &slot_renew,   &slot_take,
              &slot_release,   &pause_read}) {
            sqlite3_finalize(*s);
            *s = nullptr;
        }
        for (auto& per_kind : multi)
            for (auto*& s : per_kind) {
                sqlite3_finalize(s);
                s = nullptr;
            }
        if (conn) sqlite3_close_v2(conn);
        conn = nullptr;
    }

    // The busy handler: waits for another connection's lock for up to busy_timeout, as
    // sqlite3_busy_timeout does, but gives up at once when the store is hurried, so close() is
    // not held up by a lock for longer than it was given. Pool thread (start-up: loop thread).
    static int busy_wait(void* self, int count) noexcept {
        auto* sh = static_cast<shared*>(self);
        auto now = std::chrono::steady_clock::now();
        if (count == 0) sh->busy_since = now;
        if (sh->hurry.load(std::memory_order_relaxed) ||
            now - sh->busy_since >= (sh->pruning ? prune_busy_wait : sh->opts.busy_timeout))
            return 0;
        std::this_thread::sleep_for(std::chrono::milliseconds(std::min(count + 1, 20)));
        return 1;
    }

    int scalar_int(const char* sql) {
        sqlite3_stmt* s = nullptr;
        check(sqlite3_prepare_v2(conn, sql, -1, &s, nullptr), sql);
        int rc = sqlite3_step(s);
        int v = rc == SQLITE_ROW ? sqlite3_column_int(s, 0) : 0;
        sqlite3_finalize(s);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) fail(rc, sql);
        return v;
    }

    // Opens, sets the pragmas, creates or checks the schema, prepares the statements. Throws
    // sqlite_fatal for what retrying cannot fix, db_error for the rest (connection closed).
    void open() {
        close_conn();
        int rc = sqlite3_open_v2(opts.path.c_str(), &conn,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
        try {
            if (rc != SQLITE_OK) fail(rc, "open " + opts.path);
            sqlite3_extended_result_codes(conn, 1);
            // SQLite falls back to read-only when the file cannot be opened for writing: a store
            // that cannot write is not up.
            if (sqlite3_db_readonly(conn, "main") == 1)
                throw db_error{SQLITE_READONLY, "database file " + opts.path + " is read-only"};
            check(sqlite3_busy_handler(conn, &shared::busy_wait, this), "busy_handler");
            int version = 0;
            // The version and the tables are read in one read transaction: a peer creating the
            // schema right now is seen either not at all or whole, never as tables without a
            // version (which would be refused as a foreign file).
            exec("BEGIN", "begin schema check");
            try {
                version = scalar_int("PRAGMA user_version");
                if (version <= sqlite_schema_version) check_schema(version);
            } catch (const db_error& e) {
                sqlite3_exec(conn, "ROLLBACK", nullptr, nullptr, nullptr);
                if ((e.code & 0xFF) == SQLITE_NOTADB)
                    throw sqlite_fatal(opts.path + " is not a SQLite database");
                throw;
            } catch (...) {
                sqlite3_exec(conn, "ROLLBACK", nullptr, nullptr, nullptr);
                throw;
            }
            exec("COMMIT", "end schema check");
            if (version > sqlite_schema_version)
                throw sqlite_fatal("database " + opts.path + " has schema version " +
                                   std::to_string(version) + ", newer than this mayhem supports (" +
                                   std::to_string(sqlite_schema_version) +
                                   "); use a newer mayhem or another --db");
            // check_schema ran above, before anything is changed (the journal mode).
            std::string mode;
            {
                sqlite3_stmt* s = nullptr;
                check(sqlite3_prepare_v2(conn, "PRAGMA journal_mode=WAL", -1, &s, nullptr),
                      "journal_mode");
                if (sqlite3_step(s) == SQLITE_ROW)
                    mode = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
                int frc = sqlite3_finalize(s);
                if (mode != "wal") fail(frc != SQLITE_OK ? frc : SQLITE_ERROR, "journal_mode=WAL");
            }
            exec(opts.synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                 "synchronous");
            synchronous_full_now = opts.synchronous_full;
            // A page cache big enough for the hot part of both tables and their indexes, and
            // reads through mmap: a batch then costs no read() of pages it just wrote.
            exec("PRAGMA cache_size=-65536", "cache_size");
            exec("PRAGMA mmap_size=268435456", "mmap_size");
            // Checkpoint (copy the WAL into the file, fsync) every ~40 MB rather than 4 MB: the
            // hot index pages are copied once per checkpoint however often they changed.
            exec("PRAGMA wal_autocheckpoint=10000", "wal_autocheckpoint");
            if (version < sqlite_schema_version) migrate();
            begin = prepare("BEGIN IMMEDIATE");
            commit = prepare("COMMIT");
            rollback = prepare("ROLLBACK");
            save = prepare("INSERT INTO messages (message_id, instance, hostname, reason, "
                           "first_seen) VALUES (?1, ?2, ?3, ?4, ?5) "
                           "ON CONFLICT (message_id) DO UPDATE SET attempts = attempts + 1");
            last_restart = prepare("SELECT finished IS NULL, result, attempt, owner IS ?2, "
                                   "coalesce(lease_until, 0) > ?3, host_claimed FROM restarts "
                                   "WHERE message_id = ?1 ORDER BY attempt DESC LIMIT 1");
            // The first claim of an id (the common case) in one statement: attempt 1 exists iff
            // any restart of the id was recorded.
            first_restart = prepare("INSERT INTO restarts (hostname, message_id, started, attempt, "
                                    "owner, lease_until) VALUES (?1, ?2, ?3, 1, ?4, ?5) "
                                    "ON CONFLICT DO NOTHING");
            start_restart = prepare("INSERT INTO restarts (hostname, message_id, started, "
                                    "attempt, owner, lease_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
            // An unfinished row whose owner's lease expired is closed as abandoned (it still
            // counts for its host's cooldown: the host may have restarted); the restart starts
            // again as the next attempt, so the attempts count every start.
            take_over = prepare("UPDATE restarts SET finished = ?2, result = 'abandoned', "
                                "detail = 'its worker stopped or lost its lease before it "
                                "finished', lease_until = NULL "
                                "WHERE message_id = ?1 AND finished IS NULL");
            // An unfinished row that never passed the cooldown claim (its restart waited for a
            // slot when its worker died) is taken over as it is: no start to count.
            take_waiting = prepare("UPDATE restarts SET owner = ?2, lease_until = ?3 "
                                   "WHERE message_id = ?1 AND finished IS NULL");
            // Only the owner records the end: a row taken over by a peer is left alone.
            finish = prepare(
                "UPDATE restarts SET finished = ?3, result = ?4, detail = NULLIF(?5, ''), "
                "lease_until = NULL WHERE message_id = ?1 AND finished IS NULL AND owner IS ?6");
            renew = prepare("UPDATE restarts SET lease_until = ?3 "
                            "WHERE message_id = ?1 AND finished IS NULL AND owner IS ?2");
            // The per-host cooldown (store.hpp, claim_host): the latest restart of the host for
            // another message that passed its own claim and that may have restarted the host:
            // it succeeded, ran with an unknown effect, or never finished (running, or abandoned
            // by a worker that died).
            host_blocker =
                prepare("SELECT max(started) FROM restarts WHERE hostname = ?1 AND "
                        "host_claimed = 1 AND message_id <> ?2 AND started > ?3 AND "
                        "(finished IS NULL OR result IN ('ok', 'unverified', 'abandoned'))");
            // claim_restart recorded this message's start; it now counts for its host.
            host_claim_row = prepare("UPDATE restarts SET host_claimed = 1, started = ?3 WHERE "
                                     "message_id = ?1 AND finished IS NULL");
            // A start whose restart never runs (release_claim, or withdrawn: its task was
            // destroyed while it was written) goes, if still unfinished and still this worker's.
            // A withdrawal names the stamp it wrote: a row stamped anew since stays.
            unclaim = prepare("DELETE FROM restarts WHERE message_id = ?1 AND finished IS NULL "
                              "AND (?2 = 0 OR started = ?2) AND owner IS ?3");
            // A duplicate's `skipped` does not hide that the message was acked; retried is not
            // a completion. `IS`, not `=`: with no outcome yet (NULL), `outcome = 'acked'` is
            // NULL and the whole condition with it, so a `skipped` would never be written.
            complete =
                prepare("UPDATE messages SET outcome = ?2, "
                        "completed_at = CASE WHEN ?2 = 'retried' THEN completed_at ELSE ?3 END, "
                        "last_error = COALESCE(NULLIF(?4, ''), last_error) "
                        "WHERE message_id = ?1 AND NOT (?2 = 'skipped' AND outcome IS 'acked')");
        } catch (...) {
            close_conn();
            throw;
        }
    }

    // Is this file mayhem's? Identified by mayhem's own tables, not by user_version alone (any
    // program may set that): version 0 must be an empty file, a later version must hold the
    // tables and columns of its version. Reads only, so a foreign file is refused exactly as it
    // was found (rollback journal and all), with sqlite_fatal: retrying cannot fix it.
    void check_schema(int version) {
        auto foreign = [&](const std::string& why) {
            return sqlite_fatal(opts.path + " is not a mayhem database: " + why +
                                "; use another --db");
        };
        int tables = scalar_int("SELECT count(*) FROM sqlite_schema");
        if (version == 0) {
            if (tables > 0) throw foreign("it holds tables but no mayhem schema version");
            return;
        }
        // Columns per table at each version (schema_v1, schema_v2; schema_v3 adds indexes).
        int messages = scalar_int(
            "SELECT count(*) FROM pragma_table_info('messages') WHERE name IN ('message_id', "
            "'instance', 'hostname', 'reason', 'first_seen', 'attempts', 'outcome', "
            "'completed_at', 'last_error')");
        int restarts = scalar_int(
            "SELECT count(*) FROM pragma_table_info('restarts') WHERE name IN ('message_id', "
            "'attempt', 'hostname', 'started', 'finished', 'result', 'detail', 'host_claimed', "
            "'owner', 'lease_until')");
        int want_restarts = version >= 2 ? 10 : 8;
        if (messages != 9 || restarts != want_restarts)
            throw foreign("its user_version is " + std::to_string(version) +
                          " but it lacks mayhem's tables messages and restarts (or their columns)");
    }

    // Version 0 -> 1 -> 2 -> 3, one step per version. Re-checked inside the write transaction:
    // another worker on the same file may have created the schema in the meantime.
    void migrate() {
        exec("BEGIN IMMEDIATE", "begin migration");
        try {
            int version = scalar_int("PRAGMA user_version");
            if (version == 0 && scalar_int("SELECT count(*) FROM sqlite_schema") > 0)
                throw sqlite_fatal(opts.path +
                                   " is not a mayhem database: it holds tables but no mayhem "
                                   "schema version; use another --db");
            for (; version < sqlite_schema_version; ++version)
                exec(migrations[static_cast<std::size_t>(version)],
                     "migrate schema"); // each sets its user_version
            exec("COMMIT", "commit migration");
        } catch (...) {
            sqlite3_exec(conn, "ROLLBACK", nullptr, nullptr, nullptr);
            throw;
        }
    }

    // One request inside the open transaction.
    void apply(request& r, std::int64_t now) {
        switch (r.kind) {
        case op::save:
            text(save, 1, r.id);
            text(save, 2, r.a);
            text(save, 3, r.b);
            text(save, 4, r.c);
            sqlite3_bind_int64(save, 5, now);
            run(save, "save");
            break;
        case op::claim:
            text(first_restart, 1, r.a);
            text(first_restart, 2, r.id);
            sqlite3_bind_int64(first_restart, 3, now);
            bind_owner(first_restart, 4, now);
            run(first_restart, "record restart start");
            if (sqlite3_changes(conn) == 1) {
                r.claim = restart_claim::proceed;
                r.attempt = 1;
                r.n = now;
            } else {
                claim_again(r, now);
            }
            break;
        case op::finish:
            text(finish, 1, r.id);
            sqlite3_bind_int64(finish, 3, now);
            text(finish, 4, r.a);
            text(finish, 5, r.b);
            bind_name(finish, 6);
            run(finish, "record restart end");
            r.claim = sqlite3_changes(conn) == 1 ? restart_claim::proceed : restart_claim::held;
            break;
        case op::renew:
            text(renew, 1, r.id);
            bind_owner(renew, 2, now);
            run(renew, "renew restart claim");
            break;
        case op::claim_host: {
            text(host_blocker, 1, r.a);
            text(host_blocker, 2, r.id);
            sqlite3_bind_int64(host_blocker, 3, r.n); // now - cooldown
            int rc = sqlite3_step(host_blocker);
            bool blocked = rc == SQLITE_ROW && sqlite3_column_type(host_blocker, 0) != SQLITE_NULL;
            if (blocked) r.n = sqlite3_column_int64(host_blocker, 0);
            sqlite3_reset(host_blocker);
            if (rc != SQLITE_ROW && rc != SQLITE_DONE) fail(rc, "claim host");
            r.claim = blocked ? restart_claim::done : restart_claim::proceed;
            // A blocking start later than this transaction's clock: the clock is behind it.
            if (blocked && r.n > now) r.claim = restart_claim::held;
            if (!blocked) {
                text(host_claim_row, 1, r.id);
                sqlite3_bind_int64(host_claim_row, 3, now);
                run(host_claim_row, "record host claim");
                r.n = now;
            }
            break;
        }
        case op::unclaim:
            text(unclaim, 1, r.id);
            sqlite3_bind_int64(unclaim, 2, r.n);
            bind_name(unclaim, 3);
            run(unclaim, "give back a restart claim");
            break;
        case op::slot:
            take_slot(r, now);
            break;
        case op::unslot:
            text(slot_release, 1, r.id);
            bind_name(slot_release, 2);
            run(slot_release, "give back a restart slot");
            break;
        case op::read_pause:
            read_pause();
            break;
        case op::note:  // never queued: this store keeps no fleet breaker
        case op::trial: // (store.hpp, shares_breaker)
        case op::prune: // its own transaction, after the batch's (prune_asked)
        case op::skip:
            break;
        case op::complete:
            text(complete, 1, r.id);
            text(complete, 2, r.a);
            sqlite3_bind_int64(complete, 3, now);
            text(complete, 4, r.b);
            run(complete, "record outcome");
            break;
        }
    }

    // Binds this worker's name (its claims' owner) at `i`.
    void bind_name(sqlite3_stmt* s, int i) {
        sqlite3_bind_text(s, i, opts.owner.data(), static_cast<int>(opts.owner.size()),
                          SQLITE_STATIC);
    }
    // Binds this worker's name at `i` and the lease of a claim made or renewed now at `i + 1`
    // (0 without a lease: never held against a peer).
    void bind_owner(sqlite3_stmt* s, int i, std::int64_t now) {
        bind_name(s, i);
        sqlite3_bind_int64(s, i + 1,
                           opts.claim_lease.count() > 0 ? now + opts.claim_lease.count() : 0);
    }

    // A claim whose attempt 1 is already recorded: a restart of this id was recorded before, and
    // its latest row decides: an unfinished one is a peer's while its lease lasts; once it has
    // expired it is closed as abandoned and this worker records the next attempt (to verify, or
    // to run again). A failed or refused one is followed by the next attempt; anything else is
    // done.
    void claim_again(request& r, std::int64_t now) {
        text(last_restart, 1, r.id);
        bind_name(last_restart, 2);
        sqlite3_bind_int64(last_restart, 3, now);
        int rc = sqlite3_step(last_restart);
        bool start = true, take = false, wait_take = false;
        std::int64_t attempt = 1;
        r.claim = restart_claim::proceed;
        if (rc == SQLITE_ROW) {
            attempt = sqlite3_column_int64(last_restart, 2) + 1;
            bool unfinished = sqlite3_column_int(last_restart, 0) != 0;
            bool mine = sqlite3_column_int(last_restart, 3) != 0;
            bool leased = sqlite3_column_int(last_restart, 4) != 0;
            auto* res = reinterpret_cast<const char*>(sqlite3_column_text(last_restart, 1));
            if (unfinished && leased && !mine) {
                r.claim = restart_claim::held;
                start = false;
            } else if (unfinished) {
                r.claim = restart_claim::unfinished;
                if (sqlite3_column_int(last_restart, 5) != 0) {
                    take = true; // it passed the cooldown claim: it may have run
                } else {
                    wait_take = true;
                    start = false;
                    --attempt;
                }
            } else if (res && std::string_view(res) == "abandoned") {
                // Taken over once, then released before it ran again: still unfinished.
                r.claim = restart_claim::unfinished;
            } else if (!res || !retried_after(res)) {
                r.claim = restart_claim::done;
                start = false;
            }
        }
        sqlite3_reset(last_restart);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) fail(rc, "claim");
        if (take) {
            text(take_over, 1, r.id);
            sqlite3_bind_int64(take_over, 2, now);
            run(take_over, "close an abandoned restart claim");
        }
        if (wait_take) {
            r.attempt = static_cast<std::uint32_t>(attempt);
            text(take_waiting, 1, r.id);
            bind_owner(take_waiting, 2, now);
            run(take_waiting, "take over an unfinished restart claim");
        }
        if (start) {
            r.attempt = static_cast<std::uint32_t>(attempt);
            r.n = now;
            text(start_restart, 1, r.a);
            text(start_restart, 2, r.id);
            sqlite3_bind_int64(start_restart, 3, now);
            sqlite3_bind_int64(start_restart, 4, attempt);
            bind_owner(start_restart, 5, now);
            run(start_restart, "record restart start");
        }
    }

    // ------------------------------------------------------------------------------------------
    // Multi-row statements: n requests of one kind in one statement, so that bind, step, the
    // statement's start and end (cursor open and close, VdbeHalt) are paid once per n rows
    // instead of once per row. ?1 is the transaction's clock; each row binds its own values.
    // ------------------------------------------------------------------------------------------

    static std::string multi_sql(multi_kind k, int n) {
        auto rows = [n](std::string& sql, int first, int per_row, const char* shape) {
            // shape: the row with $1..$per_row for its own parameters, numbered from ?first;
            // ?1.. (below first) for the shared ones (?1 the clock).
            for (int i = 0; i < n; ++i) {
                if (i) sql += ',';
                for (const char* c = shape; *c; ++c) {
                    if (*c == '$') {
                        ++c;
                        sql += '?' + std::to_string(first + per_row * i + (*c - '1'));
                    } else {
                        sql += *c;
                    }
                }
            }
        };
        auto ids = [k](std::string& sql, int count) {
            int first = k == m_complete ? 4 : 5; // after the shared parameters
            for (int i = 0; i < count; ++i)
                sql += (i ? ",?" : "?") + std::to_string(first + i);
        };
        std::string sql;
        switch (k) {
        case m_save:
            // The cursor stays on the b-tree between rows, so ids in ascending order (the usual
            // case) are appended without a search from the root.
            sql = "INSERT INTO messages (message_id, instance, hostname, reason, first_seen) "
                  "VALUES ";
            rows(sql, 2, 4, "($1,$2,$3,$4,?1)");
            sql += " ON CONFLICT (message_id) DO UPDATE SET attempts = attempts + 1";
            break;
        case m_claim:
            // The first claim of each id. No conflict clause: if one id has a restart recorded
            // already, the statement fails and undoes itself (the transaction goes on), and the
            // rows take the one-row path. RETURNING the ids recorded would cost as much as the
            // rows it saves.
            sql = "INSERT INTO restarts (hostname, message_id, started, attempt, owner, "
                  "lease_until) VALUES ";
            rows(sql, 4, 2, "($1,$2,?1,1,?2,?3)"); // ?2 the owner, ?3 the lease
            break;
        case m_complete:
            // The same update as `complete`, for the ids ?4... that get the same outcome ?2 and
            // reason ?3.
            sql = "UPDATE messages SET outcome = ?2, "
                  "completed_at = CASE WHEN ?2 = 'retried' THEN completed_at ELSE ?1 END, "
                  "last_error = COALESCE(NULLIF(?3, ''), last_error) WHERE message_id IN (";
            ids(sql, n);
            sql += ") AND NOT (?2 = 'skipped' AND outcome IS 'acked')";
            break;
        case m_finish:
            // The same update as `finish`, for the ids ?5... with the same result ?2 and detail
            // ?3, by the owner ?4. RETURNING names the rows that were still this worker's.
            sql = "UPDATE restarts SET finished = ?1, result = ?2, detail = NULLIF(?3, ''), "
                  "lease_until = NULL WHERE message_id IN (";
            ids(sql, n);
            sql += ") AND finished IS NULL AND owner IS ?4 RETURNING message_id";
            break;
        case m_renew:
            // The same update as `renew`: ?2 the owner, ?3 the new lease, the ids ?5...
            sql = "UPDATE restarts SET lease_until = ?3 WHERE message_id IN (";
            ids(sql, n);
            sql += ") AND finished IS NULL AND owner IS ?2";
            break;
        case m_kinds:
            break;
        }
        return sql;
    }

    sqlite3_stmt* multi_stmt(multi_kind k, int n, std::int64_t now) {
        auto*& s = multi[k][n];
        if (!s) s = prepare(multi_sql(k, n).c_str());
        sqlite3_bind_int64(s, 1, now);
        return s;
    }

    // n (2..max_rows) requests of kind k, in order, in one statement.
    void apply_many(multi_kind k, request* const* r, int n, std::int64_t now) {
        sqlite3_stmt* s = multi_stmt(k, n, now);
        switch (k) {
        case m_save:
            for (int i = 0; i < n; ++i) {
                text(s, 2 + 4 * i, r[i]->id);
                text(s, 3 + 4 * i, r[i]->a);
                text(s, 4 + 4 * i, r[i]->b);
                text(s, 5 + 4 * i, r[i]->c);
            }
            run(s, "save");
            break;
        case m_claim:
            claim_many(s, r, n, now);
            break;
        case m_complete:
            // The same a and b for all (apply_run grouped them).
            text(s, 2, r[0]->a);
            text(s, 3, r[0]->b);
            for (int i = 0; i < n; ++i)
                text(s, 4 + i, r[i]->id);
            run(s, "record outcome");
            break;
        case m_finish:
            text(s, 2, r[0]->a);
            text(s, 3, r[0]->b);
            bind_name(s, 4);
            for (int i = 0; i < n; ++i)
                text(s, 5 + i, r[i]->id);
            finish_many(s, r, n);
            break;
        case m_renew:
            bind_owner(s, 2, now);
            for (int i = 0; i < n; ++i)
                text(s, 5 + i, r[i]->id);
            run(s, "renew restart claims");
            break;
        case m_kinds:
            break;
        }
    }

    // The rows RETURNING names were finished by this worker; any other was taken over by a peer
    // (held). Usually all of them are: then no id is compared.
    void finish_many(sqlite3_stmt* s, request* const* r, int n) {
        returned_.clear();
        int rc;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW)
            returned_.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)),
                                   static_cast<std::size_t>(sqlite3_column_bytes(s, 0)));
        sqlite3_reset(s);
        if (rc != SQLITE_DONE) fail(rc, "record restart end");
        bool all = returned_.size() == static_cast<std::size_t>(n);
        for (int i = 0; i < n; ++i) {
            bool mine = all || std::find(returned_.begin(), returned_.end(),
                                         flying.view(r[i]->id)) != returned_.end();
            r[i]->claim = mine ? restart_claim::proceed : restart_claim::held;
        }
    }

    void claim_many(sqlite3_stmt* s, request* const* r, int n, std::int64_t now) {
        bind_owner(s, 2, now);
        for (int i = 0; i < n; ++i) {
            text(s, 4 + 2 * i, r[i]->a);
            text(s, 5 + 2 * i, r[i]->id);
        }
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc == SQLITE_DONE) {
            for (int i = 0; i < n; ++i) {
                r[i]->claim = restart_claim::proceed;
                r[i]->attempt = 1;
                r[i]->n = now;
            }
            return;
        }
        // A restart of one of these ids was recorded before (the statement changed nothing):
        // each on its own, where the latest row of its id decides.
        if ((rc & 0xFF) != SQLITE_CONSTRAINT) fail(rc, "record restart start");
        for (int i = 0; i < n; ++i)
            apply(*r[i], now);
    }

    // A run of requests of one kind on distinct ids, in any order: max_rows per statement (for
    // an update, only requests that set the same values share one); a single one takes the
    // one-row statement.
    void apply_run(multi_kind k, std::vector<request*>& rs, std::int64_t now) {
        bool same_values = k == m_complete || k == m_finish;
        auto values = [this](const request* r) {
            return std::pair{flying.view(r->a), flying.view(r->b)};
        };
        // Usually they all set the same values (acked, ok): then there is nothing to sort.
        if (same_values && !rs.empty() &&
            std::any_of(rs.begin() + 1, rs.end(),
                        [&](const request* r) { return values(r) != values(rs.front()); }))
            std::sort(rs.begin(), rs.end(),
                      [&](const request* x, const request* y) { return values(x) < values(y); });
        std::size_t i = 0;
        while (i < rs.size()) {
            std::size_t end = std::min(rs.size(), i + max_rows);
            if (same_values) {
                auto v = values(rs[i]);
                std::size_t j = i + 1;
                while (j < end && values(rs[j]) == v)
                    ++j;
                end = j;
            }
            int n = static_cast<int>(end - i);
            if (n == 1)
                apply(*rs[i], now);
            else
                apply_many(k, rs.data() + i, n, now);
            i = end;
        }
    }

    // True if no message id occurs twice among `rs` (hash collisions answer false: harmless).
    // The hashes go in an open-addressed table at most half full (0 marks a free slot).
    bool distinct_ids(const std::vector<request*>& a, const std::vector<request*>& b) {
        std::size_t slots = 16;
        while (slots < 2 * (a.size() + b.size()))
            slots *= 2;
        ids_.assign(slots, 0);
        std::hash<std::string_view> h;
        for (const auto* v : {&a, &b})
            for (const request* r : *v) {
                std::size_t x = h(flying.view(r->id)) | 1;
                for (std::size_t i = x & (slots - 1);; i = (i + 1) & (slots - 1)) {
                    if (ids_[i] == x) return false;
                    if (ids_[i] == 0) {
                        ids_[i] = x;
                        break;
                    }
                }
            }
        return true;
    }

    // The requests on `messages`, in arrival order.
    void write_messages(std::int64_t now) {
        saves_.clear();
        completes_.clear();
        for (auto& r : flying) {
            if (r.kind == op::save) saves_.push_back(&r);
            if (r.kind == op::complete) completes_.push_back(&r);
        }
        if (distinct_ids(saves_, completes_)) {
            // Requests on distinct ids commute: every save, then every complete, each kind in
            // runs of max_rows.
            apply_run(m_save, saves_, now);
            apply_run(m_complete, completes_, now);
            return;
        }
        // An id twice (a duplicate delivery's `skipped` after its first's `acked`, a redelivery
        // saved after an earlier delivery's outcome): arrival order, saves in runs between
        // completes.
        saves_.clear();
        for (auto& r : flying) {
            if (r.kind == op::save) {
                saves_.push_back(&r);
            } else if (r.kind == op::complete) {
                apply_run(m_save, saves_, now);
                saves_.clear();
                apply(r, now);
            }
        }
        apply_run(m_save, saves_, now);
    }

    // The requests on `restarts`: first the unclaims (each gives back a start committed by an
    // earlier transaction, so it comes before any claim of the same id in this one), then the
    // rest in arrival order, up to each claim_host: it reads other ids' rows, so what arrived
    // before it is written before it and what came after, after.
    void write_restarts(std::int64_t now) {
        for (auto& r : flying)
            if (r.kind == op::unclaim) apply(r, now);
        auto segment = [&] {
            if (distinct_ids(claims_, finishes_)) {
                // Distinct ids: claims and finishes commute.
                apply_run(m_claim, claims_, now);
                apply_run(m_finish, finishes_, now);
            } else {
                // One id twice: every request in arrival order, one by one (rare).
                std::sort(claims_.begin(), claims_.end());
                std::sort(finishes_.begin(), finishes_.end());
                std::vector<request*> all;
                std::merge(claims_.begin(), claims_.end(), finishes_.begin(), finishes_.end(),
                           std::back_inserter(all));
                for (request* r : all)
                    apply(*r, now);
            }
            claims_.clear();
            finishes_.clear();
        };
        claims_.clear();
        finishes_.clear();
        renews_.clear();
        for (auto& r : flying) {
            if (r.kind == op::claim) {
                claims_.push_back(&r);
            } else if (r.kind == op::finish) {
                finishes_.push_back(&r);
            } else if (r.kind == op::renew) {
                renews_.push_back(&r);
            } else if (r.kind == op::claim_host) {
                segment(); // rare: in arrival order against the claims and finishes around it
                apply(r, now);
            }
        }
        segment();
        // Renewals last: they only extend what is still this worker's and unfinished, whatever
        // came before them in the batch. One id is renewed at most once per tick.
        apply_run(m_renew, renews_, now);
        // The slots of the renewed claims that hold one (marked n = 1 by renew_claims).
        for (request* r : renews_)
            if (r->n == 1) {
                text(slot_renew, 1, r->id);
                bind_owner(slot_renew, 2, now);
                run(slot_renew, "renew restart slot");
            }
    }

    // Restart claims are the record that a restart may have run: the cooldown and the
    // idempotency record read them, and the message of a claim may be acked right after. So a
    // transaction that writes one (a claim, a host claim, a restart's end or the withdrawal of a
    // start) commits with synchronous=FULL (the WAL fsynced) whatever --db-synchronous says: a
    // power loss cannot make the store forget a restart it made. Others follow the option.
    bool holds_claims() const noexcept {
        return std::any_of(flying.begin(), flying.end(), [](const request& r) {
            return r.kind == op::claim || r.kind == op::claim_host || r.kind == op::finish ||
                   r.kind == op::unclaim;
        });
    }
    void set_synchronous() {
        bool full = opts.synchronous_full || holds_claims();
        if (full == synchronous_full_now) return;
        exec(full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", "synchronous");
        synchronous_full_now = full;
    }

    // ------------------------------------------------------------------------------------------
    // The rails of every worker sharing the file (store.hpp: claim_slot, watch_pause), as the
    // postgres store keeps them for a fleet. BEGIN IMMEDIATE makes each transaction the only
    // writer of the file, so a slot is looked for and taken without a peer in between.
    // ------------------------------------------------------------------------------------------

    // The batch's requests on the rails' tables: slots given back first, so they are free for
    // the batch's claims of a slot; then those, in arrival order; then the pause's read.
    void write_rails(std::int64_t now) {
        for (op k : {op::unslot, op::slot, op::read_pause})
            for (auto& r : flying)
                if (r.kind == k) apply(r, now);
    }

    void prepare_rails() {
        if (slot_rows) return;
        // Slots 1..cap exist as rows (a bigger cap adds rows; a smaller one leaves the rest).
        slot_rows = prepare("WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s "
                            "WHERE n < ?1) INSERT OR IGNORE INTO restart_slots (slot) "
                            "SELECT n FROM s");
        slot_renew = prepare("UPDATE restart_slots SET lease_until = ?3 "
                             "WHERE message_id = ?1 AND owner = ?2");
        // A free slot: no message, or its owner's lease expired (the owner died).
        slot_take = prepare("UPDATE restart_slots SET message_id = ?1, owner = ?2, "
                            "lease_until = ?3, taken = ?4 WHERE slot = (SELECT slot FROM "
                            "restart_slots WHERE slot <= ?5 AND (message_id IS NULL OR "
                            "lease_until <= ?4) ORDER BY slot LIMIT 1)");
        slot_release =
            prepare("UPDATE restart_slots SET message_id = NULL, owner = NULL, "
                    "lease_until = 0, taken = NULL WHERE message_id = ?1 AND owner = ?2");
        pause_read = prepare("SELECT paused_by, paused_at, reason FROM fleet_pause");
    }

    // claim_slot: the slot m already holds (renewed), else the first free one of `cap` (r.n);
    // held when there is none.
    void take_slot(request& r, std::int64_t now) {
        prepare_rails();
        sqlite3_bind_int64(slot_rows, 1, r.n);
        run(slot_rows, "create restart slots");
        text(slot_renew, 1, r.id);
        bind_owner(slot_renew, 2, now);
        run(slot_renew, "renew restart slot");
        r.claim = restart_claim::proceed;
        if (sqlite3_changes(conn) > 0) return;
        text(slot_take, 1, r.id);
        bind_owner(slot_take, 2, now);
        sqlite3_bind_int64(slot_take, 4, now);
        sqlite3_bind_int64(slot_take, 5, r.n);
        run(slot_take, "take a restart slot");
        if (sqlite3_changes(conn) == 0) r.claim = restart_claim::held;
    }

    void read_pause() {
        prepare_rails();
        int rc = sqlite3_step(pause_read);
        std::optional<fleet_pause> p;
        if (rc == SQLITE_ROW) {
            auto col = [&](int i) {
                auto* t = reinterpret_cast<const char*>(sqlite3_column_text(pause_read, i));
                return std::string(t ? t : "");
            };
            p = fleet_pause{col(0), col(2), sqlite3_column_int64(pause_read, 1)};
        }
        sqlite3_reset(pause_read);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) fail(rc, "read the fleet pause");
        pause_seen = std::move(p);
    }

    // ------------------------------------------------------------------------------------------
    // Retention (store.hpp, prune): a pass runs in a short transaction of its own right after
    // the batch's commit, so no claim of the batch waits for its deletes, and its failure fails
    // only the pass (claim `held`, prune_error says why).
    // ------------------------------------------------------------------------------------------

    void prune_asked() noexcept {
        for (auto& r : flying)
            if (r.kind == op::prune) prune_pass(r);
    }

    void prune_pass(request& r) noexcept {
        r.claim = restart_claim::held;
        flag_while_alive short_waits{pruning}; // another writer's lock: skip this pass
        try {
            if (!prune_messages) prune_messages = prepare(prune_messages_sql);
            if (!prune_restarts) prune_restarts = prepare(prune_restarts_sql);
            run(begin, "begin retention pass");
            try {
                for (sqlite3_stmt* st : {prune_messages, prune_restarts}) {
                    sqlite3_bind_int64(st, 1, prune_next.messages_before);
                    sqlite3_bind_int64(st, 2, prune_next.restarts_before);
                    sqlite3_bind_int64(st, 3, prune_next.limit);
                    sqlite3_bind_int64(st, 4, prune_next.host_claims_since);
                }
                run(prune_messages, "prune messages");
                r.n = sqlite3_changes(conn);
                run(prune_restarts, "prune restarts");
                r.attempt = static_cast<std::uint32_t>(sqlite3_changes(conn));
                run(commit, "commit retention pass");
            } catch (...) {
                if (!sqlite3_get_autocommit(conn)) {
                    sqlite3_step(rollback);
                    sqlite3_reset(rollback);
                }
                throw;
            }
            r.claim = restart_claim::proceed;
        } catch (const db_error& e) {
            prune_error = e.what;
            if (reopen_after(e.code)) close_conn();
        } catch (const std::exception& e) {
            prune_error = e.what();
        }
    }

    // Pool thread: writes `flying` as one transaction. Returns the error, empty on success.
    std::string write() noexcept {
        try {
            if (!conn) open();
            std::int64_t now = now_ms();
            // A batch of nothing but reads of the pause and retention passes (an idle worker's
            // ticks) takes no write lock of its own: the read is one statement on its own, the
            // pass its own transaction.
            if (std::all_of(flying.begin(), flying.end(), [](const request& r) {
                    return r.kind == op::prune || r.kind == op::read_pause || r.kind == op::skip;
                })) {
                for (auto& r : flying)
                    if (r.kind == op::read_pause) apply(r, now);
                prune_asked();
                return {};
            }
            set_synchronous(); // outside the transaction: it applies to the next commit
            run(begin, "begin");
            try {
                // Table by table (messages, then restarts): no request reads the other table, so
                // the result is the same as in arrival order, and the statements of one table
                // run back to back over the same hot pages.
                write_messages(now);
                write_restarts(now);
                write_rails(now);
                run(commit, "commit");
            } catch (...) {
                if (conn && !sqlite3_get_autocommit(conn)) {
                    sqlite3_step(rollback);
                    sqlite3_reset(rollback);
                }
                throw;
            }
            prune_asked();
            return {};
        } catch (const db_error& e) {
            if (reopen_after(e.code)) close_conn();
            return e.what;
        } catch (const std::exception& e) {
            close_conn();
            return e.what();
        }
    }
};

int sqlite_migrate(const std::string& path) {
    sqlite_store::shared db(sqlite_options{path});
    try {
        db.open(); // as a worker's start: created or migrated, a foreign file refused
    } catch (const db_error& e) {
        throw std::runtime_error(e.what);
    }
    return sqlite_schema_version;
}

// ---------------------------------------------------------------------------------------------
// sqlite_store
// ---------------------------------------------------------------------------------------------

sqlite_store::sqlite_store(rt::loop& loop, sqlite_options opts)
    : group_commit_store(loop, opts.max_held_records, "db", opts.path),
      db_(std::make_shared<shared>(std::move(opts))), tasks_([](std::exception_ptr e) {
          log::error("store writer failed", {{"error", rt::describe(e)}});
      }) {
    // SQLite's allocation statistics take a global mutex on every malloc; nothing reads them.
    // Only possible before SQLite initialises, hence once, here.
    static const bool configured = [] {
        sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
        return true;
    }();
    (void)configured;
    // Start-up, before the loop runs: the one time the loop thread touches the connection.
    try {
        db_->open();
        db_->read_pause(); // watch_pause's first answer
        pause_.saw(db_->pause_seen);
    } catch (const db_error& e) {
        // Maybe transient (read-only for now, locked, disk full): run unready and retry with
        // every transaction, so the messages are retried, not lost, and /readyz says why.
        health_.note(false, e.what);
    }
    tasks_.spawn(writer());
}

sqlite_store::~sqlite_store() = default;

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

// The group-commit loop: take everything queued, write it as one transaction on the pool, hand
// the next queue to the pool, and resume the tasks that waited on the committed one meanwhile
// (resume_). What the resumed tasks queue goes into a later transaction.
rt::task<void> sqlite_store::writer() {
    for (;;) {
        if (phase_ == phase::hurried) {
            give_up();
            break;
        }
        if (pending_.empty() && !records_.due()) {
            // Nothing to write meanwhile: resume now, so what the tasks queue is written next.
            flush_done();
            if (!pending_.empty() || records_.due()) continue;
            if (phase_ == phase::closing && records_.empty()) break;
            co_await idle_awaiter{*this}; // woken by a request, a due record, or hurry()
            continue;
        }
        skip_unwaited_starts();
        records_.take_into(pending_); // when not due, the slot releases only
        swap(db_->flying, pending_);
        pending_.clear();

        std::string error;
        try {
            // The pool thread's reference survives this frame if it is destroyed. The awaiter is
            // a named local: GCC 12 mishandles lambda temporaries inside a co_await expression
            // (the capture was destroyed twice).
            std::function<std::string()> fn = [db = db_] { return db->write(); };
            rt::offload_awaiter<std::string> work(loop_, std::move(fn));
            error = co_await work;
        } catch (const std::exception& e) {
            error = std::string("thread pool: ") + e.what();
        }
        // The previous batch is normally resumed by now (resume_ fired while this one was
        // written); if not, it is resumed first, so its tasks read their own result.
        flush_done();
        bool ok = error.empty();
        if (pause_.read_queued() && ok) pause_.saw(db_->pause_seen);
        batch_ended(ok, std::move(error), db_->flying);
    }
    phase_ = phase::closed;
    writer_done_.set();
}

// ---------------------------------------------------------------------------------------------
// The requests that differ from group_commit_store's
// ---------------------------------------------------------------------------------------------

void sqlite_store::renew_claims(std::span<const message* const> ms) {
    if (db_->opts.claim_lease.count() <= 0) return; // never held against a peer: nothing to renew
    for (const message* m : ms) {
        request r;
        r.kind = op::renew;
        r.id = pending_.put(m->message_id());
        r.n = slot_holders_.count(std::string(m->message_id())) ? 1 : 0; // and its slot
        enqueue_unwaited(r);
    }
}

rt::task<prune_counts> sqlite_store::prune(prune_bounds b) {
    if (prune_queued_) co_return prune_counts{}; // one pass at a time
    flag_while_alive queued{prune_queued_};
    db_->prune_next = b; // no pass is in flight: the pool does not read it now
    request r;
    r.kind = op::prune;
    auto pending = enqueue(r); // named: see writer() on GCC 12 and temporaries
    store_reply x = co_await pending;
    if (!x.ok) throw std::runtime_error("store: " + x.error);
    if (x.claim != restart_claim::proceed) throw std::runtime_error("store: " + db_->prune_error);
    prune_counts c{static_cast<std::uint64_t>(x.n), x.attempt};
    stats_.pruned_messages.inc(c.messages);
    stats_.pruned_restarts.inc(c.restarts);
    co_return c;
}

rt::task<bool> sqlite_store::claim_slot(const message& m, std::size_t cap) {
    auto claim = group_commit_store::claim_slot(m, cap); // named: see writer() on GCC 12
    bool got = co_await claim;
    if (got) slot_holders_.emplace(m.message_id());
    co_return got;
}

void sqlite_store::release_slot(const message& m) {
    slot_holders_.erase(std::string(m.message_id()));
    group_commit_store::release_slot(m);
}

// ---------------------------------------------------------------------------------------------
// Closing
// ---------------------------------------------------------------------------------------------

void sqlite_store::hurry() {
    if (phase_ == phase::closed || phase_ == phase::hurried) return;
    phase_ = phase::hurried;
    db_->hurry.store(true, std::memory_order_relaxed);
    wake();
}

rt::task<void> sqlite_store::close() {
    auto writer_ended = close_writer(); // named: see writer() on GCC 12 and temporaries
    co_await writer_ended;
    std::function<void()> fn = [db = db_] { db->close_conn(); }; // checkpoints the WAL: blocks
    rt::offload_awaiter<void> work(loop_, std::move(fn));
    co_await work;
    auto tx = stats_.transactions.get();
    log::info("store closed",
              {{"db", db_->opts.path},
               {"transactions", tx},
               {"failed_transactions", stats_.failed_transactions.get()},
               {"saves", stats_.saves.get()},
               {"requests", stats_.requests.get()},
               {"saves_per_transaction",
                tx ? static_cast<double>(stats_.saves.get()) / static_cast<double>(tx) : 0.0},
               {"outages", stats_.outages.get()},
               {"unrecorded", stats_.unrecorded.get()}});
}

} // namespace mayhem
