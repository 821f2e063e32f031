"""The worker's lifecycle under real signals: drain on SIGTERM/SIGINT, the drain deadline, a
second signal, SIGHUP. Times are printed for the record, never asserted.
"""

import json
import os
import signal
import time
import unittest

import harness
from harness import Harness


def started(w):
    """Waits for the worker's start line (a signal sent before it is held until then)."""
    harness.wait_until(lambda: "worker started" in w.stderr() or not w.alive(),
                       timeout=20, what="worker started")
    if not w.alive():
        raise AssertionError("worker exited early: %r" % w.stderr()[-3000:])


def wait_received(w, at_least):
    """Waits for a status line that shows at least `at_least` messages received."""
    def seen():
        for rec in harness.json_log_lines(w.stderr()):
            if rec.get("msg") == "status" and rec.get("received", 0) >= at_least:
                return True
        return False
    harness.wait_until(seen, timeout=20, what="%d messages received" % at_least)


def restarts_running(port):
    """mayhem_restarts_running on the worker's /metrics (0 when it cannot be read)."""
    status, body = harness.http_get("http://127.0.0.1:%d/metrics" % port)
    for line in body.splitlines() if status == 200 else []:
        if line.startswith("mayhem_restarts_running "):
            return float(line.split()[1])
    return 0


