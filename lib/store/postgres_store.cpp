#include "store/postgres_store.hpp"

#include "runtime/log.hpp"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <random>
#include <unordered_set>
#include <utility>

namespace mayhem {

// ---------------------------------------------------------------------------------------------
// The schema. The same logical tables as the SQLite store (its version 2); times are
// milliseconds since the Unix epoch (UTC), stamped by the worker that writes them.
//
// schema_migrations: one row per migration applied. Every worker migrates at start, in one
//   transaction under a transaction-level advisory lock, so workers starting together apply
//   each migration once and wait for each other.
// messages, restarts: as in sqlite_store.cpp. restarts' latest row per message id is its
//   idempotency record; `owner` and `lease_until` make a claim a worker's own.
// host_locks: one row per host that passed a cooldown check: the mutex of the per-host
//   cooldown. A batch with cooldown claims first locks its hosts' rows (FOR UPDATE, in sorted
//   order, so two workers never wait on each other in a cycle); the check and the mark then
//   run while no other worker can check the same host, until the batch commits.
//
// The functions hold what one statement cannot: a claim that is not an id's first re-reads the
// latest row and writes only if it still is what it read (else it reads again), so two workers
// never both proceed for one message id; the cooldown check and mark for each host in order.
// ---------------------------------------------------------------------------------------------

namespace {

constexpr const char* schema_v1 = R"sql(
CREATE TABLE messages (
    message_id   text PRIMARY KEY,
    instance     text NOT NULL,
    hostname     text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    first_seen   bigint NOT NULL,
    attempts     integer NOT NULL DEFAULT 1,
    outcome      text,
    completed_at bigint,
    last_error   text
) WITH (fillfactor = 70);
CREATE TABLE restarts (
    message_id   text NOT NULL,
    attempt      integer NOT NULL,
    hostname     text NOT NULL,
    started      bigint NOT NULL,
    finished     bigint,
    result       text,
    detail       text,
    host_claimed boolean NOT NULL DEFAULT false,
    owner        text,
    lease_until  bigint,
    PRIMARY KEY (message_id, attempt)
) WITH (fillfactor = 70);
CREATE INDEX restarts_host_claims ON restarts (hostname, started) WHERE host_claimed;
CREATE TABLE host_locks (hostname text PRIMARY KEY);

-- 0 proceed (a new row is this worker's), 1 done, 2 unfinished (taken over), 3 held by a peer.
CREATE FUNCTION mayhem_claim_again(id text, host text, who text, now_ms bigint, lease bigint)
RETURNS smallint LANGUAGE plpgsql AS $fn$
DECLARE r record;
BEGIN
    LOOP
        SELECT finished IS NULL AS unfinished, result, attempt, owner, lease_until INTO r
          FROM restarts WHERE message_id = id ORDER BY attempt DESC LIMIT 1;
        IF NOT FOUND THEN
            INSERT INTO restarts (hostname, message_id, started, attempt, owner, lease_until)
                 VALUES (host, id, now_ms, 1, who, lease) ON CONFLICT DO NOTHING;
            IF FOUND THEN RETURN 0; END IF;
        ELSIF r.unfinished THEN
            IF r.owner IS DISTINCT FROM who AND coalesce(r.lease_until, 0) > now_ms THEN
                RETURN 3;
            END IF;
            UPDATE restarts SET owner = who, lease_until = lease
             WHERE message_id = id AND attempt = r.attempt AND finished IS NULL
               AND owner IS NOT DISTINCT FROM r.owner
               AND lease_until IS NOT DISTINCT FROM r.lease_until;
            IF FOUND THEN RETURN 2; END IF;
        ELSIF r.result IS NULL OR r.result NOT IN ('failed', 'refused', 'dry_run') THEN
            RETURN 1;
        ELSE
            INSERT INTO restarts (hostname, message_id, started, attempt, owner, lease_until)
                 VALUES (host, id, now_ms, r.attempt + 1, who, lease) ON CONFLICT DO NOTHING;
            IF FOUND THEN RETURN 0; END IF;
        END IF;
        -- Another worker wrote this id's row in between: read it again.
    END LOOP;
END $fn$;

-- Claims for distinct ids: first claims in one INSERT; the rest one by one, in id order.
-- Returns the claims that did not proceed, by position (1-based).
CREATE FUNCTION mayhem_claim(ids text[], hosts text[], who text, now_ms bigint, lease bigint)
RETURNS TABLE (i integer, claim smallint) LANGUAGE plpgsql AS $fn$
DECLARE todo integer[]; c smallint; k integer;
BEGIN
    WITH ins AS (
        INSERT INTO restarts (hostname, message_id, started, attempt, owner, lease_until)
        SELECT u.h, u.m, now_ms, 1, who, lease FROM unnest(hosts, ids) AS u(h, m)
        ON CONFLICT DO NOTHING RETURNING message_id)
    SELECT coalesce(array_agg(u.ord ORDER BY u.m), '{}') INTO todo
      FROM unnest(ids) WITH ORDINALITY AS u(m, ord)
     WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.message_id = u.m);
    FOREACH k IN ARRAY todo LOOP
        c := mayhem_claim_again(ids[k], hosts[k], who, now_ms, lease);
        IF c <> 0 THEN
            i := k; claim := c; RETURN NEXT;
        END IF;
    END LOOP;
END $fn$;

-- Locks the hosts' mutex rows, creating the missing ones, in sorted order.
CREATE FUNCTION mayhem_lock_hosts(hosts text[]) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO host_locks (hostname)
    SELECT DISTINCT h FROM unnest(hosts) AS h ORDER BY 1 ON CONFLICT DO NOTHING;
    PERFORM 1 FROM host_locks WHERE hostname = ANY(hosts) ORDER BY hostname FOR UPDATE;
END $fn$;

-- The per-host cooldown (store.hpp, claim_host), in order; the hosts are locked. Returns the
-- claims refused, by position, with the start of the restart that blocks each.
CREATE FUNCTION mayhem_claim_hosts(ids text[], hosts text[], cutoffs bigint[], now_ms bigint)
RETURNS TABLE (i integer, blocked_at bigint) LANGUAGE plpgsql AS $fn$
DECLARE b bigint;
BEGIN
    FOR k IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        SELECT max(started) INTO b FROM restarts
         WHERE hostname = hosts[k] AND host_claimed AND message_id <> ids[k]
           AND started > cutoffs[k] AND (finished IS NULL OR result IN ('ok', 'unverified'));
        IF b IS NULL THEN
            UPDATE restarts SET host_claimed = true, started = now_ms
             WHERE message_id = ids[k] AND finished IS NULL;
        ELSE
            i := k; blocked_at := b; RETURN NEXT;
        END IF;
    END LOOP;
END $fn$;
)sql";

// Version 2: restart starts are counted as in sqlite_store. A claim that takes over an unfinished
// start which passed its cooldown claim (it may have run) closes it as `abandoned` and records
// the next attempt; a claim after an `abandoned` row records the next attempt too; one that
// never passed the cooldown claim is taken over as it is (no start to count). Every claim
// answers its attempt. An `abandoned` start still counts for its host's cooldown.
constexpr const char* schema_v2 = R"sql(
DROP FUNCTION mayhem_claim(text[], text[], text, bigint, bigint);
DROP FUNCTION mayhem_claim_again(text, text, text, bigint, bigint);

-- kind: 0 proceed, 1 done, 2 unfinished (taken over), 3 held by a peer; n: the attempt.
CREATE FUNCTION mayhem_claim_again(id text, host text, who text, now_ms bigint, lease bigint,
                                   OUT kind smallint, OUT n integer)
LANGUAGE plpgsql AS $fn$
DECLARE r record;
BEGIN
    LOOP
        SELECT finished IS NULL AS unfinished, result, attempt, owner, lease_until, host_claimed
          INTO r FROM restarts WHERE message_id = id ORDER BY attempt DESC LIMIT 1;
        IF NOT FOUND THEN
            INSERT INTO restarts (hostname, message_id, started, attempt, owner, lease_until)
                 VALUES (host, id, now_ms, 1, who, lease) ON CONFLICT DO NOTHING;
            IF FOUND THEN kind := 0; n := 1; RETURN; END IF;
        ELSIF r.unfinished THEN
            IF r.owner IS DISTINCT FROM who AND coalesce(r.lease_until, 0) > now_ms THEN
                kind := 3; n := r.attempt; RETURN;
            END IF;
            IF r.host_claimed THEN
                UPDATE restarts SET finished = now_ms, result = 'abandoned',
                       detail = 'its worker stopped or lost its lease before it finished',
                       lease_until = NULL
                 WHERE message_id = id AND attempt = r.attempt AND finished IS NULL
                   AND owner IS NOT DISTINCT FROM r.owner
                   AND lease_until IS NOT DISTINCT FROM r.lease_until;
                IF FOUND THEN
                    -- The row is locked until commit: no peer records this attempt meanwhile.
                    INSERT INTO restarts (hostname, message_id, started, attempt, owner,
                                          lease_until)
                         VALUES (host, id, now_ms, r.attempt + 1, who, lease);
                    kind := 2; n := r.attempt + 1; RETURN;
                END IF;
            ELSE
                UPDATE restarts SET owner = who, lease_until = lease
                 WHERE message_id = id AND attempt = r.attempt AND finished IS NULL
                   AND owner IS NOT DISTINCT FROM r.owner
                   AND lease_until IS NOT DISTINCT FROM r.lease_until;
                IF FOUND THEN kind := 2; n := r.attempt; RETURN; END IF;
            END IF;
        ELSIF r.result IS NULL
              OR r.result NOT IN ('failed', 'refused', 'dry_run', 'abandoned') THEN
            kind := 1; n := r.attempt; RETURN;
        ELSE
            INSERT INTO restarts (hostname, message_id, started, attempt, owner, lease_until)
                 VALUES (host, id, now_ms, r.attempt + 1, who, lease) ON CONFLICT DO NOTHING;
            IF FOUND THEN
                kind := CASE WHEN r.result = 'abandoned' THEN 2 ELSE 0 END;
                n := r.attempt + 1;
                RETURN;
            END IF;
        END IF;
        -- Another worker wrote this id's row in between: read it again.
    END LOOP;
END $fn$;

-- Claims for distinct ids: first claims in one INSERT (attempt 1, proceed: not returned); the
-- rest one by one, in id order, each returned by position (1-based) with its kind and attempt.
CREATE FUNCTION mayhem_claim(ids text[], hosts text[], who text, now_ms bigint, lease bigint)
RETURNS TABLE (i integer, claim smallint, attempt integer) LANGUAGE plpgsql AS $fn$
DECLARE todo integer[]; k integer;
BEGIN
    WITH ins AS (
        INSERT INTO restarts (hostname, message_id, started, attempt, owner, lease_until)
        SELECT u.h, u.m, now_ms, 1, who, lease FROM unnest(hosts, ids) AS u(h, m)
        ON CONFLICT DO NOTHING RETURNING message_id)
    SELECT coalesce(array_agg(u.ord ORDER BY u.m), '{}') INTO todo
      FROM unnest(ids) WITH ORDINALITY AS u(m, ord)
     WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.message_id = u.m);
    FOREACH k IN ARRAY todo LOOP
        SELECT c.kind, c.n INTO claim, attempt
          FROM mayhem_claim_again(ids[k], hosts[k], who, now_ms, lease) AS c;
        i := k;
        RETURN NEXT;
    END LOOP;
