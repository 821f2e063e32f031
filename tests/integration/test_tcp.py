"""`--source tcp` (README, "TCP") over real loopback sockets: every line answered on its
connection, bad lines answered with their decode error while the connection keeps working, a
producer that never reads cut off at the answer cap, --max-connections refusing cleanly, the
drain answering every request it read before closing, signed requests, and `mayhem publish
--tcp` (its counts, --connections, --retry).
"""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import unittest

import harness
from harness import Harness, free_port, http_get, wait_until

ZERO = ["--save-latency", "0", "--restart-latency", "0"]


def request(tag, i):
    return '{"message_id": "%s-%06d", "instance_name": "cattle-%d"}\n' % (tag, i, i % 97)


class Answers:
    """Reads one connection's answer lines on a thread until EOF, a reset, or `want` lines."""

    def __init__(self, sock, want=None):
        self.sock = sock
        self.want = want
        self.lines = []
        self.eof = False
        self.error = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        buf = b""
        try:
            while self.want is None or len(self.lines) < self.want:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.eof = True
                    break
                buf += chunk
                *complete, buf = buf.split(b"\n")
                self.lines.extend(json.loads(x) for x in complete)
        except OSError as e:
            self.error = e
        finally:
            self.done.set()

    def wait(self, timeout=60.0):
        if not self.done.wait(timeout * harness.SLOW):
            raise AssertionError("answers: got %d of %r in time" % (len(self.lines), self.want))
        return self.lines


