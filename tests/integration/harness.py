"""Shared helpers for the integration tests: real processes, cleaned up also on failure.

Every test drives build/mayhem (path in $MAYHEM_BIN) as a child process. Processes started
through a Harness are killed in tearDown even when the test fails. Standard library only.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MAYHEM = os.environ.get("MAYHEM_BIN") or os.path.join(ROOT, "build", "mayhem")
# Sanitized builds run slower: scale waits, never assertions about speed.
SLOW = 4.0 if os.environ.get("MAYHEM_SANITIZED") else 1.0
# Workers would all bind the default metrics port 127.0.0.1:9477, and tests run in parallel: a
# worker started by a test serves no HTTP port unless the test passes --metrics-addr (a flag
# wins over the environment), always with free_port().
os.environ.setdefault("MAYHEM_METRICS_ADDR", "off")


def free_port():
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_summary(stdout):
    """The worker's summary: the last line of stdout that is a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError("no summary line in stdout: %r" % stdout[-2000:])


def json_log_lines(stderr):
    """The JSON log lines of a worker run with --log-format json."""
    out = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def query_db(db, sql, *args):
    """Rows of a read-only query on a SQLite store file (works while a worker writes: WAL)."""
    import sqlite3
    c = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout * SLOW, what))


def http_get(url, timeout=2.0):
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
        return 0, ""


def counting_script(tmp):
    """A restart command that counts the runs in progress across every worker under flock and
    appends the count it reached to a file. Returns (command template, path of that file)."""
    import stat
    path = os.path.join(tmp, "count.sh")
    lock, count, peaks = (os.path.join(tmp, n) for n in ("lock", "running", "peaks"))
    with open(path, "w") as f:
        f.write("#!/bin/sh\n"
                "exec 9>>%(lock)s\n"
                "flock 9; n=$(( $(cat %(count)s 2>/dev/null || echo 0) + 1 ))\n"
                "echo $n > %(count)s; echo $n >> %(peaks)s; flock -u 9\n"
                "sleep 0.3\n"
                "flock 9; echo $(( $(cat %(count)s) - 1 )) > %(count)s; flock -u 9\n"
                % {"lock": lock, "count": count, "peaks": peaks})
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path + " {message_id}", peaks


class Worker:
    """A running `mayhem worker`; stdout and stderr go to files in the test's temp dir."""

    def __init__(self, harness, args, stdin=None, env=None, name="worker"):
        self.harness = harness
        self.args = args
        base = os.path.join(harness.tmp, name)
        n = 0
        while os.path.exists(base + ".%d.out" % n):
            n += 1
        self.out_path = base + ".%d.out" % n
        self.err_path = base + ".%d.err" % n
        self._out = open(self.out_path, "w")
        self._err = open(self.err_path, "w")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [MAYHEM, "worker"] + list(args),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            env=full_env,
            cwd=harness.tmp,
        )
        harness._procs.append(self.proc)

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=60.0):
        """Waits for exit; returns (exit code, stdout, stderr)."""
        code = self.proc.wait(timeout=timeout * SLOW)
        self._out.flush()
        self._err.flush()
        return code, self.stdout(), self.stderr()

    def stdout(self):
        with open(self.out_path) as f:
            return f.read()

    def stderr(self):
        with open(self.err_path) as f:
            return f.read()

    def summary(self):
        return parse_summary(self.stdout())

    def alive(self):
        return self.proc.poll() is None


class RedisServer:
    """A real redis-server on a free loopback port, with its data in the test's temp dir."""

    def __init__(self, harness, persistence=True, password=None):
        self.harness = harness
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=harness.tmp)
        self.persistence = persistence
        self.password = password  # --requirepass, when set
        self.proc = None
        self.start()

    def start(self):
        args = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
            "--save", "", "--daemonize", "no", "--loglevel", "warning",
        ]
        if self.persistence:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.log = open(os.path.join(self.dir, "redis.log"), "a")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        self.harness._procs.append(self.proc)
        # A hang guard, not a timing: a restart loads the whole append-only file first (a long
        # stream under a loaded machine can take many seconds).
        wait_until(lambda: self.ping() or self.proc.poll() is not None, timeout=120,
                   what="redis-server to answer PING")
        if self.proc.poll() is not None:
            raise AssertionError("redis-server exited with %s; see %s"
                                 % (self.proc.returncode, os.path.join(self.dir, "redis.log")))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def url(self):
        if self.password:
            return "redis://:%s@127.0.0.1:%d/0" % (self.password, self.port)
        return "redis://127.0.0.1:%d/0" % self.port

    def cli(self, *args):
        """Runs redis-cli against this server; returns its stdout (raw output mode)."""
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        r = subprocess.run(
            ["redis-cli", "-p", str(self.port), "--raw"] + auth + [str(a) for a in args],
            capture_output=True, text=True, timeout=30,
        )
        return r.stdout.strip()

    def ping(self):
        try:
            return self.cli("PING") == "PONG"
        except Exception:
            return False