END $fn$;

-- Fleet-wide --max-concurrent-restarts: slot k is free when it has no message or its owner's
-- lease expired. Taking one locks a free row (FOR UPDATE SKIP LOCKED: a row another worker is
-- taking is skipped; one it took since is re-checked and no longer free), so two workers never
-- hold one slot and never more than the cap are held.
CREATE TABLE restart_slots (
    slot        integer PRIMARY KEY,
    message_id  text,
    owner       text,
    lease_until bigint NOT NULL DEFAULT 0,
    taken       bigint
);

-- The fleet-wide pause (`mayhem pause` / `mayhem resume`): one row while paused.
CREATE TABLE fleet_pause (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    paused_by text NOT NULL,
    paused_at bigint NOT NULL,
    reason    text NOT NULL DEFAULT ''
);

-- Takes a slot for each id, in order; returns the positions (1-based) that found none free.
CREATE FUNCTION mayhem_take_slots(ids text[], caps integer[], who text, now_ms bigint,
                                  lease bigint)
RETURNS TABLE (i integer) LANGUAGE plpgsql AS $fn$
DECLARE got integer;
BEGIN
    INSERT INTO restart_slots (slot)
    SELECT generate_series(1, (SELECT max(c) FROM unnest(caps) AS c)) ON CONFLICT DO NOTHING;
    FOR k IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        UPDATE restart_slots SET lease_until = lease
         WHERE message_id = ids[k] AND owner = who AND slot <= caps[k];
        CONTINUE WHEN FOUND;
        SELECT slot INTO got FROM restart_slots
         WHERE slot <= caps[k] AND (message_id IS NULL OR lease_until <= now_ms)
         ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF got IS NULL THEN
            i := k; RETURN NEXT;
        ELSE
            UPDATE restart_slots SET message_id = ids[k], owner = who, lease_until = lease,
                   taken = now_ms
             WHERE slot = got;
        END IF;
    END LOOP;
