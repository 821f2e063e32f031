"""What a restart command inherits from the worker, and what becomes of it when the worker dies.

`--restarter exec` with real commands: the descriptors a command receives while the Redis
source and the SQLite store are in use, and a command's fate when its worker is SIGKILLed.
"""

import os
import re
import signal
import subprocess
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
                        "--restart-command", cmd, "--status-interval", "0",
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


if __name__ == "__main__":
    unittest.main()
