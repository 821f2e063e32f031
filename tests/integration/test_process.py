"""The worker as a Unix process: its standard descriptors and what it does when they fail.

Standard descriptors the caller closed (`<&-`, `>&-`, `2>&-`) must not abort the worker.
"""

import os
import signal
import subprocess
import unittest

import harness
from harness import Harness

ZERO = ["--save-latency", "0", "--restart-latency", "0"]


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
        r = self.run_closed("<&-", "--source", "stdin", *ZERO)
        self.assert_clean(r)
        self.assertNotIn("error reading standard input", r.stderr)
        s = harness.parse_summary(r.stdout)
        self.assertEqual(s["received"], 0, s)
        self.assert_identity(s)


if __name__ == "__main__":
    unittest.main()
