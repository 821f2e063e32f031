"""--store postgres: a fleet of workers sharing one PostgreSQL database (a private server from
postgres.py) and one Redis stream. The idempotency record, the claims with their leases and
the per-host cooldown hold across all of them; a worker killed mid-restart and a database
restarted mid-run lose nothing.

Each restart command appends "start <message id> <host> <worker pid>" and "end ..." lines to
one log.
"""

import json
import os
import signal
import stat
import subprocess
import time
import unittest

import harness
from harness import Harness


def request(i, host):
    return json.dumps({"message_id": "m%05d" % i, "instance_name": "cattle-%05d" % i,
                       "hostname": host})


class PostgresFleet(Harness):
    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.tmp, "restarts.log")

    def script(self, seconds):
        path = os.path.join(self.tmp, "restart.sh")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n"
                    'echo "start $1 $2 $PPID" >> %s\n'
                    "sleep %s\n"
                    'echo "end $1 $2 $PPID" >> %s\n' % (self.log, seconds, self.log))
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
        return path + " {message_id} {hostname}"

    def lines(self, kind):
        try:
            with open(self.log) as f:
                return [l.split()[1:] for l in f if l.startswith(kind + " ")]
        except FileNotFoundError:
            return []

    def peak_concurrency(self):
        """The most restarts running at once across the fleet, from the order of the lines."""
        running = peak = 0
        try:
            with open(self.log) as f:
                for line in f:
                    running += 1 if line.startswith("start ") else -1
                    peak = max(peak, running)
        except FileNotFoundError:
            pass
        return peak

    def publish_requests(self, r, payloads):
        code, out, err = self.publish("--stdin", "--redis-url", r.url,
                                      stdin="\n".join(payloads) + "\n")
        self.assertEqual(code, 0, err)

    def common(self, r, pg):
        return ["--source", "redis", "--redis-url", r.url, "--store", "postgres",
                "--postgres-url", pg.url, "--log-format", "json", "--status-interval", "0"]

    def test_three_workers_one_database_a_host_restarts_once_per_cooldown(self):
        r, pg = self.redis(), self.postgres()
        # 1,000 requests for 40 hosts, shuffled the same way every run.
        hosts = ["web-%02d.example.net" % (i % 40) for i in range(1000)]
        order = sorted(range(1000), key=lambda i: (i * 7919) % 1000)
        self.publish_requests(r, [request(i, hosts[i]) for i in order])
        command = self.script("0.05")
        workers = [self.worker(*self.common(r, pg), "--consumer", name, "--restarter", "exec",
                               "--restart-command", command, "--restart-cooldown", "1h",
                               "--max-concurrent-restarts", "16", "--exit-when-idle",
                               # Small rooms, so the three share the stream.
                               "--max-in-flight", "8", "--queue-capacity", "4",
                               "--read-ahead", "0", name=name)
                   for name in ("a", "b", "c")]
        results = [w.wait(timeout=300) for w in workers]
        for code, out, err in results:
            self.assertEqual(code, 0, err[-3000:])
        summaries = [harness.parse_summary(out) for _, out, _ in results]
        for s in summaries:
            self.assert_identity(s)
        for s in summaries:
            self.assertGreater(s["acked"] + s["skipped"], 0, summaries)
        starts = self.lines("start")
        self.assertEqual(len(starts), 40, starts)
        self.assertEqual(len({s[1] for s in starts}), 40)
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts WHERE result = 'ok'"), "40")
        self.assertEqual(pg.scalar("SELECT count(DISTINCT hostname) FROM restarts "
                                   "WHERE result = 'ok'"), "40")
        self.assertEqual(pg.scalar("SELECT count(*) FROM messages WHERE outcome IN "
                                   "('acked', 'skipped')"), "1000")
        self.assertEqual(r.cli("XPENDING", "mayhem:restarts", "mayhem").splitlines()[0], "0")
        by_result = pg.psql("SELECT result, count(*) FROM restarts GROUP BY 1 ORDER BY 1")
        print("\nfleet: %s; acked %d by workers %s; restarts by result: %s; peak concurrency %d"
              % ("3 workers, 1000 requests, 40 hosts, 1h cooldown",
                 sum(s["acked"] for s in summaries), [s["acked"] for s in summaries],
                 by_result.replace("\n", ", "), self.peak_concurrency()))

    def counting_script(self):
        command, self.peaks = harness.counting_script(self.tmp)
        return command

    def test_max_concurrent_restarts_holds_across_the_fleet(self):
        r, pg = self.redis(), self.postgres()
        n = 36
        self.publish_requests(r, [request(i, "slot-%02d.example.net" % i) for i in range(n)])
        command = self.counting_script()
        # Each worker alone may run 3 at once: without fleet-wide slots the three run up to 9.
        workers = [self.worker(*self.common(r, pg), "--consumer", name, "--restarter", "exec",
                               "--restart-command", command, "--max-concurrent-restarts", "3",
                               "--restart-cooldown", "0", "--exit-when-idle",
                               "--max-in-flight", "8", "--queue-capacity", "4",
                               "--read-ahead", "0", name=name)
                   for name in ("a", "b", "c")]
        results = [w.wait(timeout=300) for w in workers]
        for code, out, err in results:
            self.assertEqual(code, 0, err[-3000:])
        with open(self.peaks) as f:
            peaks = [int(l) for l in f if l.strip()]
        self.assertEqual(len(peaks), n)
        self.assertLessEqual(max(peaks), 3, peaks)
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts WHERE result = 'ok'"), str(n))
        # Every slot was given back at the end.
        self.assertEqual(pg.scalar("SELECT count(*) FROM restart_slots "
                                   "WHERE message_id IS NOT NULL"), "0")
        print("\nfleet slots: 3 workers, --max-concurrent-restarts 3, %d restarts, peak %d"
              % (n, max(peaks)))

    def mayhem(self, *args):
        r = subprocess.run([harness.MAYHEM, *args], capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout, r.stderr

    def metric(self, port, name):
        status, body = harness.http_get("http://127.0.0.1:%d/metrics" % port)
        for line in body.splitlines() if status == 200 else []:
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def test_mayhem_pause_holds_every_worker_until_resume(self):
        r, pg = self.redis(), self.postgres()
        code, out, err = self.mayhem("pause", "--postgres-url", pg.url, "--reason",
                                     "db maintenance", "--by", "alice")
        self.assertEqual(code, 0, err)
        self.assertIn("paused", out)
        code, out, err = self.mayhem("status", "--postgres-url", pg.url, "--json")
        self.assertEqual(code, 0, err)
        doc = json.loads(out)
        self.assertEqual(doc["paused"]["by"], "alice")
        self.assertEqual(doc["paused"]["reason"], "db maintenance")
        n = 6
        self.publish_requests(r, [request(i, "p-%d.example.net" % i) for i in range(n)])
        ports = [harness.free_port(), harness.free_port()]
        workers = [self.worker(*self.common(r, pg), "--consumer", name, "--restarter", "exec",
                               "--restart-command", self.script("0.05"), "--exit-when-idle",
                               "--metrics-addr", "127.0.0.1:%d" % port, name=name)
                   for name, port in zip(("a", "b"), ports)]
        # Every message is taken and held at admission: nothing starts while paused.
        harness.wait_until(
            lambda: sum(self.metric(p, "mayhem_restarts_waiting") or 0 for p in ports) == n,
            timeout=60, what="every request to wait for admission")
        # (A worker that took no request may have exited: --exit-when-idle.)
        holding = [p for p in ports if self.metric(p, "mayhem_restarts_waiting")]
        self.assertTrue(holding)
        for p in holding:
            self.assertEqual(self.metric(p, "mayhem_restarts_paused"), 1)
            self.assertEqual(self.metric(p, "mayhem_fleet_paused"), 1)
        self.assertEqual(self.lines("start"), [])
        for w in workers:  # (one that took nothing may still be starting on a busy machine)
            harness.wait_until(lambda: "restarts paused fleet-wide" in w.stderr(), timeout=30,
                               what="each worker to see the pause")
        code, out, err = self.mayhem("status", "--postgres-url", pg.url)
        self.assertEqual(code, 0, err)
        self.assertIn("PAUSED by alice", out)
        self.assertIn("db maintenance", out)
        code, out, err = self.mayhem("resume", "--postgres-url", pg.url)
        self.assertEqual(code, 0, err)
        for w in workers:
            code, out, err = w.wait(timeout=120)
            self.assertEqual(code, 0, err[-3000:])
            self.assertIn("restarts resumed fleet-wide", err)
        self.assertEqual(len(self.lines("end")), n)
        code, out, err = self.mayhem("status", "--postgres-url", pg.url, "--json")
        self.assertIsNone(json.loads(out)["paused"])

    def open_the_breaker(self, r, pg, rails):
        """Worker a's restarts of three hosts fail: the fleet's breaker opens; a stops."""
        failing = os.path.join(self.tmp, "fail.sh")
        with open(failing, "w") as f:
            f.write('#!/bin/sh\necho "start $1 $2 $PPID" >> %s\nexit 1\n' % self.log)
        os.chmod(failing, 0o755)
        self.publish_requests(r, [request(i, "bad-%d.example.net" % i) for i in range(3)])
        a = self.worker(*self.common(r, pg), *rails, "--consumer", "a",
                        "--restart-command", failing + " {message_id} {hostname}", name="a")
        harness.wait_until(lambda: "circuit breaker open fleet-wide" in a.stderr(), timeout=60,
                           what="a's three failures to open the breaker")
        a.signal(signal.SIGTERM)
        a.wait(timeout=30)
        self.assertEqual(pg.scalar("SELECT state FROM fleet_breaker"), "1")

    def test_a_breaker_opened_by_one_worker_holds_every_worker(self):
        r, pg = self.redis(), self.postgres()
        rails = ["--restarter", "exec", "--restart-cooldown", "0", "--breaker-failures", "3",
                 "--breaker-window", "10m", "--breaker-cooldown", "1h"]
        self.open_the_breaker(r, pg, rails)
        # A worker that saw none of those failures holds its restarts all the same.
        n = 4
        self.publish_requests(r, [request(100 + i, "good-%d.example.net" % i) for i in range(n)])
        port = harness.free_port()
        b = self.worker(*self.common(r, pg), *rails, "--consumer", "b",
                        "--restart-command", self.script("0.05"),
                        "--metrics-addr", "127.0.0.1:%d" % port, name="b")
        harness.wait_until(lambda: self.metric(port, "mayhem_restarts_waiting") == n, timeout=60,
                           what="b to hold every request at admission")
        self.assertEqual(self.metric(port, "mayhem_restart_breaker_state"), 1)
        self.assertEqual([l for l in self.lines("start") if l[1].startswith("good")], [])
        code, out, err = self.mayhem("status", "--postgres-url", pg.url)
        self.assertEqual(code, 0, err)
        self.assertIn("breaker    open since", out)
        code, out, err = self.mayhem("status", "--postgres-url", pg.url, "--json")
        self.assertEqual(json.loads(out)["breaker"]["state"], "open")
        b.signal(signal.SIGTERM)
        code, _, err = b.wait(timeout=30)
        self.assertEqual(code, 3, err[-3000:])  # its held requests released to the stream
        self.assertEqual([l for l in self.lines("start") if l[1].startswith("good")], [])

    def test_after_the_breaker_cooldown_one_trial_runs_alone_in_the_fleet_then_all_resume(self):
        r, pg = self.redis(), self.postgres()
        rails = ["--restarter", "exec", "--restart-cooldown", "0", "--breaker-failures", "3",
                 "--breaker-window", "10m", "--breaker-cooldown", "2s"]
        self.open_the_breaker(r, pg, rails)
        n = 6
        self.publish_requests(r, [request(100 + i, "good-%d.example.net" % i) for i in range(n)])
        workers = [self.worker(*self.common(r, pg), *rails, "--consumer", name,
                               "--restart-command", self.script("0.5"), "--exit-when-idle",
                               # At most 3 each: both hold requests when the cooldown ends.
                               "--max-in-flight", "2", "--queue-capacity", "1",
                               "--read-ahead", "0", name=name) for name in ("b", "c")]
        for w in workers:
            code, out, err = w.wait(timeout=120)
            self.assertEqual(code, 0, err[-3000:])
        with open(self.log) as f:
            good = [l.split() for l in f if "good-" in l]
        self.assertEqual(len(good), 2 * n, good)
        # The trial: the first good restart ended before any other started, on either worker.
        self.assertEqual(good[0][0], "start")
        self.assertEqual(good[1][:2], ["end", good[0][1]], good)
        self.assertEqual(pg.scalar("SELECT state FROM fleet_breaker"), "0")
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts WHERE result = 'ok'"), str(n))

    def test_a_worker_killed_mid_restart_its_claims_expire_and_the_fleet_carries_on(self):
        r, pg = self.redis(), self.postgres()
        self.publish_requests(r, [request(i, "db-%d.example.net" % i) for i in range(3)])
        lease = ["--lease-timeout", "1s", "--lease-extend-interval", "200ms",
                 "--reclaim-interval", "100ms", "--restarter", "exec",
                 "--restart-cooldown", "1h", "--retry-backoff", "50ms..200ms"]
        a = self.worker(*self.common(r, pg), *lease, "--consumer", "a",
                        "--restart-command", self.script("30"), name="a")
        harness.wait_until(lambda: len(self.lines("start")) == 3 or not a.alive(), timeout=30,
                           what="3 restarts running on a")
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts WHERE finished IS NULL"), "3")
        a.signal(signal.SIGKILL)  # its commands die with it (parent-death signal)
        a.wait(timeout=30)
        fleet = [self.worker(*self.common(r, pg), *lease, "--consumer", name,
                             "--restart-command", self.script("0.1"), "--exit-when-idle",
                             name=name) for name in ("b", "c")]
        for w in fleet:
            code, out, err = w.wait(timeout=120)
            self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(len(self.lines("end")), 3)  # the second runs; a's never ended
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts WHERE finished IS NULL"), "0")
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts WHERE result = 'ok'"), "3")
        # a's slots came free with their leases (taken again or not), b's and c's were given
        # back: none is held.
        self.assertEqual(pg.scalar("SELECT count(*) FROM restart_slots WHERE lease_until > "
                                   "(extract(epoch FROM now()) * 1000)::bigint"), "0")
        # The starts a left unfinished (they had passed their cooldown claim) were closed
        # `abandoned` and each restarted as the next attempt by b or c.
        of_a = "owner LIKE '%%-' || '%d-%%'" % a.pid
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts WHERE %s" % of_a), "3")
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts WHERE %s AND attempt = 1 "
                                   "AND result = 'abandoned'" % of_a), "3")
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts WHERE attempt = 2 "
                                   "AND result = 'ok'"), "3")
        self.assertEqual(r.cli("XPENDING", "mayhem:restarts", "mayhem").splitlines()[0], "0")

    def test_the_database_restarted_mid_run_nothing_acked_is_unsaved(self):
        r, pg = self.redis(), self.postgres()
        n = 3000
        self.publish_requests(r, [request(i, "h%04d.example.net" % i) for i in range(n)])
        port = harness.free_port()
        w = self.worker(*self.common(r, pg), "--consumer", "a", "--restarter", "simulate",
                        # Slow enough that the crash comes mid-run also on a loaded machine
                        # (about 300/s: 10 s for all, the crash after 1 s).
                        "--restart-latency", "100ms..200ms", "--max-in-flight", "50",
                        "--lease-timeout", "2s", "--lease-extend-interval", "300ms",
                        "--reclaim-interval", "200ms", "--exit-when-idle",
                        "--metrics-addr", "127.0.0.1:%d" % port, name="a")

        def saved():
            try:
                return int(pg.scalar("SELECT count(*) FROM messages"))
            except RuntimeError:  # not migrated yet
                return 0
        harness.wait_until(lambda: saved() > 300 or not w.alive(), timeout=60,
                           what="the worker to save some requests")
        pg.stop(mode="immediate")  # a crash: what was not committed is gone
        readyz = "http://127.0.0.1:%d/readyz" % port

        def unhealthy():
            status, body = harness.http_get(readyz)
            return status == 503 and "store_unhealthy" in body
        harness.wait_until(unhealthy, timeout=30, what="/readyz to say store_unhealthy")
        time.sleep(1)
        pg.start()
        code, out, err = w.wait(timeout=240)
        self.assertEqual(code, 0, err[-3000:])
        s = harness.parse_summary(out)
        self.assert_identity(s)
        # The outage hit messages in flight: their failed saves and claims were retried, their
        # restart ends held and written again once the database was back; none was acked before.
        held = err.count("cannot record how a restart ended; writing it again")
        self.assertGreater(s["retried"] + held, 0, "%r\n%s" % (s, err[-4000:]))
        self.assertIn("store unavailable", err)
        self.assertEqual(r.cli("XPENDING", "mayhem:restarts", "mayhem").splitlines()[0], "0")
        # Every request the group acked is in the database, with an outcome.
        self.assertEqual(saved(), n)
        self.assertEqual(pg.scalar("SELECT count(*) FROM messages WHERE outcome IN "
                                   "('acked', 'skipped')"), str(n))
        self.assertEqual(pg.scalar("SELECT count(DISTINCT message_id) FROM restarts "
                                   "WHERE result = 'ok'"), str(n))

    def test_the_writer_finds_rows_by_key_and_never_reads_a_whole_table(self):
        # A batch writes thousands of rows by id (`message_id = ANY(ids)`). On a young table the
        # planner priced that many index probes above one scan of the table, and then read the
        # whole table once per batch, a cost growing with the table; the writer's session rules
        # scans out.
        pg = self.postgres()
        n = 30000
        code, s, err = self.run_worker(
            "--store", "postgres", "--postgres-url", pg.url, "--messages", str(n),
            "--save-latency", "0", "--restart-latency", "0", "--max-in-flight", "5000",
            "--status-interval", "0")
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["acked"], n)
        # The server publishes a backend's counts when it ends (the worker has exited).
        stats = ("SELECT coalesce(sum(n_tup_ins), 0) || ' ' || coalesce(sum(seq_tup_read), 0) "
                 "FROM pg_stat_user_tables WHERE relname IN ('messages', 'restarts')")
        harness.wait_until(lambda: int(pg.scalar(stats).split()[0]) >= 2 * n, timeout=30,
                           what="the server's table statistics")
        self.assertEqual(pg.scalar(stats).split()[1], "0")

    def test_the_password_is_never_logged(self):
        pg = self.postgres(password="s3cret-Pa55")
        code, s, err = self.run_worker(
            "--store", "postgres", "--messages", "50", "--save-latency", "0",
            "--restart-latency", "0", "--log-level", "debug", "--status-interval", "100ms",
            env=dict(os.environ, MAYHEM_POSTGRES_URL=pg.url))
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["acked"], 50)
        self.assertNotIn("s3cret-Pa55", err)
        self.assertEqual(pg.scalar("SELECT count(*) FROM messages"), "50")
        # mayhem history reads the same database, and names it without the password.
        r = subprocess.run([harness.MAYHEM, "history", "--postgres-url", pg.url, "--json"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc["messages"], 50)
        self.assertEqual(doc["by_outcome"], {"acked": 50})
        self.assertEqual(doc["restarts"]["by_result"], {"ok": 50})
        self.assertEqual(doc["schema_version"], 5)
        self.assertNotIn("s3cret-Pa55", r.stdout + r.stderr)
        self.assertEqual(doc["db"], "127.0.0.1:%d/postgres" % pg.port)

    def test_the_password_can_come_from_pgpassfile(self):
        pg = self.postgres(password="pgpass-Pa55")
        pgpass = os.path.join(self.tmp, "pgpass")
        with open(pgpass, "w") as f:
            f.write("127.0.0.1:%d:*:postgres:pgpass-Pa55\n" % pg.port)
        os.chmod(pgpass, 0o600)
        url = "postgresql://postgres@127.0.0.1:%d/postgres" % pg.port  # no password in it
        code, s, err = self.run_worker(
            "--store", "postgres", "--postgres-url", url, "--messages", "10",
            "--save-latency", "0", "--restart-latency", "0",
            env=dict(os.environ, PGPASSFILE=pgpass))
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["acked"], 10)

    def test_sslmode_is_honoured(self):
        # The private server has no TLS: sslmode=require must refuse it, not fall back.
        pg = self.postgres()
        w = self.worker("--store", "postgres", "--postgres-url", pg.url + "?sslmode=require",
                        "--messages", "5", "--drain-timeout", "1s", "--log-format", "json",
                        name="ssl")
        harness.wait_until(lambda: "unreachable at start" in w.stderr() or not w.alive(),
                           timeout=30, what="the refused connection to be logged")
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=60)
        self.assertIn("SSL", err)
        s = harness.parse_summary(out)
        self.assertEqual(s["acked"], 0)
        # The retried messages' outcome records could not be written either: exit 1.
        self.assertGreater(s["unrecorded"], 0, s)
        self.assertEqual(code, 1, err[-3000:])

    def test_one_worker_with_three_connections_uses_each_and_restarts_every_host_once(self):
        r, pg = self.redis(), self.postgres()
        n = 600
        self.publish_requests(r, [request(i, "c%04d.example.net" % i) for i in range(n)])
        w = self.worker(*self.common(r, pg), "--consumer", "a", "--restarter", "simulate",
                        "--restart-latency", "0", "--postgres-connections", "3", name="a")

        def acked():
            try:
                return int(pg.scalar("SELECT count(*) FROM messages WHERE outcome = 'acked'"))
            except RuntimeError:  # not migrated yet
                return 0
        harness.wait_until(lambda: acked() == n or not w.alive(), timeout=120,
                           what="every request to be acked")
        # Its connections, named by the worker (the URL names none): one per --postgres-connections.
        self.assertEqual(pg.scalar("SELECT count(*) FROM pg_stat_activity "
                                   "WHERE application_name = 'mayhem'"), "3")
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(harness.parse_summary(out)["acked"], n)
        self.assertEqual(r.cli("XPENDING", "mayhem:restarts", "mayhem").splitlines()[0], "0")
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts"), str(n))
        self.assertEqual(pg.scalar("SELECT count(DISTINCT message_id) FROM restarts "
                                   "WHERE result = 'ok'"), str(n))

    def test_a_database_down_at_start_keeps_the_worker_unready_then_every_connection_serves(self):
        # Only the first connection checks the schema at start; the others, like it, connect
        # (and migrate) in the background once the server is there.
        r, pg = self.redis(), self.postgres(start=False)
        n = 200
        self.publish_requests(r, [request(i, "d%04d.example.net" % i) for i in range(n)])
        port = harness.free_port()
        w = self.worker(*self.common(r, pg), "--consumer", "a", "--restarter", "simulate",
                        "--restart-latency", "0", "--postgres-connections", "2",
                        # Messages whose save failed come back once their lease is over.
                        "--lease-timeout", "2s", "--reclaim-interval", "200ms",
                        "--metrics-addr", "127.0.0.1:%d" % port, "--exit-when-idle", name="a")
        readyz = "http://127.0.0.1:%d/readyz" % port

        def unhealthy():
            status, body = harness.http_get(readyz)
            return status == 503 and "store_unhealthy" in body
        harness.wait_until(unhealthy, timeout=30, what="/readyz to say store_unhealthy")
        self.assertIn("unreachable at start", w.stderr())
        time.sleep(1)
        self.assertTrue(w.alive())
        pg.start()
        code, out, err = w.wait(timeout=120)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(harness.parse_summary(out)["acked"], n)
        self.assertEqual(r.cli("XPENDING", "mayhem:restarts", "mayhem").splitlines()[0], "0")
        self.assertEqual(pg.scalar("SELECT count(*) FROM messages WHERE outcome = 'acked'"),
                         str(n))
        self.assertEqual(pg.scalar("SELECT count(*) FROM restarts WHERE result = 'ok'"), str(n))

    def test_every_connection_mayhem_makes_is_named_mayhem(self):
        # The worker's start-up check, its writers' connections and the command-line tools'
        # all show as application_name 'mayhem', as the server's own log of connections says.
        r, pg = self.redis(), self.postgres()
        pg.psql("ALTER SYSTEM SET log_connections = on")
        pg.psql("SELECT pg_reload_conf()")
        self.publish_requests(r, [request(i, "n%04d.example.net" % i) for i in range(3)])
        code, s, err = self.run_worker(*self.common(r, pg), "--consumer", "a", "--restarter",
                                       "simulate", "--restart-latency", "0", "--exit-when-idle")
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["acked"], 3)
        code, out, err = self.mayhem("status", "--postgres-url", pg.url)
        self.assertEqual(code, 0, err)
        with open(pg.log) as f:
            authorized = [l for l in f if "connection authorized" in l]
        # psql (the test's queries) names itself; every other connection is mayhem's.
        ours = [l for l in authorized if "application_name=psql" not in l]
        # The start-up check and the 2 writers' connections, and the status command's.
        self.assertEqual(len(ours), 4, "".join(authorized))
        for line in ours:
            self.assertIn("application_name=mayhem", line)

    def test_status_against_a_server_that_never_answers_gives_up_and_exits_1(self):
        # A listening socket that accepts and never says a word: without a connect timeout,
        # libpq would wait for the server's answer for ever.
        import socket
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            url = "postgresql://postgres@127.0.0.1:%d/postgres" % silent.getsockname()[1]
            code, out, err = self.mayhem("status", "--postgres-url", url)
        self.assertEqual(code, 1, err)
        self.assertIn("cannot connect", err)
        self.assertIn("timeout", err)

    def test_postgres_connections_out_of_range_names_the_flag_and_exits_2(self):
        code, _, err = self.run_worker("--store", "postgres", "--postgres-url",
                                       "postgresql://127.0.0.1/x", "--postgres-connections", "0",
                                       "--messages", "1")
        self.assertEqual(code, 2, err)
        self.assertIn("--postgres-connections", err)
        self.assertIn("1 to 16", err)

    def test_store_postgres_without_a_url_names_the_flag_and_exits_2(self):
        code, _, err = self.run_worker("--store", "postgres", "--messages", "1")
        self.assertEqual(code, 2, err)
        self.assertIn("--postgres-url", err)


if __name__ == "__main__":
    unittest.main()
