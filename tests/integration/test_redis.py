"""The redis source against a real redis-server: consumer groups, acks, reclaim of orphans,
dead letters, reconnection, drain, and the errors a user sees for bad credentials or no server.
`mayhem publish` fills the stream. Most tests use --store memory (the store is not their
subject); the bulk run and the killed worker use the SQLite store, read back with sqlite3.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import unittest

import harness
from harness import Harness, SLOW, free_port, http_get, json_log_lines, wait_until

STREAM = "mayhem:restarts"
GROUP = "mayhem"
FAST = ["--store", "memory", "--save-latency", "0", "--restart-latency", "0",
        "--status-interval", "0"]


def rjson(redis, *args):
    """A redis-cli reply as JSON (redis-cli --json)."""
    auth = ["-a", redis.password, "--no-auth-warning"] if redis.password else []
    r = subprocess.run(["redis-cli", "-p", str(redis.port), "--json"] + auth +
                       [str(a) for a in args], capture_output=True, text=True, timeout=30)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None  # an error reply, e.g. NOGROUP before a worker created the group


def pending(redis, stream=STREAM, group=GROUP):
    """The group's pending count (XPENDING summary)."""
    reply = rjson(redis, "XPENDING", stream, group)
    return reply[0] if isinstance(reply, list) else None


def group_info(redis, stream=STREAM, group=GROUP):
    for g in rjson(redis, "XINFO", "GROUPS", stream) or []:
        if g.get("name") == group:
            return g
    return {}


query = harness.query_db


def published_ids(redis, stream=STREAM):
    """The message_id of every entry in the stream."""
    ids = []
    for _, fields in rjson(redis, "XRANGE", stream, "-", "+") or []:
        d = dict(zip(fields[0::2], fields[1::2]))
        ids.append(json.loads(d["payload"])["message_id"])
    return ids


def metric(base, name):
    """The value of an unlabelled sample on /metrics, or None."""
    status, body = http_get(base + "/metrics")
    if status != 200:
        return None
    m = re.search(r"^%s (\S+)$" % re.escape(name), body, re.M)
    return float(m.group(1)) if m else None


def dead_letters(redis, stream=STREAM + ":dead"):
    """The dead-letter stream as a list of dicts."""
    out = []
    for entry_id, fields in rjson(redis, "XRANGE", stream, "-", "+") or []:
        d = dict(zip(fields[0::2], fields[1::2]))
        d["id"] = entry_id
        out.append(d)
    return out


