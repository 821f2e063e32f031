"""Signed requests (issue 19; README "Signed requests and the trust model"): with
--auth-key-file, requests signed by `mayhem publish --auth-key-file` are acked; unsigned ones,
ones signed with another key, signed ones whose instance_name was changed and expired ones are
dead-lettered with their reasons and counted in mayhem_auth_rejected_total, on stdin and on
Redis; two keys rotate, SIGHUP re-reads the key files; a key file others may read is refused.

The tests also sign requests themselves (sign() below, from the README's description of the
canonical form), so a producer written from the README alone is known to work.
"""

import datetime
import hashlib
import hmac
import json
import os
import signal
import subprocess
import unittest

import harness
from harness import Harness, free_port, http_get, wait_until
from test_metrics import parse_metrics, total
from test_redis import STREAM, dead_letters, pending

ZERO = ["--store", "memory", "--save-latency", "0", "--restart-latency", "0",
        "--status-interval", "0"]
REJECTED = "request not signed by a trusted key: dead-lettered"
KEY_A, KEY_B, KEY_C = ("%064x" % 0xA1, "%064x" % 0xB2, "%064x" % 0xC3)


def canonical(fields):
    """README: "mayhem-request-v1," then each signed field as a netstring, absent ones empty."""
    out = b"mayhem-request-v1,"
    for k in ("message_id", "instance_name", "hostname", "reason", "issued_at"):
        v = fields.get(k, "").encode()
        out += b"%d:%s," % (len(v), v)
    return out


def sign(key_hex, fields, issued=None):
    """`fields` signed with the hex key, issued at `issued` (default now), as a JSON line."""
    issued = issued or datetime.datetime.now(datetime.timezone.utc)
    f = dict(fields, issued_at=issued.strftime("%Y-%m-%dT%H:%M:%SZ"))
    f["signature"] = hmac.new(bytes.fromhex(key_hex), canonical(f), hashlib.sha256).hexdigest()
    return json.dumps(f)


def request(mid):
    return {"message_id": mid, "instance_name": "cattle-" + mid}


