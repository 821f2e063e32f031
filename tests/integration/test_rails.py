"""The safety rails mean what they say, with --restarter exec and real commands.

Each test names the rule it guards; the memory and the SQLite store are both tried where the
rule lives in the store. Helpers (the recording restart script, stdin runs) are test_safety's.
"""

import json
import os
import signal
import sqlite3
import subprocess
import time

import harness
from harness import wait_until
from test_safety import ExecHarness, msg


def payload(mid, instance, hostname=None):
    m = {"message_id": mid, "instance_name": instance}
    if hostname is not None:
        m["hostname"] = hostname
    return json.dumps(m) + "\n"


# One machine under five names: derived from instance_name (any case), or given with a
# trailing dot or in mixed case.
ONE_MACHINE = [payload("n1", "web-1"), payload("n2", "WEB-1"),
               payload("n3", "x", "web-1.example.net."), payload("n4", "y", "Web-1.Example.Net"),
               payload("n5", "z", "WEB-1.EXAMPLE.NET")]


class RailsTest(ExecHarness):
    STORES = ("memory", "sqlite")

    def store(self, name):
        """The flags of a store, the SQLite one on a fresh file each time."""
        if name == "memory":
            return ["--store", "memory"]
        db = os.path.join(self.tmp, "rails-%d.db" % len(os.listdir(self.tmp)))
        return ["--store", "sqlite", "--db", db]

    def history(self, db):
        r = subprocess.run([harness.MAYHEM, "history", "--db", db, "--json"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    # -- one machine identity ----------------------------------------------------------------

    def test_one_machine_under_several_names_is_restarted_once(self):
        rec = self.script(sleep="0.3")
        for name in self.STORES:
            # One at a time: the cooldown decides. All at once: coalescing decides.
            for inflight in ("1", "100"):
                with self.subTest(store=name, max_in_flight=inflight):
                    if os.path.exists(self.record):
                        os.remove(self.record)
                    code, s, err = self.run_stdin(ONE_MACHINE, *self.store(name),
                                                  "--restart-command",
                                                  rec + " {hostname}", "--max-in-flight",
                                                  inflight)
                    self.assertEqual((code, s["acked"]), (0, 5), err)
                    self.assertEqual(self.starts(), ["web-1.example.net"], err)

    def test_deny_hosts_holds_for_every_spelling_of_a_name(self):
        rec = self.script()
        for name in self.STORES:
            with self.subTest(store=name):
                code, s, err = self.run_stdin(ONE_MACHINE, *self.store(name), "--restart-command",
                                              rec + " {hostname}", "--deny-hosts",
                                              r"web-1\.example\.net")
                self.assertEqual((code, s["dead_lettered"]), (0, 5), err)
                self.assertEqual(self.starts(), [])

    def test_allow_hosts_checks_every_value_the_template_uses(self):
        rec = self.script()
        lines = [payload("m1", "db-primary", "web-9.example.net"),
                 payload("m2", "web-3", "web-3.example.net")]
        code, s, err = self.run_stdin(lines, "--restart-command", rec + " {instance_name}",
                                      "--allow-hosts", "web-.*")
        self.assertEqual((code, s["dead_lettered"], s["acked"]), (0, 1, 1), err)
        self.assertEqual(self.starts(), ["web-3"])
        self.assertIn("used by the command", err)
        self.assertIn("db-primary.example.net", err)
        # A template that only uses {hostname} restarts the host named: that one is checked.
        os.remove(self.record)
        code, s, err = self.run_stdin(lines, "--restart-command", rec + " {hostname}",
                                      "--allow-hosts", "web-.*")
        self.assertEqual((code, s["acked"]), (0, 2), err)

    # -- history reports what ran; a dry run changes nothing for a real run --------------------

    def test_a_dry_run_leaves_no_trace_that_a_real_run_meets(self):
        rec = self.script()
        db = os.path.join(self.tmp, "dry.db")
        lines = [msg("m1", "h1"), msg("m2", "h2")]
        flags = ["--store", "sqlite", "--db", db, "--restart-command", rec + " {hostname}"]
        code, s, err = self.run_stdin(lines, *flags, "--dry-run")
        self.assertEqual((code, s["acked"]), (0, 2), err)
        self.assertEqual(self.starts(), [])
        code, s, err = self.run_stdin(lines, *flags)
        self.assertEqual((code, s["acked"], s["skipped"]), (0, 2, 0), err)
        self.assertEqual(sorted(self.starts()), ["h1", "h2"])

    def test_history_counts_only_restarts_that_ran(self):
        rec = self.script()
        db = os.path.join(self.tmp, "history.db")
        flags = ["--store", "sqlite", "--db", db, "--restart-command", rec + " {hostname}"]
        code, s, err = self.run_stdin([msg("m1", "h1")], *flags)
        self.assertEqual((code, s["acked"]), (0, 1), err)
        started = harness.query_db(db, "SELECT started FROM restarts WHERE message_id = 'm1'")
        time.sleep(0.01)  # later rows get later stamps
        # Later: a skip by the cooldown for h1, a dry run for h3, a refusal for h4.
        code, s, err = self.run_stdin([msg("m2", "h1")], *flags)
        code, s, err = self.run_stdin([msg("m3", "h3")], *flags, "--dry-run")
        code, s, err = self.run_stdin([msg("m4", "h4")], *flags, "--deny-hosts", "h4")
        self.assertEqual(self.starts(), ["h1"])
        doc = self.history(db)
        self.assertEqual(doc["restarts"]["total"], 1, doc)
        self.assertEqual([(h["hostname"], h["restarts"], h["last_started"]) for h in doc["hosts"]],
                         [("h1", 1, started[0][0])], doc)

    # -- a cooldown that lasts as long as the process is a choice, not a default ---------------

    def test_exec_with_the_memory_store_needs_allow_volatile_cooldown(self):
        with self.feed(msg("m1", "h1")) as stdin:
            code, s, err = self.run_worker("--source", "stdin", "--store", "memory",
                                           "--restarter", "exec", "--restart-command", "true",
                                           stdin=stdin)
        self.assertEqual(code, 2, err)
        self.assertIsNone(s)
        self.assertIn("--allow-volatile-cooldown", err)
        r = subprocess.run([harness.MAYHEM, "worker", "--help"], capture_output=True, text=True,
                           timeout=30)
        self.assertIn("--allow-volatile-cooldown", r.stdout)
        code, s, err = self.run_stdin([msg("m1", "h1")], "--restart-command", "true")
        self.assertEqual((code, s["acked"]), (0, 1), err)  # BASE gives the flag

    # -- a restart that never finished blocks its host ----------------------------------------

    def test_an_unfinished_restart_blocks_its_host(self):
        rec = self.script()
        db = os.path.join(self.tmp, "unfinished.db")
        flags = ["--store", "sqlite", "--db", db, "--restart-command", rec + " {hostname}"]
        code, s, err = self.run_stdin([], *flags)
        self.assertEqual(code, 0, err)  # creates the schema
        now_ms = int(time.time() * 1000)
        with sqlite3.connect(db) as c:  # a peer's restart of h1, started a minute ago, running
            c.execute("INSERT INTO restarts (message_id, attempt, hostname, started, host_claimed, "
                      "owner, lease_until) VALUES ('peer-1', 1, 'h1', ?, 1, 'peer', ?)",
                      (now_ms - 60_000, now_ms + 3600_000))
        c.close()
        code, s, err = self.run_stdin([msg("n1", "h1"), msg("n2", "h2")], *flags)
        self.assertEqual((code, s["acked"]), (0, 2), err)
        self.assertEqual(self.starts(), ["h2"])
        self.assertIn("restart skipped: cooldown", err)

    def seeded_db(self, name, rows):
        """A SQLite store whose restarts table holds `rows` (message_id, hostname, age in ms,
        result or None for unfinished, owner, lease_until offset in ms), host-claimed."""
        db = os.path.join(self.tmp, name)
        code, s, err = self.run_stdin([], "--store", "sqlite", "--db", db,
                                      "--restart-command", "true")
        self.assertEqual(code, 0, err)  # creates the schema
        now_ms = int(time.time() * 1000)
        with sqlite3.connect(db) as c:
            for mid, host, age, result, owner, lease in rows:
                c.execute("INSERT INTO restarts (message_id, attempt, hostname, started, finished, "
                          "result, host_claimed, owner, lease_until) VALUES (?, 1, ?, ?, ?, ?, 1, "
                          "?, ?)", (mid, host, now_ms - age,
                                    None if result is None else now_ms - age + 1000, result,
                                    owner, None if lease is None else now_ms + lease))
        c.close()
        return db

    def test_failed_and_dry_run_restarts_do_not_block_their_host(self):
        rec = self.script()
        db = self.seeded_db("failed.db", [("peer-1", "h1", 60_000, "failed", None, None),
                                          ("peer-2", "h2", 60_000, "dry_run", None, None)])
        code, s, err = self.run_stdin([msg("n1", "h1"), msg("n2", "h2")], "--store", "sqlite",
                                      "--db", db, "--restart-command", rec + " {hostname}")
        self.assertEqual((code, s["acked"]), (0, 2), err)
        self.assertEqual(sorted(self.starts()), ["h1", "h2"])

    def test_a_message_never_blocks_itself_when_it_takes_over_its_unfinished_restart(self):
        # A peer died while it restarted h1 for m1 (its lease expired): the redelivery of m1 runs
        # the restart again (--on-unfinished-restart retry); its own row does not block it.
        rec = self.script()
        db = self.seeded_db("own.db", [("m1", "h1", 60_000, None, "dead-peer", -1000)])
        code, s, err = self.run_stdin([msg("m1", "h1")], "--store", "sqlite", "--db", db,
                                      "--restart-command", rec + " {hostname}")
        self.assertEqual((code, s["acked"]), (0, 1), err)
        self.assertEqual(self.starts(), ["h1"])

    # -- a file that is not mayhem's is left as it was -----------------------------------------

    def test_a_foreign_sqlite_file_is_refused_before_anything_changes(self):
        for version in (0, 1, 2):
            with self.subTest(user_version=version):
                db = os.path.join(self.tmp, "foreign-%d.db" % version)
                c = sqlite3.connect(db)
                c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
                c.execute("PRAGMA user_version = %d" % version)
                c.commit()
                c.close()
                with open(db, "rb") as f:
                    before = f.read()
                code, s, err = self.run_worker("--source", "stdin", "--restarter", "simulate", "--store", "sqlite", "--db",
                                               db, timeout=30)
                self.assertEqual(code, 1, err)
                self.assertIn("not a mayhem database", err)
                with open(db, "rb") as f:
                    self.assertEqual(f.read(), before)  # not switched to WAL, nothing written
                self.assertFalse(os.path.exists(db + "-wal"))

    # -- a clock behind the store's records is refused, not guessed ----------------------------

    def test_a_clock_behind_the_newest_restart_refuses_and_is_not_ready(self):
        rec = self.script()
        db = os.path.join(self.tmp, "clock.db")
        flags = ["--store", "sqlite", "--db", db, "--restart-command", rec + " {hostname}"]
        code, s, err = self.run_stdin([], *flags)
        self.assertEqual(code, 0, err)  # creates the schema
        now_ms = int(time.time() * 1000)
        with sqlite3.connect(db) as c:  # a restart of h1 stamped an hour ahead of this clock
            c.execute("INSERT INTO restarts (message_id, attempt, hostname, started, finished, "
                      "result, host_claimed) VALUES ('future', 1, 'h1', ?, ?, 'ok', 1)",
                      (now_ms + 3600_000, now_ms + 3601_000))
        c.close()
        port = harness.free_port()
        w = self.piped(*flags, "--metrics-addr", "127.0.0.1:%d" % port)
        w.proc.stdin.write(msg("n1", "h1").encode())
        w.proc.stdin.flush()
        wait_until(lambda: "the clock is behind" in w.stderr(), what="the clock to be refused")
        url = "http://127.0.0.1:%d" % port
        wait_until(lambda: harness.http_get(url + "/readyz")[0] == 503, what="not ready")
        self.assertIn("clock_behind", harness.http_get(url + "/readyz")[1])
        self.assertIn("mayhem_clock_behind 1", harness.http_get(url + "/metrics")[1])
        self.assertEqual(self.starts(), [])
        w.proc.stdin.close()
        w.signal(signal.SIGTERM)
        code, out, err = w.wait()
        self.assertEqual(self.starts(), [])  # retried, never restarted, never dead-lettered
        self.assertEqual(harness.parse_summary(out)["dead_lettered"], 0, err)
