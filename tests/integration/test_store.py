"""The SQLite store (issue 4): durable saves, group commit, idempotent redelivery, a database
that cannot be written, kill -9, `mayhem history`. Real SQLite files in the test's temp dir,
read back with Python's sqlite3 module."""

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest

import harness
from harness import Harness, MAYHEM, json_log_lines, wait_until

FAST = ["--save-latency", "0", "--restart-latency", "0", "--status-interval", "0"]


query = harness.query_db


def scalar(db, sql, *args):
    return query(db, sql, *args)[0][0]


def store_closed(stderr):
    lines = [l for l in json_log_lines(stderr) if l.get("msg") == "store closed"]
    if not lines:
        raise AssertionError("no 'store closed' log line in: %r" % stderr[-2000:])
    return lines[-1]


def settled(stderr, outcome=None):
    return [l for l in json_log_lines(stderr)
            if l.get("msg") == "message settled" and (outcome is None or l.get("outcome") == outcome)]


class StoreTest(Harness):
    def db(self, name="mayhem.db"):
        return os.path.join(self.tmp, name)

    def publish(self, count, seed):
        r = subprocess.run([MAYHEM, "publish", "--output", "-", "--count", str(count), "--seed", str(seed)],
                           capture_output=True, text=True, check=True)
        return r.stdout.splitlines()

    def stdin_file(self, lines, name="in.ndjson"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        f = open(path)
        self.addCleanup(f.close)
        return f

    def history(self, *args, db=None):
        r = subprocess.run([MAYHEM, "history", "--db", db or self.db()] + list(args),
                           capture_output=True, text=True, timeout=30 * harness.SLOW)
        return r.returncode, r.stdout, r.stderr

    # -----------------------------------------------------------------------------------------

    def test_n_messages_give_n_rows_and_history_agrees(self):
        n = 300
        code, s, err = self.run_worker("--messages", str(n), "--log-format", "json", *FAST)
        self.assertEqual(code, 0, err[-2000:])
        self.assert_identity(s)
        self.assertEqual(s["acked"], n)
        db = self.db()  # the default --db, in the worker's cwd
        self.assertEqual(scalar(db, "SELECT count(*) FROM messages"), n)
        self.assertEqual(scalar(db, "SELECT count(*) FROM messages WHERE outcome = 'acked'"), n)
        self.assertEqual(scalar(db, "SELECT count(*) FROM messages WHERE completed_at IS NULL"), 0)
        self.assertEqual(scalar(db, "SELECT count(*) FROM restarts WHERE result = 'ok' "
                                    "AND finished IS NOT NULL"), n)
        self.assertEqual(scalar(db, "PRAGMA user_version"), 3)
        self.assertEqual(store_closed(err)["saves"], n)

        code, out, errtext = self.history("--json", "--limit", "5")
        self.assertEqual(code, 0, errtext)
        h = json.loads(out)
        self.assertEqual(h["messages"], n)
        self.assertEqual(h["by_outcome"], {"acked": n})
        self.assertEqual(h["restarts"]["total"], n)
        self.assertEqual(h["restarts"]["unfinished"], 0)
        self.assertEqual(h["restarts"]["by_result"], {"ok": n})
        self.assertEqual(h["restarts"]["simulated"], n)  # --restarter simulate, by default
        self.assertEqual(len(h["recent"]), 5)
        ids = {r[0] for r in query(db, "SELECT message_id FROM messages")}
        for m in h["recent"]:
            self.assertIn(m["message_id"], ids)
            self.assertEqual(m["outcome"], "acked")
        hosts = dict(query(db, "SELECT hostname, count(*) FROM restarts GROUP BY hostname"))
        for host in h["hosts"]:
            self.assertEqual(host["restarts"], hosts[host["hostname"]])

        code, out, _ = self.history()  # the text form names the same totals
        self.assertEqual(code, 0)
        self.assertIn("%d messages" % n, out)

    def test_history_text_escapes_what_a_message_holds(self):
        # A hostname is text from a message: printed raw, a newline forged a line of the report
        # and an ESC sequence reached the terminal.
        line = json.dumps({"message_id": "m\x1b[2J1", "instance_name": "i",
                           "hostname": "a\nforged\tb\x1b]0;x\x07"})
        code, s, err = self.run_worker("--source", "stdin", "--restarter", "simulate", *FAST,
                                       stdin=self.stdin_file([line]))
        self.assertEqual(code, 0, err[-2000:])
        code, out, errtext = self.history()
        self.assertEqual(code, 0, errtext)
        for c in out:
            self.assertTrue(c == "\n" or (ord(c) >= 0x20 and ord(c) != 0x7f), repr(out))
        self.assertIn('"a\\nforged\\tb', out)
        self.assertFalse(any(l.startswith("forged") for l in out.splitlines()), out)

    def test_group_commit_batches_many_messages_per_transaction(self):
        n = 20000
        code, s, err = self.run_worker("--messages", str(n), "--max-in-flight", "2000",
                                       "--log-format", "json", *FAST, timeout=120)
        self.assertEqual(code, 0, err[-2000:])
        self.assertEqual(s["acked"], n)
        closed = store_closed(err)
        self.assertEqual(closed["saves"], n)
        self.assertEqual(closed["failed_transactions"], 0)
        # Every message needs at least a save+claim and a finish: one transaction per message
        # would be >= 2n. Group commit makes it a small fraction of n.
        self.assertLess(closed["transactions"], n // 10, closed)
        self.assertEqual(scalar(self.db(), "SELECT count(*) FROM messages"), n)

    def test_duplicate_message_id_restarts_once_also_across_runs(self):
        lines = self.publish(20, seed=11)
        doubled = []
        for i, line in enumerate(lines):
            doubled.append(line)
            if i % 2 == 0:
                doubled.append(line)  # right behind: coalesced with the one in flight
        doubled += lines[:5]  # later: already completed
        code, s, err = self.run_worker("--source", "stdin", "--restarter", "simulate", *FAST,
                                       stdin=self.stdin_file(doubled))
        self.assertEqual(code, 0, err[-2000:])
        self.assert_identity(s)
        self.assertEqual(s["acked"], 20)
        self.assertEqual(s["skipped"], len(doubled) - 20)
        db = self.db()
        self.assertEqual(scalar(db, "SELECT count(*) FROM restarts"), 20)
        self.assertEqual(scalar(db, "SELECT count(DISTINCT message_id) FROM restarts"), 20)

        # A second worker on the same file: every id is known, none restarted again.
        code, s, err = self.run_worker("--source", "stdin", "--restarter", "simulate", *FAST,
                                       stdin=self.stdin_file(lines, "again.ndjson"))
        self.assertEqual(code, 0, err[-2000:])
        self.assertEqual(s["acked"], 0)
        self.assertEqual(s["skipped"], 20)
        self.assertEqual(scalar(db, "SELECT count(*) FROM restarts"), 20)
        self.assertEqual(scalar(db, "SELECT count(*) FROM messages WHERE outcome = 'acked'"), 20)
        self.assertEqual(scalar(db, "SELECT min(attempts) FROM messages"), 2)

    def _unwritable_then_fixed(self, break_it, fix_it, extra=()):
        """A worker on a database it cannot write: it stays up, acks nothing, retries; once the
        database is fixed, it acks everything."""
        n = 5
        # Create the file (schema) first, as a previous run would have.
        code, _, err = self.run_worker("--messages", "1", *FAST)
        self.assertEqual(code, 0, err[-2000:])
        break_it()
        w = self.worker("--messages", str(n), "--retry-backoff", "50ms..200ms",
                        "--log-format", "json", "--log-level", "debug", *extra, *FAST)
        wait_until(lambda: len(settled(w.stderr(), "retried")) >= 2 * n, timeout=20,
                   what="messages retried while the database cannot be written")
        self.assertTrue(w.alive())
        self.assertEqual(settled(w.stderr(), "acked"), [])
        self.assertTrue(any(l.get("msg", "").startswith("store unavailable")
                            for l in json_log_lines(w.stderr())))
        fix_it()
        code, out, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-2000:])
        s = harness.parse_summary(out)
        self.assertEqual(s["acked"], n)
        self.assertGreater(s["retried"], 0)
        self.assertTrue(any(l.get("msg", "").startswith("store recovered")
                            for l in json_log_lines(err)))
        self.assertEqual(scalar(self.db(), "SELECT count(*) FROM messages WHERE outcome = 'acked'"),
                         n + 1)

    def test_database_locked_by_another_writer_keeps_messages_unacked(self):
        holder = {}

        def lock():
            c = sqlite3.connect(self.db(), isolation_level=None)
            c.execute("BEGIN IMMEDIATE")  # the write lock, held past the worker's busy timeout
            holder["c"] = c

        def unlock():
            holder["c"].execute("ROLLBACK")
            holder["c"].close()

        self._unwritable_then_fixed(lock, unlock, extra=("--db-busy-timeout", "100ms"))

    def test_read_only_database_file_keeps_messages_unacked(self):
        # As root, chmod does not stop writes: the immutable attribute does (ext4, xfs, btrfs and
        # CAP_LINUX_IMMUTABLE). Without either, there is no real read-only file to test with.
        db = self.db()
        if os.geteuid() != 0:
            self._unwritable_then_fixed(lambda: os.chmod(db, 0o444), lambda: os.chmod(db, 0o644))
            return
        if not shutil.which("chattr"):
            self.skipTest("running as root and no chattr: cannot make a file read-only")
        probe = os.path.join(self.tmp, "probe")
        open(probe, "w").close()
        if subprocess.run(["chattr", "+i", probe], capture_output=True).returncode != 0:
            self.skipTest("chattr +i not supported here: cannot make a file read-only as root")
        subprocess.run(["chattr", "-i", probe], check=True)
        self.addCleanup(lambda: subprocess.run(["chattr", "-i", db], capture_output=True))
        self._unwritable_then_fixed(lambda: subprocess.run(["chattr", "+i", db], check=True),
                                    lambda: subprocess.run(["chattr", "-i", db], check=True))

    def test_kill_9_loses_no_acked_save(self):
        w = self.worker("--rate", "3000", "--max-in-flight", "200", "--log-format", "json",
                        "--log-level", "debug", *FAST)
        wait_until(lambda: len(settled(w.stderr(), "acked")) >= 1000, timeout=30,
                   what="1000 messages acked")
        # `mayhem history` reads while the worker writes (WAL): it neither blocks nor fails.
        code, out, errtext = self.history("--json")
        self.assertEqual(code, 0, errtext)
        self.assertGreater(json.loads(out)["messages"], 0)
        self.assertTrue(w.alive())
        w.signal(signal.SIGKILL)
        w.wait(timeout=10)
        acked = {l["message_id"] for l in settled(w.stderr(), "acked")}
        self.assertGreaterEqual(len(acked), 1000)
        db = self.db()
        saved = {r[0] for r in query(db, "SELECT message_id FROM messages")}
        self.assertEqual(acked - saved, set(), "acked but not in the database")
        restarted = {r[0] for r in query(db, "SELECT message_id FROM restarts "
                                             "WHERE result = 'ok'")}
        self.assertEqual(acked - restarted, set(), "acked but no finished restart recorded")

        # The same file opens again after the crash and takes new work.
        code, s, err = self.run_worker("--messages", "50", *FAST)
        self.assertEqual(code, 0, err[-2000:])
        self.assertEqual(s["acked"], 50)
        self.assertGreaterEqual(scalar(db, "SELECT count(*) FROM messages"), len(acked) + 50)

    def test_unfinished_restart_policy(self):
        lines = self.publish(2, seed=5)
        ids = [json.loads(l)["message_id"] for l in lines]
        code, _, err = self.run_worker("--messages", "1", *FAST)  # creates the schema
        self.assertEqual(code, 0, err[-2000:])
        c = sqlite3.connect(self.db())
        for mid in ids:  # as a worker killed between start and finish leaves them
            c.execute("INSERT INTO restarts (message_id, attempt, hostname, started) "
                      "VALUES (?, 1, 'h.example.net', 1)", (mid,))
        c.commit()
        c.close()

        code, s, err = self.run_worker("--source", "stdin", "--restarter", "simulate", "--on-unfinished-restart",
                                       "dead-letter", *FAST, stdin=self.stdin_file(lines[:1]))
        self.assertEqual(code, 0, err[-2000:])
        self.assertEqual(s["dead_lettered"], 1)
        # Nothing ran; the row is closed, so the id does not stay in progress. (The row never
        # passed a cooldown claim: it is taken over as it is, no second attempt.)
        self.assertEqual(query(self.db(), "SELECT result FROM restarts WHERE message_id = ?",
                               ids[0]), [("failed",)])

        code, s, err = self.run_worker("--source", "stdin", "--restarter", "simulate", *FAST,  # default: retry
                                       stdin=self.stdin_file(lines[1:], "b.ndjson"))
        self.assertEqual(code, 0, err[-2000:])
        self.assertEqual(s["acked"], 1)
        self.assertEqual(query(self.db(), "SELECT result FROM restarts WHERE message_id = ?",
                               ids[1]), [("ok",)])

    def tmpfs(self, size):
        """A real filesystem of `size` that can be filled: a tmpfs mounted for this test (skipped
        where this process may not mount one)."""
        if not shutil.which("mount"):
            self.skipTest("no mount(8): cannot make a real full filesystem")
        d = tempfile.mkdtemp(prefix="mayhem-disk-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", d],
                           capture_output=True, text=True)
        if r.returncode != 0:
            os.rmdir(d)
            self.skipTest("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): %s"
                          % r.stderr.strip())
        # Cleanups run after tearDown has killed the worker.
        self.addCleanup(os.rmdir, d)
        self.addCleanup(subprocess.run, ["umount", d], check=True)
        return d

    @staticmethod
    def fill(directory):
        """Writes a file until the filesystem is full (ENOSPC); returns its path."""
        path = os.path.join(directory, "filler")
        with open(path, "wb", buffering=0) as f:
            for chunk in (1 << 20, 4096, 512):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        return path

    def test_full_disk_logs_each_change_once_and_the_record_catches_up(self):
        # A real full disk: a tmpfs filled by another file while the worker writes to it. SQLite
        # keeps committing some transactions into WAL space it already has (the space of frames
        # already checkpointed), so writes fail and succeed by turns while the disk is full.
        disk = self.tmpfs("64m")
        db = os.path.join(disk, "mayhem.db")
        n = 4000  # 4 s of intake: the disk fills while most of it is still to come
        w = self.worker("--db", db, "--messages", str(n), "--rate", "1000",
                        "--retry-backoff", "20ms..200ms", "--log-format", "json",
                        "--log-level", "debug", *FAST)
        wait_until(lambda: len(settled(w.stderr(), "acked")) >= 300, timeout=30,
                   what="300 messages acked")
        filler = self.fill(disk)
        wait_until(lambda: len(settled(w.stderr(), "retried")) >= 500, timeout=30,
                   what="500 retries while the disk is full")
        down = [l for l in json_log_lines(w.stderr())
                if l.get("msg", "").startswith("store unavailable")]
        os.remove(filler)
        code, out, err = w.wait(timeout=120)
        self.assertEqual(code, 0, err[-2000:])
        s = harness.parse_summary(out)
        self.assert_identity(s)
        self.assertEqual(s["acked"], n)
        self.assertGreater(s["retried"], 0)
        logs = json_log_lines(err)
        unavailable = [l for l in logs if l.get("msg", "").startswith("store unavailable")]
        recovered = [l for l in logs if l.get("msg", "").startswith("store recovered")]
        # Once per change of state (rate-limited), not once per transaction.
        self.assertGreaterEqual(len(down), 1)
        self.assertLessEqual(len(unavailable), 3, "%d 'store unavailable' lines" % len(unavailable))
        self.assertLessEqual(len(recovered), 3, "%d 'store recovered' lines" % len(recovered))
        self.assertTrue(unavailable[0].get("error"), unavailable[0])
        # What the source was told is what the database says.
        acked = {l["message_id"] for l in settled(err, "acked")}
        self.assertEqual(len(acked), n)
        rows = dict(query(db, "SELECT message_id, coalesce(outcome, 'in_progress') FROM messages"))
        self.assertEqual({i for i in acked if rows.get(i) != "acked"}, set(),
                         "acked, but not recorded as acked")
        code, hist, errtext = self.history("--json", db=db)
        self.assertEqual(code, 0, errtext)
        h = json.loads(hist)
        self.assertEqual(h["by_outcome"], {"acked": n})
        self.assertEqual(h["restarts"]["unfinished"], 0)

    def test_newer_schema_and_missing_database_are_clear_errors(self):
        db = self.db("new.db")
        c = sqlite3.connect(db)
        c.execute("PRAGMA user_version = 99")
        c.commit()
        c.close()
        code, s, err = self.run_worker("--db", db, "--messages", "1", *FAST)
        self.assertEqual(code, 1)
        self.assertIn("newer than this mayhem supports", err)
        r = subprocess.run([MAYHEM, "history", "--db", os.path.join(self.tmp, "nope.db")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot open", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "nope.db")))


if __name__ == "__main__":
    unittest.main()