class SignedRequests(Harness):
    def key_file(self, name, key_hex, mode=0o600):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(key_hex + "\n")
        os.chmod(path, mode)
        return path

    def published(self, lines, *key_files):
        """`mayhem publish --stdin --output -` with these keys: the signed NDJSON lines."""
        keys = [a for k in key_files for a in ("--auth-key-file", k)]
        code, out, err = self.publish("--stdin", "--output", "-", *keys,
                                      stdin="".join(json.dumps(l) + "\n" for l in lines))
        self.assertEqual(code, 0, err)
        return out.splitlines()

    def forged(self, key_a, key_b):
        """One line per way a request is refused, by message_id, with its reason's kind."""
        tampered = json.loads(self.published([request("tampered")], key_a)[0])
        tampered["instance_name"] = "db-primary"
        old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=11)
        return {
            "unsigned": (json.dumps(request("unsigned")), "unsigned"),
            "wrong-key": (self.published([request("wrong-key")], key_b)[0], "bad_signature"),
            "tampered": (json.dumps(tampered), "bad_signature"),
            "expired": (sign(KEY_A, request("expired"), old), "expired"),
        }

    def metrics(self, port):
        status, body = http_get("http://127.0.0.1:%d/metrics" % port)
        return parse_metrics(body) if status == 200 else {}

    def completed(self, port):
        return total(self.metrics(port), "mayhem_messages_completed_total")

    def stdin_worker(self, *args):
        port = free_port()
        w = self.worker("--source", "stdin", "--restarter", "simulate", *ZERO, "--log-format",
                        "json", "--metrics-addr", "127.0.0.1:%d" % port, *args,
                        stdin=subprocess.PIPE)
        return w, port

    def send(self, w, port, lines):
        """Writes the lines to the worker's stdin and waits until each has an outcome."""
        before = self.completed(port)
        w.proc.stdin.write("".join(l + "\n" for l in lines).encode())
        w.proc.stdin.flush()
        wait_until(lambda: self.completed(port) >= before + len(lines) or not w.alive(),
                   timeout=30, what="the lines' outcomes")
        self.assertTrue(w.alive(), w.stderr()[-3000:])

    def test_stdin_signed_requests_acked_forged_ones_dead_lettered_with_reasons(self):
        a, b = self.key_file("a.key", KEY_A), self.key_file("b.key", KEY_B)
        good = self.published([request("good-1"), request("good-2")], a)
        good.append(sign(KEY_A, request("signed-by-python")))
        forged = self.forged(a, b)
        db = os.path.join(self.tmp, "mayhem.db")
        w, port = self.stdin_worker("--auth-key-file", a, "--store", "sqlite", "--db", db)
        wait_until(lambda: self.metrics(port), timeout=10, what="the metrics port")
        self.send(w, port, good + [line for line, _ in forged.values()])
        m = self.metrics(port)
        w.proc.stdin.close()
        code, out, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        s = harness.parse_summary(out)
        self.assertEqual((s["acked"], s["dead_lettered"]), (3, 4), s)
        # Counted apart from decode errors, by reason.
        rejected = {dict(k[1])["reason"]: v for k, v in m.items()
                    if k[0] == "mayhem_auth_rejected_total"}
        self.assertEqual(rejected, {"unsigned": 1, "bad_signature": 2, "expired": 1})
        self.assertEqual(total(m, "mayhem_decode_errors_total"), 0)
        # Each one logged with its reason.
        logged = sorted((l["kind"], l["reason"]) for l in harness.json_log_lines(err)
                        if l.get("msg") == REJECTED)
        self.assertEqual([k for k, _ in logged], sorted(k for _, k in forged.values()), logged)
        reasons = " | ".join(r for _, r in logged)
        for text in ["not signed", "signature does not match", "more than --auth-max-age 10m"]:
            self.assertIn(text, reasons)
        # Never acted on: only the signed requests reached the store.
        self.assertEqual(sorted(r[0] for r in harness.query_db(db, "SELECT message_id FROM messages")),
                         ["good-1", "good-2", "signed-by-python"])

    def test_redis_signed_requests_acked_forged_ones_dead_lettered_with_reasons(self):
        r = self.redis()
        a, b = self.key_file("a.key", KEY_A), self.key_file("b.key", KEY_B)
        code, out, err = self.publish("--redis-url", r.url, "--count", 5, "--auth-key-file", a)
        self.assertEqual(code, 0, err)
        forged = self.forged(a, b)
        code, out, err = self.publish("--redis-url", r.url, "--stdin", "--raw",
                                      stdin="".join(l + "\n" for l, _ in forged.values()))
        self.assertEqual(code, 0, err)
        w = self.worker("--source", "redis", "--restarter", "simulate", "--redis-url", r.url,
                        *ZERO, "--auth-key-file", a, "--exit-when-idle")
        code, out, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        s = w.summary()
        self.assertEqual((s["acked"], s["dead_lettered"]), (5, 4), s)
        self.assertEqual(pending(r), 0)
        dead = {d["message_id"]: d["reason"] for d in dead_letters(r)}
        self.assertEqual(sorted(dead), sorted(forged))
        self.assertIn("not signed", dead["unsigned"])
        self.assertIn("signature does not match", dead["wrong-key"])
        self.assertIn("signature does not match", dead["tampered"])
        self.assertIn("more than --auth-max-age 10m", dead["expired"])

    def test_two_keys_rotate_and_sighup_rereads_the_key_files(self):
        a, b = self.key_file("a.key", KEY_A), self.key_file("b.key", KEY_B)
        # publish given both signs with the last one.
        line = json.loads(self.published([request("p")], a, b)[0])
        self.assertEqual(line["signature"],
                         json.loads(sign(KEY_B, request("p"), datetime.datetime.strptime(
                             line["issued_at"], "%Y-%m-%dT%H:%M:%SZ")))["signature"])

        db = os.path.join(self.tmp, "mayhem.db")
        w, port = self.stdin_worker("--auth-key-file", a, "--auth-key-file", b, "--store",
                                    "sqlite", "--db", db)
        wait_until(lambda: self.metrics(port), timeout=10, what="the metrics port")
        self.send(w, port, [sign(KEY_A, request("old")), sign(KEY_B, request("new")),
                            sign(KEY_C, request("other"))])
        # Rotation ends: b.key now holds the next key; SIGHUP reads it.
        with open(b, "w") as f:
            f.write(KEY_C + "\n")
        w.signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: auth keys changed" in w.stderr(), timeout=10,
                   what="the keys to be re-read")
        self.send(w, port, [sign(KEY_C, request("next")), sign(KEY_B, request("retired"))])
        w.proc.stdin.close()
        code, out, err = w.wait(timeout=60)
        self.assertEqual(code, 0, err[-3000:])
        s = harness.parse_summary(out)
        self.assertEqual((s["acked"], s["dead_lettered"]), (3, 2), s)
        refused = [l for l in harness.json_log_lines(err) if l.get("msg") == REJECTED]
        self.assertEqual([l["kind"] for l in refused], ["bad_signature"] * 2, refused)
        # Which ones: the key that left the file is no longer trusted, the one that came is.
        acked = harness.query_db(db, "SELECT message_id FROM messages ORDER BY message_id")
        self.assertEqual([r[0] for r in acked], ["new", "next", "old"])

    def test_a_key_file_others_can_read_is_refused_with_exit_2(self):
        loose = self.key_file("loose.key", KEY_A, mode=0o644)
        code, summary, err = self.run_worker("--source", "stdin", "--restarter", "simulate",
                                             "--auth-key-file", loose, stdin=subprocess.DEVNULL)
        self.assertEqual(code, 2, err)
        self.assertIn(loose, err)
        self.assertIn("0644", err)
        code, out, err = self.publish("--count", 1, "--output", "-", "--auth-key-file", loose)
        self.assertEqual(code, 2, err)
        self.assertIn(loose, err)
        self.assertIn("0644", err)
        short = self.key_file("short.key", KEY_A[:40])
        code, summary, err = self.run_worker("--source", "stdin", "--restarter", "simulate",
                                             "--auth-key-file", short, stdin=subprocess.DEVNULL)
        self.assertEqual(code, 2, err)
        self.assertIn("at least 32", err)


if __name__ == "__main__":
    unittest.main()
