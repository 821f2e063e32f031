"""The worker core (issue 2) seen from outside: stdin and simulate sources, outcomes, counts.

Signals and the drain are in test_worker_signals.py, the command line in test_worker_cli.py,
so ctest can run the three files in parallel.
"""

import json
import os
import signal
import subprocess
import time
import unittest

import harness
from harness import Harness

ZERO = ["--save-latency", "0", "--restart-latency", "0"]


def good(i, **extra):
    m = {"message_id": "msg-%04d" % i, "instance_name": "cattle-%04d" % i}
    m.update(extra)
    return json.dumps(m).encode()


# One line per way a payload goes wrong, with the decode error kind the worker reports for it.
BAD_LINES = [
    (b"not json at all", "invalid_json"),
    (b'{"message_id":"b-missing"}', "missing_field"),
    (b'{"message_id":42,"instance_name":"cattle-x"}', "wrong_type"),
    (b'{"message_id":"","instance_name":"cattle-x"}', "empty_field"),
    (b'["message_id","instance_name"]', "not_object"),
    (b'{"message_id":"b-\xff\xfe","instance_name":"cattle-x"}', "not_utf8"),
    (b'{"message_id":"b-truncated","instance_name":', "invalid_json"),
    (b'{"message_id":"b-host","instance_name":"cattle-x","hostname":7}', "wrong_type"),
    # issue 13 case 9: nothing but whitespace may follow the value, not even after a NUL byte
    (b'{"message_id":"b-nul","instance_name":"y"}\x00GARBAGE', "invalid_json"),
    (b'{"message_id":"b-after","instance_name":"y"} GARBAGE', "invalid_json"),
]