END $fn$;

CREATE OR REPLACE FUNCTION mayhem_claim_hosts(ids text[], hosts text[], cutoffs bigint[],
                                              now_ms bigint)
RETURNS TABLE (i integer, blocked_at bigint) LANGUAGE plpgsql AS $fn$
DECLARE b bigint;
BEGIN
    FOR k IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        SELECT max(started) INTO b FROM restarts
         WHERE hostname = hosts[k] AND host_claimed AND message_id <> ids[k]
           AND started > cutoffs[k]
           AND (finished IS NULL OR result IN ('ok', 'unverified', 'abandoned'));
        IF b IS NULL THEN
            UPDATE restarts SET host_claimed = true, started = now_ms
             WHERE message_id = ids[k] AND finished IS NULL;
        ELSE
            i := k; blocked_at := b; RETURN NEXT;
        END IF;
    END LOOP;
END $fn$;
)sql";

// Version 3: retention (store/retention.hpp). A pass walks the rows that finished longest ago,
// oldest first, through these; partial, so rows in flight cost them nothing.
constexpr const char* schema_v3 = R"sql(
CREATE INDEX messages_completed ON messages (completed_at) WHERE completed_at IS NOT NULL;
CREATE INDEX restarts_finished ON restarts (finished) WHERE finished IS NOT NULL;
)sql";

// Version 4: the fleet-wide circuit breaker (store.hpp, fleet_breaker). One row holds the
// state; every change to it locks that row first, so two workers never both open, close or
// take the trial. breaker_failures: the hosts whose restart failed while it was closed, with
// their latest failure (distinct hosts, as one breaker counts them).
constexpr const char* schema_v4 = R"sql(
CREATE TABLE fleet_breaker (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    state       smallint NOT NULL DEFAULT 0, -- 0 closed, 1 open, 2 half-open
    opened_at   bigint NOT NULL DEFAULT 0,
    trial_owner text,
    trial_id    text,
    trial_lease bigint NOT NULL DEFAULT 0
);
INSERT INTO fleet_breaker DEFAULT VALUES;
CREATE TABLE breaker_failures (
    hostname  text PRIMARY KEY,
    failed_at bigint NOT NULL
);

-- Restarts' ends, in order (outcomes: 0 ok, 1 failed, 2 neutral; trials: it was the trial
-- granted to `who`). Returns the breaker after them.
CREATE FUNCTION mayhem_breaker_note(hosts text[], ids text[], outcomes smallint[],
                                    trials boolean[], who text, now_ms bigint, failures integer,
                                    win bigint, cooldown bigint)
RETURNS TABLE (state smallint, opened_at bigint) LANGUAGE plpgsql AS $fn$
DECLARE b fleet_breaker; n integer;
BEGIN
    SELECT * INTO b FROM fleet_breaker FOR UPDATE;
    FOR k IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        IF trials[k] AND b.state = 2 AND b.trial_owner = who AND b.trial_id = ids[k] THEN
            b.trial_owner := NULL; b.trial_id := NULL; b.trial_lease := 0;
            IF outcomes[k] = 0 THEN
                b.state := 0;
                DELETE FROM breaker_failures;
            ELSIF outcomes[k] = 1 THEN
                b.state := 1; b.opened_at := now_ms;
            ELSE -- proved nothing: the next restart is the trial
                b.state := 1; b.opened_at := now_ms - cooldown;
            END IF;
        ELSIF outcomes[k] = 1 AND b.state = 0 THEN
            -- Failures while open or half-open (restarts that were running) change nothing.
            INSERT INTO breaker_failures (hostname, failed_at) VALUES (hosts[k], now_ms)
                ON CONFLICT (hostname) DO UPDATE SET failed_at = excluded.failed_at;
            SELECT count(*) INTO n FROM breaker_failures WHERE failed_at > now_ms - win;
            IF n >= failures THEN
                b.state := 1; b.opened_at := now_ms;
                DELETE FROM breaker_failures;
            END IF;
        END IF;
    END LOOP;
    DELETE FROM breaker_failures WHERE failed_at <= now_ms - win;
    UPDATE fleet_breaker SET state = b.state, opened_at = b.opened_at,
           trial_owner = b.trial_owner, trial_id = b.trial_id, trial_lease = b.trial_lease;
    RETURN QUERY SELECT b.state, b.opened_at;
END $fn$;

-- Trial claims, in order: answer 0 go (closed), 1 the trial is this one's, 2 wait. The trial
-- of a half-open breaker whose lease expired (its worker died) is taken over.
CREATE FUNCTION mayhem_breaker_trials(ids text[], who text, now_ms bigint, cooldown bigint,
                                      lease bigint)
RETURNS TABLE (i integer, answer smallint, state smallint, opened_at bigint)
LANGUAGE plpgsql AS $fn$
DECLARE b fleet_breaker;
BEGIN
    SELECT * INTO b FROM fleet_breaker FOR UPDATE;
    FOR k IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        i := k;
        IF b.state = 0 THEN
            answer := 0;
        ELSIF (b.state = 1 AND b.opened_at + cooldown <= now_ms)
              OR (b.state = 2 AND (b.trial_lease <= now_ms
                                   OR (b.trial_owner = who AND b.trial_id = ids[k]))) THEN
            b.state := 2; b.trial_owner := who; b.trial_id := ids[k]; b.trial_lease := lease;
            answer := 1;
        ELSE
            answer := 2;
        END IF;
        state := b.state; opened_at := b.opened_at;
        RETURN NEXT;
    END LOOP;
    UPDATE fleet_breaker SET state = b.state, trial_owner = b.trial_owner, trial_id = b.trial_id,
           trial_lease = b.trial_lease;
END $fn$;
)sql";

// One entry per version, applied in order; never edit one that shipped, add the next.
// Version 5: retention walks messages by first_seen (written once) instead of completed_at. An
// UPDATE that changes no indexed column can be a heap-only tuple (a new version on the same page,
// no index entries: the reason for fillfactor 70); version 3's index put every outcome outside
// that. A message completes after it was first seen, so first_seen bounds completed_at.
// Restarts keep version 3's index on finished: an index on started (written once too) would
// offer the planner a second path for the cooldown check's max(started), one that walks every
// restart newer than the cutoff instead of the host's own claims.
//
// And mayhem_take_slots creates only the slot rows that are missing. Its INSERT ... ON CONFLICT
// DO NOTHING of every slot in each batch waited on each slot row another worker's open
// transaction had just taken, while that worker waited on a row this one had taken: a deadlock
// that failed both batches (and with them slot releases, held until their lease ran out).
constexpr const char* schema_v5 = R"sql(
DROP INDEX messages_completed;
CREATE INDEX messages_first_seen ON messages (first_seen);
CREATE OR REPLACE FUNCTION mayhem_take_slots(ids text[], caps integer[], who text, now_ms bigint,
                                             lease bigint)
