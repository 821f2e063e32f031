"""The worker as a Unix process: its standard descriptors and what it does when they fail.

A reader that goes away (SIGPIPE), a full disk under stdout, and standard descriptors the
caller closed (`<&-`, `>&-`, `2>&-`) must neither kill nor abort the worker: it finishes its
run and reports a lost log or summary by its exit code (README, "Exit codes").
"""

import os
import signal
import subprocess
import unittest

import harness
from harness import Harness, free_port, http_get, wait_until

ZERO = ["--save-latency", "0", "--restart-latency", "0"]
EXIT_FATAL = 1


class ReaderGoesAway(Harness):
    """`mayhem worker ... 2>&1 | head -c 100`: the pipe's reader exits while the worker runs."""

    def start(self, both_streams_to_pipe):
        """A worker on --source stdin whose stderr (and stdout, if asked) is a pipe; returns
        (process, read end of the pipe, stdout file path)."""
        r, w = os.pipe()
        out_path = os.path.join(self.tmp, "stdout")
        out = open(out_path, "w")
        # --metrics-addr off: the old metrics server (civetweb) used to ignore SIGPIPE as a side
        # effect; without it nothing did. --log-level debug: one log line per settled message,
        # so lines are written after the reader is gone.
        p = subprocess.Popen(
            [harness.MAYHEM, "worker", "--source", "stdin", "--restarter", "simulate", "--metrics-addr", "off",
             "--log-level", "debug"] + ZERO,
            stdin=subprocess.PIPE, stdout=w if both_streams_to_pipe else out, stderr=w,
            cwd=self.tmp)
        self._procs.append(p)
        os.close(w)
        out.close()
        return p, r, out_path

    def read_start_then_close(self, r):
        """Like `head`: reads the log up to the line "worker started", then closes the pipe."""
        got = b""
        while not any(b"worker started" in line for line in got.split(b"\n")[:-1]):
            chunk = os.read(r, 4096)
            if not chunk:
                self.fail("the worker closed its stderr before it started: %r" % got)
            got += chunk
        os.close(r)

    def feed_and_wait(self, p, count):
        code, requests, err = self.publish("--output", "-", "--count", count)
        self.assertEqual(code, 0, err)
        try:
            p.stdin.write(requests.encode())
            p.stdin.close()
        except BrokenPipeError:
            self.fail("the worker closed its stdin early (exit %r)" % p.poll())
        return p.wait(timeout=60 * harness.SLOW)

    def test_log_reader_gone_run_completes_and_exits_1(self):
        p, r, out_path = self.start(both_streams_to_pipe=False)
        self.read_start_then_close(r)
        code = self.feed_and_wait(p, 100)
        with open(out_path) as f:
            out = f.read()
        self.assertNotEqual(code, -signal.SIGPIPE, "killed by SIGPIPE: %r" % out)
        self.assertEqual(code, EXIT_FATAL, out)
        # The run finished: every message has its outcome in the summary.
        s = harness.parse_summary(out)
        self.assert_identity(s)
        self.assertEqual(s["received"], 100, s)
        self.assertEqual(s["acked"], 100, s)
        # stderr is gone, so the loss is told on stdout, after the summary.
        self.assertRegex(out, r"mayhem: \d+ log lines? could not be written to stderr")

    def test_summary_and_log_reader_gone_exits_1(self):
        p, r, _ = self.start(both_streams_to_pipe=True)
        self.read_start_then_close(r)
        code = self.feed_and_wait(p, 100)
        self.assertNotEqual(code, -signal.SIGPIPE, "killed by SIGPIPE")
        self.assertEqual(code, EXIT_FATAL)


