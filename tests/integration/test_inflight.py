"""The in-flight dump (README, "Observability"): GET /debug/inflight and SIGUSR1.

A real worker with slow simulated restarts (two run, the others wait for a slot) is asked what
it has in flight, over HTTP and by signal; a loop that cannot answer gets a 503.
"""

import json
import signal
import subprocess
import unittest

import harness
from harness import Harness, free_port, http_get, wait_until


def request(i):
    return '{"message_id":"m%d","instance_name":"h%d"}\n' % (i, i)


class InflightTest(Harness):
    def start(self, *args):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        w = self.worker("--source", "stdin", "--restarter", "simulate", "--store", "memory",
                        "--save-latency", "0", "--restart-latency", "60s",
                        "--max-concurrent-restarts", "2", "--status-interval", "0",
                        "--log-format", "json", "--metrics-addr", "127.0.0.1:%d" % self.port,
                        *args, stdin=subprocess.PIPE)
        wait_until(lambda: http_get(self.base + "/healthz")[0] == 200 or not w.alive(),
                   timeout=10, what="the metrics port to answer")
        self.assertTrue(w.alive(), w.stderr())
        return w

    def feed(self, w, *ids):
        w.proc.stdin.write("".join(request(i) for i in ids).encode())
        w.proc.stdin.flush()

    def inflight(self, query=""):
        status, body = http_get(self.base + "/debug/inflight" + query)
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def wait_in_flight(self, n):
        return wait_until(lambda: (lambda d: d if d["in_flight"] == n else None)(self.inflight()),
                          timeout=15, what="%d messages in flight" % n)

    def test_lists_messages_oldest_first_with_their_stage_by_http_and_by_sigusr1(self):
        w = self.start()
        self.feed(w, 0, 1)
        self.wait_in_flight(2)
        self.feed(w, 2, 3)
        d = self.wait_in_flight(4)
        self.assertEqual(d["queued"], 0)
        self.assertEqual(d["shown"], 4)
        msgs = d["messages"]
        # Oldest first: the two fed first hold the two restart slots, the others wait.
        self.assertEqual([m["message_id"] for m in msgs], ["m0", "m1", "m2", "m3"])
        self.assertEqual([m["stage"] for m in msgs],
                         ["restarting", "restarting", "waiting_for_slot", "waiting_for_slot"])
        self.assertEqual([m["hostname"] for m in msgs],
                         ["h%d.example.net" % i for i in range(4)])
        for m in msgs:
            self.assertEqual(m["attempt"], 1, m)
            self.assertTrue(m["saved"], m)
            self.assertGreaterEqual(m["age_seconds"], 0, m)
        ages = [m["age_seconds"] for m in msgs]
        self.assertEqual(ages, sorted(ages, reverse=True))

        # Capped: ?limit= shows the oldest ones, the counts stay whole.
        d = self.inflight("?limit=1")
        self.assertEqual((d["in_flight"], d["shown"]), (4, 1))
        self.assertEqual(d["messages"][0]["message_id"], "m0")
        for bad in ("0", "abc", "10001", "-1"):
            status, body = http_get(self.base + "/debug/inflight?limit=" + bad)
            self.assertEqual(status, 400, bad)
            self.assertIn("limit", body)

        # SIGUSR1 writes the same summary to the log, and the worker goes on.
        w.signal(signal.SIGUSR1)

        def dumped():
            lines = harness.json_log_lines(w.stderr())
            head = [l for l in lines if l["msg"].startswith("SIGUSR1: messages in flight")]
            rows = [l for l in lines if l["msg"] == "in flight"]
            return (head, rows) if head and len(rows) == head[0]["shown"] else None

        head, rows = wait_until(dumped, timeout=10, what="the in-flight dump in the log")
        self.assertEqual((head[0]["in_flight"], head[0]["shown"]), (4, 4))
        self.assertEqual([(r["message_id"], r["stage"]) for r in rows],
                         [(m["message_id"], m["stage"]) for m in msgs])
        self.assertTrue(w.alive(), "SIGUSR1 ended the worker")
        self.assertEqual(self.inflight()["in_flight"], 4)

    def test_is_503_when_the_loop_does_not_answer(self):
        # --debug-block-loop (test only): SIGUSR1 also blocks the loop for 5 s.
        w = self.start("--health-max-loop-lag", "500ms", "--debug-block-loop", "5s")
        self.feed(w, 0)
        self.wait_in_flight(1)
        w.signal(signal.SIGUSR1)
        wait_until(lambda: http_get(self.base + "/healthz")[0] == 503, timeout=10, interval=0.05,
                   what="/healthz 503 while the loop is blocked")
        status, body = http_get(self.base + "/debug/inflight", timeout=5)
        self.assertEqual(status, 503, body)
        self.assertIn("did not answer", json.loads(body)["error"])
        # The probes were not held up by the waiting request.
        self.assertIn(http_get(self.base + "/healthz")[0], (200, 503))
        # Once the loop runs again, it answers.
        d = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(
            http_get(self.base + "/debug/inflight")), timeout=15, what="an answer again")
        self.assertEqual(json.loads(d[1])["in_flight"], 1)


if __name__ == "__main__":
    unittest.main()