RETURNS TABLE (i integer) LANGUAGE plpgsql AS $fn$
DECLARE got integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM restart_slots
                    WHERE slot = (SELECT max(c) FROM unnest(caps) AS c)) THEN
        INSERT INTO restart_slots (slot)
        SELECT generate_series(1, (SELECT max(c) FROM unnest(caps) AS c)) ON CONFLICT DO NOTHING;
    END IF;
    FOR k IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        UPDATE restart_slots SET lease_until = lease
         WHERE message_id = ids[k] AND owner = who AND slot <= caps[k];
        CONTINUE WHEN FOUND;
        SELECT slot INTO got FROM restart_slots
         WHERE slot <= caps[k] AND (message_id IS NULL OR lease_until <= now_ms)
         ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF got IS NULL THEN
            i := k; RETURN NEXT;
        ELSE
            UPDATE restart_slots SET message_id = ids[k], owner = who, lease_until = lease,
                   taken = now_ms
             WHERE slot = got;
        END IF;
    END LOOP;
END $fn$;
)sql";

constexpr const char* migrations[] = {schema_v1, schema_v2, schema_v3, schema_v4, schema_v5};
static_assert(std::size(migrations) == postgres_schema_version);

// The migration, as statements of one transaction: the lock (a fixed key, the same for every
// mayhem), the version table, every migration not applied yet, and the version reached.
std::vector<pg_statement> migration_statements() {
    std::string apply = "DO $migrate$ DECLARE v integer; BEGIN "
                        "SELECT coalesce(max(version), 0) INTO v FROM schema_migrations; "
                        "IF v = 0 AND to_regclass('messages') IS NOT NULL THEN RAISE EXCEPTION "
                        "'not a mayhem database: it holds a table \"messages\" but no mayhem "
                        "schema version'; END IF; ";
    for (std::size_t v = 1; v <= std::size(migrations); ++v)
        apply += "IF v < " + std::to_string(v) + " THEN " + migrations[v - 1] +
                 " INSERT INTO schema_migrations (version) VALUES (" + std::to_string(v) +
                 "); END IF; ";
    apply += "END $migrate$";
    static const std::string sql = apply;
    return {
        {"SELECT pg_advisory_xact_lock(7318063532916473165)", {}},
        {"CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
         "applied_at timestamptz NOT NULL DEFAULT now())",
         {}},
        {sql.c_str(), {}},
        {"SELECT max(version) FROM schema_migrations", {}},
    };
}

// The version the migration ended at, from its last statement's result.
int version_of(const PGresult* r) {
    if (!r || PQntuples(r) != 1 || PQgetisnull(r, 0, 0)) return 0;
    return std::atoi(PQgetvalue(r, 0, 0));
}

std::string newer_schema(int version) {
    return "the database has mayhem schema version " + std::to_string(version) +
           ", newer than this mayhem supports (" + std::to_string(postgres_schema_version) +
           "); use a newer mayhem or another database";
}

// The writer's session, set with every (re)connection's migration:
// - enable_seqscan off: every statement it sends finds its rows by key (arrays of ids or hosts)
//   or through an index range (retention), so reading a whole table is never its plan; but the
//   planner prices a batch's few thousand index probes above one scan of a young table and then
//   reads the whole table for each batch, which grows with the table. (The fleet's one-row and
//   few-row tables are still scanned: they have no other path.)
// - jit off: its statements are short, and compiling one costs 40-140 ms; a scan priced with the
//   penalty of enable_seqscan off, or a batch of thousands of ids, is above jit_above_cost.
constexpr const char* session_sql =
    "SELECT set_config('enable_seqscan', 'off', false), set_config('jit', 'off', false)";

// The statements of a batch. Arrays are text parameters ({"a","b"}); $now is the batch's clock.
constexpr const char* save_sql =
    "INSERT INTO messages (message_id, instance, hostname, reason, first_seen) "
    "SELECT m, i, h, r, $5::bigint FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
    "AS u(m, i, h, r) ON CONFLICT (message_id) DO UPDATE SET attempts = messages.attempts + 1";
// A duplicate's `skipped` does not hide that the message was acked; retried is not a completion.
// One statement per distinct (outcome, reason): `message_id = ANY(ids)` is an index scan, where
// a join with unnest() of per-row values is planned as a nested loop over both.
constexpr const char* complete_sql =
    "UPDATE messages SET outcome = $2::text, "
    "completed_at = CASE WHEN $2::text = 'retried' THEN completed_at ELSE $4::bigint END, "
    "last_error = COALESCE(NULLIF($3::text, ''), last_error) WHERE message_id = ANY($1::text[]) "
    "AND NOT ($2::text = 'skipped' AND outcome IS NOT DISTINCT FROM 'acked')";
constexpr const char* claim_sql = "SELECT i, claim, attempt FROM mayhem_claim($1::text[], "
                                  "$2::text[], $3::text, $4::bigint, $5::bigint)";
// Only the owner records the end: a row a peer took over is left alone (not RETURNed). One
// statement per distinct (result, detail), as complete_sql.
constexpr const char* finish_sql =
    "UPDATE restarts SET finished = $4::bigint, result = $2::text, "
    "detail = NULLIF($3::text, ''), lease_until = NULL WHERE message_id = ANY($1::text[]) "
    "AND finished IS NULL AND owner IS NOT DISTINCT FROM $5::text RETURNING message_id";
// A start whose restart never runs goes, if still unfinished and this worker's; a withdrawal
// names the stamp it wrote, so a row stamped anew since stays.
constexpr const char* unclaim_sql =
    "DELETE FROM restarts AS t USING unnest($1::text[], $2::bigint[]) AS u(m, s) "
    "WHERE t.message_id = u.m AND t.finished IS NULL AND (u.s = 0 OR t.started = u.s) "
    "AND t.owner IS NOT DISTINCT FROM $3::text";
constexpr const char* renew_sql =
    "UPDATE restarts SET lease_until = $3::bigint WHERE message_id = ANY($1::text[]) "
    "AND finished IS NULL AND owner = $2::text";
constexpr const char* take_slots_sql =
    "SELECT i FROM mayhem_take_slots($1::text[], $2::integer[], $3::text, $4::bigint, "
    "$5::bigint)";
constexpr const char* release_slots_sql =
    "UPDATE restart_slots SET message_id = NULL, owner = NULL, lease_until = 0, taken = NULL "
    "WHERE message_id = ANY($1::text[]) AND owner = $2::text";
