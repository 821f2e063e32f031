"""The redis source's bookkeeping of who owns which pending entry, against a real redis-server:
what a forced stop leaves behind, how reclaimed entries get their delivery counts, what a
reconnect takes back, what lease renewal may renew, what a dead-letter transaction may ack, and
what a worker leaves in the group when it exits.

Faults are made real: a worker's connection is killed with CLIENT KILL, Redis is held with
CLIENT PAUSE WRITE (reads answer, writes wait), a peer worker is played by redis-cli (XCLAIM),
and a restart lasts exactly as long as the test wants (an exec restarter that waits for a file).
Every wait is on an observable fact (a log line, XPENDING, CLIENT LIST), never on a sleep.
"""

import json
import os
import signal
import stat
import unittest

from harness import Harness, free_port, http_get, json_log_lines, wait_until
from test_metrics import parse_metrics
from test_redis import GROUP, STREAM, dead_letters, group_info, pending, rjson

FAST = ["--store", "memory", "--save-latency", "0", "--restart-latency", "0",
        "--status-interval", "0"]
# The worker's timers that would act on their own during a test are pushed far away; a test
# that needs one sets it.
QUIET = ["--reclaim-interval", "1h", "--lease-timeout", "2h", "--lease-extend-interval", "1h"]


def payload(mid, host=None):
    return json.dumps({"message_id": mid, "instance_name": host or "cattle-" + mid})


def owners(redis, consumer=None):
    """id -> (consumer, times delivered) of the group's pending entries."""
    args = ["XPENDING", STREAM, GROUP, "-", "+", 100000] + ([consumer] if consumer else [])
    return {p[0]: (p[1], p[3]) for p in rjson(redis, *args) or []}


def client(redis, name):
    """The CLIENT LIST fields of the connection called `name`, or None."""
    for line in redis.cli("CLIENT", "LIST").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("name") == name:
            return fields
    return None


def logged(worker, msg):
    """The worker's JSON log lines whose message starts with `msg`."""
    return [e for e in json_log_lines(worker.stderr()) if e.get("msg", "").startswith(msg)]


def gate_restarter(tmp):
    """An exec restarter whose restart of message M starts by creating started/M and ends when
    go/M exists: (flags, started dir, go dir)."""
    started = os.path.join(tmp, "started")
    go = os.path.join(tmp, "go")
    os.makedirs(started)
    os.makedirs(go)
    script = os.path.join(tmp, "gate.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\ntouch %s/$1\nwhile [ ! -e %s/$1 ]; do sleep 0.02; done\n"
                % (started, go))
    os.chmod(script, os.stat(script).st_mode | stat.S_IXUSR)
    flags = ["--restarter", "exec", "--restart-command", script + " {message_id}",
             "--restart-cooldown", "0", "--max-concurrent-restarts", "0",
             "--breaker-failures", "0", "--store", "memory", "--save-latency", "0",
             "--status-interval", "0"]
    return flags, started, go


