"""The redis source's life cycle, one state at a time, against a real redis-server: every
transition of the diagram in lib/sources/redis_source.cpp ("Life cycle") is made to happen here,
and read back from the worker's log (`redis source state`, with from, to and why).
"""

import os
import signal
import unittest

from harness import Harness, json_log_lines, wait_until
from test_redis import GROUP, STREAM, group_info, pending, rjson
from test_redis_claims import client, gate_restarter, payload

FAST = ["--store", "memory", "--save-latency", "0", "--restart-latency", "0",
        "--status-interval", "0"]


def transitions(worker):
    """(from, to) of every state change the worker logged, in order."""
    return [(e["from"], e["to"]) for e in json_log_lines(worker.stderr())
            if e.get("msg") == "redis source state"]


def why(worker, to):
    """The reasons logged for entering `to`."""
    return [e["why"] for e in json_log_lines(worker.stderr())
            if e.get("msg") == "redis source state" and e["to"] == to]


def state(worker):
    t = transitions(worker)
    return t[-1][1] if t else None


START = [("created", "connecting"), ("connecting", "setting_up"), ("setting_up", "recovering"),
         ("recovering", "reading")]
CLEAN_STOP = [("reading", "draining"), ("draining", "leaving"), ("leaving", "stopped"),
              ("stopped", "closed")]


