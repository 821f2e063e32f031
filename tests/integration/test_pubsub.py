"""The pubsub source against the Google Cloud Pub/Sub emulator (the real REST protocol): acks,
leases past the ack deadline, a drain's nacks, dead letters, and `mayhem publish
--pubsub-topic`. One emulator for the class, one topic and subscription per test. Without the
emulator every test is skipped with the reason, and ctest reports the file skipped.
"""

import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import tempfile
import unittest

import harness
from harness import Harness, PubsubEmulator, free_port, http_get, query_db, wait_until

FAST = ["--save-latency", "0", "--restart-latency", "0", "--status-interval", "0",
        "--restarter", "simulate"]


EMULATOR = None


def setUpModule():
    global EMULATOR
    why = harness.pubsub_emulator_missing()
    if why:
        print(why)
        raise unittest.SkipTest(why)
    tmp = tempfile.mkdtemp(prefix="mayhem-pubsub-")
    unittest.addModuleCleanup(shutil.rmtree, tmp, True)
    EMULATOR = PubsubEmulator(tmp)
    unittest.addModuleCleanup(EMULATOR.stop)


def metric(port, name, labels=""):
    """The value of a sample on a worker's /metrics (labels: the text between the braces up to
    the first label not given, e.g. 'outcome="acked"'), or None."""
    status, body = http_get("http://127.0.0.1:%d/metrics" % port)
    pattern = r"^%s%s (\S+)$" % (re.escape(name), r"\{%s[^}]*\}" % re.escape(labels)
                                  if labels else "")
    m = re.search(pattern, body, re.M) if status == 200 else None
    return float(m.group(1)) if m else None


class PubsubCase(Harness):
    """A topic and subscription per test (named after it) and one for its dead letters."""

    ack_deadline = 600

    def setUp(self):
        super().setUp()
        self.name = self.id().rsplit(".", 1)[-1].replace("_", "-")
        self.emulator = EMULATOR
        self.sub = self.emulator.create(self.name, ack_deadline=self.ack_deadline)
        self.topic = "projects/p/topics/" + self.name
        self.dead_topic = "projects/p/topics/%s-dead" % self.name
        self.dead_sub = self.emulator.create(self.name + "-dead")

    def pubsub_args(self, sub=None):
        return ["--source", "pubsub", "--pubsub-subscription", sub or self.sub,
                "--pubsub-endpoint", self.emulator.endpoint,
                "--dead-letter-topic", self.dead_topic]

    def publish(self, *args, stdin=None):
        code, out, err = super().publish("--pubsub-topic", self.topic,
                                         "--pubsub-endpoint", self.emulator.endpoint,
                                         *args, stdin=stdin)
        self.assertEqual(code, 0, err)
        return json.loads(out)