// The slots live as long as their messages' claims (a handful of rows: a scan).
constexpr const char* renew_slots_sql =
    "UPDATE restart_slots SET lease_until = $3::bigint WHERE message_id = ANY($1::text[]) "
    "AND owner = $2::text";
constexpr const char* read_pause_sql = "SELECT paused_by, paused_at, reason FROM fleet_pause";
constexpr const char* read_breaker_sql = "SELECT state, opened_at FROM fleet_breaker";
constexpr const char* note_breaker_sql =
    "SELECT state, opened_at FROM mayhem_breaker_note($1::text[], $2::text[], $3::smallint[], "
    "$4::boolean[], $5::text, $6::bigint, $7::integer, $8::bigint, $9::bigint)";
constexpr const char* breaker_trials_sql =
    "SELECT i, answer, state, opened_at FROM mayhem_breaker_trials($1::text[], $2::text, "
    "$3::bigint, $4::bigint, $5::bigint)";
// A trial lives as long as its message's claim.
constexpr const char* renew_trial_sql =
    "UPDATE fleet_breaker SET trial_lease = $3::bigint WHERE state = 2 AND trial_owner = $2::text "
    "AND trial_id = ANY($1::text[])";
// A retention pass (store.hpp, prune_bounds), one statement: $1 messages_before, $2
// restarts_before, $3 the limit, $4 host_claims_since. The rules of sqlite_store.cpp's
// prune_*_sql (messages walked by first_seen since version 5). Rows another worker's batch holds
// (its own pass, a duplicate's outcome) are skipped, not waited for. Both deletes read the
// statement's one snapshot.
constexpr const char* prune_sql = R"sql(
WITH m AS (
    DELETE FROM messages WHERE message_id IN (
        SELECT c.message_id FROM messages AS c
         WHERE c.first_seen < $1::bigint AND c.completed_at < $1::bigint
           AND c.outcome IN ('acked', 'dead_lettered', 'skipped')
           AND NOT EXISTS (SELECT 1 FROM restarts AS r
                            WHERE r.message_id = c.message_id AND r.finished IS NULL)
         ORDER BY c.first_seen LIMIT $3::integer FOR UPDATE OF c SKIP LOCKED)
    RETURNING 1),
r AS (
    DELETE FROM restarts WHERE message_id IN (
        SELECT c.message_id FROM restarts AS c
         WHERE c.finished < $2::bigint
           AND NOT EXISTS (SELECT 1 FROM restarts AS x WHERE x.message_id = c.message_id
                              AND (x.finished IS NULL OR x.finished >= $2::bigint
                                   OR (x.host_claimed AND x.started >= $4::bigint)))
           AND NOT EXISTS (SELECT 1 FROM messages AS g WHERE g.message_id = c.message_id
                              AND (g.outcome IS NULL
                                   OR g.outcome NOT IN ('acked', 'dead_lettered', 'skipped')))
         ORDER BY c.finished LIMIT $3::integer FOR UPDATE OF c SKIP LOCKED)
    RETURNING 1)
SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM r)
)sql";
constexpr const char* lock_hosts_sql = "SELECT mayhem_lock_hosts($1::text[])";
constexpr const char* claim_hosts_sql =
    "SELECT i, blocked_at FROM mayhem_claim_hosts($1::text[], $2::text[], $3::bigint[], "
    "$4::bigint)";

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// A request group: requests of one kind (positions in the batch) written by one statement.
struct group {
    store_op kind;
    std::vector<std::uint32_t> idx;
};

// The order of a batch's statements. Requests on distinct ids commute, so each kind goes in
// one statement; an id twice (a duplicate's `skipped` after its first's `acked`) starts new
// statements, keeping arrival order for that id. messages first, then restarts (no request
// reads the other table). On restarts: the unclaims first (each gives back a start committed
// by an earlier transaction, so it comes before any claim of the same id in this one); cooldown
// claims read other ids' rows, so they keep their place among claims and finishes; renewals
// last (they only extend what is still this worker's).
std::vector<group> plan(const store_batch& b) {
    std::vector<group> out;
    std::unordered_set<std::string_view> ids;
    group first{store_op::save, {}}, second{store_op::complete, {}};
    auto flush = [&](group& g) {
        if (g.idx.empty()) return;
        out.push_back(g);
        g.idx.clear();
    };
    auto flush_both = [&] {
        flush(first);
        flush(second);
        ids.clear();
    };
    for (std::uint32_t i = 0; i < b.size(); ++i) {
        const auto& r = b.reqs[i];
        if (r.kind != store_op::save && r.kind != store_op::complete) continue;
        if (!ids.insert(b.view(r.id)).second) {
            flush_both();
            ids.insert(b.view(r.id));
        }
        (r.kind == store_op::save ? first : second).idx.push_back(i);
    }
    flush_both();

    // Slots: on their own table; the ones given back first, so they are free for this batch's.
    group unslots{store_op::unslot, {}}, slots{store_op::slot, {}};
    group reads{store_op::read_pause, {}}, prunes{store_op::prune, {}};
    group notes{store_op::note, {}}, trials{store_op::trial, {}};
    group unclaims{store_op::unclaim, {}}, renews{store_op::renew, {}};
    group hosts{store_op::claim_host, {}};
    first.kind = store_op::claim;
    second.kind = store_op::finish;
    for (std::uint32_t i = 0; i < b.size(); ++i) {
        const auto& r = b.reqs[i];
        switch (r.kind) {
        case store_op::unclaim:
            unclaims.idx.push_back(i);
            break;
        case store_op::renew:
            renews.idx.push_back(i);
            break;
        case store_op::unslot:
            unslots.idx.push_back(i);
            break;
        case store_op::slot:
            slots.idx.push_back(i);
            break;
        case store_op::read_pause:
        case store_op::prune: // after the batch's claims: see the end of plan()
            (r.kind == store_op::prune ? prunes : reads).idx.push_back(i);
            break;
        case store_op::note:
            notes.idx.push_back(i);
            break;
        case store_op::trial:
            trials.idx.push_back(i);
            break;
        default:
            break;
        }
    }
    flush(reads);
    flush(unslots);
    flush(slots);
    // The breaker: a trial's end first, so a trial asked for in the same batch may follow it.
    flush(notes);
    flush(trials);
    flush(unclaims);
    for (std::uint32_t i = 0; i < b.size(); ++i) {
        const auto& r = b.reqs[i];
        if (r.kind == store_op::claim_host) {
            flush_both();
            hosts.idx.push_back(i);
        } else if (r.kind == store_op::claim || r.kind == store_op::finish) {
            flush(hosts);
            if (!ids.insert(b.view(r.id)).second) {
                flush_both();
                ids.insert(b.view(r.id));
            }
            (r.kind == store_op::claim ? first : second).idx.push_back(i);
        }
    }
    flush_both();
    flush(hosts);
    flush(renews);
    flush(prunes); // last: the batch's claims are decided before its deletes take any lock
    return out;
}

