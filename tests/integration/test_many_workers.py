"""Several workers on one SQLite file: a restart claim has an owner and a lease, so a peer never
restarts a host for a message whose restart runs on a live worker, and a worker that stalled past
its lease learns it lost the claim before it records or acks anything.

Each restart command appends "start <id> <worker pid>" and "end <id> <worker pid>" to one log.
"""

import os
import signal
import stat
import time
import unittest

import harness
from harness import Harness


def request(i):
    return '{"message_id": "m%04d", "instance_name": "cattle-%04d"}\n' % (i, i)


class ManyWorkers(Harness):
    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.tmp, "restarts.log")
        self.db = os.path.join(self.tmp, "shared.db")

    def script(self, seconds):
        path = os.path.join(self.tmp, "restart.sh")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n"
                    'echo "start $1 $PPID" >> %s\n'
                    "sleep %s\n"
                    'echo "end $1 $PPID" >> %s\n' % (self.log, seconds, self.log))
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
        return path + " {message_id}"

    def starts(self):
        try:
            with open(self.log) as f:
                return [l.split()[1] for l in f if l.startswith("start ")]
        except FileNotFoundError:
            return []

    def test_two_workers_reading_the_same_requests_restart_each_id_once(self):
        requests = os.path.join(self.tmp, "requests.ndjson")
        with open(requests, "w") as f:
            f.writelines(request(i) for i in range(40))
        command = self.script("0.2")
        workers = []
        for name in ("a", "b"):
            stdin = open(requests)
            self.addCleanup(stdin.close)
            workers.append(self.worker(
                "--source", "stdin", "--store", "sqlite", "--db", self.db, "--restarter", "exec",
                "--restart-command", command, "--max-concurrent-restarts", "40",
                "--retry-backoff", "50ms..200ms", "--log-format", "json",
                "--status-interval", "0", stdin=stdin, name=name))
        results = [w.wait(timeout=120) for w in workers]
        for code, out, err in results:
            self.assertEqual(code, 0, err[-3000:])
        starts = self.starts()
        self.assertEqual(len(starts), 40, sorted(starts))
        self.assertEqual(len(set(starts)), 40)
        summaries = [harness.parse_summary(out) for _, out, _ in results]
        for s in summaries:
            self.assert_identity(s)
        self.assertEqual(sum(s["acked"] for s in summaries), 40, summaries)
        self.assertEqual(sum(s["skipped"] for s in summaries), 40, summaries)
        rows = harness.query_db(self.db, "SELECT count(*) FROM restarts WHERE finished IS NULL")
        self.assertEqual(rows[0][0], 0)

    def test_a_worker_stalled_past_its_lease_reports_the_overlap_and_does_not_ack(self):
        r = self.redis()
        for i in range(3):
            r.cli("XADD", "mayhem:restarts", "*", "payload", request(i).strip())
        common = ["--source", "redis", "--redis-url", r.url, "--store", "sqlite", "--db", self.db,
                  "--restarter", "exec", "--restart-command", self.script("2"),
                  "--lease-timeout", "1s", "--lease-extend-interval", "200ms",
                  "--reclaim-interval", "100ms", "--log-format", "json", "--status-interval", "0"]
        a = self.worker(*common, "--consumer", "a", name="a")
        harness.wait_until(lambda: len(self.starts()) == 3 or not a.alive(), timeout=20,
                           what="3 restarts running on a")
        a.signal(signal.SIGSTOP)  # a stalls with its restarts running, past its lease
        b = self.worker(*common, "--consumer", "b", "--exit-when-idle", name="b")
        harness.wait_until(lambda: len(self.starts()) == 6 or not b.alive(), timeout=30,
                           what="b to take the expired claims over")
        a.signal(signal.SIGCONT)
        code_b, out_b, err_b = b.wait(timeout=60)
        self.assertEqual(code_b, 0, err_b[-3000:])
        a.signal(signal.SIGTERM)
        code_a, out_a, err_a = a.wait(timeout=60)
        sa, sb = harness.parse_summary(out_a), harness.parse_summary(out_b)
        self.assertEqual(sb["acked"], 3, sb)
        self.assertEqual(sa["acked"], 0, sa)  # a learnt it lost the claims: no ack of b's work
        lost = [e for e in harness.json_log_lines(err_a)
                if e.get("msg", "").startswith("restart claim lost")]
        self.assertEqual(len(lost), 3, err_a[-3000:])
        rows = harness.query_db(self.db, "SELECT count(*) FROM restarts WHERE finished IS NULL")
        self.assertEqual(rows[0][0], 0)


if __name__ == "__main__":
    unittest.main()
