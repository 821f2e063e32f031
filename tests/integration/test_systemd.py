"""Running under systemd: the notification protocol (sd_notify) against a datagram socket the
test owns, as systemd's own would be, and the shipped unit's sandbox rating."""

import os
import re
import signal
import shutil
import socket
import subprocess
import time
import unittest

import harness
from harness import Harness, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(ROOT, "deploy", "systemd", "mayhem.service")


class SystemdTest(Harness):
    def notify_socket(self):
        path = os.path.join(self.tmp, "notify")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.settimeout(0.05)
        self.addCleanup(s.close)
        return s, path

    @staticmethod
    def drain(sock, into):
        while True:
            try:
                into.extend(sock.recv(4096).decode().splitlines())
            except socket.timeout:
                return

    def test_ready_watchdog_status_and_stopping_reach_systemd_in_order(self):
        sock, path = self.notify_socket()
        w = self.worker("--source", "stdin", "--store", "memory", "--restarter", "simulate",
                        "--status-interval", "100ms", stdin=subprocess.PIPE,
                        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        got = []

        def seen(prefix, n=1):
            self.drain(sock, got)
            return sum(1 for g in got if g.startswith(prefix)) >= n or not w.alive()

        wait_until(lambda: seen("READY=1"), timeout=20, what="READY=1")
        ready_at = len(got)
        wait_until(lambda: seen("WATCHDOG=1", 3) and seen("STATUS=", 2), timeout=20,
                   what="watchdog pings and status lines")
        w.signal(signal.SIGTERM)
        code, _, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-2000:])
        self.drain(sock, got)
        ready = got.index("READY=1")
        stopping = got.index("STOPPING=1")
        self.assertLess(ready, stopping, got)
        # The loop pinged the watchdog while it ran, before and after READY.
        self.assertTrue(any(g == "WATCHDOG=1" for g in got[ready_at:stopping]), got)
        self.assertTrue(any(re.match(r"STATUS=\d+ msgs/s, \d+ in flight", g) for g in got), got)
        self.assertEqual(got.count("READY=1"), 1)

    def test_without_a_watchdog_nothing_pings_it(self):
        sock, path = self.notify_socket()
        w = self.worker("--source", "stdin", "--store", "memory", "--restarter", "simulate",
                        "--status-interval", "0", stdin=subprocess.PIPE,
                        env={"NOTIFY_SOCKET": path})
        got = []
        wait_until(lambda: (self.drain(sock, got), "READY=1" in got)[1] or not w.alive(),
                   timeout=20, what="READY=1")
        w.signal(signal.SIGTERM)
        code, _, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-2000:])
        self.drain(sock, got)
        self.assertNotIn("WATCHDOG=1", got)
        self.assertIn("STOPPING=1", got)

    def test_the_shipped_unit_is_sandboxed(self):
        analyze = shutil.which("systemd-analyze")
        self.assertIsNotNone(analyze, "systemd-analyze (package systemd) is in make deps")
        r = subprocess.run([analyze, "security", "--offline=yes", UNIT], capture_output=True,
                           text=True)
        m = re.search(r"Overall exposure level for mayhem.service: (\d+\.\d+)", r.stdout)
        self.assertIsNotNone(m, r.stdout[-2000:] + r.stderr[-2000:])
        print("\nsystemd-analyze security: exposure %s" % m.group(1))
        self.assertLessEqual(float(m.group(1)), 2.0, r.stdout[-3000:])
        unit = open(UNIT).read()
        for line in ("Type=notify", "RestartPreventExitStatus=2", "WatchdogSec="):
            self.assertIn(line, unit)


if __name__ == "__main__":
    unittest.main()