// Splits each group of updates that set values of their own (complete: outcome and reason;
// finish: result and detail) into one group per distinct values, in the order first seen.
// Usually they all set the same ones (acked, ok).
std::vector<group> by_values(std::vector<group> groups, const store_batch& b) {
    std::vector<group> out;
    for (auto& g : groups) {
        if (g.kind != store_op::complete && g.kind != store_op::finish) {
            out.push_back(std::move(g));
            continue;
        }
        std::size_t first = out.size();
        for (auto i : g.idx) {
            const auto& r = b.reqs[i];
            auto same = [&](const group& o) {
                const auto& x = b.reqs[o.idx.front()];
                return b.view(x.a) == b.view(r.a) && b.view(x.b) == b.view(r.b);
            };
            auto it =
                std::find_if(out.begin() + static_cast<std::ptrdiff_t>(first), out.end(), same);
            if (it == out.end())
                out.push_back(group{g.kind, {i}});
            else
                it->idx.push_back(i);
        }
    }
    return out;
}

} // namespace

std::span<const char* const> postgres_migrations() {
    return migrations;
}

int postgres_migrate(PGconn* c) {
    quiet(c);
    std::string error;
    int version = 0;
    bool ok = true;
    auto run = [&](const char* sql) {
        pg_result r(PQexec(c, sql));
        auto st = PQresultStatus(r.get());
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            ok = false;
            error = pg_error(c);
        }
        return r;
    };
    run("BEGIN");
    for (const auto& s : migration_statements()) {
        if (!ok) break;
        auto r = run(s.sql);
        if (ok) version = version_of(r.get());
    }
    if (ok) run("COMMIT");
    if (!ok) {
        pg_result rolled_back(PQexec(c, "ROLLBACK"));
        throw postgres_fatal("postgres store: cannot migrate the schema: " + error);
    }
    if (version > postgres_schema_version) throw postgres_fatal(newer_schema(version));
    return version;
}

// ---------------------------------------------------------------------------------------------
// postgres_store
// ---------------------------------------------------------------------------------------------

postgres_store::postgres_store(rt::loop& loop, postgres_options opts)
    : group_commit_store(loop, opts.max_held_records, "store", "postgres"), opts_(std::move(opts)),
      link_(loop, opts_.url), tasks_([](std::exception_ptr e) {
          log::error("store writer failed", {{"error", rt::describe(e)}});
      }) {
    if (opts_.check_at_start) check_schema();
    tasks_.spawn(writer());
}

// Start-up, before the loop runs: connect and migrate blocking, so a database this build must
// not write fails the start (exit 1). The writer uses its own connection.
void postgres_store::check_schema() {
    PGconn* c = pg_connect_blocking(opts_.url,
                                    std::max<long long>(1, opts_.connect_timeout.count() / 1000));
    if (PQstatus(c) != CONNECTION_OK) {
        std::string error = "postgres connect: " + pg_error(c);
        PQfinish(c);
        log::warn("postgres store: database unreachable at start; connecting in the background",
                  {{"error", error}});
        health_.note(false, error);
    } else {
        std::string where = pg_where(c);
        int version = 0;
        try {
            version = postgres_migrate(c);
        } catch (...) {
            PQfinish(c);
            throw;
        }
        pg_result p(PQexec(c, read_pause_sql));
        if (PQresultStatus(p.get()) == PGRES_TUPLES_OK) saw_pause(p.get());
        pg_result b(PQexec(c, read_breaker_sql));
        if (PQresultStatus(b.get()) == PGRES_TUPLES_OK) saw_breaker(b.get(), 0);
        PQfinish(c);
        log::info("postgres store: schema ready",
                  {{"database", where}, {"schema_version", version}});
    }
}

postgres_store::~postgres_store() = default;

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

// Connects and migrates; empty on success. Migration errors keep the store down (retried with
// the backoff); a newer schema is logged each time.
rt::task<std::string> postgres_store::connect() {
    std::string error = co_await link_.connect(opts_.connect_timeout);
    if (!error.empty()) co_return error;
    auto stmts = migration_statements();
    stmts.insert(stmts.begin(), pg_statement{session_sql, {}});
    error = co_await link_.run(stmts, results_, opts_.io_timeout);
    if (error.empty()) {
        int version = version_of(results_.back().get());
        if (version > postgres_schema_version) error = newer_schema(version);
    }
    if (!error.empty()) {
        link_.close();
        co_return "postgres schema: " + error;
    }
    if (ever_connected_) reconnects_.inc();
    ever_connected_ = true;
    log::info("postgres store: connected", {{"database", link_.where()}});
    co_return std::string{};
}

// Moves what is queued into flying_ (the batch being written).
void postgres_store::take_pending() {
    swap(flying_, pending_);
    pending_.clear();
}

// The group-commit loop (see the header).
rt::task<void> postgres_store::writer() {
    for (;;) {
        if (phase_ == phase::hurried) {
            give_up();
            break;
        }
        bool backing_off = !link_.connected() && loop_.now() < reconnect_at_;
        if (backing_off && !pending_.empty()) {
            // Unreachable: what waits fails now (its messages are retried), records stay held.
            flush_done();
            take_pending();
            batch_ended(false,
                        health_.last_error().empty() ? "postgres: unreachable"
                                                     : health_.last_error(),
                        flying_);
            continue;
        }
        if (backing_off || (pending_.empty() && !records_.due())) {
            flush_done();
            if (!pending_.empty() || (records_.due() && !backing_off)) continue;
            // Closing waits for the held records to be written, until hurry() gives up on them.
            if (phase_ == phase::closing && records_.empty()) break;
            if (backing_off && !backoff_timer_.armed())
                loop_.timers().arm(backoff_timer_, rt::millis(reconnect_at_ - loop_.now()));
            co_await idle_awaiter{*this}; // a request, a due record, hurry(), the backoff's end
            continue;
        }
        if (!link_.connected()) {
            std::string error = co_await connect();
            if (phase_ == phase::hurried) continue;
            if (!error.empty()) {
                reconnect_backoff_ =
                    std::clamp(reconnect_backoff_ * 2, reconnect_min, reconnect_max);
                // Jitter: workers that lost the same server do not all come back at once.
                static thread_local std::minstd_rand rng{std::random_device{}()};
                auto wait = reconnect_backoff_ / 2 +
                            rt::millis(rng() % static_cast<std::uint64_t>(
                                                   reconnect_backoff_.count() / 2 + 1));
                reconnect_at_ = loop_.now() + static_cast<std::uint64_t>(wait.count());
                if (!pending_.empty()) {
                    flush_done();
                    take_pending();
                    batch_ended(false, error, flying_);
                } else {
                    health_.note(false, error);
                }
                continue;
            }
            reconnect_backoff_ = rt::millis{0};
        }
        skip_unwaited_starts();
        records_.take_into(pending_); // when not due, the slot releases only
        take_pending();
        std::string error = co_await write(now_ms());
        flush_done();            // the previous batch, if its resume has not run yet
        bool ok = error.empty(); // before the move below: argument order is unspecified
        batch_ended(ok, std::move(error), flying_);
    }
    link_.close();
    phase_ = phase::closed;
    writer_done_.set();
}