class BlockedStderr(Harness):
    """stderr is a pipe whose reader never reads (a journald that stopped taking lines): the
    event loop must not wait for it (README, "Exit codes": a slow stderr)."""

    def test_worker_keeps_processing_and_counts_dropped_lines(self):
        from test_metrics import parse_metrics, value
        port = free_port()
        base = "http://127.0.0.1:%d" % port
        r, w = os.pipe()
        out = open(os.path.join(self.tmp, "stdout"), "w")
        # --log-level debug: one line per settled message, far more than the pipe holds.
        p = subprocess.Popen(
            [harness.MAYHEM, "worker", "--rate", "5000", "--log-level", "debug",
             "--status-interval", "1s", "--metrics-addr", "127.0.0.1:%d" % port] + ZERO,
            stdin=subprocess.DEVNULL, stdout=out, stderr=w, cwd=self.tmp)
        self._procs.append(p)
        os.close(w)
        self.addCleanup(os.close, r)
        out.close()

        def metrics():
            status, body = http_get(base + "/metrics")
            return parse_metrics(body) if status == 200 else None

        def acked(m):
            return value(m, "mayhem_messages_completed_total", source="simulate",
                         outcome="acked")

        m = wait_until(lambda: (lambda m: m if m and value(m, "mayhem_log_dropped_total") > 0
                                else None)(metrics()),
                       timeout=60, interval=0.1, what="log lines dropped (stderr blocked)")
        # stderr is full and stays full; the loop keeps settling messages.
        before = acked(m)
        wait_until(lambda: acked(metrics()) >= before + 5000, timeout=60, interval=0.1,
                   what="5000 more messages acked while stderr is blocked")
        m = metrics()
        self.assertGreater(value(m, "mayhem_log_dropped_total"), 0)
        self.assertEqual(http_get(base + "/healthz")[0], 200)
        # The stop is not held by the blocked stderr either (the flush at exit is bounded), and
        # dropped lines are not an error.
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=60 * harness.SLOW)
        self.assertIn(code, (0, 3))  # 3: messages taken but not started were released


class RestartCommandSignals(Harness):
    def test_restart_command_starts_with_sigpipe_at_its_default(self):
        # The worker ignores SIGPIPE; a command it runs must not inherit that (a pipeline in it
        # would then loop on EPIPE instead of ending). Bit 13 of SigIgn is SIGPIPE.
        seen = os.path.join(self.tmp, "sigign")
        code, s, err = self.run_worker(
            "--messages", "1", "--store", "memory", "--restarter", "exec",
            "--allow-volatile-cooldown",
            "--restart-command", "sh -c 'grep SigIgn /proc/self/status > %s'" % seen)
        self.assertEqual(code, 0, err[-3000:])
        with open(seen) as f:
            ignored = int(f.read().split()[1], 16)
        self.assertFalse(ignored & (1 << (signal.SIGPIPE - 1)), "SigIgn %x" % ignored)


class FullDisk(Harness):
    def test_summary_to_dev_full_exits_1_and_says_so_on_stderr(self):
        with open("/dev/full", "w") as full:
            r = subprocess.run([harness.MAYHEM, "worker", "--messages", "10"] + ZERO,
                               stdout=full, stderr=subprocess.PIPE, text=True,
                               timeout=60 * harness.SLOW, cwd=self.tmp)
        self.assertEqual(r.returncode, EXIT_FATAL, r.stderr)
        self.assertIn("could not write to stdout", r.stderr)


class ClosedStandardDescriptors(Harness):
    """The caller closed fd 0, 1 or 2: the worker runs as if it were /dev/null."""

    def run_closed(self, redirect, *args):
        # sh closes the descriptor, then execs the worker with it closed.
        return subprocess.run(
            ["sh", "-c", 'exec "$@" ' + redirect, "sh", harness.MAYHEM, "worker"] + list(args),
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60 * harness.SLOW, cwd=self.tmp)

    def assert_clean(self, r):
        self.assertNotIn("Assertion", r.stderr)
        self.assertNotEqual(r.returncode, -signal.SIGABRT, r.stderr[-3000:])
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])

    def test_stdin_closed(self):
        r = self.run_closed("<&-", "--messages", "50", *ZERO)
        self.assert_clean(r)
        s = harness.parse_summary(r.stdout)
        self.assertEqual(s["acked"], 50, s)

    def test_stdout_closed(self):
        r = self.run_closed(">&-", "--messages", "50", *ZERO)
        self.assert_clean(r)
        self.assertIn("worker started", r.stderr)

    def test_stderr_closed(self):
        r = self.run_closed("2>&-", "--messages", "50", *ZERO)
        self.assert_clean(r)
        s = harness.parse_summary(r.stdout)
        self.assertEqual(s["acked"], 50, s)

    def test_stdin_source_with_stdin_closed_is_empty_input(self):
        r = self.run_closed("<&-", "--source", "stdin", "--restarter", "simulate", *ZERO)
        self.assert_clean(r)
        self.assertNotIn("error reading standard input", r.stderr)
        s = harness.parse_summary(r.stdout)
        self.assertEqual(s["received"], 0, s)
        self.assert_identity(s)


if __name__ == "__main__":
    unittest.main()