class PubsubTest(PubsubCase):
    def test_every_request_acked_exactly_once(self):
        sent = self.publish("--count", 10000, "--seed", 7, "--pubsub-ordering-key", "host")
        self.assertEqual(sent["sent"], 10000)
        db = os.path.join(self.tmp, "m.db")
        code, s, err = self.run_worker(*self.pubsub_args(), *FAST, "--store", "sqlite",
                                       "--db", db, "--exit-when-idle", timeout=120)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["received"], 10000, s)  # none delivered twice
        self.assertEqual(s["acked"], 10000, s)
        # First delivery to last ack answered: without the start-up and the idle second.
        self.assertGreater(s["active_seconds"], 0, s)
        self.assertLess(s["active_seconds"], s["seconds"], s)
        rows = query_db(db, "SELECT outcome, COUNT(*) FROM messages GROUP BY outcome")
        self.assertEqual(rows, [("acked", 10000)])
        self.assertEqual(self.emulator.pull(self.sub), [])  # nothing left to deliver

    def test_publish_reads_standard_input_and_refuses_a_bad_topic(self):
        line = json.dumps({"message_id": "m-1", "instance_name": "web-1"})
        self.assertEqual(self.publish("--stdin", stdin=line + "\n")["sent"], 1)
        got = self.emulator.pull(self.sub)
        self.assertEqual([base64.b64decode(m["message"]["data"]).decode() for m in got], [line])
        code, _, err = harness.Harness.publish(self, "--pubsub-topic", "topics/x")
        self.assertEqual(code, 2)
        self.assertIn("projects/PROJECT/topics/NAME", err)

    def test_bad_payload_is_dead_lettered_with_its_reason(self):
        good = json.dumps({"message_id": "m-good", "instance_name": "web-1"})
        self.publish("--stdin", "--raw", stdin=good + "\nnot json\n")
        code, s, err = self.run_worker(*self.pubsub_args(), *FAST, "--store", "memory",
                                       "--exit-when-idle")
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual((s["acked"], s["dead_lettered"]), (1, 1), s)
        dead = self.emulator.pull(self.dead_sub)
        self.assertEqual(len(dead), 1)
        m = dead[0]["message"]
        self.assertEqual(base64.b64decode(m["data"]), b"not json")
        self.assertTrue(m["attributes"]["reason"], m)
        self.assertEqual(m["attributes"]["subscription"], self.sub)
        self.assertEqual(self.emulator.pull(self.sub), [])  # acked once dead-lettered

    def test_drain_nacks_what_it_releases_and_a_second_worker_takes_it(self):
        # The subscription's deadline is 10 minutes: only a nack gives them back this soon.
        self.publish("--count", 40, "--seed", 3)
        port = free_port()
        slow = self.worker(*self.pubsub_args(), "--store", "memory", "--save-latency", "0",
                           "--restarter", "simulate", "--restart-latency", "60s",
                           "--lease-timeout", "600s", "--drain-timeout", "1s",
                           "--status-interval", "0", "--metrics-addr", "127.0.0.1:%d" % port)
        wait_until(lambda: metric(port, "mayhem_messages_in_flight") == 40, timeout=30,
                   what="40 messages in flight")
        slow.signal(signal.SIGTERM)
        code, _, err = slow.wait()
        self.assertEqual(code, 3, err[-3000:])  # released
        self.assertEqual(slow.summary()["released"], 40)
        code, s, err = self.run_worker(*self.pubsub_args(), *FAST, "--store", "memory",
                                       "--exit-when-idle")
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["acked"], 40, s)

    def test_source_flags_are_checked(self):
        for args, needle in [
            (["--pubsub-subscription", "projects/p/topics/x"],
             "projects/PROJECT/subscriptions/NAME"),
            (["--pubsub-endpoint", "ftp://x"], "http://HOST[:PORT]"),
            (["--dead-letter-topic", "x"], "projects/PROJECT/topics/NAME"),
            ([], "--pubsub-subscription"),
        ]:
            code, _, err = self.run_worker("--source", "pubsub", "--restarter", "simulate",
                                           *args)
            self.assertEqual(code, 2, (args, err))
            self.assertIn(needle, err)


class PubsubLeaseTest(PubsubCase):
    """A restart longer than the subscription's 10 s ack deadline: the leases keep it."""

    ack_deadline = 10

    def test_restart_longer_than_the_ack_deadline_is_not_redelivered(self):
        self.publish("--count", 3, "--seed", 5)
        code, s, err = self.run_worker(*self.pubsub_args(), "--store", "memory",
                                       "--save-latency", "0", "--restarter", "simulate",
                                       "--restart-latency", "13s", "--lease-timeout", "10s",
                                       "--lease-extend-interval", "2s", "--status-interval", "0",
                                       "--exit-when-idle", timeout=90)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual((s["received"], s["acked"]), (3, 3), s)