// Sends flying_ as one pipeline (one transaction) and sets each request's answer. Empty on
// success, else the error (nothing of the batch committed).
rt::task<std::string> postgres_store::write(std::int64_t now) {
    const batch& b = flying_;
    auto groups = by_values(plan(b), b);
    stmts_.clear();
    std::int64_t lease = opts_.claim_lease.count() > 0 ? now + opts_.claim_lease.count() : 0;
    std::string now_s = std::to_string(now), lease_s = std::to_string(lease);
    auto array = [&](const group& g, store_text_ref store_request::*field) {
        return pg_array(g.idx.size(),
                        [&](std::size_t k) { return b.view(b.reqs[g.idx[k]].*field); });
    };
    auto numbers = [&](const group& g) {
        std::string out = "{";
        for (std::size_t k = 0; k < g.idx.size(); ++k)
            out += (k ? "," : "") + std::to_string(b.reqs[g.idx[k]].n);
        return out + "}";
    };
    // The cooldown's hosts are locked before anything else of the batch.
    std::vector<std::string_view> hosts;
    for (const auto& r : b)
        if (r.kind == op::claim_host) hosts.push_back(b.view(r.a));
    if (!hosts.empty())
        stmts_.push_back(
            {lock_hosts_sql, {pg_array(hosts.size(), [&](std::size_t k) { return hosts[k]; })}});
    for (const auto& g : groups) {
        using R = store_request;
        switch (g.kind) {
        case op::save:
            stmts_.push_back(
                {save_sql,
                 {array(g, &R::id), array(g, &R::a), array(g, &R::b), array(g, &R::c), now_s}});
            break;
        case op::complete:
            stmts_.push_back({complete_sql,
                              {array(g, &R::id), std::string(b.view(b.reqs[g.idx[0]].a)),
                               std::string(b.view(b.reqs[g.idx[0]].b)), now_s}});
            break;
        case op::claim:
            stmts_.push_back(
                {claim_sql, {array(g, &R::id), array(g, &R::a), opts_.owner, now_s, lease_s}});
            break;
        case op::finish:
            stmts_.push_back({finish_sql,
                              {array(g, &R::id), std::string(b.view(b.reqs[g.idx[0]].a)),
                               std::string(b.view(b.reqs[g.idx[0]].b)), now_s, opts_.owner}});
            break;
        case op::unclaim:
            stmts_.push_back({unclaim_sql, {array(g, &R::id), numbers(g), opts_.owner}});
            break;
        case op::renew:
            stmts_.push_back({renew_sql, {array(g, &R::id), opts_.owner, lease_s}});
            stmts_.push_back({renew_slots_sql, {array(g, &R::id), opts_.owner, lease_s}});
            stmts_.push_back({renew_trial_sql, {array(g, &R::id), opts_.owner, lease_s}});
            break;
        case op::note: {
            std::string outcomes = "{", trials = "{";
            for (std::size_t k = 0; k < g.idx.size(); ++k) {
                const auto& r = b.reqs[g.idx[k]];
                outcomes += (k ? "," : "") + std::to_string(r.n);
                trials += std::string(k ? "," : "") + (r.attempt ? "t" : "f");
            }
            stmts_.push_back({note_breaker_sql,
                              {array(g, &R::a), array(g, &R::id), outcomes + "}", trials + "}",
                               opts_.owner, now_s, std::to_string(breaker_rules_.failures),
                               std::to_string(breaker_rules_.window.count()),
                               std::to_string(breaker_rules_.cooldown.count())}});
            break;
        }
        case op::trial: {
            // Without a claim lease, a trial is held for a cooldown at most.
            auto cooldown = b.reqs[g.idx[0]].n;
            stmts_.push_back({breaker_trials_sql,
                              {array(g, &R::id), opts_.owner, now_s, std::to_string(cooldown),
                               std::to_string(lease > 0 ? lease : now + cooldown)}});
            break;
        }
        case op::slot:
            stmts_.push_back(
                {take_slots_sql, {array(g, &R::id), numbers(g), opts_.owner, now_s, lease_s}});
            break;
        case op::unslot:
            stmts_.push_back({release_slots_sql, {array(g, &R::id), opts_.owner}});
            break;
        case op::read_pause:
            stmts_.push_back({read_pause_sql, {}});
            stmts_.push_back({read_breaker_sql, {}});
            break;
        case op::prune:
            stmts_.push_back(
                {prune_sql,
                 {std::to_string(prune_next_.messages_before),
                  std::to_string(prune_next_.restarts_before), std::to_string(prune_next_.limit),
                  std::to_string(prune_next_.host_claims_since)}});
            break;
        case op::claim_host:
            stmts_.push_back(
                {claim_hosts_sql, {array(g, &R::id), array(g, &R::a), numbers(g), now_s}});
            break;
        case op::skip:
            break;
        }
    }
    if (stmts_.empty()) co_return std::string{};
    std::string error = co_await link_.run(stmts_, results_, opts_.io_timeout);
    if (!error.empty()) co_return error;
    // The answers. Positions in results are 1-based positions in the group.
    std::size_t s = hosts.empty() ? 0 : 1;
    for (const auto& g : groups) {
        const PGresult* res = results_[s++].get();
        if (g.kind == op::renew) s += 2; // and its slots' and trial's renewal
        if (g.kind == op::read_pause) saw_breaker(results_[s++].get(), 0);
        int rows = res ? PQntuples(res) : 0;
        auto at = [&](int row) -> request& {
            auto k = static_cast<std::size_t>(std::atoi(PQgetvalue(res, row, 0))) - 1;
            return flying_[g.idx.at(k)];
        };
        switch (g.kind) {
        case op::claim:
            // An id's first claim is not returned: proceed, attempt 1.
            for (auto i : g.idx) {
                flying_[i].claim = restart_claim::proceed;
                flying_[i].attempt = 1;
                flying_[i].n = now;
            }
            for (int row = 0; row < rows; ++row) {
                auto& r = at(row);
                r.claim = static_cast<restart_claim>(std::atoi(PQgetvalue(res, row, 1)));
                r.attempt = static_cast<std::uint32_t>(std::atoi(PQgetvalue(res, row, 2)));
            }
            break;
        case op::finish: {
            // The rows RETURNed were still this worker's; any other was taken over (held).
            // Usually all of them are: then no id is compared.
            bool all = rows == static_cast<int>(g.idx.size());
            std::unordered_set<std::string_view> mine;
            for (int row = 0; !all && row < rows; ++row)
                mine.insert(PQgetvalue(res, row, 0));
            for (auto i : g.idx)
                flying_[i].claim = all || mine.count(b.view(flying_[i].id)) ? restart_claim::proceed
                                                                            : restart_claim::held;
            break;
        }
        case op::read_pause:
            saw_pause(res);
            break;
        case op::note:
            saw_breaker(res, 0);
            break;
        case op::trial:
            for (int row = 0; row < rows; ++row)
                at(row).n = std::atoll(PQgetvalue(res, row, 1));
            saw_breaker(res, 2);
            break;
        case op::prune:
            for (auto i : g.idx) {
                flying_[i].n = rows ? std::atoll(PQgetvalue(res, 0, 0)) : 0;
                flying_[i].attempt =
                    rows ? static_cast<std::uint32_t>(std::atoll(PQgetvalue(res, 0, 1))) : 0;
            }
            break;
        case op::slot:
            for (auto i : g.idx)
                flying_[i].claim = restart_claim::proceed;
            for (int row = 0; row < rows; ++row)
                at(row).claim = restart_claim::held;
            break;
        case op::claim_host:
            for (auto i : g.idx) {
                flying_[i].claim = restart_claim::proceed;
                flying_[i].n = now;
            }
            for (int row = 0; row < rows; ++row) {
                auto& r = at(row);
                r.claim = restart_claim::done;
                r.n = std::atoll(PQgetvalue(res, row, 1));
            }
            break;
        default:
            break;
        }
    }
    co_return std::string{};
}