class StdinSource(Harness):
    def write(self, name, data):
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def run_stdin(self, path, *args):
        with open(path, "rb") as f:
            w = self.worker("--source", "stdin", "--restarter", "simulate", *ZERO, *args, stdin=f)
            code, out, err = w.wait(timeout=60)
        return code, harness.parse_summary(out), err

    def test_good_lines_acked_bad_lines_dead_lettered(self):
        lines, n_good = [], 0
        for i in range(40):
            lines.append(good(i))
            n_good += 1
        lines.append(b"")  # blank lines are skipped, not delivered
        lines.append(b"   \t ")
        lines.append(b"\r")
        for payload, _ in BAD_LINES:
            lines.append(payload)
            lines.append(good(n_good, hostname="h%d.example.org" % n_good, reason="bad neighbour"))
            n_good += 1
        # A line longer than --max-message-bytes (spanning several 64 KiB reads): dead-lettered,
        # and reading resumes at the next newline, so the line after it is delivered intact.
        lines.append(good(n_good, reason="x" * 200_000))
        lines.append(good(n_good + 1))
        n_good += 1
        # A line just under the limit is fine.
        lines.append(good(n_good + 1, reason="y" * 60_000))
        n_good += 1
        n_bad = len(BAD_LINES) + 1
        # The last line has no newline: it is still a message.
        data = b"\n".join(lines) + b"\n\n" + good(n_good + 1)
        n_good += 1
        path = self.write("requests.ndjson", data)

        code, s, err = self.run_stdin(path, "--log-format", "json")
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual(s["received"], n_good + n_bad, s)
        self.assertEqual(s["acked"], n_good, s)
        self.assertEqual(s["dead_lettered"], n_bad, s)
        self.assertEqual(s["retried"] + s["skipped"] + s["released"], 0, s)

        # Every bad line is logged once with a precise reason (at the default level).
        dead = [l for l in harness.json_log_lines(err)
                if l.get("msg") == "undecodable message dead-lettered"]
        kinds = sorted(l["kind"] for l in dead)
        expected = sorted([k for _, k in BAD_LINES] + ["too_large"])
        self.assertEqual(kinds, expected, dead)
        reasons = " | ".join(l["reason"] for l in dead)
        for text in ['missing field "instance_name"', "message_id must be a string",
                     "message_id must not be empty", "not valid UTF-8",
                     "more than max-message-bytes", "must be a JSON object"]:
            self.assertIn(text, reasons)

    def test_max_message_bytes_flag(self):
        lines = [good(0), good(1, reason="z" * 2000), good(2)]
        path = self.write("small.ndjson", b"\n".join(lines) + b"\n")
        code, s, err = self.run_stdin(path, "--max-message-bytes", "1KiB")
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual((s["received"], s["acked"], s["dead_lettered"]), (3, 2, 1), s)

    def test_empty_input_exits_0(self):
        path = self.write("empty.ndjson", b"\n\n")
        code, s, err = self.run_stdin(path)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual(s["received"], 0, s)

    def test_stdin_from_a_pipe(self):
        n = 500
        w = self.worker("--source", "stdin", "--restarter", "simulate", *ZERO, stdin=subprocess.PIPE)
        data = b"".join(good(i) + b"\n" for i in range(n))
        data += b"not json\n"
        w.proc.stdin.write(data)
        w.proc.stdin.close()
        code, out, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        s = harness.parse_summary(out)
        self.assert_identity(s)
        self.assertEqual((s["received"], s["acked"], s["dead_lettered"]), (n + 1, n, 1), s)

    def test_sigterm_with_an_open_idle_pipe(self):
        # Nothing is ever written and the pipe stays open: the worker waits for input, and a
        # SIGTERM must still end it promptly with a clean exit.
        w = self.worker("--source", "stdin", "--restarter", "simulate", *ZERO, stdin=subprocess.PIPE)
        harness.wait_until(lambda: "worker started" in w.stderr(), what="worker started")
        started = time.monotonic()
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=20)
        print("\nSIGTERM on an idle pipe: exit after %.3fs" % (time.monotonic() - started))
        w.proc.stdin.close()
        self.assertEqual(code, 0, err[-3000:])
        s = harness.parse_summary(out)
        self.assert_identity(s)
        self.assertEqual(s["received"], 0, s)

    def test_sigterm_with_an_open_pipe_and_work_in_flight(self):
        # `producer | mayhem worker --source stdin`: the producer is still connected when the
        # worker is told to stop; what it already read finishes, nothing is released. The memory
        # store answers claims at once, so every restart has begun by the SIGTERM (a restart
        # whose claim the SQLite store has not answered yet is released by the drain instead).
        n = 200
        w = self.worker("--source", "stdin", "--store", "memory", "--restarter", "simulate",
                        "--save-latency", "300ms", "--restart-latency",
                        "300ms", "--log-format", "json", "--status-interval", "50ms",
                        stdin=subprocess.PIPE)
        w.proc.stdin.write(b"".join(good(i) + b"\n" for i in range(n)))
        w.proc.stdin.flush()

        def received_all():
            return any(r.get("msg") == "status" and r.get("received") == n
                       for r in harness.json_log_lines(w.stderr()))
        harness.wait_until(received_all, timeout=20, what="%d messages received" % n)
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=30)
        w.proc.stdin.close()
        self.assertEqual(code, 0, err[-3000:])
        s = harness.parse_summary(out)
        self.assert_identity(s)
        self.assertEqual((s["received"], s["acked"], s["released"]), (n, n, 0), s)

    def test_duplicate_message_id_restarts_once(self):
        # The same message_id twice: the second delivery is recognised (by the store, or by the
        # in-flight index when both overlap) and skipped, so the host is restarted once.
        line = good(7)
        for name, lat in (("apart", ZERO), ("overlapping", ["--restart-latency", "300ms"])):
            with self.subTest(name):
                path = self.write("dup-%s.ndjson" % name, line + b"\n" + line + b"\n")
                code, s, err = self.run_stdin(path, *lat, "--db", "dup-%s.db" % name,
                                              "--log-level", "debug", "--log-format", "json")
                self.assertEqual(code, 0, err[-3000:])
                self.assert_identity(s)
                self.assertEqual(s["received"], 2, s)
                self.assertEqual(s["acked"], 1, s)
                self.assertEqual(s["skipped"], 1, s)
                settled = [l for l in harness.json_log_lines(err) if l.get("msg") == "message settled"]
                self.assertEqual(sorted(l["outcome"] for l in settled), ["acked", "skipped"])
                self.assertTrue(all(l["message_id"] == "msg-0007" for l in settled), settled)

    def test_retries_on_stdin_are_redelivered(self):
        # A local source redelivers a retried message itself, after the backoff.
        n = 20
        path = self.write("fail.ndjson", b"".join(good(i) + b"\n" for i in range(n)))
        code, s, err = self.run_stdin(path, "--restart-failure-rate", "1", "--max-attempts", "3",
                                      "--retry-backoff", "1ms..10ms")
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual((s["received"], s["retried"], s["dead_lettered"]), (3 * n, 2 * n, n), s)
        self.assertEqual(s["abandoned"], 0, s)