class RedisClaimsTest(Harness):
    def setUp(self):
        super().setUp()
        self.r = self.redis(persistence=False)
        self.r.cli("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM")

    def add(self, mid, consumer=None):
        """Appends an entry; with `consumer`, that consumer reads it at once (XREADGROUP)."""
        entry = self.r.cli("XADD", STREAM, "*", "payload", payload(mid))
        if consumer:
            got = rjson(self.r, "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", 1, "STREAMS",
                        STREAM, ">")
            self.assertEqual(got[STREAM][0][0], entry)  # redis-cli --json: {stream: [[id, f]]}
        return entry

    def worker(self, *args, **kw):
        return super().worker("--source", "redis", "--restarter", "simulate", "--redis-url", self.r.url, "--log-format",
                              "json", "--log-level", "debug", *args, **kw)

    def gate(self):
        return gate_restarter(self.tmp)

    def settled(self, w, outcome=None):
        """message_id of each 'message settled' line so far (with that outcome)."""
        return [e["message_id"] for e in logged(w, "message settled")
                if outcome is None or e.get("outcome") == outcome]

    def kill_link(self, role):
        c = client(self.r, "mayhem-" + role)
        self.assertIsNotNone(c, "no %s connection" % role)
        self.r.cli("CLIENT", "KILL", "ID", c["id"])
        return c["id"]

    def stop(self, w, code=0):
        w.signal(signal.SIGTERM)
        got, _, err = w.wait(timeout=60)
        self.assertEqual(got, code, err[-3000:])
        return w.summary()

    # -- a forced stop -------------------------------------------------------------------------

    def test_a_claim_answered_after_a_forced_stop_is_left_pending_not_delivered(self):
        flags, started, go = self.gate()
        # An entry of this consumer that it does not know about: a read whose reply was lost.
        lost = self.add("lost", consumer="ghost")
        w = self.worker(*flags, *QUIET, "--consumer", "w", "--drain-timeout", "1h")
        one = self.add("one")
        wait_until(lambda: os.path.exists(os.path.join(started, "one")), timeout=20,
                   what="the restart of 'one' to start")
        self.r.cli("XCLAIM", STREAM, GROUP, "w", "0", lost, "JUSTID")
        # Redis holds writes; the writer reconnects, and its recovery (a claim of `lost`) waits
        # in Redis; then 'one' is acked (that XACK waits too) and the worker is stopped twice.
        self.r.cli("CLIENT", "PAUSE", "600000", "WRITE")
        try:
            old = self.kill_link("writer")
            wait_until(lambda: (lambda c: c and c["id"] != old and "b" in c["flags"])(
                client(self.r, "mayhem-writer")), timeout=20,
                what="the new writer to wait on a write")
            open(os.path.join(go, "one"), "w").close()
            wait_until(lambda: self.settled(w, "acked") == ["one"], timeout=20,
                       what="'one' acked by the pipeline")
            w.signal(signal.SIGTERM)
            wait_until(lambda: logged(w, "draining"), timeout=20, what="the drain")
            w.signal(signal.SIGTERM)
            wait_until(lambda: logged(w, "releasing unfinished"), timeout=20,
                       what="the forced stop")
        finally:
            self.r.cli("CLIENT", "UNPAUSE")
        # The claim's answer arrives after the forced stop: nothing is delivered any more, so
        # the worker exits instead of waiting forever for a delivery nobody will start. (The
        # ack of 'one' is confirmed with it, or given up after the forced stop's 2 s grace if
        # this test was slower than that: exit 0 or 3.)
        code, _, err = w.wait(timeout=30)
        s = w.summary()
        self.assertEqual((code, s["received"], s["acked"] + s["released"]),
                         (0 if s["acked"] else 3, 1, 1), err[-3000:])
        self.assertNotIn("lost", self.settled(w))
        left = owners(self.r)
        self.assertEqual(list(left), [lost])  # 'one' acked, 'lost' left pending for a peer
        self.assertNotIn(one, left)

    # -- reclaim -------------------------------------------------------------------------------

    def test_every_reclaimed_entry_is_delivered_among_many_retried_ones(self):
        # 50 entries this worker retried (left pending under it, waiting for their lease),
        # and 10 orphans of a dead peer spread over the same id range: a reclaim takes the 10,
        # and must deliver all 10, however many retried entries lie between them.
        first = [self.add("orphan-%d" % i, consumer="dead") for i in range(5)]
        w = self.worker(*FAST, "--restart-failure-rate", "1", "--consumer", "w",
                        "--lease-timeout", "1h", "--lease-extend-interval", "1h",
                        "--reclaim-interval", "100ms")
        retried = [self.add("retried-%d" % i) for i in range(50)]
        wait_until(lambda: len(self.settled(w, "retried")) == 50, timeout=30,
                   what="50 entries retried")
        self.assertEqual(set(owners(self.r, "w")), set(retried))
        # Five of the retried entries pass to the dead peer (with --lease-timeout behind them),
        # and the first five orphans go idle: the next reclaim takes exactly these ten.
        later = retried[9::10]
        orphans = first + later
        self.r.cli("XCLAIM", STREAM, GROUP, "dead", "0", *later, "JUSTID")
        self.r.cli("XCLAIM", STREAM, GROUP, "dead", "0", *orphans, "IDLE", 7300000, "JUSTID")
        wait_until(lambda: len(self.settled(w, "retried")) == 60, timeout=30,
                   what="the 10 orphans reclaimed, run and retried")
        s = self.stop(w)
        self.assertEqual(s["received"], 60)
        self.assertEqual(sorted(self.settled(w, "retried")),
                         sorted(["retried-%d" % i for i in range(50)] +
                                ["orphan-%d" % i for i in range(5)] +
                                ["retried-%d" % i for i in range(9, 50, 10)]))
        counts = owners(self.r)
        self.assertEqual({counts[i] for i in orphans}, {("w", 2)})
        self.assertEqual({counts[i] for i in set(retried) - set(later)}, {("w", 1)})

    # -- reconnect -----------------------------------------------------------------------------

    def test_a_reconnect_does_not_redeliver_retried_entries_before_their_lease(self):
        lost = self.add("lost", consumer="ghost")
        w = self.worker(*FAST, *QUIET, "--restart-failure-rate", "1", "--consumer", "w")
        retried = [self.add("retried-%d" % i) for i in range(5)]
        wait_until(lambda: len(self.settled(w, "retried")) == 5, timeout=30,
                   what="5 entries retried")
        # A read whose reply was lost left `lost` pending under w; the connection drops.
        self.r.cli("XCLAIM", STREAM, GROUP, "w", "0", lost, "JUSTID")
        self.kill_link("writer")
        wait_until(lambda: "lost" in self.settled(w, "retried"), timeout=30,
                   what="the lost entry taken back, run and retried")
        s = self.stop(w)
        # Only the lost entry came back; the retried ones wait for their lease (2 h here) and
        # keep their delivery count: a flapping connection does not use up their attempts.
        self.assertEqual(s["received"], 6)
        self.assertEqual(self.settled(w, "retried"),
                         ["retried-%d" % i for i in range(5)] + ["lost"])
        self.assertEqual({owners(self.r)[i] for i in retried}, {("w", 1)})
        self.assertEqual(owners(self.r)[lost], ("w", 2))

    # -- lease renewal -------------------------------------------------------------------------

    def test_lease_renewal_does_not_take_back_an_entry_a_peer_reclaimed(self):
        flags, started, go = self.gate()
        w = self.worker(*flags, "--consumer", "w", "--reclaim-interval", "1h",
                        "--lease-timeout", "2h", "--lease-extend-interval", "100ms")
        entry = self.add("slow")
        wait_until(lambda: os.path.exists(os.path.join(started, "slow")), timeout=20,
                   what="the restart to start")
        # The worker's lease lapsed (a stall) and a peer reclaimed the entry.
        self.r.cli("XCLAIM", STREAM, GROUP, "peer", "0", entry, "JUSTID")
        wait_until(lambda: owners(self.r)[entry][0] != "peer" or logged(w, "lease lost"),
                   timeout=20, what="the next lease renewal")
        self.assertEqual(owners(self.r)[entry][0], "peer")  # not taken back
        lost = logged(w, "lease lost")
        self.assertEqual([e.get("source_id") for e in lost], [entry])
        # The restart ends; the entry is not acked by a worker that no longer owns it.
        open(os.path.join(go, "slow"), "w").close()
        wait_until(lambda: self.settled(w), timeout=20, what="the message settled")
        s = self.stop(w, code=3)
        self.assertEqual((s["received"], s["acked"], s["released"]), (1, 0, 1))
        self.assertEqual(owners(self.r), {entry: ("peer", 1)})

    def test_lease_renewal_of_entries_read_ahead_does_not_take_back_a_peers_entry(self):
        flags, started, go = self.gate()
        w = self.worker(*flags, "--consumer", "w", "--reclaim-interval", "1h",
                        "--lease-timeout", "2h", "--lease-extend-interval", "100ms",
                        "--max-in-flight", "1", "--queue-capacity", "1", "--read-ahead", "10")
        entries = [self.add("m%d" % i) for i in range(6)]
        wait_until(lambda: len(owners(self.r, "w")) == 6, timeout=20, what="all 6 read")
        # m0 runs, m1 waits in the pipeline's queue, m2.. are read ahead in the source.
        wait_until(lambda: os.path.exists(os.path.join(started, "m0")), timeout=20,
                   what="the restart of m0 to start")
        self.r.cli("XCLAIM", STREAM, GROUP, "peer", "0", entries[4], "JUSTID")
        wait_until(lambda: owners(self.r)[entries[4]][0] != "peer" or logged(w, "lease lost"),
                   timeout=20, what="the next lease renewal")
        self.assertEqual(owners(self.r)[entries[4]][0], "peer")
        # What is no longer ours is not started: every other message runs, m4 never does.
        for i in range(6):
            open(os.path.join(go, "m%d" % i), "w").close()
        wait_until(lambda: len(self.settled(w)) == 5, timeout=20, what="5 messages settled")
        s = self.stop(w)
        self.assertEqual((s["received"], s["acked"]), (5, 5))
        self.assertFalse(os.path.exists(os.path.join(started, "m4")))
        self.assertEqual(owners(self.r), {entries[4]: ("peer", 1)})

    # -- dead letters --------------------------------------------------------------------------

    def test_a_dead_letter_refused_inside_the_transaction_is_not_acked(self):
        w = self.worker(*FAST, *QUIET, "--consumer", "w")
        # Reads start after the set-up, which checks the type of the dead-letter key.
        wait_until(lambda: (client(self.r, "mayhem-reader") or {}).get("cmd") == "xreadgroup",
                   timeout=20, what="the worker reading")
        # The dead-letter key turns into something else after the worker checked it.
        self.r.cli("SET", STREAM + ":dead", "not a stream")
        bad = self.r.cli("XADD", STREAM, "*", "payload", "this is not json")
        wait_until(lambda: "WRONGTYPE" in w.stderr(), timeout=20,
                   what="the dead letter refused")
        self.assertEqual(owners(self.r), {bad: ("w", 1)})  # not acked without its record
        self.r.cli("DEL", STREAM + ":dead")
        wait_until(lambda: dead_letters(self.r) and pending(self.r) == 0, timeout=20,
                   what="the dead letter written and acked")
        self.assertEqual([(d["source_id"], d["payload"]) for d in dead_letters(self.r)],
                         [(bad, "this is not json")])
        self.stop(w)

    # -- delivery counts -----------------------------------------------------------------------

    def test_an_entry_delivered_often_but_never_run_is_run_not_dead_lettered(self):
        # Workers that crash-loop under one consumer name re-read their pending entries at
        # every start, also those only read ahead: the delivery count grows without a single
        # restart. The count is not an attempt: the entry runs and is acked.
        entry = self.add("healthy", consumer="crashed")
        for _ in range(6):
            self.r.cli("XCLAIM", STREAM, GROUP, "crashed", "0", entry)
        self.r.cli("XCLAIM", STREAM, GROUP, "crashed", "0", entry, "IDLE", 7300000, "JUSTID")
        self.assertEqual(owners(self.r), {entry: ("crashed", 7)})
        w = self.worker(*FAST, "--max-attempts", "3", "--lease-timeout", "1h",
                        "--reclaim-interval", "100ms", "--exit-when-idle")
        code, _, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(self.settled(w, "acked"), ["healthy"])
        self.assertEqual((dead_letters(self.r), pending(self.r)), ([], 0))

    def test_a_request_that_kills_its_worker_is_started_max_attempts_times_then_dead_lettered(
            self):
        # A poison request: its restart command SIGKILLs the worker running it. Each worker
        # that reclaims it starts it again and dies; the store counts those starts, and the
        # worker that would start it a third time (--max-attempts 2) dead-letters it instead.
        record = os.path.join(self.tmp, "record")
        script = os.path.join(self.tmp, "poison.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho \"start $1\" >> %s\nkill -9 $PPID\nsleep 5\n" % record)
        os.chmod(script, 0o755)
        self.add("poison")
        flags = ["--restarter", "exec", "--restart-command", script + " {message_id}",
                 "--restart-cooldown", "1h", "--max-concurrent-restarts", "0",
                 "--breaker-failures", "0", "--store", "sqlite", "--db",
                 os.path.join(self.tmp, "state.db"), "--status-interval", "0",
                 "--max-attempts", "2", "--lease-timeout", "1s", "--lease-extend-interval",
                 "200ms", "--reclaim-interval", "100ms", "--exit-when-idle"]
        codes = []
        for _ in range(5):
            code, _, err = self.worker(*flags).wait(timeout=60)
            codes.append(code)
            if code == 0:
                break
        self.assertEqual(codes, [-signal.SIGKILL, -signal.SIGKILL, 0], err[-3000:])
        with open(record) as f:
            self.assertEqual(f.read().split("\n")[:-1], ["start poison"] * 2)
        dead = dead_letters(self.r)
        self.assertEqual(len(dead), 1)
        self.assertIn("restart started 2 times and never finished", json.dumps(dead))
        self.assertEqual(pending(self.r), 0)

    def test_entries_left_unstarted_at_a_drain_keep_their_delivery_count(self):
        flags, started, go = self.gate()
        w = self.worker(*flags, *QUIET, "--consumer", "w", "--max-in-flight", "1",
                        "--queue-capacity", "1", "--read-ahead", "10", "--drain-timeout", "1h")
        entries = [self.add("m%d" % i) for i in range(12)]
        # m0 runs, m1 waits in the pipeline's queue, the source reads some more ahead.
        wait_until(lambda: len(owners(self.r, "w")) >= 3, timeout=20, what="entries read ahead")
        wait_until(lambda: os.path.exists(os.path.join(started, "m0")), timeout=20,
                   what="the restart of m0 to start")
        w.signal(signal.SIGTERM)  # m0 finishes; m1 (queued) is released, m2.. were read ahead
        wait_until(lambda: logged(w, "entries read ahead and not started"), timeout=20,
                   what="the entries read ahead left")
        for i in range(12):
            open(os.path.join(go, "m%d" % i), "w").close()
        code, _, err = w.wait(timeout=60)
        self.assertEqual(code, 3, err[-3000:])
        left = owners(self.r, "w")
        self.assertTrue(entries[1] in left and set(left) <= set(entries[1:]), left)
        # Read once, never started: as if never delivered, so whoever takes them next delivers
        # them as a first attempt.
        self.assertEqual(set(left.values()), {("w", 0)})

    # -- consumers clean up ----------------------------------------------------------------

    def consumers(self):
        return {c["name"]: c["pending"]
                for c in rjson(self.r, "XINFO", "CONSUMERS", STREAM, GROUP) or []}

    def test_a_worker_that_exits_with_nothing_pending_deletes_its_consumer(self):
        for i in range(20):
            self.add("m%d" % i)
        w = self.worker(*FAST, "--consumer", "tidy", "--exit-when-idle")
        code, _, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(w.summary()["acked"], 20)
        self.assertNotIn("tidy", self.consumers())
        # The same at a drain (SIGTERM).
        w = self.worker(*FAST, "--consumer", "drained")
        self.add("late")
        wait_until(lambda: self.settled(w) == ["late"] and pending(self.r) == 0, timeout=20,
                   what="'late' acked")
        self.assertEqual(self.consumers(), {"drained": 0})
        self.stop(w)
        self.assertNotIn("drained", self.consumers())

    def test_a_worker_that_exits_with_entries_pending_keeps_its_consumer(self):
        flags, started, go = self.gate()
        w = self.worker(*flags, *QUIET, "--consumer", "busy", "--drain-timeout", "100ms")
        self.add("slow")
        wait_until(lambda: os.path.exists(os.path.join(started, "slow")), timeout=20,
                   what="the restart to start")
        self.stop(w, code=3)  # released at the drain deadline: still pending, still its own
        self.assertEqual(self.consumers(), {"busy": 1})

    # -- reading ahead -----------------------------------------------------------------------

    def test_reading_ahead_holds_no_more_than_the_pipeline_can_take_plus_the_read_ahead(self):
        flags, started, go = self.gate()
        port = free_port()
        w = self.worker(*flags, *QUIET, "--consumer", "w", "--max-in-flight", "1",
                        "--queue-capacity", "2", "--read-ahead", "2",
                        "--metrics-addr", "127.0.0.1:%d" % port)
        entries = [self.add("m%d" % i) for i in range(20)]

        def received():
            status, body = http_get("http://127.0.0.1:%d/metrics" % port)
            self.assertEqual(status, 200)
            return parse_metrics(body)[("mayhem_messages_received_total",
                                        frozenset({("source", "redis")}))]

        # m0 runs, m1 and m2 wait in the queue, m3 and m4 are read ahead: 5 held, 3 delivered.
        # (A read-ahead of 2 reads one entry at a time: every free place is filled.)
        for held, done in ((5, 0), (5, 1)):
            wait_until(lambda: len(owners(self.r, "w")) == held
                       and len(self.settled(w)) == done and received() == 1 + 2 + done,
                       timeout=20, what="%d entries held, %d done" % (held, done))
            # Nothing more was read: the rest is the group's lag.
            self.assertEqual(group_info(self.r)["lag"], 20 - held - done)
            self.assertEqual(set(owners(self.r, "w")), set(entries[done:done + held]))
            open(os.path.join(go, "m%d" % done), "w").close()  # one more goes through
        for i in range(2, 20):
            open(os.path.join(go, "m%d" % i), "w").close()
        wait_until(lambda: pending(self.r) == 0 and len(self.settled(w)) == 20, timeout=60,
                   what="all 20 acked")
        self.stop(w)

    def test_a_stop_with_a_read_under_way_leaves_what_it_brings_pending_never_acked(self):
        flags, started, go = self.gate()
        w = self.worker(*flags, *QUIET, "--consumer", "w", "--max-in-flight", "1",
                        "--queue-capacity", "1", "--read-ahead", "0", "--drain-timeout", "1h")
        entries = [self.add("m%d" % i) for i in range(6)]
        # m0 runs, m1 waits in the queue; the queue is full, so nothing else is read.
        wait_until(lambda: os.path.exists(os.path.join(started, "m0"))
                   and len(owners(self.r, "w")) == 2, timeout=20, what="m0 running, m1 queued")
        # Redis holds every command: once m0 ends, m1 starts and its room in the queue sends a
        # read (of m2) that Redis answers only after the stop.
        self.r.cli("CLIENT", "PAUSE", 5000, "ALL")
        open(os.path.join(go, "m0"), "w").close()
        wait_until(lambda: os.path.exists(os.path.join(started, "m1")), timeout=20,
                   what="m1 running")
        w.signal(signal.SIGTERM)
        wait_until(lambda: logged(w, "redis source state") and
                   any(e.get("to") == "draining" for e in logged(w, "redis source state")),
                   timeout=20, what="the drain")
        open(os.path.join(go, "m1"), "w").close()
        code, _, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(self.settled(w, "acked"), ["m0", "m1"])
        left = logged(w, "entries read ahead and not started")
        self.assertEqual([e.get("count") for e in left], [1], err[-3000:])
        # m2 came with the read after the stop: not started, not acked, handed back as if never
        # delivered; the rest was never read.
        self.assertEqual(owners(self.r), {entries[2]: ("w", 0)})
        self.assertEqual(group_info(self.r)["lag"], 3)

    # -- metrics ---------------------------------------------------------------------------

    def test_metrics_show_the_groups_lag_pending_dead_letters_reclaims_and_ack_failures(self):
        orphan = self.add("orphan", consumer="gone")  # its worker died: idle past the lease
        self.r.cli("XCLAIM", STREAM, GROUP, "gone", "0", orphan, "IDLE", 7300000, "JUSTID")
        flags, started, go = self.gate()
        port = free_port()
        # Three restarts run (held by the gate), one entry waits in the queue, nothing is read
        # ahead: what is added beyond that stays unread, the group's lag.
        w = self.worker(*flags, *QUIET, "--consumer", "w", "--max-in-flight", "3",
                        "--queue-capacity", "1", "--read-ahead", "0",
                        "--stream-sample-interval", "50ms",
                        "--metrics-addr", "127.0.0.1:%d" % port)

        def metrics():
            status, body = http_get("http://127.0.0.1:%d/metrics" % port)
            self.assertEqual(status, 200)
            return {n + "".join("/" + v for _, v in sorted(l)): v
                    for (n, l), v in parse_metrics(body).items() if n.startswith("mayhem_redis_")}

        wait_until(lambda: os.path.exists(os.path.join(started, "orphan")), timeout=20,
                   what="the orphan reclaimed and started")
        wait_until(lambda: (client(self.r, "mayhem-reader") or {}).get("cmd") == "xreadgroup",
                   timeout=20, what="the worker reading")
        # A dead letter Redis refuses (the dead-letter key is not a stream) is an ack failure.
        self.r.cli("SET", STREAM + ":dead", "not a stream")
        self.r.cli("XADD", STREAM, "*", "payload", "this is not json")
        wait_until(lambda: metrics()["mayhem_redis_ack_failures_total"] >= 1, timeout=20,
                   what="the refused dead letter counted")
        self.r.cli("DEL", STREAM + ":dead")
        for mid in "abcde":
            self.add(mid)
        want = {"mayhem_redis_group_lag": 2,  # d and e: not read
                "mayhem_redis_group_pending": 4,  # orphan, a, b running; c queued
                "mayhem_redis_dead_letter_length": 1,
                "mayhem_redis_reclaimed_total/orphan": 1,
                "mayhem_redis_reclaimed_total/retry": 0,
                "mayhem_redis_leases_lost_total": 0}
        wait_until(lambda: {k: metrics()[k] for k in want} == want, timeout=20,
                   what="the sampled figures")
        self.assertEqual(len(owners(self.r, "w")), 4)
        got = metrics()
        self.assertEqual({k: got[k] for k in want}, want)
        self.assertGreaterEqual(got["mayhem_redis_ack_failures_total"], 1)
        for mid in ["orphan", *"abcde"]:
            open(os.path.join(go, mid), "w").close()
        wait_until(lambda: pending(self.r) == 0 and len(self.settled(w)) == 7, timeout=20,
                   what="everything done")
        wait_until(lambda: metrics()["mayhem_redis_group_lag"] == 0
                   and metrics()["mayhem_redis_group_pending"] == 0, timeout=20,
                   what="lag and pending sampled at 0")
        self.stop(w)


if __name__ == "__main__":
    unittest.main()