// ---------------------------------------------------------------------------------------------
// The requests that differ from group_commit_store's
// ---------------------------------------------------------------------------------------------

void postgres_store::renew_claims(std::span<const message* const> ms) {
    if (opts_.claim_lease.count() <= 0) return;
    for (const message* m : ms) {
        request r;
        r.kind = op::renew;
        r.id = pending_.put(m->message_id());
        enqueue_unwaited(r);
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet-wide pause: read with the migration at start, then polled through the batches.
// ---------------------------------------------------------------------------------------------

// The answer of read_pause_sql (or of the start-up read).
void postgres_store::saw_pause(const PGresult* res) {
    std::optional<fleet_pause> now;
    if (res && PQntuples(res) > 0)
        now = fleet_pause{PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 2),
                          std::atoll(PQgetvalue(res, 0, 1))};
    pause_.saw(std::move(now));
}

// ---------------------------------------------------------------------------------------------
// Retention (store.hpp, prune): one statement at the end of a batch.
// ---------------------------------------------------------------------------------------------

rt::task<prune_counts> postgres_store::prune(prune_bounds b) {
    if (prune_queued_) co_return prune_counts{}; // one pass at a time
    flag_while_alive queued{prune_queued_};
    prune_next_ = b;
    request r;
    r.kind = op::prune;
    auto pending = enqueue(r);
    store_reply x = co_await pending;
    if (!x.ok) throw std::runtime_error("store: " + x.error);
    prune_counts c{static_cast<std::uint64_t>(x.n), x.attempt};
    stats_.pruned_messages.inc(c.messages);
    stats_.pruned_restarts.inc(c.restarts);
    co_return c;
}

// ---------------------------------------------------------------------------------------------
// The fleet-wide breaker: read with the pause, and answered by every note and trial claim.
// ---------------------------------------------------------------------------------------------

void postgres_store::watch_breaker(std::function<void(const fleet_breaker&)> changed) {
    breaker_changed_ = std::move(changed);
    if (breaker_changed_) breaker_changed_(breaker_);
}

// The breaker's state and opening time, in columns `col` and `col` + 1 of the last row of `res`.
void postgres_store::saw_breaker(const PGresult* res, int col) {
    int rows = res ? PQntuples(res) : 0;
    if (rows == 0) return;
    fleet_breaker now{static_cast<fleet_breaker::state>(std::atoi(PQgetvalue(res, rows - 1, col))),
                      std::atoll(PQgetvalue(res, rows - 1, col + 1))};
    if (now == breaker_) return;
    breaker_ = now;
    if (breaker_changed_) breaker_changed_(breaker_);
}

void postgres_store::note_breaker(const message& m, breaker_outcome o, bool trial,
                                  const breaker_rules& rules) {
    if (phase_ == phase::closed) return; // a trial's end is then found by its lease
    breaker_rules_ = rules;
    request r;
    r.kind = op::note;
    r.id = pending_.put(m.message_id());
    r.a = pending_.put(m.hostname());
    r.n = static_cast<std::int64_t>(o);
    r.attempt = trial ? 1 : 0;
    enqueue_unwaited(r);
}

rt::task<trial_answer> postgres_store::claim_trial(const message& m,
                                                   std::chrono::milliseconds cooldown) {
    request r;
    r.kind = op::trial;
    r.id = pending_.put(m.message_id());
    r.n = cooldown.count();
    auto pending = enqueue(r);
    store_reply x = co_await pending;
    if (!x.ok) throw std::runtime_error("store: " + x.error);
    co_return static_cast<trial_answer>(x.n);
}

// ---------------------------------------------------------------------------------------------
// Closing
// ---------------------------------------------------------------------------------------------

void postgres_store::hurry() {
    if (phase_ == phase::closed || phase_ == phase::hurried) return;
    phase_ = phase::hurried;
    // A batch on its way is cut short: the connection goes, the server rolls it back, and its
    // requests fail.
    link_.close();
    backoff_timer_.cancel();
    wake();
}

rt::task<void> postgres_store::close() {
    auto writer_ended = close_writer(); // named: GCC 12 destroys co_await temporaries twice
    co_await writer_ended;
    auto tx = stats_.transactions.get();
    log::info("store closed",
              {{"store", "postgres"},
               {"transactions", tx},
               {"failed_transactions", stats_.failed_transactions.get()},
               {"saves", stats_.saves.get()},
               {"requests", stats_.requests.get()},
               {"saves_per_transaction",
                tx ? static_cast<double>(stats_.saves.get()) / static_cast<double>(tx) : 0.0},
               {"outages", stats_.outages.get()},
               {"reconnects", reconnects_.get()},
               {"unrecorded", stats_.unrecorded.get()}});
}

} // namespace mayhem
