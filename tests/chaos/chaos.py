#!/usr/bin/env python3
"""Chaos test: several workers on one Redis stream, killed, stopped and reloaded at random, and
Redis killed under them; then every request is checked for loss and for double restarts.

The scenario: a private redis-server on a free loopback port with AOF (`appendonly
yes`, `appendfsync always`); N `mayhem worker --source redis --store sqlite --restarter exec`
processes on one stream and group, sharing one SQLite file, each with its own --consumer name.
With --store postgres they share a private PostgreSQL server instead (tests/integration/
postgres.py), and the faults add database outages: the server stopped in `immediate` mode (a
crash, recovered at the next start) and started again on the same port and data.
The restart command is restart.sh in the run's temp dir: it appends

    start <message_id> <host> <worker pid ($PPID)> <unix time> <worker instance> <own pid>

to restart.log, sleeps a random 50-400 ms, then appends the same line with `end` (one write
per line to a file opened O_APPEND, so lines never interleave). <worker instance> is w1, w2...,
one per worker process the harness started, so a restart is tied to its worker even when that
worker died before the script began.

With --verify, the script also creates done/<message_id> after its `end` line, and the workers
get `--verify-command "test -e done/{message_id}"`: a worker that finds a restart left
unfinished by a dead peer asks it first and does not run again a restart that had ended.

Valid requests (distinct hosts) and bad ones of every kind (undecodable JSON, a missing field,
a wrong type, a host name the command template refuses, an entry without `payload`) are
published during the run. A seeded RNG (printed; --seed replays the schedule, not the exact
timings) drives the faults: SIGKILL of a worker (its replacement keeps the consumer name or
takes a new one), SIGTERM (a drain; the worker is started again once it exited), SIGHUP (after
a change of the --config file), SIGKILL of redis-server and a restart on the same port and
data (AOF).

Then the faults stop, the workers finish the stream, are stopped with SIGTERM, and the run is
judged. It fails (exit 1) when a valid request was lost (no `end` line, still pending, or
dead-lettered), a bad one was not dead-lettered with its reason or was restarted, anything is
pending, a worker crashed or hung at SIGTERM, or a request was restarted twice without excuse.
The only excuse: the worker of the earlier restart was SIGKILLed while that restart ran (or up
to --grace after its end, before the worker could record it), before the later one started:
that is the at-least-once window, counted separately, per kill. Exit 2: bad flags; 3: the harness itself failed; 130: interrupted.

Standard library only; reuses tests/integration/harness.py. Every process it starts is killed
at the end, also on failure or Ctrl-C.
"""

import argparse
import atexit
import collections
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import harness  # noqa: E402  (after the path is set)

STREAM = "chaos"
GROUP = "chaos"
DEAD = STREAM + ":dead"

# The workers' settings: the product's defaults scaled down to a run of seconds (a lease of 60 s
# would outlast the short form). Everything else is the default a user gets with exec.
LEASE = ["--lease-timeout", "3s", "--reclaim-interval", "1s", "--lease-extend-interval", "500ms"]
DRAIN_TIMEOUT = 10.0
WORKER_FLAGS = LEASE + [
    "--drain-timeout", "%gs" % DRAIN_TIMEOUT,
    "--restart-timeout", "30s",
    # The restart script never fails; a breaker opened by drain-killed commands would only
    # stall the run for its cooldown.
    "--breaker-failures", "0",
    "--status-interval", "5s",
    # The cap holds across the fleet (the shared store's slots): at the default 16 and
    # 50-400 ms per restart, the 3 workers restart about 70 hosts a second, and a long run
    # spends most of its time waiting for slots. 64 keeps the slots in play, 4 times faster.
    "--max-concurrent-restarts", "64",
]

# How the bad requests are made and the reason their dead letter must give.
BAD_KINDS = {
    "invalid_json": ('{"message_id":"bad-%d","instance_name":', "invalid JSON"),
    "missing_field": ('{"message_id":"bad-%d"}', 'missing field "instance_name"'),
    "wrong_type": ('{"message_id":%d,"instance_name":"bad"}', "message_id must be a string"),
    "refused": ('{"message_id":"bad-%d","instance_name":"bad;x"}', "outside [A-Za-z0-9._:-]"),
    "no_payload": (None, "no 'payload' field"),  # an entry with a field `body` instead
}

FAULTS = ("sigkill", "sigterm", "sighup", "redis")
FAULT_WEIGHTS = (0.35, 0.25, 0.15, 0.25)
# With --store postgres (a seed replays the same schedule within one store).
FAULTS_POSTGRES = FAULTS + ("database",)
FAULT_WEIGHTS_POSTGRES = (0.3, 0.2, 0.15, 0.2, 0.15)

RESTART_SCRIPT = r"""#!/bin/bash
# The chaos test's restart command: restart.sh <message_id> <host> <worker instance>.
# One printf is one write(2) to a file opened O_APPEND: lines never interleave.
export LC_ALL=C
log=%(log)s
printf 'start %%s %%s %%s %%s %%s %%s\n' "$1" "$2" "$PPID" "$EPOCHREALTIME" "$3" "$$" >>"$log"
ms=$(( %(min_ms)d + RANDOM %% %(span_ms)d ))
printf -v frac '%%03d' $(( ms %% 1000 ))
# Sleeps without a process of its own (the run starts thousands of these): a read from a FIFO
# that nobody writes to, opened read-write so the open does not block, until the timeout.
read -r -t "$(( ms / 1000 )).$frac" <>"%(idle)s"
printf 'end %%s %%s %%s %%s %%s %%s\n' "$1" "$2" "$PPID" "$EPOCHREALTIME" "$3" "$$" >>"$log"
# What --verify-command looks at (with --verify): the host "came back" once this exists.
: >"%(done)s/$1"
"""


