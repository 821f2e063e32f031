"""The command line: help, version, bad flags, and flag > environment > config file."""

import json
import os
import re
import subprocess
import unittest

import harness
from harness import Harness

ZERO = ["--save-latency", "0", "--restart-latency", "0"]


def mayhem(*args, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([harness.MAYHEM] + list(args), capture_output=True, text=True,
                          timeout=30 * harness.SLOW, env=full_env)


class Help(Harness):
    def test_top_level_help(self):
        for flag in ("--help", "-h"):
            r = mayhem(flag)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("mayhem worker", r.stdout)
            self.assertIn("Exit codes", r.stdout)

    def test_no_arguments_prints_usage(self):
        r = mayhem()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Usage", r.stdout)

    def test_worker_help_lists_every_flag(self):
        r = mayhem("worker", "--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        for flag in ("--source", "--store", "--restarter", "--max-in-flight", "--queue-capacity",
                     "--lease-extend-interval", "--max-attempts", "--retry-backoff",
                     "--drain-timeout", "--host-domain", "--max-message-bytes", "--messages",
                     "--rate", "--bad-ratio", "--save-latency", "--restart-latency",
                     "--restart-failure-rate", "--seed", "--status-interval", "--log-level",
                     "--log-format", "--config"):
            self.assertRegex(r.stdout, r"(?m)^\s+%s\b" % re.escape(flag))
        self.assertIn("MAYHEM_", r.stdout)

    def test_version(self):
        r = mayhem("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^mayhem \d+\.\d+\.\d+")

    def test_unknown_command(self):
        r = mayhem("frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("frobnicate", r.stderr)
        self.assertIn("worker", r.stderr)


class BadFlags(Harness):
    CASES = [
        # args, text the error must contain: the flag, and what is allowed
        (["--source", "nope"], ["--source", "nope", "simulate", "stdin"]),
        (["--max-in-flight", "0"], ["--max-in-flight", "1", "10000000"]),
        (["--save-latency", "abc"], ["--save-latency", "abc", "10ms..1s"]),
        (["--drain-timeout", "soon"], ["--drain-timeout", "soon", "250ms"]),
        (["--log-level", "loud"], ["--log-level", "debug", "info"]),
        (["--log-format", "xml"], ["--log-format", "text", "json"]),
        (["--bad-ratio", "1.5"], ["--bad-ratio", "0", "1"]),
        (["--max-message-bytes", "lots"], ["--max-message-bytes", "64KiB"]),
        (["--no-such-flag"], ["--no-such-flag"]),
    ]

    def test_bad_flags_exit_2_and_say_what_is_allowed(self):
        for args, needles in self.CASES:
            with self.subTest(args=args):
                r = mayhem("worker", *args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertEqual(r.stdout.strip(), "", "no summary for a bad flag")
                for n in needles:
                    self.assertIn(n, r.stderr)

    def test_bad_env_value_exits_2(self):
        r = mayhem("worker", env={"MAYHEM_MAX_IN_FLIGHT": "0"})
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--max-in-flight", r.stderr)


class Layers(Harness):
    def config(self, values, name="mayhem.json"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            json.dump(values, f)
        return path

    def received(self, *args, env=None):
        code, s, err = self.run_worker(*ZERO, *args, env=env)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        return s["received"]

    def test_flag_over_env_over_file(self):
        conf = self.config({"messages": 11})
        self.assertEqual(self.received("--config", conf), 11)
        self.assertEqual(self.received("--config", conf, env={"MAYHEM_MESSAGES": "22"}), 22)
        self.assertEqual(self.received("--config", conf, "--messages", "33",
                                       env={"MAYHEM_MESSAGES": "22"}), 33)
        self.assertEqual(self.received("--messages", "44", env={"MAYHEM_MESSAGES": "22"}), 44)

    def test_env_max_attempts(self):
        n = 40
        code, s, err = self.run_worker("--messages", str(n), *ZERO, "--restart-failure-rate", "1",
                                       "--retry-backoff", "1ms..5ms",
                                       env={"MAYHEM_MAX_ATTEMPTS": "3"})
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual((s["received"], s["retried"], s["dead_lettered"]), (3 * n, 2 * n, n), s)

    def test_config_file_keys_with_underscores_and_numbers(self):
        n = 25
        conf = self.config({"max_attempts": 2, "restart-failure-rate": 1, "messages": n,
                            "retry-backoff": "1ms..5ms", "save-latency": "0",
                            "restart_latency": "0"})
        code, s, err = self.run_worker("--config", conf)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual((s["received"], s["retried"], s["dead_lettered"]), (2 * n, n, n), s)

    def test_config_from_env(self):
        conf = self.config({"messages": 7})
        self.assertEqual(self.received(env={"MAYHEM_CONFIG": conf}), 7)

    def test_unknown_key_in_config_exits_2(self):
        conf = self.config({"messages": 3, "max-inflight": 5})
        code, s, err = self.run_worker("--config", conf)
        self.assertEqual(code, 2, err)
        self.assertIsNone(s)
        self.assertIn('"max-inflight"', err)
        self.assertIn(conf, err)

    def test_bad_value_in_config_exits_2(self):
        conf = self.config({"source": "kafka"})
        code, s, err = self.run_worker("--config", conf)
        self.assertEqual(code, 2, err)
        self.assertIn("--source", err)
        self.assertIn("kafka", err)

    def test_config_not_json_or_missing_exits_2(self):
        bad = os.path.join(self.tmp, "bad.json")
        with open(bad, "w") as f:
            f.write("messages = 3\n")
        for path in (bad, os.path.join(self.tmp, "missing.json")):
            with self.subTest(path=path):
                code, s, err = self.run_worker("--config", path)
                self.assertEqual(code, 2, err)
                self.assertIn(path, err)


if __name__ == "__main__":
    unittest.main()