PUBSUB_EMULATOR = os.environ.get("MAYHEM_PUBSUB_EMULATOR") or \
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
# Printed when the emulator is missing: ctest reports the test file as skipped (tests/CMakeLists).
PUBSUB_ABSENT = "pubsub emulator not installed"


def pubsub_emulator_missing():
    """Why the Pub/Sub emulator cannot run here, or None when it can. It is not a Debian package
    (it comes with the Google Cloud SDK) and needs Java."""
    if not os.access(PUBSUB_EMULATOR, os.X_OK):
        return "%s: %s is missing (Google Cloud SDK)" % (PUBSUB_ABSENT, PUBSUB_EMULATOR)
    if not shutil.which("java"):
        return "%s: no java on PATH" % PUBSUB_ABSENT
    return None


class PubsubEmulator:
    """The Google Cloud Pub/Sub emulator on a free loopback port, in its own process group
    (a shell script that starts Java) so stop() ends all of it. Data stays in memory."""

    def __init__(self, tmp, port=None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="pubsub-", dir=tmp)
        self.proc = None
        self.start()

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def endpoint(self):
        return "http://" + self.host

    def start(self):
        self.log = open(os.path.join(self.dir, "emulator.log"), "a")
        self.proc = subprocess.Popen(
            [PUBSUB_EMULATOR, "--host=127.0.0.1", "--port=%d" % self.port],
            stdout=self.log, stderr=self.log, cwd=self.dir, start_new_session=True)
        # A hang guard, not a timing: Java starts slowly on a loaded machine.
        wait_until(lambda: self.answers() or self.proc.poll() is not None, timeout=120,
                   what="the pubsub emulator to answer")
        if self.proc.poll() is not None:
            raise AssertionError("the pubsub emulator exited with %s; see %s"
                                 % (self.proc.returncode, self.log.name))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self.log.close()

    def answers(self):
        status, _ = self.call("GET", "/v1/projects/p/topics")
        return status == 200

    def call(self, method, path, body=None):
        """(status, parsed JSON reply or None) of one REST call."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read().decode()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            return e.code, None
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
            return 0, None

    def create(self, name, ack_deadline=60, dead_letter=None, max_attempts=5):
        """Topic projects/p/topics/<name> and subscription projects/p/subscriptions/<name>;
        returns the subscription's name. `dead_letter`: a topic for the subscription's own
        dead-letter policy."""
        topic = "projects/p/topics/" + name
        sub = "projects/p/subscriptions/" + name
        status, _ = self.call("PUT", "/v1/" + topic, {})
        assert status == 200, "create topic: %s" % status
        body = {"topic": topic, "ackDeadlineSeconds": ack_deadline}
        if dead_letter:
            body["deadLetterPolicy"] = {"deadLetterTopic": dead_letter,
                                        "maxDeliveryAttempts": max_attempts}
        status, _ = self.call("PUT", "/v1/" + sub, body)
        assert status == 200, "create subscription: %s" % status
        return sub

    def pull(self, sub, max_messages=1000, ack=True):
        """The messages available on `sub` now (acked unless ack=False)."""
        _, reply = self.call("POST", "/v1/%s:pull" % sub,
                             {"maxMessages": max_messages, "returnImmediately": True})
        got = (reply or {}).get("receivedMessages", [])
        if ack and got:
            self.call("POST", "/v1/%s:acknowledge" % sub,
                      {"ackIds": [m["ackId"] for m in got]})
        return got


class Harness(unittest.TestCase):
    """Base class: a temp dir per test and cleanup of every process started through it."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mayhem-test-")
        self._procs = []

    def tearDown(self):
        for p in self._procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        if os.environ.get("MAYHEM_KEEP_TMP"):
            print("kept", self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def worker(self, *args, **kw):
        return Worker(self, list(args), **kw)

    def redis(self, persistence=True, password=None):
        return RedisServer(self, persistence=persistence, password=password)

    def postgres(self, password=None, start=True):
        """A private PostgreSQL server (postgres.py), removed when the test ends."""
        from postgres import PostgresServer
        server = PostgresServer(password=password, start=start)
        self.addCleanup(server.remove)
        return server

    def publish(self, *args, stdin=None, timeout=60.0):
        """Runs `mayhem publish` to its exit; returns (exit code, stdout, stderr)."""
        r = subprocess.run([MAYHEM, "publish"] + [str(a) for a in args], input=stdin,
                           capture_output=True, text=True, timeout=timeout * SLOW, cwd=self.tmp)
        return r.returncode, r.stdout, r.stderr

    def run_worker(self, *args, timeout=60.0, stdin=None, env=None):
        """Runs a worker to its exit; returns (exit code, summary or None, stderr)."""
        w = Worker(self, list(args), stdin=stdin, env=env)
        code, out, err = w.wait(timeout=timeout)
        try:
            summary = parse_summary(out)
        except AssertionError:
            summary = None
        return code, summary, err

    def assert_identity(self, s):
        """Every delivery ends in exactly one outcome."""
        total = s["acked"] + s["retried"] + s["dead_lettered"] + s["skipped"] + s["released"]
        self.assertEqual(s["received"], total, "received != sum of outcomes in %r" % s)
