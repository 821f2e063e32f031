"""The rails every worker sharing one SQLite file holds (README "Which rail holds where"): the
--max-concurrent-restarts slots and `mayhem pause --db FILE`, with several workers on one Redis
stream and one file, as test_postgres.py checks them for a PostgreSQL database."""

import json
import os
import subprocess
import unittest

import harness
from harness import Harness


def request(i, host):
    return json.dumps({"message_id": "m%05d" % i, "instance_name": "cattle-%05d" % i,
                       "hostname": host})


class SqliteRails(Harness):
    def setUp(self):
        super().setUp()
        self.db = os.path.join(self.tmp, "shared.db")

    def publish_requests(self, r, payloads):
        code, out, err = self.publish("--stdin", "--redis-url", r.url,
                                      stdin="\n".join(payloads) + "\n")
        self.assertEqual(code, 0, err)

    def common(self, r):
        return ["--source", "redis", "--redis-url", r.url, "--store", "sqlite", "--db", self.db,
                "--log-format", "json", "--status-interval", "0", "--restarter", "exec",
                "--restart-cooldown", "0", "--exit-when-idle"]

    def mayhem(self, *args):
        r = subprocess.run([harness.MAYHEM, *args], capture_output=True, text=True,
                           timeout=60 * harness.SLOW)
        return r.returncode, r.stdout, r.stderr

    def test_max_concurrent_restarts_holds_for_every_worker_sharing_the_file(self):
        r = self.redis()
        n = 24
        self.publish_requests(r, [request(i, "slot-%02d.example.net" % i) for i in range(n)])
        command, peaks_path = harness.counting_script(self.tmp)
        # Each worker alone may run 2 at once: without shared slots the three run up to 6.
        workers = [self.worker(*self.common(r), "--consumer", name, "--restart-command", command,
                               "--max-concurrent-restarts", "2", "--max-in-flight", "8",
                               "--queue-capacity", "4", "--read-ahead", "0", name=name)
                   for name in ("a", "b", "c")]
        for w in workers:
            code, out, err = w.wait(timeout=300)
            self.assertEqual(code, 0, err[-3000:])
        with open(peaks_path) as f:
            peaks = [int(l) for l in f if l.strip()]
        self.assertEqual(len(peaks), n)
        self.assertLessEqual(max(peaks), 2, peaks)
        self.assertEqual(harness.query_db(self.db, "SELECT count(*) FROM restarts "
                                                   "WHERE result = 'ok'")[0][0], n)
        # Every slot was given back at the end.
        self.assertEqual(harness.query_db(self.db, "SELECT count(*) FROM restart_slots "
                                                   "WHERE message_id IS NOT NULL")[0][0], 0)
        print("\nsqlite slots: 3 workers, --max-concurrent-restarts 2, %d restarts, peak %d"
              % (n, max(peaks)))

    def test_mayhem_pause_db_holds_every_worker_sharing_the_file_until_resume(self):
        r = self.redis()
        code, out, err = self.mayhem("pause", "--db", self.db, "--reason", "maintenance",
                                     "--by", "alice")
        self.assertEqual(code, 0, err)  # the file did not exist: created, then paused
        n = 4
        self.publish_requests(r, [request(i, "p-%d.example.net" % i) for i in range(n)])
        command, peaks_path = harness.counting_script(self.tmp)
        ports = [harness.free_port(), harness.free_port()]
        workers = [self.worker(*self.common(r), "--consumer", name, "--restart-command", command,
                               "--metrics-addr", "127.0.0.1:%d" % port, name=name)
                   for name, port in zip(("a", "b"), ports)]

        def waiting():
            total = 0
            for p in ports:
                status, body = harness.http_get("http://127.0.0.1:%d/metrics" % p)
                for line in body.splitlines() if status == 200 else []:
                    if line.startswith("mayhem_restarts_waiting "):
                        total += float(line.split()[1])
            return total == n

        harness.wait_until(waiting, timeout=60, what="every request to wait for admission")
        self.assertFalse(os.path.exists(peaks_path))  # nothing started while paused
        code, out, err = self.mayhem("status", "--db", self.db, "--json")
        self.assertEqual(code, 0, err)
        doc = json.loads(out)
        self.assertEqual((doc["paused"]["by"], doc["paused"]["reason"]), ("alice", "maintenance"))
        code, out, err = self.mayhem("resume", "--db", self.db)
        self.assertEqual(code, 0, err)
        for w in workers:
            code, out, err = w.wait(timeout=120)
            self.assertEqual(code, 0, err[-3000:])
        with open(peaks_path) as f:
            self.assertEqual(len([l for l in f if l.strip()]), n)
        logs = "".join(w.stderr() for w in workers)
        self.assertIn("restarts paused fleet-wide", logs)
        self.assertIn("restarts resumed fleet-wide", logs)


if __name__ == "__main__":
    unittest.main()