class Drain(Harness):
    def test_sigterm_finishes_in_flight_work(self):
        # --rate 300: fewer in flight than --max-in-flight, so nothing waits in the queue; the
        # memory store answers a claim at once, so every message taken has begun its restart
        # when the signal comes (a claim still being written would be released).
        w = self.worker("--store", "memory", "--save-latency", "200ms..400ms", "--restart-latency", "200ms..400ms",
                        "--rate", "300", "--log-format", "json", "--status-interval", "50ms")
        started(w)
        wait_received(w, 100)
        t0 = time.monotonic()
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=30)
        print("\nSIGTERM with 200-400 ms latencies: exited after %.3fs" % (time.monotonic() - t0))
        self.assertEqual(code, 0, err[-3000:])
        s = harness.parse_summary(out)
        self.assert_identity(s)
        self.assertGreater(s["received"], 0, s)
        self.assertEqual(s["received"], s["acked"], s)
        self.assertEqual(s["released"], 0, s)
        drained = [r for r in harness.json_log_lines(err) if r.get("msg") == "drain finished"]
        self.assertEqual(len(drained), 1, err[-3000:])
        self.assertEqual(drained[0]["released"], 0)

    def test_sigterm_during_start_up_is_held_then_drains(self):
        # The worker reads --config from a FIFO, so it waits in start-up, inside run_worker,
        # until the test writes the file; a SIGTERM sent then must not kill it.
        fifo = os.path.join(self.tmp, "config.json")
        os.mkfifo(fifo)
        w = self.worker("--config", fifo, "--store", "memory", "--messages", "0",
                        "--save-latency", "0", "--restart-latency", "0", "--log-format", "json")
        fd = None

        def reader_waiting():
            nonlocal fd
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader opens
                return True
            except OSError:
                return not w.alive()
        harness.wait_until(reader_waiting, timeout=20, what="the worker to open its config")
        self.assertIsNotNone(fd, w.stderr()[-3000:])
        try:
            w.signal(signal.SIGUSR1)  # the in-flight dump, asked for too early
            w.signal(signal.SIGTERM)  # the worker is blocked reading its config
            time.sleep(0.2)
            self.assertTrue(w.alive(), "killed by a SIGUSR1 or SIGTERM during start-up")
            os.write(fd, b"{}")
        finally:
            os.close(fd)
        code, out, err = w.wait(timeout=30)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(harness.parse_summary(out))
        self.assertIn("drain", err)
        self.assertIn("SIGUSR1: messages in flight", err)  # held, then handled

    def test_sigint_drains_like_sigterm(self):
        w = self.worker("--store", "memory", "--save-latency", "100ms..200ms",
                        "--restart-latency", "100ms..200ms", "--rate", "300", "--log-format", "json", "--status-interval", "50ms")
        started(w)
        wait_received(w, 10)
        w.signal(signal.SIGINT)
        code, out, err = w.wait(timeout=30)
        self.assertEqual(code, 0, err[-3000:])
        s = harness.parse_summary(out)
        self.assert_identity(s)
        self.assertEqual((s["received"], s["released"]), (s["acked"], 0), s)
        self.assertIn('"signal":"SIGINT"', err)

    def test_drain_timeout_releases_unfinished_work(self):
        port = harness.free_port()
        w = self.worker("--save-latency", "2s", "--restart-latency", "2s",
                        "--drain-timeout", "100ms", "--log-format", "json",
                        "--status-interval", "50ms", "--metrics-addr", "127.0.0.1:%d" % port)
        started(w)
        wait_received(w, 10)
        # A drain waits only for restarts already running (messages still saving are released
        # at once): the deadline is only reached with one running.
        harness.wait_until(lambda: restarts_running(port) > 0, timeout=20,
                           what="a restart running")
        t0 = time.monotonic()
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=30)
        print("\nSIGTERM, --drain-timeout 100ms, 2 s latencies: exited after %.3fs"
              % (time.monotonic() - t0))
        self.assertEqual(code, 3, err[-3000:])
        s = harness.parse_summary(out)
        self.assert_identity(s)
        self.assertGreater(s["released"], 0, s)
        self.assertEqual(s["received"], s["acked"] + s["released"], s)
        drained = [r for r in harness.json_log_lines(err) if r.get("msg") == "drain finished"]
        self.assertEqual(len(drained), 1, err[-3000:])
        self.assertTrue(drained[0]["deadline_hit"], drained)

    def test_second_signal_forces_exit(self):
        # The drain would wait up to 10 minutes for 5 s restarts; the second signal ends it now.
        w = self.worker("--save-latency", "5s", "--restart-latency", "5s",
                        "--drain-timeout", "10m", "--log-format", "json",
                        "--status-interval", "50ms")
        started(w)
        wait_received(w, 10)
        w.signal(signal.SIGTERM)
        harness.wait_until(lambda: "draining" in w.stderr(), timeout=10, what="draining")
        t0 = time.monotonic()
        w.signal(signal.SIGINT)
        code, out, err = w.wait(timeout=30)
        print("\nsecond signal during a drain: exited after %.3fs" % (time.monotonic() - t0))
        self.assertEqual(code, 3, err[-3000:])
        s = harness.parse_summary(out)
        self.assert_identity(s)
        self.assertGreater(s["released"], 0, s)
        self.assertEqual(s["received"], s["acked"] + s["released"], s)
        self.assertIn("second signal", err)

    def test_sigterm_releases_retries_waiting_for_redelivery(self):
        # Failed restarts wait out a long backoff inside the (local) simulate source; a drain
        # cannot wait for them, so they are abandoned: counted, warned about, exit 3.
        w = self.worker("--save-latency", "0", "--restart-latency", "0",
                        "--restart-failure-rate", "1", "--retry-backoff", "1h",
                        "--rate", "200", "--log-format", "json", "--status-interval", "50ms")
        started(w)
        wait_received(w, 5)
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=30)
        s = harness.parse_summary(out)
        self.assert_identity(s)
        self.assertGreater(s["retried"], 0, s)
        self.assertEqual(s["abandoned"], s["retried"], s)
        self.assertEqual(code, 3, err[-3000:])
        self.assertIn("retried messages were waiting for redelivery", err)


class Reload(Harness):
    def test_sighup_rereads_the_log_level(self):
        conf = os.path.join(self.tmp, "mayhem.json")
        with open(conf, "w") as f:
            json.dump({"log-level": "info", "rate": 50}, f)
        w = self.worker("--config", conf, "--store", "memory", "--save-latency", "0",
                        "--restart-latency", "0", "--log-format", "json")
        started(w)
        self.assertNotIn("message settled", w.stderr())
        with open(conf, "w") as f:
            json.dump({"log-level": "debug", "rate": 50, "max-in-flight": 7}, f)
        w.signal(signal.SIGHUP)
        harness.wait_until(lambda: "SIGHUP: log level changed" in w.stderr(), timeout=10,
                           what="the log level change to be logged")
        # Debug lines (one per settled message) follow once the level is debug.
        harness.wait_until(lambda: "message settled" in w.stderr(), timeout=10,
                           what="debug lines after SIGHUP")
        changed = [r for r in harness.json_log_lines(w.stderr())
                   if r.get("msg") == "SIGHUP: log level changed"]
        self.assertEqual((changed[0]["from"], changed[0]["to"]), ("info", "debug"))
        limit = [r for r in harness.json_log_lines(w.stderr())
                 if r.get("msg") == "SIGHUP: max-in-flight changed"]
        self.assertEqual((limit[0]["from"], limit[0]["to"]), (1000, 7))
        self.assertTrue(w.alive())
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=30)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(harness.parse_summary(out))

    def test_sighup_with_a_broken_config_keeps_running(self):
        conf = os.path.join(self.tmp, "mayhem.json")
        with open(conf, "w") as f:
            json.dump({"rate": 50}, f)
        w = self.worker("--config", conf, "--store", "memory", "--save-latency", "0",
                        "--restart-latency", "0", "--log-format", "json")
        started(w)
        with open(conf, "w") as f:
            f.write("{ not json")
        w.signal(signal.SIGHUP)
        harness.wait_until(lambda: "configuration not reloaded" in w.stderr(), timeout=10,
                           what="the reload error")
        self.assertTrue(w.alive())
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=30)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(harness.parse_summary(out))