class RedisSourceTest(Harness):
    def publish_n(self, redis, n, *extra):
        code, out, err = self.publish("--redis-url", redis.url, "--count", n, *extra)
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["sent"], n)

    def redis_worker(self, redis, *args, **kw):
        return self.worker("--source", "redis", "--restarter", "simulate", "--redis-url", redis.url, *args, **kw)

    def test_all_published_messages_are_acked_and_saved(self):
        r = self.redis()
        self.publish_n(r, 20000)
        self.assertEqual(int(r.cli("XLEN", STREAM)), 20000)
        db = os.path.join(self.tmp, "mayhem.db")
        w = self.redis_worker(r, "--store", "sqlite", "--db", db, "--save-latency", "0",
                              "--restart-latency", "0..2ms", "--status-interval", "0",
                              "--exit-when-idle")
        code, _, err = w.wait(timeout=120)
        self.assertEqual(code, 0, err[-3000:])
        s = w.summary()
        self.assert_identity(s)
        self.assertEqual(s["acked"], 20000)
        self.assertEqual(s["received"], 20000)
        self.assertEqual(pending(r), 0)
        # Acked only after the save committed: every message has its row, with its outcome.
        self.assertEqual(query(db, "SELECT outcome, count(*) FROM messages GROUP BY outcome"),
                         [("acked", 20000)])
        # One finished restart each: `ok`, or `coalesced` when it shared a running restart of
        # the same host (generated host names can repeat).
        self.assertEqual(query(db, "SELECT count(*), count(DISTINCT message_id) FROM restarts "
                                   "WHERE result IN ('ok', 'coalesced')"), [(20000, 20000)])
        self.assertEqual(query(db, "SELECT count(*) FROM restarts"), [(20000,)])
        g = group_info(r)
        self.assertEqual(g["entries-read"], 20000)
        self.assertEqual(g["lag"], 0)
        # Acks are batched per loop turn: far fewer XACK calls than messages.
        stats = dict(line.split(":", 1) for line in r.cli("INFO", "commandstats").splitlines()
                     if line.startswith("cmdstat_"))
        xack_calls = int(stats["cmdstat_xack"].split(",")[0].split("=")[1])
        self.assertLess(xack_calls, 20000 // 8)

    def test_two_workers_split_the_stream_and_ack_each_message_once(self):
        r = self.redis()
        self.publish_n(r, 6000)
        args = FAST + ["--restart-latency", "0..2ms", "--exit-when-idle", "--max-in-flight", "50"]
        a = self.redis_worker(r, *args, "--consumer", "a")
        b = self.redis_worker(r, *args, "--consumer", "b")
        for w in (a, b):
            code, _, err = w.wait(timeout=120)
            self.assertEqual(code, 0, err[-3000:])
        sa, sb = a.summary(), b.summary()
        for s in (sa, sb):
            self.assert_identity(s)
            self.assertEqual(s["skipped"], 0)
            self.assertEqual(s["released"], 0)
        self.assertGreater(sa["acked"], 0)
        self.assertGreater(sb["acked"], 0)
        self.assertEqual(sa["acked"] + sb["acked"], 6000)
        self.assertEqual(pending(r), 0)

    def test_killed_worker_on_a_shared_sqlite_file_loses_nothing_and_restarts_once(self):
        r = self.redis()
        self.publish_n(r, 400)
        ids = published_ids(r)
        self.assertEqual(len(set(ids)), 400)
        db = os.path.join(self.tmp, "shared.db")
        store = ["--store", "sqlite", "--db", db, "--save-latency", "0", "--status-interval", "0"]
        doomed = self.redis_worker(r, *store, "--restart-latency", "0..4s",
                                   "--max-in-flight", "100", "--consumer", "doomed",
                                   "--lease-timeout", "2s", "--lease-extend-interval", "300ms")

        def acked_in_db():
            try:
                return query(db, "SELECT count(*) FROM messages WHERE outcome = 'acked'")[0][0]
            except sqlite3.Error:
                return 0  # not created yet

        # Killed mid-run: some messages done, about a hundred with a restart under way.
        wait_until(lambda: acked_in_db() >= 20, timeout=30, what="20 messages acked")
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        self.assertGreater(pending(r), 0)
        # What the store holds for a restart that was started and never finished: its row,
        # with no end. Nobody can tell whether the host was restarted before the kill.
        unfinished = dict(query(db, "SELECT message_id, started FROM restarts "
                                    "WHERE finished IS NULL"))
        self.assertGreater(len(unfinished), 0)
        # Its claims are its own until their lease (--lease-timeout) runs out: a peer that came
        # sooner would leave them for later (held), not restart them.
        time.sleep(2.5)

        rescuer = self.redis_worker(r, *store, "--restart-latency", "0", "--consumer", "rescuer",
                                    "--lease-timeout", "1s", "--reclaim-interval", "300ms",
                                    "--lease-extend-interval", "200ms", "--exit-when-idle")
        code, _, err = rescuer.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        self.assertIn("reclaimed entries", err)
        s = rescuer.summary()
        self.assert_identity(s)
        self.assertEqual(s["dead_lettered"] + s["retried"] + s["released"], 0)
        self.assertEqual(pending(r), 0)

        # Nothing lost: every published id has its row and a final outcome (`skipped` when
        # the doomed worker restarted it but died before its ack). The outcome is written after
        # the ack, so one the doomed worker acked in its last moment may have none: its restart
        # was recorded before that ack (checked below) and the stream holds nothing pending.
        outcomes = dict(query(db, "SELECT message_id, outcome FROM messages"))
        self.assertEqual(set(outcomes), set(ids))
        self.assertEqual({o for o in outcomes.values()} - {"acked", "skipped", None}, set())
        self.assertLessEqual(sum(o is None for o in outcomes.values()), 100)  # --max-in-flight
        # One restart per message id in the table: at most one `ok` row per id, and exactly one
        # row each, finished (`ok`, or `coalesced` when it shared a running restart of the same
        # host: generated host names can repeat).
        ok = query(db, "SELECT message_id, count(*) FROM restarts WHERE result = 'ok' "
                       "GROUP BY message_id HAVING count(*) > 1")
        self.assertEqual(ok, [])
        rows = dict(query(db, "SELECT message_id, count(*) FROM restarts "
                              "WHERE result IN ('ok', 'coalesced') GROUP BY message_id"))
        self.assertEqual(set(rows), set(ids))
        self.assertEqual(set(rows.values()), {1})
        self.assertEqual(query(db, "SELECT count(*) FROM restarts"), [(400,)])
        # --on-unfinished-restart retry (the default): the rescuer ran the restart of every
        # unfinished row again and finished that same row (attempt 1, the doomed worker's start
        # time). So the table shows one restart, but those hosts may have been restarted twice:
        # at least once, not exactly once, for a restart cut off by a crash.
        rows = query(db, "SELECT message_id, attempt, started, finished IS NOT NULL FROM "
                         "restarts WHERE message_id IN (%s)" % ",".join("?" * len(unfinished)),
                     *unfinished)
        self.assertEqual(sorted(rows), sorted((m, 1, st, 1) for m, st in unfinished.items()))
        attempts = dict(query(db, "SELECT message_id, attempts FROM messages"))
        self.assertTrue(all(attempts[m] >= 2 for m in unfinished))

    def test_poison_messages_are_dead_lettered_with_their_reason_and_acked(self):
        r = self.redis()
        # 1. undecodable: dead-lettered at once.
        code, out, err = self.publish("--redis-url", r.url, "--stdin", "--raw",
                                      stdin="this is not json\n")
        self.assertEqual(code, 0, err)
        # 2. a restart that always fails: retried (left pending, reclaimed) until max attempts.
        code, out, err = self.publish(
            "--redis-url", r.url, "--stdin",
            stdin='{"message_id":"always-fails","instance_name":"cattle-bad"}\n')
        self.assertEqual(code, 0, err)
        # 3. an entry delivered more often than --max-attempts (workers died holding it): a
        #    delivery count is not an attempt, so it runs; its restart fails, and with the count
        #    past the limit it is dead-lettered by the rule for failed restarts.
        r.cli("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM")
        r.cli("XREADGROUP", "GROUP", GROUP, "ghost", "COUNT", "2", "STREAMS", STREAM, ">")
        crashy = r.cli("XADD", STREAM, "*", "payload",
                       '{"message_id":"kills-workers","instance_name":"cattle-k"}')
        r.cli("XREADGROUP", "GROUP", GROUP, "ghost", "COUNT", "1", "STREAMS", STREAM, ">")
        for _ in range(3):
            r.cli("XCLAIM", STREAM, GROUP, "ghost", "0", crashy)  # delivery count 4
        w = self.redis_worker(r, "--store", "memory", "--save-latency", "0",
                              "--restart-latency", "0", "--restart-failure-rate", "1",
                              "--max-attempts", "3", "--lease-timeout", "300ms",
                              "--reclaim-interval", "100ms", "--lease-extend-interval", "50ms",
                              "--exit-when-idle")
        code, _, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(pending(r), 0)
        dead = {d.get("message_id") or d["payload"]: d for d in dead_letters(r)}
        self.assertEqual(len(dead), 3, dead)
        self.assertIn("invalid JSON", dead["this is not json"]["reason"])
        fails = dead["always-fails"]
        self.assertEqual(fails["attempts"], "3")
        self.assertIn("cattle-bad", fails["payload"])
        self.assertTrue(fails["reason"])
        crash = dead["kills-workers"]
        self.assertEqual(crash["source_id"], crashy)
        self.assertIn("restart failed", crash["reason"])
        self.assertEqual(crash["attempts"], "5")

    def test_worker_reconnects_after_redis_restarts(self):
        r = self.redis(persistence=True)
        self.publish_n(r, 3000)
        addr = "127.0.0.1:%d" % free_port()
        base = "http://" + addr
        w = self.redis_worker(r, "--store", "memory", "--save-latency", "0",
                              "--restart-latency", "10ms..30ms", "--max-in-flight", "40",
                              "--status-interval", "0", "--metrics-addr", addr)
        wait_until(lambda: (group_info(r).get("entries-read") or 0) >= 300, timeout=30,
                   what="the worker to be under way")
        # (The endpoints read what the loop publishes every 100 ms: wait, never race.)
        wait_until(lambda: http_get(base + "/readyz") == (200, '{"ready":true}\n'), timeout=5,
                   what="/readyz 200")
        self.assertEqual(metric(base, "mayhem_source_up"), 1)
        self.assertEqual(metric(base, "mayhem_source_reconnects_total"), 0)
        down_at = time.monotonic()
        r.stop()
        # While Redis is down: not ready, because of the source, and the gauge says so.
        wait_until(lambda: http_get(base + "/readyz")[0] == 503, timeout=5, what="/readyz 503")
        status, body = http_get(base + "/readyz")
        self.assertEqual((status, json.loads(body)), (503, {"ready": False,
                                                            "reason": "source_down"}))
        self.assertEqual(metric(base, "mayhem_source_up"), 0)
        self.assertEqual(metric(base, "mayhem_ready"), 0)
        time.sleep(max(0.0, 2 - (time.monotonic() - down_at)))
        self.assertTrue(w.alive(), w.stderr()[-2000:])
        r.start()
        # Back: ready again, the outage counted, and the rest of the stream worked off.
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, timeout=30, what="/readyz 200")
        wait_until(lambda: metric(base, "mayhem_source_up") == 1, timeout=5, what="source up")
        wait_until(lambda: (metric(base, "mayhem_source_reconnects_total") or 0) > 0, timeout=5,
                   what="mayhem_source_reconnects_total > 0")
        wait_until(lambda: group_info(r).get("entries-read") == 3000 and pending(r) == 0,
                   timeout=60, what="every entry read and acked")
        w.signal(signal.SIGTERM)
        code, _, err = w.wait(timeout=30)
        self.assertEqual(code, 0, err[-3000:])
        self.assertIn("redis connection down", err)
        self.assertIn("redis reconnected", err)
        s = w.summary()
        self.assert_identity(s)
        self.assertEqual(s["released"], 0)
        # At least once: every entry acked; one read just before the stop may come again.
        self.assertGreaterEqual(s["acked"] + s["skipped"], 3000)
        self.assertEqual(pending(r), 0)
        self.assertEqual(group_info(r)["entries-read"], 3000)

    def test_sigterm_drains_and_flushes_acks(self):
        # --read-ahead 0: the worker holds only what the pipeline asked for, so a drain
        # finishes everything it read and leaves nothing pending (the read-ahead case is the
        # next test).
        r = self.redis()
        self.publish_n(r, 5000)
        w = self.redis_worker(r, "--store", "memory", "--save-latency", "0",
                              "--restart-latency", "20ms..60ms", "--max-in-flight", "200",
                              "--status-interval", "0", "--read-ahead", "0")
        wait_until(lambda: (pending(r) or 0) >= 100, timeout=20, what="messages in flight")
        w.signal(signal.SIGTERM)
        code, _, err = w.wait(timeout=60)
        s = w.summary()
        self.assert_identity(s)
        # What was in flight had begun its restart and finished; what waited in the queue had
        # not, so it was released (exit 3), not started.
        self.assertEqual(code, 3 if s["released"] else 0, err[-3000:])
        self.assertLessEqual(s["released"], 64)
        self.assertGreater(s["acked"], 0)
        self.assertEqual(s["acked"] + s["released"], s["received"])
        # Every ack reached Redis before the exit; what was released or read after the stop is
        # still pending.
        self.assertEqual(pending(r), group_info(r)["entries-read"] - s["acked"])

    def test_entries_read_ahead_are_not_started_at_a_drain_and_go_to_another_worker(self):
        r = self.redis()
        self.publish_n(r, 3000)
        a = self.redis_worker(r, *FAST, "--restart-latency", "20ms..60ms", "--max-in-flight",
                              "50", "--queue-capacity", "8", "--read-ahead", "300",
                              "--lease-timeout", "30s", "--consumer", "a", "--log-format",
                              "json", "--log-level", "info")
        wait_until(lambda: (pending(r) or 0) >= 300, timeout=20, what="entries read ahead")
        a.signal(signal.SIGTERM)
        code, _, err = a.wait(timeout=60)
        sa = a.summary()
        self.assert_identity(sa)
        self.assertEqual(code, 3 if sa["released"] else 0, err[-3000:])
        self.assertLessEqual(sa["released"], 8)  # the queue: delivered, never started
        self.assertEqual(sa["acked"] + sa["released"], sa["received"])
        # The rest of what it read was never started, so never acked: still pending, and
        # marked idle past --lease-timeout so that any worker's next reclaim takes it.
        left = group_info(r)["entries-read"] - sa["acked"]
        self.assertGreater(left, 0)
        self.assertLessEqual(left, 300 + 8)
        self.assertEqual(pending(r), left)
        idle = rjson(r, "XPENDING", STREAM, GROUP, "IDLE", 30000, "-", "+", 1000, "a")
        self.assertEqual(len(idle), left)
        logged = [e for e in json_log_lines(err) if "read ahead" in e.get("msg", "")]
        self.assertEqual(sum(e.get("count") for e in logged), left)

        b = self.redis_worker(r, *FAST, "--consumer", "b", "--lease-timeout", "30s",
                              "--reclaim-interval", "100ms", "--exit-when-idle")
        code, _, err = b.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        sb = b.summary()
        self.assert_identity(sb)
        self.assertIn("reclaimed entries", err)  # at once, not after the 30 s lease
        self.assertEqual(sa["acked"] + sb["acked"], 3000)  # each entry acked once
        self.assertEqual(sb["skipped"] + sb["released"] + sb["dead_lettered"], 0)
        self.assertEqual(pending(r), 0)

    def test_entries_read_ahead_have_their_leases_renewed(self):
        r = self.redis()
        self.publish_n(r, 40)
        # Restarts slower than the test, so nothing completes (and nothing more is read) while
        # the leases are watched.
        w = self.redis_worker(r, *FAST, "--restart-latency", "60s", "--max-in-flight", "1",
                              "--queue-capacity", "1", "--read-ahead", "20",
                              "--lease-extend-interval", "200ms", "--lease-timeout", "1500ms",
                              "--drain-timeout", "500ms", "--consumer", "slow")
        wait_until(lambda: (pending(r) or 0) >= 20, timeout=20, what="entries read ahead")
        time.sleep(2.0 * SLOW)
        # 1 in flight (renewed by the pipeline), 1 in the pipeline's queue (not renewed while
        # it waits), the rest read ahead by the source (renewed by the source): only the queued
        # one may be idle past the lease.
        self.assertIn(pending(r), range(20, 23))
        stale = rjson(r, "XPENDING", STREAM, GROUP, "IDLE", 1000, "-", "+", 100, "slow")
        self.assertLessEqual(len(stale), 1, stale)
        w.signal(signal.SIGTERM)  # the 60 s restart is released at the drain deadline
        w.wait(timeout=30)

    def test_wrong_password_is_a_clear_fatal_error(self):
        r = self.redis(password="s3cret")
        good = r.url
        # No password, then a wrong one: exit 1 with the reason, never a crash or a hang.
        for url in ("redis://127.0.0.1:%d/0" % r.port, "redis://:nope@127.0.0.1:%d/0" % r.port):
            code, summary, err = self.run_worker("--source", "redis", "--restarter", "simulate", "--redis-url", url,
                                                 "--store", "memory", timeout=30)
            self.assertEqual(code, 1, err[-2000:])
            self.assertIn("authentication failed", err)
            self.assertNotIn("nope", err)  # the password is never logged
        code, out, err = self.publish("--redis-url", "redis://:nope@127.0.0.1:%d" % r.port)
        self.assertEqual(code, 1)
        self.assertIn("AUTH", err)
        # The right password works end to end.
        code, out, err = self.publish("--redis-url", good, "--count", 50)
        self.assertEqual(code, 0, err)
        code, s, err = self.run_worker("--source", "redis", "--restarter", "simulate", "--redis-url", good, *FAST,
                                       "--exit-when-idle", timeout=30)
        self.assertEqual(code, 0, err[-2000:])
        self.assertEqual(s["acked"], 50)

    def test_unreachable_redis_is_retried_not_fatal(self):
        port = free_port()
        url = "redis://127.0.0.1:%d/0" % port
        w = self.worker("--source", "redis", "--restarter", "simulate", "--redis-url", url, "--store", "memory",
                        "--log-format", "json")
        wait_until(lambda: len([l for l in json_log_lines(w.stderr())
                                if l.get("msg", l.get("message", "")).startswith(
                                    "redis connection down")]) >= 3,
                   timeout=20, what="several reconnect attempts")
        self.assertTrue(w.alive())
        self.assertIn("Connection refused", w.stderr())
        w.signal(signal.SIGTERM)
        code, _, err = w.wait(timeout=30)
        self.assertEqual(code, 0, err[-2000:])
        code, out, err = self.publish("--redis-url", url, "--count", 1)
        self.assertEqual(code, 1)
        self.assertIn("cannot connect", err)
        self.assertIn("Connection refused", err)

    def test_unix_socket_database_and_publish_from_stdin(self):
        sock = os.path.join(self.tmp, "redis.sock")
        proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                                 "--appendonly", "no", "--dir", self.tmp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._procs.append(proc)
        wait_until(lambda: os.path.exists(sock), timeout=10, what="the redis socket")
        url = "unix://%s?db=3" % sock
        lines = "".join('{"message_id":"m%d","instance_name":"cattle-%d"}\n' % (i, i)
                        for i in range(40))
        code, out, err = self.publish("--redis-url", url, "--stdin",
                                      stdin=lines + "\n{broken\n")
        self.assertEqual(code, 1)  # one line rejected, the rest sent
        self.assertIn("line 42", err)
        self.assertEqual(json.loads(out)["sent"], 40)
        self.assertEqual(json.loads(out)["rejected"], 1)
        code, s, err = self.run_worker("--source", "redis", "--restarter", "simulate", "--redis-url", url, *FAST,
                                       "--exit-when-idle", timeout=30)
        self.assertEqual(code, 0, err[-2000:])
        self.assertEqual(s["acked"], 40)
        # NDJSON instead of Redis, for --source stdin.
        code, out, err = self.publish("--count", 3, "--output", "-")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out.splitlines()), 3)
        self.assertEqual(json.loads(err.strip().splitlines()[-1])["sent"], 3)


if __name__ == "__main__":
    unittest.main()