class RedisStatesTest(Harness):
    def setUp(self):
        super().setUp()
        self.r = self.redis(persistence=False)

    def worker(self, *args, url=None, level="info"):
        return super().worker("--source", "redis", "--restarter", "simulate", "--redis-url", url or self.r.url,
                              "--log-format", "json", "--log-level", level, *args)

    def add(self, mid):
        return self.r.cli("XADD", STREAM, "*", "payload", payload(mid))

    def exits(self, w, code, sig=signal.SIGTERM):
        if sig:
            w.signal(sig)
        got, _, err = w.wait(timeout=60)
        self.assertEqual(got, code, err[-3000:])

    def gate(self):
        return gate_restarter(self.tmp)

    def test_start_read_and_drain(self):
        # connecting -> setting_up (no group yet) -> recovering -> reading; SIGTERM: draining ->
        # leaving (nothing pending: the consumer leaves the group) -> stopped -> closed.
        w = self.worker(*FAST, "--consumer", "w")
        self.add("m1")
        wait_until(lambda: group_info(self.r).get("entries-read") == 1 and pending(self.r) == 0,
                   timeout=20, what="m1 acked")
        self.exits(w, 0)
        self.assertEqual(transitions(w), START + CLEAN_STOP)
        self.assertEqual(why(w, "leaving"), ["drained"])

    def test_a_dropped_connection_goes_back_through_recovering(self):
        w = self.worker(*FAST, "--consumer", "w")
        wait_until(lambda: state(w) == "reading", timeout=20, what="reading")
        self.r.cli("CLIENT", "KILL", "ID", client(self.r, "mayhem-writer")["id"])
        wait_until(lambda: transitions(w)[4:] == [("reading", "connecting"),
                                                  ("connecting", "recovering"),
                                                  ("recovering", "reading")],
                   timeout=20, what="back to reading: %r" % transitions(w)[4:])
        self.exits(w, 0)
        self.assertEqual(why(w, "connecting")[1:], ["connection lost"])

    def test_a_missing_group_is_set_up_again(self):
        w = self.worker(*FAST, "--consumer", "w")
        wait_until(lambda: state(w) == "reading", timeout=20, what="reading")
        self.r.cli("XGROUP", "DESTROY", STREAM, GROUP)
        wait_until(lambda: ("reading", "setting_up") in transitions(w), timeout=20,
                   what="NOGROUP seen")
        wait_until(lambda: state(w) == "reading", timeout=20, what="reading again")
        self.add("after")
        wait_until(lambda: group_info(self.r).get("entries-read") == 1 and pending(self.r) == 0,
                   timeout=20, what="'after' acked in the new group")
        self.exits(w, 0)
        self.assertEqual(transitions(w)[4:7], [("reading", "setting_up"),
                                               ("setting_up", "recovering"),
                                               ("recovering", "reading")])
        self.assertEqual(why(w, "setting_up")[1:], ["consumer group missing"])

    def test_exit_when_idle_checks_and_waits_for_a_peer(self):
        self.r.cli("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM")
        peers = self.add("peers")
        rjson(self.r, "XREADGROUP", "GROUP", GROUP, "peer", "STREAMS", STREAM, ">")
        w = self.worker(*FAST, "--consumer", "w", "--exit-when-idle", level="debug")
        # The peer's entry is pending (and not idle): not done yet, reading resumes.
        wait_until(lambda: ("checking_idle", "reading") in transitions(w), timeout=20,
                   what="a check that finds the peer's entry pending")
        self.assertIn("entries pending in the group", why(w, "reading"))
        self.r.cli("XACK", STREAM, GROUP, peers)
        self.exits(w, 0, sig=None)
        t = transitions(w)
        self.assertEqual(t[:4], START[:3] + [("recovering", "reading")])
        self.assertEqual(t[-4:], [("reading", "checking_idle"), ("checking_idle", "leaving"),
                                  ("leaving", "stopped"), ("stopped", "closed")])
        self.assertEqual(why(w, "leaving"), ["stream idle"])

    def test_a_stop_while_recovering_finishes_the_running_restart_and_hands_back_the_rest(self):
        # Three entries of this consumer from an earlier run; the pipeline has room for one
        # running and one queued, so the third is still pending when SIGTERM comes.
        self.r.cli("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM")
        ids = [self.add("m%d" % i) for i in range(3)]
        rjson(self.r, "XREADGROUP", "GROUP", GROUP, "w", "COUNT", 3, "STREAMS", STREAM, ">")
        flags, started, go = self.gate()
        w = self.worker(*flags, "--consumer", "w", "--max-in-flight", "1", "--queue-capacity",
                        "1", "--drain-timeout", "1h", "--reclaim-interval", "1h")
        wait_until(lambda: os.path.exists(os.path.join(started, "m0")), timeout=20,
                   what="m0 running")
        self.assertEqual(state(w), "recovering")
        w.signal(signal.SIGTERM)
        wait_until(lambda: state(w) == "draining", timeout=20, what="draining")
        for i in range(3):
            open(os.path.join(go, "m%d" % i), "w").close()
        self.exits(w, 3, sig=None)  # m1, queued, was released
        self.assertEqual(transitions(w), START[:3] + [("recovering", "draining"),
                                                      ("draining", "leaving"),
                                                      ("leaving", "stopped"),
                                                      ("stopped", "closed")])
        # m0 (running) finished; m1 (queued, never started) was handed back with its delivery
        # count as before, m2 was never taken; the consumer stays with them.
        left = rjson(self.r, "XPENDING", STREAM, GROUP, "-", "+", 10)
        self.assertEqual([(p[0], p[1], p[3]) for p in left], [(ids[1], "w", 1), (ids[2], "w", 1)])

    def test_a_second_signal_forces_the_stop(self):
        flags, started, go = self.gate()
        w = self.worker(*flags, "--consumer", "w", "--drain-timeout", "1h")
        self.add("slow")
        wait_until(lambda: os.path.exists(os.path.join(started, "slow")), timeout=20,
                   what="the restart started")
        w.signal(signal.SIGTERM)
        wait_until(lambda: state(w) == "draining", timeout=20, what="draining")
        self.exits(w, 3)  # the second signal: released
        self.assertEqual(transitions(w), START + [("reading", "draining"),
                                                  ("draining", "forced"),
                                                  ("forced", "stopped"),
                                                  ("stopped", "closed")])

    def test_a_drain_with_redis_down_skips_the_farewell(self):
        w = self.worker(*FAST, "--consumer", "w")
        wait_until(lambda: state(w) == "reading", timeout=20, what="reading")
        self.r.stop()
        wait_until(lambda: state(w) == "connecting", timeout=20, what="connecting")
        self.exits(w, 0)
        self.assertEqual(transitions(w)[4:], [("reading", "connecting"),
                                              ("connecting", "draining"),
                                              ("draining", "stopped"),
                                              ("stopped", "closed")])

    def test_a_key_of_the_wrong_type_fails_while_setting_up(self):
        self.r.cli("SET", STREAM + ":dead", "not a stream")
        w = self.worker(*FAST)
        self.exits(w, 1, sig=None)
        self.assertEqual(transitions(w)[:3], [("created", "connecting"),
                                              ("connecting", "setting_up"),
                                              ("setting_up", "failed")])

    def test_refused_credentials_fail_while_connecting(self):
        r = self.redis(persistence=False, password="s3cret")
        w = self.worker(*FAST, url="redis://:wrong@127.0.0.1:%d/0" % r.port)
        self.exits(w, 1, sig=None)
        self.assertEqual(transitions(w)[:2], [("created", "connecting"),
                                              ("connecting", "failed")])


if __name__ == "__main__":
    unittest.main()