class PubsubRecoveryTest(PubsubCase):
    """A worker killed mid-run, the subscription's own delivery count, the emulator restarted."""

    ack_deadline = 10

    def done(self, db):
        """Messages acked in the store (0 before the worker made its tables)."""
        try:
            return query_db(db, "SELECT COUNT(*) FROM messages WHERE outcome = 'acked'")[0][0]
        except sqlite3.OperationalError:
            return 0

    def test_sigkill_mid_run_a_second_worker_finishes_with_one_restart_each(self):
        self.publish("--count", 200, "--seed", 11)
        db = os.path.join(self.tmp, "shared.db")
        common = [*self.pubsub_args(), "--store", "sqlite", "--db", db, "--save-latency", "0",
                  "--restarter", "simulate", "--lease-timeout", "10s", "--status-interval", "0"]
        first = self.worker(*common, "--restart-latency", "100ms..300ms", "--max-in-flight", "50")
        wait_until(lambda: self.done(db) >= 40, timeout=60,
                   what="40 messages done by the first worker")
        first.signal(signal.SIGKILL)
        first.wait()
        # What it held is redelivered once its ack deadline (10 s) lapses. What it acked before
        # its store recorded the outcome is not: those have a restart and no outcome row.
        second = self.worker(*common, "--restart-latency", "0")
        restarted = "SELECT message_id, COUNT(*) FROM restarts WHERE result = 'ok' " \
                    "GROUP BY message_id"
        wait_until(lambda: len(query_db(db, restarted)) == 200, timeout=90,
                   what="200 requests restarted")
        second.signal(signal.SIGTERM)
        code, _, err = second.wait()
        self.assertIn(code, (0, 3), err[-3000:])  # 3: a redelivery arrived at the drain
        self.assertEqual({n for _, n in query_db(db, restarted)}, {1})  # one restart each
        outcomes = dict(query_db(db, "SELECT outcome, COUNT(*) FROM messages GROUP BY outcome"))
        self.assertEqual(set(outcomes) - {"acked", "skipped", "retried", None}, set(), outcomes)

    def test_delivery_attempt_of_the_subscriptions_policy_feeds_max_attempts(self):
        sub = self.emulator.create(self.name + "-policy", ack_deadline=10,
                                   dead_letter=self.dead_topic, max_attempts=10)
        topic = "projects/p/topics/%s-policy" % self.name
        code, _, err = harness.Harness.publish(
            self, "--pubsub-topic", topic, "--pubsub-endpoint", self.emulator.endpoint,
            "--count", 1, "--seed", 13)
        self.assertEqual(code, 0, err)
        # Two deliveries handed back: the next one is the third.
        for _ in range(2):
            got = self.emulator.pull(sub, ack=False)
            self.assertEqual(len(got), 1)
            self.emulator.call("POST", "/v1/%s:modifyAckDeadline" % sub,
                               {"ackIds": [got[0]["ackId"]], "ackDeadlineSeconds": 0})
        code, s, err = self.run_worker(*self.pubsub_args(sub), "--store", "memory",
                                       "--save-latency", "0", "--restarter", "simulate",
                                       "--restart-latency", "0", "--restart-failure-rate", "1",
                                       "--max-attempts", "3", "--status-interval", "0",
                                       "--exit-when-idle")
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual((s["retried"], s["dead_lettered"]), (0, 1), s)
        dead = self.emulator.pull(self.dead_sub)
        self.assertEqual([m["message"]["attributes"]["attempts"] for m in dead], ["3"])

    def test_emulator_restarted_mid_run(self):
        # The module's emulator: a restart empties it, and every test creates its own topics.
        emu = self.emulator

        def setup():
            emu.create(self.name + "-r-dead")
            return emu.create(self.name + "-r")

        def publish(seed):
            code, _, err = harness.Harness.publish(
                self, "--pubsub-topic", "projects/p/topics/%s-r" % self.name, "--pubsub-endpoint",
                emu.endpoint, "--count", 50, "--seed", seed)
            self.assertEqual(code, 0, err)

        sub = setup()
        db = os.path.join(self.tmp, "m.db")
        port = free_port()
        # The endpoint from the variable every Google client honours.
        w = self.worker("--source", "pubsub", "--pubsub-subscription", sub,
                        "--dead-letter-topic", "projects/p/topics/%s-r-dead" % self.name, *FAST,
                        "--store", "sqlite", "--db", db, "--metrics-addr", "127.0.0.1:%d" % port,
                        env={"PUBSUB_EMULATOR_HOST": emu.host})
        publish(21)
        wait_until(lambda: metric(port, "mayhem_messages_completed_total",
                                  'outcome="acked"') == 50, timeout=30, what="the first 50 acked")
        wait_until(lambda: metric(port, "mayhem_source_up") == 1, timeout=30, what="source up")
        emu.stop()
        wait_until(lambda: metric(port, "mayhem_source_up") == 0, timeout=30,
                   what="the source down")
        emu.start()  # empty: the emulator keeps nothing
        setup()
        publish(22)
        wait_until(lambda: metric(port, "mayhem_messages_completed_total",
                                  'outcome="acked"') == 100, timeout=60, what="the next 50 acked")
        wait_until(lambda: metric(port, "mayhem_source_up") == 1, timeout=30, what="source up")
        w.signal(signal.SIGTERM)
        code, _, err = w.wait()
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(query_db(db, "SELECT outcome, COUNT(*) FROM messages GROUP BY outcome"),
                         [("acked", 100)])


if __name__ == "__main__":
    unittest.main()
