"""What a restart command inherits from the worker, and what becomes of it when the worker dies.

`--restarter exec` with real commands: the descriptors a command receives while the Redis
source and the SQLite store are in use, and a command's fate when its worker is SIGKILLed.
"""

import errno
import os
import re
import shutil
import signal
import subprocess
import time
import unittest

import harness
from harness import Harness, free_port, wait_until
from test_safety import pid_gone


def read(path):
    with open(path) as f:
        return f.read()


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ExecChildrenTest(Harness):
    def test_a_command_receives_only_stdin_stdout_and_stderr(self):
        r = self.redis()
        code, out, err = self.publish("--redis-url", r.url, "--count", 1)
        self.assertEqual(code, 0, err)
        listing = os.path.join(self.tmp, "fds")
        db = os.path.join(self.tmp, "mayhem.db")
        # `exec`: the listing is made by the very process the worker started, with no shell
        # descriptor in between; ls adds one of its own (the /proc/self/fd directory).
        cmd = "sh -c 'exec ls -l /proc/self/fd > %s' {hostname}" % listing
        w = self.worker("--source", "redis", "--redis-url", r.url, "--store", "sqlite",
                        "--db", db, "--restarter", "exec", "--restart-command", cmd,
                        "--metrics-addr", "127.0.0.1:%d" % free_port(),
                        "--status-interval", "0", "--exit-when-idle")
        code, out, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(w.summary()["acked"], 1, err[-3000:])
        with open(listing) as f:
            text = f.read()
        fds = {}
        for line in text.splitlines():
            m = re.search(r" (\d+) -> (.*)$", line)
            if m:
                fds[int(m.group(1))] = m.group(2)
        own = [fd for fd, target in fds.items() if re.fullmatch(r"/proc/\d+/fd", target)]
        self.assertEqual(len(own), 1, text)  # ls's own directory descriptor
        del fds[own[0]]
        self.assertEqual(sorted(fds), [0, 1, 2], text)

    def test_a_command_dies_with_its_sigkilled_worker(self):
        pidfile = os.path.join(self.tmp, "pid")
        cmd = "sh -c 'echo $$ > %s; exec sleep 300' {hostname}" % pidfile
        w = self.worker("--source", "stdin", "--store", "memory", "--restarter", "exec",
                        "--allow-volatile-cooldown", "--restart-command", cmd, "--status-interval", "0",
                        stdin=subprocess.PIPE)
        wait_until(lambda: "worker started" in w.stderr(), what="the worker to start")
        w.proc.stdin.write(b'{"message_id":"m1","instance_name":"i-1","hostname":"h1"}\n')
        w.proc.stdin.flush()
        leader = int(wait_until(lambda: os.path.exists(pidfile) and read(pidfile).strip(),
                                what="the command to start"))
        try:
            self.assertFalse(pid_gone(leader))
            w.signal(signal.SIGKILL)
            w.wait(timeout=10)
            wait_until(lambda: pid_gone(leader), timeout=10,
                       what="the command %d to die with its worker" % leader)
        finally:
            kill_group(leader)  # the command runs in its own process group

    def test_without_mayhem_exec_next_to_the_binary_exec_is_refused_with_exit_2(self):
        # An install that copied only the worker's binary: every restart would fail, so the
        # worker refuses to start (exit 2: a restart loop would not fix it).
        alone = os.path.join(self.tmp, "bin", "mayhem")
        os.mkdir(os.path.dirname(alone))
        shutil.copy(harness.MAYHEM, alone)
        r = subprocess.run([alone, "worker", "--source", "stdin", "--store", "memory",
                            "--restarter", "exec", "--allow-volatile-cooldown",
                            "--restart-command", "true {hostname}"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=30 * harness.SLOW)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("'mayhem-exec' is not next to the mayhem binary", r.stderr)
        # With it beside the binary, the same worker runs the command.
        shutil.copy(os.path.join(os.path.dirname(harness.MAYHEM), "mayhem-exec"),
                    os.path.dirname(alone))
        r = subprocess.run([alone, "worker", "--source", "stdin", "--store", "memory",
                            "--restarter", "exec", "--allow-volatile-cooldown",
                            "--restart-command", "true {hostname}", "--status-interval", "0"],
                           input='{"message_id":"m1","instance_name":"i-1","hostname":"h1"}\n',
                           capture_output=True, text=True, timeout=60 * harness.SLOW)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertEqual(harness.parse_summary(r.stdout)["acked"], 1, r.stderr[-3000:])

    def test_in_a_delegated_cgroup_what_escaped_the_group_is_killed_too(self):
        cg = self.delegated_cgroup()
        pidfile = os.path.join(self.tmp, "escaped")
        # The escapee leaves the command's process group (setsid) before the command exits 0.
        cmd = ("sh -c 'setsid sh -c \"echo \\$\\$ > %s; exec sleep 300\" & "
               "while [ ! -s %s ]; do sleep 0.01; done' {hostname}" % (pidfile, pidfile))
        feed = os.path.join(self.tmp, "in.ndjson")
        with open(feed, "w") as f:
            f.write('{"message_id":"m1","instance_name":"i-1","hostname":"h1"}\n')
        out_path = os.path.join(self.tmp, "worker.out")
        err_path = os.path.join(self.tmp, "worker.err")
        with open(feed) as stdin, open(out_path, "w") as out, open(err_path, "w") as err:
            # Started inside the delegated cgroup, as systemd starts a Delegate=yes service.
            proc = subprocess.Popen(
                [harness.MAYHEM, "worker", "--source", "stdin", "--store", "memory",
                 "--restarter", "exec", "--allow-volatile-cooldown", "--restart-command", cmd,
                 "--status-interval", "0"],
                stdin=stdin, stdout=out, stderr=err, cwd=self.tmp,
                preexec_fn=lambda: self.join(cg))
            self._procs.append(proc)
            code = proc.wait(timeout=60 * harness.SLOW)
        log = read(err_path)
        escaped = int(read(pidfile))
        try:
            self.assertEqual(code, 0, log[-3000:])
            self.assertEqual(harness.parse_summary(read(out_path))["acked"], 1, log[-3000:])
            self.assertTrue(pid_gone(escaped), "the escaped process %d still runs" % escaped)
            self.assertEqual([d for d in os.listdir(cg) if os.path.isdir(os.path.join(cg, d))],
                             [], "the command's cgroup is removed")
            self.assertIn("restart commands run in cgroups of their own", log)
            self.assertIn("left processes running when it exited", log)
        finally:
            kill_group(escaped)

    # -- a delegated cgroup v2 for one test --------------------------------------------------

    def delegated_cgroup(self):
        """A fresh cgroup v2 directory marked as systemd marks a Delegate=yes unit's cgroup, or
        the test is skipped where none can be made (no cgroup2, not writable, no cgroup.kill)."""
        mount = None
        with open("/proc/self/mountinfo") as f:
            for line in f:
                head, _, tail = line.partition(" - ")
                if tail.split()[:1] == ["cgroup2"]:
                    mount = head.split()[4]
                    break
        own = [l[3:].strip() for l in read("/proc/self/cgroup").splitlines() if l.startswith("0::")]
        if not mount or not own:
            self.skipTest("no cgroup v2 hierarchy mounted")
        cg = os.path.join(mount + own[0].rstrip("/"), "mayhem-test-%d-%d" % (os.getpid(),
                                                                             time.monotonic_ns()))
        try:
            os.mkdir(cg)
        except OSError as e:
            self.skipTest("cannot create a cgroup under %s: %s" % (mount, e))
        self.addCleanup(self.remove_cgroup, cg)
        for attr in ("trusted.delegate", "user.delegate"):
            try:
                os.setxattr(cg, attr, b"1")
                break
            except OSError:
                pass
        else:
            self.skipTest("cannot mark a cgroup delegated (xattr)")
        if not os.path.exists(os.path.join(cg, "cgroup.kill")):
            self.skipTest("no cgroup.kill (Linux < 5.14)")
        return cg

    @staticmethod
    def join(cg):
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write("0")

    @staticmethod
    def remove_cgroup(cg):
        for dirpath, dirs, _ in os.walk(cg, topdown=False):
            try:
                with open(os.path.join(dirpath, "cgroup.kill"), "w") as f:
                    f.write("1")
                wait_until(lambda: "populated 0" in read(os.path.join(dirpath, "cgroup.events")),
                           what="cgroup %s to empty" % dirpath)
                os.rmdir(dirpath)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise


if __name__ == "__main__":
    unittest.main()