class SimulateSource(Harness):
    def test_20000_messages_zero_latency(self):
        code, s, err = self.run_worker("--messages", "20000", *ZERO)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual(s["received"], 20000, s)
        self.assertEqual(s["acked"], 20000, s)
        print("\n--messages 20000, zero latency: %.3fs, %.0f msgs/s" % (s["seconds"], s["msgs_per_s"]))

    def test_every_restart_fails(self):
        n = 300
        code, s, err = self.run_worker("--messages", str(n), *ZERO, "--restart-failure-rate", "1",
                                       "--max-attempts", "2", "--retry-backoff", "1ms..20ms")
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual(s["dead_lettered"], n, s)
        self.assertEqual(s["retried"], n, s)
        self.assertEqual(s["received"], 2 * n, s)
        self.assertEqual(s["acked"], 0, s)

    def test_max_attempts_1_dead_letters_at_once(self):
        n = 50
        code, s, err = self.run_worker("--messages", str(n), *ZERO, "--restart-failure-rate", "1",
                                       "--max-attempts", "1")
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual((s["received"], s["retried"], s["dead_lettered"]), (n, 0, n), s)

    def test_bad_ratio(self):
        code, s, err = self.run_worker("--messages", "5000", "--bad-ratio", "0.1", *ZERO)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual(s["received"], 5000, s)
        self.assertEqual(s["dead_lettered"] + s["acked"], 5000, s)
        self.assertGreater(s["dead_lettered"], 0, s)
        self.assertGreater(s["acked"], 0, s)

    def test_bad_ratio_1_dead_letters_everything(self):
        code, s, err = self.run_worker("--messages", "200", "--bad-ratio", "1", *ZERO)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual((s["received"], s["dead_lettered"], s["acked"]), (200, 200, 0), s)

    def test_lease_renewed_while_in_flight(self):
        code, s, err = self.run_worker("--messages", "20", "--save-latency", "1s",
                                       "--restart-latency", "1s", "--lease-extend-interval", "100ms")
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual(s["acked"], 20, s)
        self.assertGreater(s["lease_extensions"], 0, s)

    def test_no_lease_renewal_when_faster_than_interval(self):
        code, s, err = self.run_worker("--messages", "200", "--save-latency", "0..10ms",
                                       "--restart-latency", "0..10ms",
                                       "--lease-extend-interval", "2s")
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual(s["acked"], 200, s)
        self.assertEqual(s["lease_extensions"], 0, s)

    def test_summary_fields(self):
        code, s, err = self.run_worker("--messages", "10", *ZERO)
        self.assertEqual(code, 0, err[-3000:])
        for key in ("received", "acked", "retried", "dead_lettered", "skipped", "released",
                    "lease_extensions", "abandoned", "peak_in_flight", "seconds", "active_seconds",
                    "msgs_per_s"):
            self.assertIn(key, s)
        self.assertGreaterEqual(s["active_seconds"], 0, s)
        self.assertLessEqual(s["active_seconds"], s["seconds"], s)
        self.assert_identity(s)

    def test_peak_in_flight_reaches_the_limit_and_never_passes_it(self):
        # 200 messages that each wait 100 ms, at most 30 at once: the peak is exactly the limit.
        code, s, err = self.run_worker("--messages", "200", "--save-latency", "100ms",
                                       "--restart-latency", "100ms", "--max-in-flight", "30")
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertEqual(s["peak_in_flight"], 30, s)


class LogFormat(Harness):
    def test_json_logs_and_a_debug_line_per_message(self):
        n = 30
        lines = [good(i) for i in range(n)] + [b"not json"]
        path = os.path.join(self.tmp, "in.ndjson")
        with open(path, "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
        with open(path, "rb") as f:
            w = self.worker("--source", "stdin", "--restarter", "simulate", *ZERO, "--log-format", "json",
                            "--log-level", "debug", "--status-interval", "50ms", stdin=f)
            code, out, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(harness.parse_summary(out))
        records = []
        for line in err.splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)  # every stderr line is one JSON object
            self.assertIsInstance(rec, dict, line)
            for key in ("ts", "level", "msg"):
                self.assertIn(key, rec, line)
            records.append(rec)
        settled = {r["message_id"]: r["outcome"] for r in records if r["msg"] == "message settled"}
        for i in range(n):
            self.assertEqual(settled.get("msg-%04d" % i), "acked", "msg-%04d" % i)
        self.assertTrue(any(r["level"] == "debug" for r in records))

    def test_default_level_has_no_line_per_message(self):
        code, s, err = self.run_worker("--messages", "500", *ZERO, "--log-format", "json")
        self.assertEqual(code, 0, err[-3000:])
        recs = harness.json_log_lines(err)
        self.assertFalse([r for r in recs if "message_id" in r], recs[:5])
        self.assertLess(len(recs), 20, recs)

    def test_text_log_status_line(self):
        # Text format (the default); the status line comes every --status-interval.
        code, s, err = self.run_worker("--messages", "40", "--save-latency", "50ms",
                                       "--restart-latency", "50ms", "--max-in-flight", "4",
                                       "--status-interval", "100ms")
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(s)
        self.assertIn("worker started", err)
        self.assertIn(" status ", err)
        self.assertIn("in_flight=", err)


if __name__ == "__main__":
    unittest.main()
