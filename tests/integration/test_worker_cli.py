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

    def test_no_command_prints_usage_and_exits_2(self):
        r = mayhem()
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("Usage", r.stderr)
        self.assertIn("mayhem worker", r.stderr)
        self.assertEqual(r.stdout, "")

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
        # issue 13 case 4: values that wrap around or break the worker
        (["--messages", "-5"], ["--messages", "-5", "0 to"]),
        (["--seed", "-1"], ["--seed", "-1", "whole number"]),
        (["--max-message-bytes", "0"], ["--max-message-bytes", "64"]),
        (["--health-max-loop-lag", "0"], ["--health-max-loop-lag", "at least"]),
        (["--lease-extend-interval", "0"], ["--lease-extend-interval", "at least"]),
        (["--reclaim-interval", "0"], ["--reclaim-interval", "at least"]),
        (["--max-attempts", "-1"], ["--max-attempts", "1 to 1000"]),
        (["--queue-capacity", "-1"], ["--queue-capacity", "1 to"]),
        (["--rate", "abc"], ["--rate", "not a number"]),
        (["--rate", "-1"], ["--rate", "0 to"]),
    ]

    def test_bad_flags_exit_2_and_say_what_is_allowed(self):
        for args, needles in self.CASES:
            with self.subTest(args=args):
                r = mayhem("worker", *args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertEqual(r.stdout.strip(), "", "no summary for a bad flag")
                for n in needles:
                    self.assertIn(n, r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertLess(len(r.stderr), 300, "one short line, not a 300-digit range")

    def test_a_bad_redis_url_never_echoes_its_password(self):
        # issue 13 case 8: a bad %-escape made the error quote the whole URL, password included.
        url = "redis://:s3cr3t%zzpw@127.0.0.1:6379/0"
        runs = [mayhem("worker", "--source", "redis", "--restarter", "simulate",
                       "--redis-url", url),
                mayhem("worker", "--source", "redis", "--restarter", "simulate",
                       env={"MAYHEM_REDIS_URL": url}),
                mayhem("publish", "--redis-url", url)]
        for r in runs:
            with self.subTest(args=r.args):
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("%-escape", r.stderr)
                self.assertNotIn("s3cr3t", r.stderr + r.stdout)

    def test_publish_refuses_negative_counts(self):
        for args in (["--count", "-1"], ["--seed", "-1"]):
            with self.subTest(args=args):
                r = mayhem("publish", "--output", "-", *args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertEqual(r.stdout, "", "nothing sent")
                self.assertIn(args[0], r.stderr)

    def test_bad_env_value_names_the_variable(self):
        r = mayhem("worker", env={"MAYHEM_MAX_IN_FLIGHT": "0"})
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("MAYHEM_MAX_IN_FLIGHT", r.stderr)
        self.assertNotIn("--max-in-flight", r.stderr)
        self.assertIn("1 to 10000000", r.stderr)
        r = mayhem("worker", "--restarter", "exec",
                   env={"MAYHEM_RESTART_COMMAND": "ssh {host} reboot"})
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("MAYHEM_RESTART_COMMAND", r.stderr)
        self.assertNotIn("--restart-command", r.stderr)
        self.assertIn("unknown placeholder", r.stderr)
        r = mayhem("worker", env={"MAYHEM_DRY_RUN": "maybe"})
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("MAYHEM_DRY_RUN", r.stderr)
        self.assertIn("maybe", r.stderr)
        self.assertNotIn("--dry-run", r.stderr)


class Restarter(Harness):
    """issue 13 case 2: a real source never runs the simulated restarter by default."""

    def test_a_source_other_than_simulate_needs_restarter(self):
        for args, env in ((["--source", "stdin"], {}), (["--source", "redis"], {}),
                          ([], {"MAYHEM_SOURCE": "stdin"})):
            with self.subTest(args=args, env=env):
                r = mayhem("worker", *args, env=env)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertEqual(r.stdout, "")
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertIn("--restarter", r.stderr)

    def test_simulate_given_explicitly_runs_and_its_rows_say_simulated(self):
        db = os.path.join(self.tmp, "m.db")
        lines = "".join('{"message_id":"m%d","instance_name":"i%d"}\n' % (i, i)
                        for i in range(3))
        path = os.path.join(self.tmp, "in.ndjson")
        with open(path, "w") as f:
            f.write(lines)
        with open(path) as stdin:
            code, s, err = self.run_worker("--source", "stdin", "--restarter", "simulate",
                                           "--store", "sqlite", "--db", db, *ZERO, stdin=stdin)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["acked"], 3, s)
        rows = harness.query_db(db, "SELECT result, detail FROM restarts ORDER BY message_id")
        self.assertEqual(len(rows), 3, rows)
        for result, detail in rows:
            self.assertEqual(result, "ok")
            self.assertTrue(detail.startswith("simulated"), detail)
        r = mayhem("history", "--db", db, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc["restarts"]["simulated"], 3, doc)
        self.assertEqual(sum(h["simulated"] for h in doc["hosts"]), 3, doc)
        r = mayhem("history", "--db", db)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("SIMULATED", r.stdout)

    def test_deploy_files_name_a_real_restart_command(self):
        root = os.path.join(harness.ROOT, "deploy")
        import yaml
        with open(os.path.join(root, "kubernetes", "deployment.yaml")) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
        self.assertIn("MAYHEM_SOURCE", settings)
        self.assertEqual(settings["MAYHEM_RESTARTER"], "exec")
        self.assertIn("{hostname}", settings["MAYHEM_RESTART_COMMAND"])
        with open(os.path.join(root, "systemd", "mayhem.service")) as f:
            unit = f.read()
        self.assertRegex(unit, r"(?m)^Environment=MAYHEM_RESTARTER=exec$")
        self.assertRegex(unit, r'(?m)^Environment="MAYHEM_RESTART_COMMAND=\S.*\{hostname\}.*"$')


class Environment(Harness):
    """issue 13 case 3: MAYHEM_* variables, empty values and unknown names."""

    def test_empty_variable_is_not_set(self):
        code, s, err = self.run_worker("--messages", "1", *ZERO, env={"MAYHEM_LOG_LEVEL": ""})
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["received"], 1, s)
        db = os.path.join(self.tmp, "m.db")
        code, s, err = self.run_worker("--messages", "3", *ZERO, "--store", "sqlite", "--db", db,
                                       env={"MAYHEM_DRY_RUN": "", "MAYHEM_SEED": ""})
        self.assertEqual(code, 0, err[-3000:])
        results = harness.query_db(db, "SELECT DISTINCT result FROM restarts")
        self.assertEqual(results, [("ok",)], "an empty MAYHEM_DRY_RUN leaves dry-run off")

    def test_empty_value_in_the_file_is_not_set(self):
        path = os.path.join(self.tmp, "c.json")
        with open(path, "w") as f:
            json.dump({"log-level": "", "messages": 2}, f)
        code, s, err = self.run_worker("--config", path, *ZERO, env={"MAYHEM_MESSAGES": ""})
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["received"], 2, s)

    def test_unknown_variable_is_a_warning_at_start(self):
        code, s, err = self.run_worker("--messages", "1", *ZERO,
                                       env={"MAYHEM_MAX_INFLIGHT": "5"})
        self.assertEqual(code, 0, err[-3000:])
        warned = [l for l in err.splitlines() if "MAYHEM_MAX_INFLIGHT" in l]
        self.assertEqual(len(warned), 1, err[-3000:])
        self.assertIn("WARN", warned[0].upper())

    def test_save_latency_with_a_real_store_is_a_warning(self):
        db = os.path.join(self.tmp, "m.db")
        code, s, err = self.run_worker("--messages", "1", "--restart-latency", "0",
                                       "--save-latency", "5ms", "--store", "sqlite", "--db", db)
        self.assertEqual(code, 0, err[-3000:])
        warned = [l for l in err.splitlines() if "save-latency" in l]
        self.assertEqual(len(warned), 1, err[-3000:])
        self.assertIn("WARN", warned[0].upper())
        self.assertIn("memory", warned[0])
        code, s, err = self.run_worker("--messages", "1", *ZERO, "--store", "memory")
        self.assertEqual(code, 0, err[-3000:])
        self.assertNotIn("save-latency", err)


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

    def test_bad_value_in_config_names_the_key(self):
        for values, key in (({"source": "kafka"}, "source"),
                            ({"max_in_flight": 0}, "max_in_flight")):
            with self.subTest(values=values):
                conf = self.config(values)
                code, s, err = self.run_worker("--config", conf)
                self.assertEqual(code, 2, err)
                self.assertIn('"%s"' % key, err)
                self.assertIn(conf, err)
                self.assertNotIn("--" + key.replace("_", "-"), err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_a_broken_config_never_quotes_a_password(self):
        # issue 13 case 8: the parser's error quoted the text it last read.
        path = os.path.join(self.tmp, "secret.json")
        with open(path, "w") as f:
            f.write('{"redis-url": "redis://:s3cr3tpw@127.0.0.1:6379/0\n}')
        code, s, err = self.run_worker("--config", path)
        self.assertEqual(code, 2, err)
        self.assertIn(path, err)
        self.assertNotIn("s3cr3t", err)

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
