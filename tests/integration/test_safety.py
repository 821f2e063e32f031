"""Safety rails: the restart policy and `--restarter exec` with real child processes.

The restart command is a small shell script written by each test: it appends "start HOST PID"
and "stop HOST" lines to a record file, so the tests count what really ran. Messages come from
--source stdin with explicit host names; the store is --store memory (given explicitly).
"""

import json
import os
import signal
import subprocess
import time
import unittest

import harness
from harness import Harness, wait_until

BASE = ["--source", "stdin", "--store", "memory", "--restarter", "exec", "--allow-volatile-cooldown",
        "--save-latency", "0", "--status-interval", "0", "--retry-backoff", "10ms..20ms"]


def msg(mid, host):
    return '{"message_id":"%s","instance_name":"i-%s","hostname":"%s"}\n' % (mid, mid, host)


def pid_gone(pid):
    """True when `pid` no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


class ExecHarness(Harness):
    """Helpers for tests of --restarter exec: a recording restart script, stdin runs."""

    def setUp(self):
        super().setUp()
        self.record = os.path.join(self.tmp, "record")
        self.fail_flag = os.path.join(self.tmp, "fail")

    def script(self, sleep="0", name="restart.sh", extra=""):
        """The restart command: records start/stop, fails while the fail flag exists."""
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n"
                    'echo "start $1 $$" >> %s\n'
                    "%s"
                    "sleep %s\n"
                    'if [ -e %s ]; then echo "stop $1 failed" >> %s; echo "failing $1" >&2; '
                    "exit 1; fi\n"
                    'echo "stop $1" >> %s\n' % (self.record, extra, sleep, self.fail_flag,
                                                self.record, self.record))
        os.chmod(path, 0o755)
        return path

    def records(self):
        if not os.path.exists(self.record):
            return []
        with open(self.record) as f:
            return [line.split() for line in f.read().splitlines() if line.strip()]

    def starts(self):
        return [r[1] for r in self.records() if r[0] == "start"]

    def feed(self, *lines):
        path = os.path.join(self.tmp, "in-%d.ndjson" % len(os.listdir(self.tmp)))
        with open(path, "w") as f:
            f.writelines(lines)
        return open(path)

    def run_stdin(self, lines, *args, timeout=60.0):
        with self.feed(*lines) as stdin:
            code, s, err = self.run_worker(*(BASE + list(args)), stdin=stdin, timeout=timeout)
        self.assertIsNotNone(s, err)
        self.assert_identity(s)
        return code, s, err

    def piped(self, *args):
        w = self.worker(*(BASE + list(args)), stdin=subprocess.PIPE)
        wait_until(lambda: "worker started" in w.stderr(), what="the worker to start")
        return w


class SafetyTest(ExecHarness):
    # -- exec -----------------------------------------------------------------------------

    def test_true_acks_and_false_dead_letters(self):
        code, s, err = self.run_stdin([msg("m1", "h1")], "--restart-command", "true {hostname}")
        self.assertEqual((code, s["acked"]), (0, 1), err)
        code, s, err = self.run_stdin([msg("m1", "h1")], "--restart-command", "false {hostname}",
                                      "--max-attempts", "1")
        self.assertEqual((code, s["dead_lettered"]), (0, 1), err)
        self.assertIn("exit code 1", err)

    def test_exit_code_and_stderr_are_logged_quotes_keep_one_argument(self):
        cmd = "sh -c 'echo first line >&2; echo \"boom {hostname}\" >&2; exit 3'"
        code, s, err = self.run_stdin([msg("m1", "h1")], "--restart-command", cmd,
                                      "--max-attempts", "2")
        # Exit code 3 may have acted: uncertain, never run again.
        self.assertEqual((s["retried"], s["dead_lettered"]), (0, 1), err)
        self.assertIn("exit code 3", err)
        self.assertIn("first line | boom h1", err)

    # -- uncertain restarts: they ran, and it is not known what they did -------------------

    def test_a_restart_whose_verify_fails_is_never_run_again(self):
        rec = self.script()
        lines = [msg("m%d" % i, "h%d" % i) for i in range(3)]
        code, s, err = self.run_stdin(lines, "--restart-command", rec + " {hostname}",
                                      "--verify-command", "false", "--max-attempts", "5")
        self.assertEqual(sorted(self.starts()), ["h0", "h1", "h2"], err)
        self.assertEqual((s["retried"], s["dead_lettered"]), (0, 3), err)
        self.assertIn("the restart is not run again", err)

    def test_a_restart_that_timed_out_is_never_run_again(self):
        rec = self.script(sleep="60")
        code, s, err = self.run_stdin([msg("m1", "h1")], "--restart-command", rec + " {hostname}",
                                      "--restart-timeout", "300ms", "--max-attempts", "3")
        self.assertEqual(self.starts(), ["h1"], err)
        self.assertEqual((s["retried"], s["dead_lettered"]), (0, 1), err)

    def test_an_uncertain_restart_counts_against_the_cooldown(self):
        rec = self.script()
        db = os.path.join(self.tmp, "state.db")
        args = ["--restart-command", rec + " {hostname}", "--verify-command", "false",
                "--restart-cooldown", "1h", "--max-attempts", "5"]
        code, s, err = self.run_stdin([msg("m1", "h1")], "--store", "sqlite", "--db",
                                      db, *args)
        self.assertEqual(s["dead_lettered"], 1, err)
        code, s, err = self.run_stdin([msg("m2", "h1")], "--store", "sqlite", "--db",
                                      db, *args)
        self.assertEqual(s["acked"], 1, err)  # skipped by the cooldown
        self.assertEqual(self.starts(), ["h1"], err)
        rows = harness.query_db(db, "SELECT message_id, result FROM restarts ORDER BY started")
        self.assertEqual([tuple(r) for r in rows], [("m1", "unverified"),
                                                    ("m2", "skipped_cooldown")])
        # The memory store, one after the other in one process.
        os.remove(self.record)
        code, s, err = self.run_stdin([msg("m3", "h3"), msg("m4", "h3")], "--max-in-flight", "1",
                                      *args)
        self.assertEqual((s["dead_lettered"], s["acked"]), (1, 1), err)
        self.assertEqual(self.starts(), ["h3"], err)

    def test_exit_code_75_did_nothing_and_is_retried(self):
        flag = os.path.join(self.tmp, "refuse-once")
        open(flag, "w").close()
        rec = self.script(extra='if [ -e %s ]; then rm %s; exit 75; fi\n' % (flag, flag))
        code, s, err = self.run_stdin([msg("m1", "h1")], "--restart-command", rec + " {hostname}",
                                      "--max-attempts", "3")
        self.assertEqual((code, s["retried"], s["acked"]), (0, 1, 1), err)
        self.assertEqual(self.starts(), ["h1", "h1"], err)

    def test_timeout_ends_the_command_and_fails_the_restart(self):
        code, s, err = self.run_stdin([msg("m1", "h1")], "--restart-command", "sleep 60",
                                      "--restart-timeout", "300ms", "--max-attempts", "1")
        self.assertEqual(s["dead_lettered"], 1, err)
        self.assertIn("timed out after 300ms, ended with SIGTERM", err)

    def test_verify_command_must_succeed(self):
        ok = self.script()
        code, s, err = self.run_stdin([msg("m1", "h1")], "--restart-command", ok + " {hostname}",
                                      "--verify-command", "false", "--max-attempts", "1")
        self.assertEqual(s["dead_lettered"], 1, err)
        self.assertIn("verify command", err)
        code, s, err = self.run_stdin([msg("m2", "h2")], "--restart-command", ok + " {hostname}",
                                      "--verify-command", "test -n {hostname}")
        self.assertEqual(s["acked"], 1, err)

    def test_missing_program_is_refused_at_start(self):
        # A misconfiguration is caught before any message is taken: exit 2, nothing consumed.
        with self.feed(msg("m1", "h1")) as stdin:
            code, s, err = self.run_worker(*BASE, "--restart-command",
                                           os.path.join(self.tmp, "no-such-program") +
                                           " {hostname}", stdin=stdin)
        self.assertEqual(code, 2, err)
        self.assertIn("not found", err)
        self.assertIsNone(s)

    def test_program_gone_at_run_time_is_a_failed_restart_that_is_retried(self):
        path = self.script()
        w = self.piped("--restart-command", path + " {hostname}", "--max-attempts", "2")
        os.remove(path)
        w.proc.stdin.write(msg("m1", "h1").encode())
        w.proc.stdin.close()
        code, out, err = w.wait()
        s = harness.parse_summary(out)
        self.assertEqual((s["retried"], s["dead_lettered"]), (1, 1), err)
        self.assertIn("cannot run", err)

    def test_unsafe_placeholder_values_are_dead_lettered_and_never_run(self):
        rec = self.script()
        bad = ["h;rm -rf /", "$(id)", "-oProxyCommand=x", "a b", "`id`"]
        lines = [msg("m%d" % i, h.replace('"', '\\"')) for i, h in enumerate(bad)]
        code, s, err = self.run_stdin(lines + [msg("ok", "good-1.example.net")],
                                      "--restart-command", "%s {hostname}" % rec)
        self.assertEqual((s["dead_lettered"], s["acked"]), (len(bad), 1), err)
        self.assertEqual(self.starts(), ["good-1.example.net"])
        self.assertIn("starts with '-'", err)
        self.assertIn("restart refused", err)

    def test_sigterm_ends_a_long_command_and_leaves_no_child(self):
        pids = os.path.join(self.tmp, "pids")
        rec = self.script(sleep="60 & echo $! >> %s; echo $$ >> %s; wait" % (pids, pids))
        w = self.piped("--restart-command", rec + " {hostname}", "--drain-timeout", "500ms",
                       "--restart-kill-grace", "2s")
        w.proc.stdin.write(msg("m1", "h1").encode())
        w.proc.stdin.flush()
        wait_until(lambda: os.path.exists(pids) and len(open(pids).read().split()) == 2,
                   what="the command to start")
        children = [int(p) for p in open(pids).read().split()]
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=30)
        s = harness.parse_summary(out)
        self.assertEqual((code, s["released"]), (3, 1), err)
        for pid in children:
            wait_until(lambda: pid_gone(pid), timeout=10, what="child %d to be gone" % pid)

    # -- policy ---------------------------------------------------------------------------

    def test_cooldown_reads_the_sqlite_table(self):
        # Seed the restarts table: one host restarted an hour ago, one thirty days ago. With the
        # default 7d cooldown the first is skipped, the second restarted.
        import sqlite3
        rec = self.script()
        db = os.path.join(self.tmp, "cooldown.db")
        code, s, err = self.run_stdin([], "--store", "sqlite", "--db", db,
                                      "--restart-command", rec + " {hostname}")
        self.assertEqual(code, 0, err)  # creates the schema
        now_ms = int(time.time() * 1000)
        with sqlite3.connect(db) as c:
            for mid, host, age_ms in (("old-1", "h-recent", 3600_000),
                                      ("old-2", "h-old", 30 * 86400_000)):
                c.execute("INSERT INTO restarts (message_id, attempt, hostname, started, finished, "
                          "result, host_claimed) VALUES (?, 1, ?, ?, ?, 'ok', 1)",
                          (mid, host, now_ms - age_ms, now_ms - age_ms + 1000))
        code, s, err = self.run_stdin([msg("n1", "h-recent"), msg("n2", "h-old")],
                                      "--store", "sqlite", "--db", db,
                                      "--restart-command", rec + " {hostname}")
        self.assertEqual((code, s["acked"]), (0, 2), err)
        self.assertEqual(self.starts(), ["h-old"])
        with sqlite3.connect(db) as c:
            results = dict(c.execute("SELECT message_id, result FROM restarts "
                                     "WHERE message_id IN ('n1', 'n2')").fetchall())
        self.assertEqual(results, {"n1": "skipped_cooldown", "n2": "ok"})

    def test_cooldown_skips_a_host_restarted_in_this_run(self):
        rec = self.script()
        lines = [msg("m1", "h1"), msg("m2", "h1")]
        # One at a time, so the second starts after the first finished (no coalescing).
        code, s, err = self.run_stdin(lines, "--restart-command", rec + " {hostname}",
                                      "--max-in-flight", "1")
        self.assertEqual((code, s["acked"]), (0, 2), err)
        self.assertEqual(self.starts(), ["h1"])
        self.assertIn("restart skipped: cooldown", err)
        os.remove(self.record)
        code, s, err = self.run_stdin(lines, "--restart-command", rec + " {hostname}",
                                      "--max-in-flight", "1", "--restart-cooldown", "0")
        self.assertEqual((code, s["acked"]), (0, 2), err)
        self.assertEqual(self.starts(), ["h1", "h1"])

    def test_two_messages_for_one_host_in_flight_run_one_command(self):
        rec = self.script(sleep="0.5")
        code, s, err = self.run_stdin([msg("m1", "h1"), msg("m2", "h1"), msg("m3", "h2")],
                                      "--restart-command", rec + " {hostname}",
                                      "--restart-cooldown", "0")
        self.assertEqual((code, s["acked"]), (0, 3), err)
        self.assertEqual(sorted(self.starts()), ["h1", "h2"])

    def test_max_concurrent_restarts_caps_running_commands(self):
        rec = self.script(sleep="0.3")
        hosts = ["h%d" % i for i in range(6)]
        code, s, err = self.run_stdin([msg("m" + h, h) for h in hosts], "--restart-command",
                                      rec + " {hostname}", "--max-concurrent-restarts", "2")
        self.assertEqual((code, s["acked"]), (0, 6), err)
        running, most = 0, 0
        for r in self.records():
            running += 1 if r[0] == "start" else -1
            most = max(most, running)
        self.assertEqual(sorted(self.starts()), hosts)
        self.assertLessEqual(most, 2)

    def test_allow_and_deny_hosts(self):
        rec = self.script()
        lines = [msg("m1", "web-1"), msg("m2", "db-1"), msg("m3", "web-13"), msg("m4", "web-1x")]
        code, s, err = self.run_stdin(lines, "--restart-command", rec + " {hostname}",
                                      "--allow-hosts", "web-[0-9]+", "--deny-hosts", "web-1[0-9]")
        self.assertEqual((s["acked"], s["dead_lettered"]), (1, 3), err)
        self.assertEqual(self.starts(), ["web-1"])
        self.assertIn("does not match --allow-hosts", err)
        self.assertIn("matches --deny-hosts", err)

    def test_dry_run_runs_nothing(self):
        rec = self.script()
        code, s, err = self.run_stdin([msg("m1", "h1")], "--restart-command", rec + " {hostname}",
                                      "--dry-run")
        self.assertEqual((code, s["acked"]), (0, 1), err)
        self.assertEqual(self.starts(), [])
        self.assertIn("dry run", err)

    def test_pause_file_holds_restarts_until_removed(self):
        rec = self.script()
        pause = os.path.join(self.tmp, "pause")
        open(pause, "w").close()
        w = self.piped("--restart-command", rec + " {hostname}", "--pause-file", pause,
                       "--lease-extend-interval", "200ms")
        self.assertIn("restarts paused", w.stderr())
        w.proc.stdin.write((msg("m1", "h1") + msg("m2", "h2")).encode())
        w.proc.stdin.close()
        time.sleep(1.5 * harness.SLOW)  # longer than a pause-file check: still nothing ran
        self.assertEqual(self.starts(), [])
        self.assertTrue(w.alive())
        os.remove(pause)
        code, out, err = w.wait()
        s = harness.parse_summary(out)
        self.assertEqual((code, s["acked"]), (0, 2), err)
        self.assertEqual(sorted(self.starts()), ["h1", "h2"])
        self.assertIn("restarts resumed", err)
        self.assertGreater(s["lease_extensions"], 0)  # leases renewed while they waited

    def test_failures_open_the_breaker_and_a_trial_closes_it(self):
        rec = self.script()
        open(self.fail_flag, "w").close()
        w = self.piped("--restart-command", rec + " {hostname}", "--max-attempts", "1",
                       "--breaker-failures", "3", "--breaker-cooldown", "1s")
        w.proc.stdin.write("".join(msg("m%d" % i, "h%d" % i) for i in range(3)).encode())
        w.proc.stdin.flush()
        wait_until(lambda: "circuit breaker opened" in w.stderr(), what="the breaker to open")
        os.remove(self.fail_flag)
        w.proc.stdin.write((msg("t1", "trial-1") + msg("t2", "trial-2")).encode())
        w.proc.stdin.close()
        code, out, err = w.wait()
        s = harness.parse_summary(out)
        self.assertEqual((s["dead_lettered"], s["acked"]), (3, 2), err)
        self.assertIn("circuit breaker closed", err)
        # The trial ran alone: the second restart started after the trial stopped.
        after = [r for r in self.records() if r[1].startswith("trial")]
        self.assertEqual([r[0] for r in after], ["start", "stop", "start", "stop"])


class HostileOutput(SafetyTest):
    """issue 13 cases 5 and 7: what a command prints or a message holds reaches the log escaped."""

    def noisy(self):
        path = os.path.join(self.tmp, "noisy.sh")
        with open(path, "w") as f:
            # bytes that are not UTF-8, an ESC sequence, a tab, a line that looks like a log line
            f.write("#!/bin/sh\nprintf '\\377\\376 not utf-8 \\033[31mred\\t"
                    "tab\\n2026-01-01 00:00:00.000 error forged\\n' >&2\nexit 1\n")
        os.chmod(path, 0o755)
        return path

    def run_raw(self, *args):
        """Runs a worker on two messages (one failing restart, one hostile hostname); returns
        its stderr as bytes."""
        lines = [msg("m1", "h1"),
                 '{"message_id":"m2","instance_name":"i","hostname":"a\\nb\\u001b[2Jc"}\n']
        with self.feed(*lines) as stdin:
            w = self.worker(*(BASE + ["--restart-command", self.noisy() + " {hostname}",
                                      "--max-attempts", "1", "--log-level", "debug"]
                              + list(args)), stdin=stdin)
            w.proc.wait(timeout=60 * harness.SLOW)
        with open(w.err_path, "rb") as f:
            return f.read()

    def test_json_log_lines_are_valid_utf8_json(self):
        raw = self.run_raw("--log-format", "json")
        failed = []
        for line in raw.splitlines():
            text = line.decode("utf-8")  # strict: raises on bytes that are not UTF-8
            rec = json.loads(text)
            if "not utf-8" in text:
                failed.append(rec)
        self.assertTrue(failed, raw[-3000:])
        self.assertTrue(any("\ufffd" in str(r) for r in failed), failed)
        self.assertNotIn(b"\x1b", raw)

    def test_text_log_lines_escape_control_characters(self):
        raw = self.run_raw("--log-format", "text")
        self.assertNotIn(b"\x1b", raw)
        self.assertNotIn(b"\t", raw)
        lines = raw.decode("utf-8").splitlines()
        self.assertTrue(any("not utf-8" in l for l in lines), raw[-3000:])
        self.assertTrue(any("a\\nb" in l for l in lines), raw[-3000:])
        for line in lines:
            # Every line is a log line of its own: none was split by a value.
            self.assertRegex(line, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ", raw[-3000:])


if __name__ == "__main__":
    unittest.main()