class HarnessError(Exception):
    """The harness could not do its part (redis-server would not start, publish failed)."""


# ------------------------------------------------------------------------------------------
# Processes: everything started goes through Run, whose cleanup kills it.
# ------------------------------------------------------------------------------------------

class Run(harness.Harness):
    """The run's temp dir and every process started in it: the integration tests' Harness (a
    TestCase used here only for setUp, tearDown and its helpers), plus the restart scripts that
    killed workers leave behind. cleanup() runs in a finally and at exit; it is idempotent."""

    def __init__(self, keep):
        super().__init__()
        if keep:
            os.environ["MAYHEM_KEEP_TMP"] = "1"  # what tearDown looks at
        self.setUp()
        self.script = os.path.join(self.tmp, "restart.sh")
        self._cleaned = False

    def cleanup(self):
        if self._cleaned:
            return
        self._cleaned = True
        kill_scripts(self.script)
        self.tearDown()  # kills every worker, redis-server and publish; removes the temp dir
        self.doCleanups()  # the PostgreSQL server, with --store postgres
        kill_scripts(self.script)  # any a worker started meanwhile


def running_scripts(script):
    """Pids of the restart scripts still running: processes whose argv[1] is our script (a
    path in this run's own temp dir, so nothing else matches). The worker starts each in its
    own session, so a killed worker leaves them running."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[1] == script.encode():
            pids.append(int(entry))
    return pids


def kill_scripts(script):
    """SIGKILL to the process group of every running restart script (the script leads its
    group, `sleep` is in it)."""
    for pid in running_scripts(script):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # it ended meanwhile


def redis_json(redis, *args):
    """A reply of the run's redis-server as JSON (redis-cli --json); None for an error reply."""
    r = subprocess.run(["redis-cli", "-p", str(redis.port), "--json"] + [str(a) for a in args],
                       capture_output=True, text=True, timeout=120)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def stream_id(s):
    """A stream entry id as a comparable tuple."""
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


# ------------------------------------------------------------------------------------------
# The workers: N slots, each holding at most one running worker process.
# ------------------------------------------------------------------------------------------

class Slot:
    def __init__(self, index):
        self.index = index
        self.consumer = "c%d" % index
        self.worker = None      # harness.Worker
        self.instance = None    # "w7": the label its restart lines carry
        self.state = "down"     # running | draining (SIGTERM sent) | down
        self.restart_at = None  # when a down slot gets a new worker
        self.term_sent = None   # when SIGTERM was sent (hang guard)