class Tcp(Harness):
    def start(self, *args, metrics=False):
        """A worker on --source tcp and a free port; returns (worker, port, metrics base URL)."""
        port = free_port()
        extra = []
        base = None
        if metrics:
            mport = free_port()
            extra = ["--metrics-addr", "127.0.0.1:%d" % mport]
            base = "http://127.0.0.1:%d" % mport
        w = self.worker("--source", "tcp", "--listen", "127.0.0.1:%d" % port, "--store",
                        "memory", "--restarter", "simulate", "--status-interval", "0",
                        *extra, *args)
        wait_until(lambda: "tcp: listening" in w.stderr() or not w.alive(), 10,
                   what="the worker to listen")
        self.assertTrue(w.alive(), w.stderr()[-2000:])
        return w, port, base

    def connect(self, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=30 * harness.SLOW)
        self.addCleanup(s.close)
        return s

    def metric(self, base, name, labels=""):
        status, body = http_get(base + "/metrics")
        self.assertEqual(status, 200)
        m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), body, re.M)
        self.assertIsNotNone(m, "%s%s not in /metrics" % (name, labels))
        return float(m.group(1))

    def stop(self, w, codes=(0,)):
        w.signal(signal.SIGTERM)
        code, out, err = w.wait(60)
        self.assertIn(code, codes, err[-3000:])
        s = w.summary()
        self.assert_identity(s)
        return s

    def test_20000_lines_over_4_connections_all_answered(self):
        w, port, _ = self.start(*ZERO)
        n, conns = 5000, 4
        socks = [self.connect(port) for _ in range(conns)]
        readers = [Answers(s, want=n) for s in socks]

        def send(s, tag):
            s.sendall("".join(request(tag, i) for i in range(n)).encode())

        senders = [threading.Thread(target=send, args=(s, "c%d" % k)) for k, s in enumerate(socks)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        for k, r in enumerate(readers):
            got = r.wait()
            self.assertEqual(len(got), n)
            ids = sorted(a["message_id"] for a in got)
            # Each of this connection's requests answered once, on this connection.
            self.assertEqual(ids, ["c%d-%06d" % (k, i) for i in range(n)])
            self.assertEqual({a["outcome"] for a in got}, {"acked"})
        s = self.stop(w)
        self.assertEqual(s["received"], n * conns)
        self.assertEqual(s["acked"], n * conns)

    def test_bad_lines_are_answered_and_the_connection_keeps_working(self):
        w, port, base = self.start("--max-message-bytes", "1024", *ZERO, metrics=True)
        s = self.connect(port)
        lines = [
            request("ok", 1).encode(),
            b"this is not json\n",
            b'{"message_id": "long", "instance_name": "' + b"x" * 5000 + b'"}\n',
            b'{"message_id": "bad-\xff\xfe", "instance_name": "cattle-1"}\n',
            b"\n",  # blank: skipped, not answered, but it has a line number
            request("ok", 6).encode(),
        ]
        r = Answers(s, want=5)
        for line in lines:
            s.sendall(line)
        got = r.wait()
        by_line = {a["line"]: a for a in got if a["message_id"] is None}
        acked = sorted(a["message_id"] for a in got if a["outcome"] == "acked")
        self.assertEqual(acked, ["ok-000001", "ok-000006"])
        self.assertEqual(sorted(by_line), [2, 3, 4])
        for a in by_line.values():
            self.assertEqual(a["outcome"], "dead_lettered")
        self.assertIn("invalid JSON", by_line[2]["error"])
        self.assertIn("more than max-message-bytes 1024", by_line[3]["error"])
        self.assertIn("not valid UTF-8", by_line[4]["error"])
        # The same connection still takes requests after all that.
        r2 = Answers(s, want=1)
        s.sendall(request("after", 7).encode())
        self.assertEqual(r2.wait()[0]["message_id"], "after-000007")
        # Counted as decode errors and dead letters, like any source's.
        for reason in ("invalid_json", "too_large", "not_utf8"):
            self.assertEqual(
                self.metric(base, "mayhem_decode_errors_total", '{reason="%s"}' % reason), 1)
        st = self.stop(w)
        self.assertEqual(st["dead_lettered"], 3)
        self.assertEqual(st["acked"], 3)
        self.assertIn("undecodable message dead-lettered", w.stderr())

    def test_a_producer_that_never_reads_is_cut_off_at_the_answer_cap(self):
        w, port, base = self.start("--max-answer-bytes", "4KiB", *ZERO, metrics=True)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills quickly
        s.settimeout(30 * harness.SLOW)
        s.connect(("127.0.0.1", port))
        block = "".join(request("deaf", i) for i in range(2000)).encode()
        cut = False
        for _ in range(500):  # up to 1,000,000 requests; the cap is hit long before
            try:
                s.sendall(block)
            except OSError:  # reset or broken pipe: the worker closed it
                cut = True
                break
        self.assertTrue(cut, "the worker never closed a connection whose answers pile up")
        wait_until(lambda: self.metric(base, "mayhem_tcp_disconnects_total",
                                       '{cause="answer_queue_full"}') == 1, 10,
                   what="the disconnect to be counted")
        # Logged too (by the logger's own thread: it may trail the metric).
        wait_until(lambda: "producer does not read its answers" in w.stderr(), 10,
                   what="the disconnect to be logged")
        # The worker is healthy: another producer is answered as usual.
        ok = self.connect(port)
        r = Answers(ok, want=10)
        ok.sendall("".join(request("fine", i) for i in range(10)).encode())
        self.assertEqual({a["outcome"] for a in r.wait()}, {"acked"})
        self.assertEqual(http_get(base + "/healthz")[0], 200)
        st = self.stop(w)
        # Work taken from the cut-off connection was done; only its answers were lost.
        self.assertGreater(st["acked"], 10)

    def test_a_producer_that_leaves_early_does_not_cancel_its_work(self):
        w, port, base = self.start("--save-latency", "0", "--restart-latency", "300ms",
                                   metrics=True)
        s = self.connect(port)
        s.sendall("".join(request("gone", i) for i in range(100)).encode())
        s.close()  # before any answer can be ready

        def acked():
            status, body = http_get(base + "/metrics")
            m = re.search(r'^mayhem_messages_completed_total\{[^}]*outcome="acked"[^}]*\} (\S+)$',
                          body, re.M)
            return float(m.group(1)) if m else 0

        wait_until(lambda: acked() == 100, 30, what="the 100 requests to be acked")
        st = self.stop(w)
        self.assertEqual(st["acked"], 100)
        self.assertEqual(st["received"], 100)

    def test_an_idle_connection_is_closed(self):
        w, port, base = self.start("--tcp-idle-timeout", "300ms", *ZERO, metrics=True)
        busy = self.connect(port)
        r = Answers(busy, want=1)
        busy.sendall(request("busy", 0).encode())
        self.assertEqual(r.wait()[0]["outcome"], "acked")
        idle = Answers(self.connect(port))
        idle.wait(10)
        self.assertTrue(idle.eof or idle.error)
        self.assertEqual(idle.lines, [])
        self.assertGreaterEqual(
            self.metric(base, "mayhem_tcp_disconnects_total", '{cause="idle"}'), 1)
        self.stop(w)

    def test_max_connections_refuses_cleanly(self):
        w, port, base = self.start("--max-connections", "2", *ZERO, metrics=True)
        a, b = self.connect(port), self.connect(port)
        for k, s in enumerate((a, b)):
            r = Answers(s, want=1)
            s.sendall(request("c%d" % k, 0).encode())
            self.assertEqual(r.wait()[0]["outcome"], "acked")
        extra = self.connect(port)
        r = Answers(extra)
        got = r.wait()
        self.assertTrue(r.eof or r.error, "the refused connection was not closed")
        self.assertEqual(len(got), 1)
        self.assertIsNone(got[0]["message_id"])
        self.assertIn("too many connections: --max-connections 2", got[0]["error"])
        self.assertEqual(self.metric(base, "mayhem_tcp_connections_total", '{result="refused"}'),
                         1)
        # One leaves: the next is taken.
        a.close()
        wait_until(lambda: self.metric(base, "mayhem_tcp_connections", "") == 1, 10,
                   what="the closed connection to be counted")
        c = self.connect(port)
        r = Answers(c, want=1)
        c.sendall(request("late", 0).encode())
        self.assertEqual(r.wait()[0]["message_id"], "late-000000")
        st = self.stop(w)
        self.assertEqual(st["acked"], 3)

    def test_sigterm_while_producers_send_answers_everything_read(self):
        w, port, _ = self.start("--save-latency", "0", "--restart-latency", "20ms..80ms",
                                "--max-in-flight", "200")
        socks = [self.connect(port) for _ in range(3)]
        readers = [Answers(s) for s in socks]
        sent = [0] * len(socks)
        stop_sending = threading.Event()

        def send(k, s):
            i = 0
            try:
                while not stop_sending.is_set():
                    s.sendall("".join(request("p%d" % k, i + j) for j in range(50)).encode())
                    i += 50
                    sent[k] = i
            except OSError:
                pass  # the worker shut the connection down

        senders = [threading.Thread(target=send, args=(k, s), daemon=True)
                   for k, s in enumerate(socks)]
        for t in senders:
            t.start()
        wait_until(lambda: sum(len(r.lines) for r in readers) >= 500, 30,
                   what="answers to flow")
        w.signal(signal.SIGTERM)
        wait_until(lambda: "tcp: listener closed" in w.stderr(), 10,
                   what="the listener to close")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        code, out, err = w.wait(60)
        stop_sending.set()
        self.assertIn(code, (0, 3), err[-3000:])  # 3: lines read at the stop were released
        for r in readers:
            r.wait()
        s = w.summary()
        self.assert_identity(s)
        answers = [a for r in readers for a in r.lines]
        # Every request the worker took got exactly one answer before its connection closed.
        self.assertEqual(len(answers), s["received"])
        ids = [a["message_id"] for a in answers]
        self.assertEqual(len(ids), len(set(ids)))
        counts = {o: sum(1 for a in answers if a["outcome"] == o)
                  for o in ("acked", "released", "retried", "dead_lettered", "skipped")}
        self.assertEqual(counts["acked"], s["acked"])
        self.assertEqual(counts["released"], s["released"])
        self.assertTrue(all(r.eof or r.error for r in readers))

    def test_signed_requests(self):
        key = os.path.join(self.tmp, "key")
        with open(key, "w") as f:
            f.write("ab" * 32 + "\n")
        os.chmod(key, 0o600)
        w, port, _ = self.start("--auth-key-file", key, *ZERO)
        code, out, err = self.publish("--tcp", "127.0.0.1:%d" % port, "--count", 200,
                                      "--auth-key-file", key)
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["acked"], 200)
        s = self.connect(port)
        r = Answers(s, want=1)
        s.sendall(request("unsigned", 1).encode())
        a = r.wait()[0]
        self.assertEqual(a["outcome"], "dead_lettered")
        self.assertIsNone(a["message_id"])
        self.assertIn("signature", a["error"] + "")
        st = self.stop(w)
        self.assertEqual(st["acked"], 200)
        self.assertEqual(st["dead_lettered"], 1)

    def test_publish_counts_outcomes_over_connections(self):
        w, port, _ = self.start(*ZERO)
        addr = "127.0.0.1:%d" % port
        code, out, err = self.publish("--tcp", addr, "--count", 3000, "--connections", 3,
                                      "--bad-ratio", "0.1", "--seed", 7)
        self.assertEqual(code, 0, err)
        r = json.loads(out)
        self.assertEqual(r["requests"], 3000)
        self.assertEqual(r["acked"] + r["dead_lettered"], 3000)
        self.assertGreater(r["dead_lettered"], 0)
        self.assertEqual(r["not_done"], 0)
        # Standard input, one request a line.
        lines = "".join(request("in", i) for i in range(20))
        code, out, err = self.publish("--tcp", addr, "--stdin", stdin=lines)
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["acked"], 20)
        s = self.stop(w)
        self.assertEqual(s["received"], 3020)

    def test_publish_retry_sends_retried_requests_again(self):
        w, port, _ = self.start("--save-latency", "0", "--restart-latency", "0",
                                "--restart-failure-rate", "0.5", "--retry-backoff",
                                "10ms..50ms", "--seed", "3")
        addr = "127.0.0.1:%d" % port
        code, out, err = self.publish("--tcp", addr, "--count", 300)
        self.assertEqual(code, 1, "without --retry, retried requests are not done: " + out)
        self.assertGreater(json.loads(out)["not_done"], 0)
        code, out, err = self.publish("--tcp", addr, "--count", 300, "--retry")
        self.assertEqual(code, 0, err)
        r = json.loads(out)
        self.assertGreater(r["retried"], 0)
        self.assertEqual(r["not_done"], 0)
        self.assertEqual(r["acked"] + r["skipped"], 300)
        self.stop(w)

    def test_publish_retry_connects_again_after_a_refusal(self):
        w, port, base = self.start("--max-connections", "1", *ZERO, metrics=True)
        holder = self.connect(port)
        r = Answers(holder, want=1)
        holder.sendall(request("holder", 0).encode())
        self.assertEqual(r.wait()[0]["outcome"], "acked")
        p = subprocess.Popen([harness.MAYHEM, "publish", "--tcp", "127.0.0.1:%d" % port,
                              "--count", "50", "--retry"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self._procs.append(p)
        wait_until(lambda: self.metric(base, "mayhem_tcp_connections_total",
                                       '{result="refused"}') >= 1, 10,
                   what="the publisher to be refused")
        holder.close()  # room again: the publisher's next attempt is taken
        out, err = p.communicate(timeout=60 * harness.SLOW)
        self.assertEqual(p.returncode, 0, err)
        res = json.loads(out)
        self.assertGreaterEqual(res["refused"], 1)
        self.assertEqual(res["acked"], 50)
        self.assertEqual(res["not_done"], 0)
        self.stop(w)

    def test_publish_fails_when_nobody_listens(self):
        code, out, err = self.publish("--tcp", "127.0.0.1:%d" % free_port(), "--count", 5)
        self.assertEqual(code, 1)
        self.assertIn("cannot connect", err)
        self.assertEqual(json.loads(out)["not_done"], 5)

    def test_publish_flags_that_do_not_go_together_exit_2(self):
        for args, says in ((["--tcp", "127.0.0.1:1", "--output", "-"], "--output"),
                           (["--retry"], "--retry applies only with --tcp"),
                           (["--connections", "4"], "--connections applies only with --tcp"),
                           (["--tcp", "localhost:7478"], "numeric IPv4")):
            code, out, err = self.publish(*args)
            self.assertEqual(code, 2, args)
            self.assertIn(says, err)

    def test_listen_address_in_use_exits_2(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            code, summary, err = self.run_worker("--source", "tcp", "--listen",
                                                 "127.0.0.1:%d" % port, "--store", "memory",
                                                 "--restarter", "simulate")
        self.assertEqual(code, 2, err)
        self.assertIn("cannot listen on 127.0.0.1:%d" % port, err)


if __name__ == "__main__":
    unittest.main()