class ReloadRules(Harness):
    """issue 13 cases 6 and 10: what SIGHUP cannot apply is said, a removed key keeps its value,
    and the file is never read on the event loop."""

    def start(self, values, *args):
        self.conf = os.path.join(self.tmp, "mayhem.json")
        self.rewrite(values)
        w = self.worker("--config", self.conf, "--store", "memory", "--save-latency", "0",
                        "--restart-latency", "0", "--log-format", "json", *args)
        started(w)
        return w

    def rewrite(self, values):
        with open(self.conf + ".new", "w") as f:
            json.dump(values, f)
        os.replace(self.conf + ".new", self.conf)

    def reload(self, w):
        """SIGHUP, then the reload's summary line."""
        before = len(self.lines(w, "SIGHUP: configuration re-read"))
        w.signal(signal.SIGHUP)
        harness.wait_until(lambda: len(self.lines(w, "SIGHUP: configuration re-read")) > before,
                           timeout=15, what="the reload to be logged")
        return self.lines(w, "SIGHUP: configuration re-read")[-1]

    def lines(self, w, msg):
        return [r for r in harness.json_log_lines(w.stderr()) if r.get("msg") == msg]

    def stop(self, w):
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(timeout=30)
        self.assertEqual(code, 0, err[-3000:])
        self.assert_identity(harness.parse_summary(out))

    def test_a_change_that_needs_a_restart_is_logged(self):
        w = self.start({"rate": 50, "drain-timeout": "30s"})
        self.rewrite({"rate": 50, "drain-timeout": "1s"})
        done = self.reload(w)
        needs = self.lines(w, "SIGHUP: changed, but takes effect only after a restart")
        self.assertEqual([(r["key"], r["from"], r["to"]) for r in needs],
                         [("drain-timeout", "30s", "1s")], w.stderr()[-3000:])
        self.assertEqual((done["changes"], done["need_restart"]), (0, 1), done)
        self.stop(w)

    def test_a_removed_key_keeps_its_running_value(self):
        port = harness.free_port()
        w = self.start({"rate": 50, "max-in-flight": 50},
                       "--metrics-addr", "127.0.0.1:%d" % port)
        self.rewrite({"rate": 50})
        self.reload(w)
        self.assertEqual(self.lines(w, "SIGHUP: max-in-flight changed"), [])
        kept = self.lines(w, "SIGHUP: no longer set; the running value stays until a restart")
        self.assertEqual([(r["key"], r["value"]) for r in kept], [("max-in-flight", "50")])
        status, body = harness.http_get("http://127.0.0.1:%d/metrics" % port)
        self.assertEqual(status, 200)
        self.assertRegex(body, r"(?m)^mayhem_max_in_flight 50$")
        self.stop(w)

    def test_a_config_that_blocks_never_stalls_the_worker(self):
        w = self.start({"rate": 50})
        os.remove(self.conf)
        os.mkfifo(self.conf)  # opening it for reading blocks until a writer comes: none will
        w.signal(signal.SIGHUP)
        harness.wait_until(lambda: any("took longer" in r.get("error", "") for r in
                                       self.lines(w, "SIGHUP: configuration not reloaded")),
                           timeout=30, what="the reload to give up")
        w.signal(signal.SIGHUP)
        harness.wait_until(lambda: self.lines(
            w, "SIGHUP: ignored, the configuration is still being read"),
            timeout=15, what="the second SIGHUP to be refused")
        self.stop(w)  # the drain runs: the loop was never blocked


if __name__ == "__main__":
    unittest.main()