class Fleet:
    def __init__(self, run, redis, n, log, verify_dir=None, pg=None):
        self.run = run
        self.verify_dir = verify_dir  # set: workers get a --verify-command that looks there
        self.redis = redis
        self.log = log
        self.slots = [Slot(i + 1) for i in range(n)]
        self.instances = 0
        self.config = os.path.join(run.tmp, "worker.json")
        self.write_config(256)
        self.db = os.path.join(run.tmp, "shared.db")
        self.pg = pg  # the shared PostgreSQL server, or None: the shared SQLite file
        self.kills = []         # {"t", "instance", "consumer", "cause"}: every SIGKILL of a worker
        self.terms = []         # {"t", "instance", "code"}
        self.events = []        # (t, kind, instance): every fault, for the report
        self.crashes = []       # unexpected exits: (instance, code, stderr tail)
        self.hung = []          # instances that did not exit after SIGTERM
        self.drains_database_behind = 0  # drains that ended 1, records unwritten, database down

    def write_config(self, max_in_flight):
        """The --config file every worker reads (SIGHUP re-reads it)."""
        with open(self.config + ".new", "w") as f:
            json.dump({"max-in-flight": max_in_flight, "log-level": "info"}, f)
        os.replace(self.config + ".new", self.config)

    def store_args(self):
        if self.pg:
            return ["--store", "postgres", "--postgres-url", self.pg.url]
        return ["--store", "sqlite", "--db", self.db]

    def outcomes(self):
        """The stored outcome of every valid request, counted ('in_progress': none yet)."""
        sql = ("SELECT coalesce(outcome, 'in_progress'), count(*) FROM messages "
               "WHERE message_id LIKE 'req-%' GROUP BY 1")
        if self.pg:
            rows = [line.split("|") for line in self.pg.psql(sql).splitlines()]
            return {k: int(n) for k, n in rows}
        return dict(harness.query_db(self.db, sql))

    def start(self, slot):
        self.instances += 1
        slot.instance = "w%d" % self.instances
        command = "bash '%s' {message_id} {hostname} %s" % (self.run.script, slot.instance)
        args = ["--source", "redis", "--redis-url", self.redis.url, "--stream", STREAM,
                "--group", GROUP, "--consumer", slot.consumer] + self.store_args() + [
                "--restarter", "exec", "--restart-command", command,
                "--config", self.config] + WORKER_FLAGS
        if self.verify_dir:
            # Like a real verify ("did the host come back?"): has this restart's script ended?
            args += ["--verify-command", "test -e '%s/{message_id}'" % self.verify_dir]
        slot.worker = self.run.worker(*args, name=slot.instance)
        slot.state, slot.restart_at, slot.term_sent = "running", None, None
        self.log("%s started as %s (pid %d)" % (slot.instance, slot.consumer, slot.worker.pid))

    def running(self, handling_signals=False):
        """Slots whose worker runs. With handling_signals, only those past the first moments
        after exec, where SIGTERM or SIGHUP would still kill the process: a worker holds them
        back before it logs its first line, so a non-empty stderr proves it."""
        return [s for s in self.slots if s.state == "running" and (
            not handling_signals or os.path.getsize(s.worker.err_path) > 0)]

    def sigkill(self, slot, now, cause, restart_in, same_name):
        self.kills.append({"t": now, "instance": slot.instance, "consumer": slot.consumer,
                           "cause": cause, "same_name": same_name})
        slot.worker.signal(signal.SIGKILL)
        slot.worker.proc.wait(timeout=30)
        slot.state, slot.restart_at = "down", now + restart_in
        if not same_name:
            slot.consumer = "c%d-%d" % (slot.index, self.instances + 1)

    def sigterm(self, slot, now):
        slot.worker.signal(signal.SIGTERM)
        slot.state, slot.term_sent = "draining", now

    def database_was_down(self, since):
        """Whether a database outage began during the drain, or up to 30 s before it (outcome
        records held from it may still be waiting for their retry)."""
        return any(kind == "database" and t >= since - 30 for t, kind, _ in self.events)

    def tick(self, now, restart=True):
        """Notices exits, restarts slots that are due, and kills a worker that does not finish
        its drain (a hang) so the run goes on."""
        for s in self.slots:
            code = s.worker.proc.poll() if s.worker else None
            if s.state == "running" and code is not None:
                tail = s.worker.stderr()[-1500:]
                self.crashes.append((s.instance, code, tail))
                self.log("%s exited unexpectedly with %d" % (s.instance, code))
                s.state, s.restart_at = "down", now
            elif s.state == "draining" and code is not None:
                self.terms.append({"t": s.term_sent, "instance": s.instance, "code": code})
                err = s.worker.stderr()
                if code == 1 and self.database_was_down(s.term_sent) and \
                        "outcome records could not be written" in err:
                    # What the worker documents: a drain that could not write its outcome
                    # records (the database down) ends in 1. Counted apart; the judge still
                    # checks that nothing was lost or restarted twice.
                    self.drains_database_behind += 1
                    self.log("%s exited with 1 after SIGTERM: the database was down" %
                             s.instance)
                elif code not in (0, 3):  # a drain ends in 0, or 3 when it released work
                    self.crashes.append((s.instance, code, err[-1500:]))
                    self.log("%s exited with %d after SIGTERM" % (s.instance, code))
                s.state, s.restart_at = "down", now
            elif s.state == "draining" and now - s.term_sent > DRAIN_TIMEOUT + 20:
                self.log("%s did not exit %.0fs after SIGTERM: SIGKILL" % (
                    s.instance, now - s.term_sent))
                self.hung.append(s.instance)
                self.sigkill(s, now, "hung after SIGTERM", 0, True)
            if restart and s.state == "down" and s.restart_at is not None and now >= s.restart_at:
                self.start(s)

    def stop_all(self):
        """SIGTERM to every worker, then waits for each (the hang guard applies)."""
        now = time.time()
        for s in self.running():
            self.sigterm(s, now)
        deadline = now + DRAIN_TIMEOUT + 25
        while any(s.state == "draining" for s in self.slots) and time.time() < deadline:
            self.tick(time.time(), restart=False)
            time.sleep(0.05)


# ------------------------------------------------------------------------------------------
# Requests: generated up front, published in batches through `mayhem publish` during the run.
# ------------------------------------------------------------------------------------------

def make_requests(rng, valid, bad_per_kind):
    """(payloads in publishing order: (kind, payload, message_id)); kind "valid" or a bad kind."""
    out = [("valid", json.dumps({"message_id": "req-%06d" % i, "instance_name": "host-%06d" % i,
                                 "reason": "chaos"}, separators=(",", ":")), "req-%06d" % i)
           for i in range(1, valid + 1)]
    n = 0
    for kind, (template, _) in BAD_KINDS.items():
        for _ in range(bad_per_kind):
            n += 1
            out.append((kind, template % n if template else "no-payload-%d" % n, None))
    rng.shuffle(out)
    return out


class Publisher(threading.Thread):
    """Publishes the requests in batches spread over `seconds`. A batch is sent while holding
    `redis_lock`, which the fault loop holds for a Redis outage: so every request is published
    exactly once, and the check knows what is in the stream."""

    def __init__(self, run, redis, requests, seconds, redis_lock):
        super().__init__(daemon=True)
        self.owner = run
        self.redis = redis
        self.requests = requests
        self.seconds = seconds
        self.redis_lock = redis_lock
        self.error = None

    def run(self):
        try:
            batches = max(1, int(self.seconds / 0.25))
            size = math.ceil(len(self.requests) / batches)
            t0 = time.monotonic()
            for b in range(batches):
                batch = self.requests[b * size:(b + 1) * size]
                if not batch:
                    break
                with self.redis_lock:
                    self.publish(batch)
                time.sleep(max(0.0, t0 + (b + 1) * self.seconds / batches - time.monotonic()))
        except Exception as e:  # reported by the main thread, which aborts the run
            self.error = e

    def publish(self, batch):
        lines = "".join(p + "\n" for kind, p, _ in batch if kind != "no_payload")
        path = os.path.join(self.owner.tmp, "batch.ndjson")
        with open(path, "w") as f:
            f.write(lines)
        with open(path) as f:
            p = subprocess.Popen([harness.MAYHEM, "publish", "--stdin", "--raw", "--redis-url",
                                  self.redis.url, "--stream", STREAM], stdin=f,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.owner._procs.append(p)
            out, err = p.communicate(timeout=120)
        if p.returncode != 0:
            raise HarnessError("mayhem publish exited %d: %s" % (p.returncode, err[-500:]))
        for kind, payload, _ in batch:
            if kind == "no_payload":
                if not redis_json(self.redis, "XADD", STREAM, "*", "body", payload):
                    raise HarnessError("XADD of an entry without payload failed")


# ------------------------------------------------------------------------------------------
# The run: start everything, inject faults, settle, stop.
# ------------------------------------------------------------------------------------------

class Chaos:
    def __init__(self, args, run):
        self.args = args
        self.run = run
        self.rng = random.Random(args.seed)
        self.t0 = time.time()
        self.redis_lock = threading.Lock()
        self.outages = []  # (t killed, t back)
        self.redis_back_at = None  # while redis-server is down: when it comes back
        self.database_outages = []  # (t stopped, t back), with --store postgres
        self.database_back_at = None
        self.sighups = 0
        self.log_path = os.path.join(run.tmp, "restart.log")
        self.done_dir = os.path.join(run.tmp, "done")  # restart.sh leaves one file per restart
        os.mkdir(self.done_dir)

    def log(self, text):
        if self.args.verbose:
            print("chaos: %7.2fs %s" % (time.time() - self.t0, text), flush=True)

    def execute(self):
        a = self.args
        idle = os.path.join(self.run.tmp, "idle.fifo")
        os.mkfifo(idle)
        with open(self.run.script, "w") as f:
            f.write(RESTART_SCRIPT % {"log": self.log_path, "done": self.done_dir, "idle": idle,
                                      "min_ms": a.restart_ms[0],
                                      "span_ms": a.restart_ms[1] - a.restart_ms[0] + 1})
        self.redis = self.run.redis(persistence=True)
        self.pg = self.run.postgres() if a.store == "postgres" else None
        self.fleet = Fleet(self.run, self.redis, a.workers, self.log,
                           self.done_dir if a.verify else None, self.pg)
        self.requests = make_requests(self.rng, a.requests, a.bad_per_kind)
        for s in self.fleet.slots:
            self.fleet.start(s)
        duration = a.minutes * 60
        self.publisher = Publisher(self.run, self.redis, self.requests, duration * 0.9,
                                   self.redis_lock)
        self.publisher.start()
        self.faults(duration)
        self.publisher.join(timeout=300)
        if self.publisher.error or self.publisher.is_alive():
            raise HarnessError("publishing failed: %s" % (self.publisher.error or "hung"))
        self.settled = self.settle(a.settle_timeout)
        self.wait_for_scripts(60)
        self.fleet.stop_all()
        self.wait_for_scripts(30)
        self.t_end = time.time()

    def faults(self, duration):
        """Injects faults until `duration` has passed, one every --fault-interval on average.
        One iteration per 50 ms: bounded by the duration."""
        rng = self.rng
        end = self.t0 + duration
        next_fault = self.t0 + 2.0 + rng.expovariate(1 / self.args.fault_interval)
        self.redis_back_at = None
        while time.time() < end:
            now = time.time()
            if self.publisher.error:
                raise HarnessError("publishing failed: %s" % self.publisher.error)
            if self.redis_back_at is not None and now >= self.redis_back_at:
                self.redis_back()
            if self.database_back_at is not None and now >= self.database_back_at:
                self.database_back()
            self.fleet.tick(now)
            if now >= next_fault:
                # Every draw is made whatever the fault, so a seed replays the same schedule.
                kind = rng.choices(*((FAULTS_POSTGRES, FAULT_WEIGHTS_POSTGRES) if self.pg
                                     else (FAULTS, FAULT_WEIGHTS)))[0]
                pick, delay, same = rng.randrange(len(self.fleet.slots)), rng.random(), \
                    rng.random() < 0.5
                max_in_flight = rng.choice([32, 64, 256, 1000])
                self.inject(kind, pick, delay, same, max_in_flight)
                next_fault = now + rng.expovariate(1 / self.args.fault_interval)
            time.sleep(0.05)
        if self.redis_back_at is not None:
            self.redis_back()
        if self.database_back_at is not None:
            self.database_back()

    def inject(self, kind, pick, delay, same_name, max_in_flight):
        """One fault. `delay` (0..1) scales the outage or the wait for a replacement."""
        fleet, now = self.fleet, time.time()
        running = fleet.running(handling_signals=kind in ("sigterm", "sighup"))
        slot = running[pick % len(running)] if running else None
        if kind == "redis" and self.redis_back_at is None:
            if self.redis_lock.acquire(timeout=60):  # not in the middle of a publish
                self.outages.append((time.time(), None))
                fleet.events.append((time.time(), "redis", None))
                self.redis.proc.kill()
                self.redis.proc.wait(timeout=30)
                self.redis_back_at = time.time() + 0.2 + delay * 4.8
                self.log("redis-server SIGKILL, back in %.1fs" % (self.redis_back_at - now))
        elif kind == "database" and self.database_back_at is None:
            fleet.events.append((now, "database", None))
            self.database_outages.append((now, None))
            self.pg.stop(mode="immediate")
            self.database_back_at = time.time() + 0.2 + delay * 4.8
            self.log("PostgreSQL stopped (immediate), back in %.1fs" %
                     (self.database_back_at - now))
        elif kind == "sigkill" and slot:
            fleet.events.append((now, "sigkill", slot.instance))
            self.log("SIGKILL %s (%s); replacement %s in %.1fs" % (
                slot.instance, slot.consumer, "same name" if same_name else "new name", delay))
            fleet.sigkill(slot, now, "fault", delay, same_name)
        elif kind == "sigterm" and slot:
            fleet.events.append((now, "sigterm", slot.instance))
            self.log("SIGTERM %s" % slot.instance)
            fleet.sigterm(slot, now)
        elif kind == "sighup" and slot:
            fleet.events.append((now, "sighup", slot.instance))
            fleet.write_config(max_in_flight)
            slot.worker.signal(signal.SIGHUP)
            self.sighups += 1
            self.log("SIGHUP %s (max-in-flight %d)" % (slot.instance, max_in_flight))

    def redis_back(self):
        """Ends an outage: redis-server again on the same port and data (it replays the AOF)."""
        self.redis.start()
        self.redis_lock.release()
        self.redis_back_at = None
        self.outages[-1] = (self.outages[-1][0], time.time())
        self.fleet.events.append((time.time(), "redis back", None))
        self.log("redis-server back")

    def database_back(self):
        """Ends a database outage: the server again on the same port and data."""
        self.pg.start()
        self.database_back_at = None
        self.database_outages[-1] = (self.database_outages[-1][0], time.time())
        self.fleet.events.append((time.time(), "database back", None))
        self.log("PostgreSQL back")

    def settle(self, timeout):
        """Waits, without faults, until the group has read the whole stream and has nothing
        pending (every worker running again). Returns whether it did within timeout."""
        deadline = time.time() + timeout
        next_note = time.time() + 30
        while time.time() < deadline:
            self.fleet.tick(time.time())
            group = self.group()
            if group and time.time() >= next_note:
                next_note += 30
                self.log("settling: %d pending, %s lag" % (group["pending"], group.get("lag")))
            info = redis_json(self.redis, "XINFO", "STREAM", STREAM) or {}
            last = info.get("last-generated-id")
            if group and last and group["pending"] == 0 and \
                    stream_id(group["last-delivered-id"]) >= stream_id(last):
                self.log("settled")
                return True
            time.sleep(0.5)
        # Not an error by itself (a slow machine), but what held the group is worth knowing.
        print("chaos: not settled after %.0fs: group %s; consumers %s" % (
            timeout, json.dumps(self.group()),
            json.dumps(redis_json(self.redis, "XINFO", "CONSUMERS", STREAM, GROUP))), flush=True)
        return False

    def group(self):
        for g in redis_json(self.redis, "XINFO", "GROUPS", STREAM) or []:
            if g.get("name") == GROUP:
                return g
        return None

    def wait_for_scripts(self, timeout):
        """Waits for the restart scripts still running (orphans of killed workers included)."""
        deadline = time.time() + timeout
        while running_scripts(self.run.script) and time.time() < deadline:
            time.sleep(0.1)
        kill_scripts(self.run.script)


# ------------------------------------------------------------------------------------------
# The verdict: what the restart log, the streams, the pending list and the store say.
# ------------------------------------------------------------------------------------------

RestartRun = collections.namedtuple("RestartRun", "message_id host ppid start end instance pid")


def read_restart_log(path):
    """Every restart the script saw, start and end joined by (message id, script pid); and the
    number of lines that did not parse."""
    runs, bad = {}, 0
    if not os.path.exists(path):
        return [], 0
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 7 or parts[0] not in ("start", "end"):
                bad += 1
                continue
            what, msg, host, ppid, t, instance, pid = parts
            key = (msg, pid)
            if what == "start":
                runs[key] = RestartRun(msg, host, int(ppid), float(t), None, instance, int(pid))
            elif key in runs:
                runs[key] = runs[key]._replace(end=float(t))
            else:
                bad += 1
    return list(runs.values()), bad


class StreamState:
    """What Redis holds at the end: the entry id of every payload published, the pending
    entries, how far the group has read, and the dead-letter reasons by source entry id."""

    def __init__(self, chaos):
        redis = chaos.redis
        self.entry_of = {}
        for entry_id, fields in redis_json(redis, "XRANGE", STREAM, "-", "+") or []:
            d = dict(zip(fields[0::2], fields[1::2]))
            self.entry_of[d.get("payload", d.get("body"))] = entry_id
        self.pending = {p[0] for p in
                        redis_json(redis, "XPENDING", STREAM, GROUP, "-", "+", 10_000_000) or []}
        self.read_up_to = stream_id((chaos.group() or {}).get("last-delivered-id", "0-0"))
        self.dead = collections.defaultdict(list)
        for _, fields in redis_json(redis, "XRANGE", DEAD, "-", "+") or []:
            d = dict(zip(fields[0::2], fields[1::2]))
            self.dead[d.get("source_id")].append(d.get("reason", ""))

    def acked(self, entry_id):
        """Read by the group and no longer pending: acked (or dead-lettered, which acks)."""
        return entry_id not in self.pending and stream_id(entry_id) <= self.read_up_to


def find_doubles(by_msg, kills, grace):
    """Every start of a message id after its first, as (earlier, later) pairs split into
    excused and unexcused. Excused: the earlier run's worker was SIGKILLed while that run ran,
    or within `grace` after it ended (before the worker could record the end), and was dead
    when the later run started. A run of a killed worker began before its kill even when its
    start line is later (the script was spawned before), so only the end is compared."""
    excused, unexcused = [], []
    for rs in by_msg.values():
        rs.sort(key=lambda r: r.start)
        for earlier, later in zip(rs, rs[1:]):
            k = kills.get(earlier.instance)
            if k and k["t"] <= later.start and (earlier.end is None
                                                 or k["t"] < earlier.end + grace):
                excused.append((earlier, later))
            else:
                unexcused.append((earlier, later))
    return excused, unexcused


def count_overlaps(runs, kills):
    """Pairs of restarts of one host that ran at the same time. A run with no end lasted until
    its worker's kill, or (never seen otherwise) to the end of the run."""
    by_host = collections.defaultdict(list)
    for r in runs:
        by_host[r.host].append(r)
    overlaps = 0
    for rs in by_host.values():
        rs.sort(key=lambda r: r.start)
        for x, y in zip(rs, rs[1:]):
            x_end = x.end if x.end is not None else kills.get(x.instance, {}).get("t", math.inf)
            overlaps += y.start < x_end
    return overlaps


def judge(chaos):
    """All figures of the run, the list of failed checks, and the details the report shows."""
    a, fleet = chaos.args, chaos.fleet
    kills = {k["instance"]: k for k in fleet.kills}
    runs, unparsed = read_restart_log(chaos.log_path)
    by_msg = collections.defaultdict(list)
    for r in runs:
        by_msg[r.message_id].append(r)
    streams = StreamState(chaos)

    # Valid requests: each restarted to its end and acked, none dead-lettered.
    lost, dead_valid = [], []
    for kind, payload, msg in chaos.requests:
        if kind != "valid":
            continue
        eid = streams.entry_of.get(payload)
        ended = any(r.end is not None for r in by_msg.get(msg, []))
        if eid in streams.dead:
            dead_valid.append((msg, streams.dead[eid][0]))
        if eid is None or not (ended and streams.acked(eid) and eid not in streams.dead):
            lost.append(msg)
    # Bad requests: each dead-lettered with its reason, never restarted.
    bad_missing, bad_reason, bad_restarted = [], [], []
    for kind, payload, _ in chaos.requests:
        if kind == "valid":
            continue
        eid = streams.entry_of.get(payload)
        reasons = streams.dead.get(eid, [])
        if not reasons:
            bad_missing.append((kind, payload, eid, eid in streams.pending))
        elif not any(BAD_KINDS[kind][1] in r for r in reasons):
            bad_reason.append((kind, payload, reasons[0]))
        if kind == "refused" and json.loads(payload)["message_id"] in by_msg:
            bad_restarted.append(payload)

    excused, unexcused = find_doubles(by_msg, kills, a.grace)
    unexcused_kinds = collections.Counter(
        "earlier never ended" if e.end is None else
        "while the earlier ran" if l.start < e.end else "after the earlier ended"
        for e, l in unexcused)
    completed_twice = sum(e.end is not None and l.end is not None for e, l in excused)
    by_grace = sum(e.end is not None and e.end < kills[e.instance]["t"] for e, _ in excused)
    per_kill = collections.Counter(e.instance for e, _ in excused)
    sigkills = len(fleet.kills)
    fault_kills = [k for k in fleet.kills if k["cause"] == "fault"]
    try:
        store = fleet.outcomes()
    except Exception as e:  # informative only
        store = {"error": str(e)}
    figures = {
        "seed": a.seed, "minutes": a.minutes, "workers": a.workers, "verify": a.verify,
        "requests": sum(kind == "valid" for kind, _, _ in chaos.requests),
        "bad_requests": sum(kind != "valid" for kind, _, _ in chaos.requests),
        "sigkill": len(fault_kills), "sigkill_same_name": sum(k["same_name"] for k in fault_kills),
        "sigterm": sum(kind == "sigterm" for _, kind, _ in fleet.events),
        "sighup": chaos.sighups, "redis_outages": len(chaos.outages),
        "store": chaos.args.store, "database_outages": len(chaos.database_outages),
        "drains_database_behind": fleet.drains_database_behind,
        "restarts": len(runs), "restarts_unfinished": sum(r.end is None for r in runs),
        "doubles_excused": len(excused), "doubles_excused_completed_twice": completed_twice,
        "doubles_excused_by_grace": by_grace, "doubles_unexcused": len(unexcused),
        "doubles_unexcused_ids": len({e.message_id for e, _ in unexcused}),
        "doubles_unexcused_by_kind": dict(unexcused_kinds),
        "excused_per_sigkill": round(len(excused) / sigkills, 2) if sigkills else 0.0,
        "completed_twice_per_sigkill": round(completed_twice / sigkills, 2) if sigkills else 0.0,
        "overlaps": count_overlaps(runs, kills), "lost": len(lost),
        "dead_lettered_valid": len(dead_valid), "bad_not_dead_lettered": len(bad_missing),
        "bad_wrong_reason": len(bad_reason), "bad_restarted": len(bad_restarted),
        "pending_at_end": len(streams.pending), "settled": chaos.settled,
        "crashes": len(fleet.crashes), "hung_after_sigterm": len(fleet.hung),
        "sigterm_exit_codes": dict(collections.Counter(str(t["code"]) for t in fleet.terms)),
        "store_outcomes": store, "log_lines_unparsed": unparsed,
        "seconds": round(chaos.t_end - chaos.t0, 1),
    }
    failures = ["%s %s" % (figures[name], why) for name, why in (
        ("lost", "valid requests lost"),
        ("dead_lettered_valid", "valid requests dead-lettered"),
        ("bad_not_dead_lettered", "bad requests not dead-lettered"),
        ("bad_wrong_reason", "bad requests dead-lettered with another reason"),
        ("bad_restarted", "refused requests restarted"),
        ("pending_at_end", "entries pending at the end"),
        ("doubles_unexcused", "unexcused double restarts"),
        ("crashes", "workers crashed (exited on their own, or a drain ended not in 0 or 3)"),
        ("hung_after_sigterm", "workers hung after SIGTERM")) if figures[name]]
    limit = a.max_completed_twice_per_kill
    if limit is not None and figures["completed_twice_per_sigkill"] > limit:
        failures.append("%.2f hosts restarted to completion twice per SIGKILL, more than %g" % (
            figures["completed_twice_per_sigkill"], limit))
    detail = {"lost": lost, "dead_valid": dead_valid, "bad_missing": bad_missing,
              "bad_reason": bad_reason,
              "unexcused": unexcused, "per_kill": per_kill, "runs": runs}
    return figures, failures, detail


def last_fault_before(events, t):
    """The kind of the last fault before t and how long before, e.g. ('sigterm', 0.8)."""
    best = None
    for when, kind, _ in events:
        if when <= t:
            best = (kind, t - when)
    return best


def report(chaos, figures, failures, detail):
    f, fleet, t0 = figures, chaos.fleet, chaos.t0
    print("chaos: %d valid + %d bad requests, %d workers%s, %.1f min: %.0fs in all" % (
        f["requests"], f["bad_requests"], f["workers"],
        " with --verify-command" if f["verify"] else "", f["minutes"], f["seconds"]))
    print("  faults     SIGKILL %d (%d kept the consumer name), SIGTERM %d, SIGHUP %d, "
          "redis outages %d, %s" % (f["sigkill"], f["sigkill_same_name"], f["sigterm"],
                                    f["sighup"], f["redis_outages"],
                                    "database outages %d (%d drains ended 1 with records "
                                    "unwritten)" % (f["database_outages"],
                                                    f["drains_database_behind"])
                                    if f["store"] == "postgres" else "store sqlite"))
    print("  restarts   %d runs (%d never ended)" % (f["restarts"], f["restarts_unfinished"]))
    print("  doubles    excused %d (%d completed twice, %d by --grace), unexcused %d on %d ids"
          % (f["doubles_excused"], f["doubles_excused_completed_twice"],
             f["doubles_excused_by_grace"], f["doubles_unexcused"], f["doubles_unexcused_ids"]))
    limit = chaos.args.max_completed_twice_per_kill
    print("  per kill   %.2f excused doubles, %.2f completed twice per SIGKILL (limit %s)" % (
        f["excused_per_sigkill"], f["completed_twice_per_sigkill"],
        "off" if limit is None else "%g" % limit))
    print("  overlaps   %d (two restarts of one host at the same time)" % f["overlaps"])
    print("  lost %d, dead-lettered valid %d, bad not dead-lettered %d, wrong reason %d, "
          "pending at end %d, crashes %d, hung %d" % (
              f["lost"], f["dead_lettered_valid"], f["bad_not_dead_lettered"],
              f["bad_wrong_reason"], f["pending_at_end"], f["crashes"], f["hung_after_sigterm"]))
    print("  store      %s" % json.dumps(f["store_outcomes"], sort_keys=True))
    kills = {k["instance"]: k for k in fleet.kills}
    running_at = collections.Counter()  # runs of a killed worker that had not ended at its kill
    for r in detail["runs"]:
        k = kills.get(r.instance)
        if k and (r.end is None or r.end > k["t"]):
            running_at[r.instance] += 1
    if len(fleet.kills) > 20 and not chaos.args.verbose:
        again = sorted(detail["per_kill"][k["instance"]] for k in fleet.kills)
        print("  restarted again per SIGKILL: min %d, median %d, max %d (-v lists every kill)"
              % (again[0], again[len(again) // 2], again[-1]))
    for i, k in enumerate(fleet.kills if len(fleet.kills) <= 20 or chaos.args.verbose else [], 1):
        print("  kill %-3d %7.2fs %-4s (%s, %s%s): %d restarts running, %d restarted again" % (
            i, k["t"] - t0, k["instance"], k["consumer"],
            "same name" if k["same_name"] else "new name",
            "" if k["cause"] == "fault" else ", " + k["cause"],
            running_at[k["instance"]], detail["per_kill"][k["instance"]]))
    if detail["unexcused"]:
        after = collections.Counter()
        for _, later in detail["unexcused"]:
            last = last_fault_before(fleet.events, later.start)
            after[last[0] if last and last[1] < 5 else "no fault within 5s"] += 1
        print("  unexcused doubles by the last fault before the second start: %s" %
              ", ".join("%s %d" % kv for kv in after.most_common()))
        print("  unexcused doubles by when the second began: %s" % ", ".join(
            "%s %d" % kv for kv in sorted(f["doubles_unexcused_by_kind"].items())))
        for earlier, later in sorted(detail["unexcused"], key=lambda p: p[1].start)[:10]:
            print("    %s: %s %.2f-%s, then %s %.2f-%s" % (
                earlier.message_id, earlier.instance, earlier.start - t0,
                "%.2f" % (earlier.end - t0) if earlier.end else "?", later.instance,
                later.start - t0, "%.2f" % (later.end - t0) if later.end else "?"))
    for instance, code, tail in fleet.crashes[:5]:
        how = "killed by %s" % signal.Signals(-code).name if code < 0 else "exited %d" % code
        print("  crash: %s %s; its last log lines:\n      %s" % (
            instance, how, "\n      ".join(tail.strip().splitlines()[-3:])))
    if detail["dead_valid"]:
        reasons = collections.Counter(re.sub(r"\d+", "N", r) for _, r in detail["dead_valid"])
        print("  valid requests dead-lettered, by reason: %s" % "; ".join(
            "%d: %s" % (n, r) for r, n in reasons.most_common(5)))
    for kind, payload, eid, pending in detail["bad_missing"][:5]:
        print("  bad request not dead-lettered: %s %r (entry %s, %s)" % (
            kind, payload, eid, "pending" if pending else "not pending"))
    for kind, payload, reason in detail["bad_reason"][:5]:
        print("  bad request %s %r dead-lettered with: %s" % (kind, payload, reason))
    for msg in detail["lost"][:10]:
        print("  lost: %s" % msg)
    print("chaos: %s" % ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    print(json.dumps(figures, sort_keys=True))


# ------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Chaos test of N workers on one Redis stream (see the module docstring). "
                    "Defaults are the short form run by ctest; `make chaos` runs "
                    "--minutes 10 --requests 100000.")
    p.add_argument("--seed", type=int, default=None, help="RNG seed (default: random, printed)")
    p.add_argument("--minutes", type=float, default=0.5, help="length of the fault phase")
    p.add_argument("--requests", type=int, default=3000, help="valid requests (distinct hosts)")
    p.add_argument("--bad-per-kind", type=int, default=None,
                   help="bad requests of each kind (default: requests/400, at least 2)")
    p.add_argument("--workers", type=int, default=3, help="workers on the stream at once")
    p.add_argument("--fault-interval", type=float, default=None,
                   help="mean seconds between faults (default 1.2, 2 from 5 minutes on)")
    p.add_argument("--restart-ms", default="50..400", help="restart script duration MIN..MAX ms")
    p.add_argument("--grace", type=float, default=1.0 * harness.SLOW,
                   help="a SIGKILL this long after a restart ended still excuses its double "
                        "(the worker had not recorded the end yet); default 1 s, 4 s under "
                        "sanitizers")
    p.add_argument("--settle-timeout", type=float, default=None,
                   help="seconds to wait for the stream to be finished after the faults "
                        "(default: 120, or half the fault phase if longer)")
    p.add_argument("--max-completed-twice-per-kill", type=float, default=None,
                   help="fail when more hosts than this per SIGKILL, on average, were "
                        "restarted to completion twice (the goal is 1; default off)")
    p.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                   help="what the workers share: one SQLite file, or a private PostgreSQL "
                        "server that the faults also stop and start (default sqlite)")
    p.add_argument("--verify", action="store_true",
                   help="give the workers a --verify-command that tells whether a restart's "
                        "script ended: an unfinished restart whose host came back is not run "
                        "again (what a user with a verify command gets)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temp dir: worker logs, restart.log, shared.db, redis data "
                        "(also MAYHEM_KEEP_TMP=1)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every fault as it happens")
    a = p.parse_args(argv)
    try:
        lo, _, hi = a.restart_ms.partition("..")
        a.restart_ms = (int(lo), int(hi or lo))
        if not 0 <= a.restart_ms[0] <= a.restart_ms[1]:
            raise ValueError
    except ValueError:
        p.error("--restart-ms: MIN..MAX in milliseconds, e.g. 50..400")
    if a.workers < 1 or a.requests < 1 or a.minutes <= 0:
        p.error("--workers, --requests and --minutes must be positive")
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 2**31)
    if a.bad_per_kind is None:
        a.bad_per_kind = max(2, a.requests // 400)
    if a.fault_interval is None:
        a.fault_interval = 2.0 if a.minutes >= 5 else 1.2
    if a.settle_timeout is None:
        a.settle_timeout = max(120.0, a.minutes * 30)
    return a


def main(argv):
    a = parse_args(argv)
    print("chaos: seed %d (replay: %s --seed %d --minutes %g --requests %d)" % (
        a.seed, os.path.relpath(__file__), a.seed, a.minutes, a.requests), flush=True)
    run = Run(a.keep)
    atexit.register(run.cleanup)
    # Ctrl-C and SIGTERM (ctest's timeout) unwind through the finally below, also when the
    # parent started us with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        chaos = Chaos(a, run)
        chaos.execute()
        figures, failures, detail = judge(chaos)
        report(chaos, figures, failures, detail)
        return 1 if failures else 0
    except HarnessError as e:
        print("chaos: harness error: %s" % e)
        return 3
    except KeyboardInterrupt:
        print("chaos: interrupted; every process it started is killed")
        return 130
    finally:
        run.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
