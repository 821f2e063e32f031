"""Application Default Credentials of the pubsub source and `mayhem publish --pubsub-topic`:
the JWT a service-account key file yields (checked with the public half of a key made by
`openssl genpkey` for the test), the metadata server, refresh before expiry, a refused token,
the token endpoint down and back, and bad key files (exit 2).

No Google endpoint is reachable here: a small local stand-in (Python http.server on a free
loopback port) plays the token endpoint and the metadata server, and sits in front of the
Pub/Sub emulator the way Google's front end does: it checks each call's bearer token (401 when
it is not one it issued, or expired, or revoked) and forwards the call to the emulator.
"""

import base64
import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

import harness
from harness import MAYHEM, SLOW, Harness, PubsubEmulator, free_port, http_get, wait_until

EMULATOR = None


def emulator():
    """The module's emulator, started at first use; SkipTest (with the reason) without one."""
    global EMULATOR
    why = harness.pubsub_emulator_missing()
    if why:
        print(why)
        raise unittest.SkipTest(why)
    if EMULATOR is None:
        tmp = tempfile.mkdtemp(prefix="mayhem-pubsub-auth-")
        unittest.addModuleCleanup(shutil.rmtree, tmp, True)
        EMULATOR = PubsubEmulator(tmp)
        unittest.addModuleCleanup(EMULATOR.stop)
    return EMULATOR


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Google:
    """The stand-in: token endpoint (POST /token), metadata server (GET /computeMetadata/...),
    and the Pub/Sub front end (anything under /v1/), on one free loopback port."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.expires_in = 3600
        self.down = False        # the token endpoint and metadata server answer 503
        self.assertions = []     # JWTs received at /token
        self.metadata_calls = [] # the Metadata-Flavor header of each metadata request
        self.issued = {}         # token -> time it expires
        self.revoked = set()
        self.calls = []          # (method path, bearer or None, status answered)
        self.events = []         # ("token", n) / ("401", path), in order
        self.port = free_port()
        google = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def do_GET(self):
                if self.path.startswith("/computeMetadata/v1/instance/service-accounts/"):
                    with google.lock:
                        google.metadata_calls.append(self.headers.get("Metadata-Flavor"))
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self.reply(403, {"error": "Metadata-Flavor: Google is missing"})
                    return self.issue()
                self.forward("GET", b"")

            def do_POST(self):
                data = self.body()
                if self.path == "/token":
                    form = urllib.parse.parse_qs(data.decode())
                    with google.lock:
                        google.assertions.append(form)
                    return self.issue()
                self.forward("POST", data)

            def issue(self):
                with google.lock:
                    if google.down:
                        return self.reply(503, {"error": "unavailable"})
                    token = "ya29.test-%d" % (len(google.issued) + 1)
                    google.issued[token] = time.monotonic() + google.expires_in
                    google.events.append(("token", len(google.issued)))
                    expires_in = google.expires_in
                self.reply(200, {"access_token": token, "expires_in": expires_in,
                                 "token_type": "Bearer"})

            def forward(self, method, data):
                auth = self.headers.get("Authorization") or ""
                token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
                with google.lock:
                    good = (token in google.issued and token not in google.revoked
                            and google.issued[token] > time.monotonic())
                    if not good:
                        google.calls.append((method + " " + self.path, token, 401))
                        google.events.append(("401", self.path))
                if not good:
                    return self.reply(401, {"error": {
                        "code": 401, "status": "UNAUTHENTICATED",
                        "message": "Request had invalid authentication credentials."}})
                req = urllib.request.Request(google.upstream + self.path, data=data or None,
                                             method=method,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, text = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, text = e.code, e.read()
                with google.lock:
                    google.calls.append((method + " " + self.path, token, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self):
        with self.lock:
            return (list(self.calls), list(self.events), dict(self.issued),
                    list(self.assertions))

    def count(self, path_part, status=None):
        with self.lock:
            return sum(1 for c, _, s in self.calls
                       if path_part in c and (status is None or s == status))


def make_key(tmp):
    """(private key PEM path, public key PEM path): a 2048-bit RSA key made now."""
    key = os.path.join(tmp, "sa.pem")
    pub = os.path.join(tmp, "sa.pub.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-out", key], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub], check=True,
                   capture_output=True)
    return key, pub


def key_file(tmp, pem_path, token_uri, **over):
    with open(pem_path) as f:
        pem = f.read()
    doc = {"type": "service_account", "project_id": "p", "private_key_id": "kid-1",
           "private_key": pem, "client_email": "mayhem@p.iam.gserviceaccount.com",
           "client_id": "1", "token_uri": token_uri}
    doc.update(over)
    path = os.path.join(tmp, "sa-%d.json" % len(os.listdir(tmp)))
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


class AuthCase(Harness):
    expires_in = 3600

    def setUp(self):
        super().setUp()
        self.emulator = emulator()
        self.google = Google(self.emulator.endpoint)
        self.addCleanup(self.google.stop)
        self.google.expires_in = self.expires_in
        self.name = "auth-" + self.id().rsplit(".", 1)[-1].replace("_", "-")
        self.sub = self.emulator.create(self.name, ack_deadline=600)
        self.topic = "projects/p/topics/" + self.name
        self.keydir = os.path.join(self.tmp, "keys")
        os.mkdir(self.keydir)
        self.pem, self.pub = make_key(self.keydir)
        self.key = key_file(self.keydir, self.pem, self.google.endpoint + "/token")

    def env(self, key=True):
        if key:
            return {"GOOGLE_APPLICATION_CREDENTIALS": self.key}
        return {"GOOGLE_APPLICATION_CREDENTIALS": "",
                "GCE_METADATA_HOST": "127.0.0.1:%d" % self.google.port}

    def args(self, *more):
        return ["--source", "pubsub", "--pubsub-subscription", self.sub,
                "--pubsub-endpoint", self.google.endpoint, "--pubsub-credentials", "adc",
                "--dead-letter-topic", "projects/p/topics/%s-dead" % self.name,
                "--store", "memory", "--save-latency", "0", "--restarter", "simulate",
                "--status-interval", "0", *more]

    def publish(self, count, env):
        full = dict(os.environ)
        full.update(env)
        r = subprocess.run([MAYHEM, "publish", "--pubsub-topic", self.topic, "--pubsub-endpoint",
                            self.google.endpoint, "--pubsub-credentials", "adc", "--count",
                            str(count), "--seed", "5"], env=full, capture_output=True,
                           text=True, timeout=60 * SLOW)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["sent"], count)
        return r.stderr

    def metric(self, port, name, labels=""):
        import test_pubsub
        return test_pubsub.metric(port, name, labels)

    def assert_no_secret(self, text):
        with open(self.pem) as f:
            body = f.read().splitlines()[1]
        self.assertNotIn(body, text)
        self.assertNotIn("PRIVATE KEY", text)
        for token in self.google.snapshot()[2]:
            self.assertNotIn(token, text)


class KeyFileTest(AuthCase):
    def test_signed_jwt_is_exchanged_and_its_token_reaches_pubsub(self):
        pub_err = self.publish(50, self.env())
        code, s, err = self.run_worker(*self.args("--exit-when-idle"), env=self.env())
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["acked"], 50, s)
        calls, _, issued, assertions = self.google.snapshot()
        # The JWT: RS256 over header.claims, verified with the public key.
        self.assertTrue(assertions)
        for form in assertions:
            self.assertEqual(form["grant_type"], ["urn:ietf:params:oauth:grant-type:jwt-bearer"])
            header, claims, sig = form["assertion"][0].split(".")
            h = json.loads(b64url_decode(header))
            self.assertEqual((h["alg"], h["typ"], h["kid"]), ("RS256", "JWT", "kid-1"))
            c = json.loads(b64url_decode(claims))
            self.assertEqual(c["iss"], "mayhem@p.iam.gserviceaccount.com")
            self.assertEqual(c["scope"], "https://www.googleapis.com/auth/pubsub")
            self.assertEqual(c["aud"], self.google.endpoint + "/token")
            self.assertEqual(c["exp"] - c["iat"], 3600)
            self.assertLess(abs(c["iat"] - time.time()), 600)
            signed = os.path.join(self.tmp, "signed")
            sigfile = os.path.join(self.tmp, "sig")
            with open(signed, "wb") as f:
                f.write((header + "." + claims).encode())
            with open(sigfile, "wb") as f:
                f.write(b64url_decode(sig))
            v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", self.pub, "-signature",
                                sigfile, signed], capture_output=True, text=True)
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        # Every call (publish, pull, acknowledge, leases) carried a token the endpoint issued.
        self.assertTrue(any(":publish" in c for c, _, _ in calls))
        self.assertTrue(any(":acknowledge" in c for c, _, _ in calls))
        for c, token, status in calls:
            self.assertIn(token, issued, c)
            self.assertEqual(status, 200, c)
        self.assert_no_secret(err + pub_err)


class MetadataServerTest(AuthCase):
    def test_without_a_key_file_the_metadata_server_gives_the_token(self):
        self.publish(20, self.env(key=False))
        code, s, err = self.run_worker(*self.args("--exit-when-idle"), env=self.env(key=False))
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(s["acked"], 20, s)
        calls, _, issued, assertions = self.google.snapshot()
        self.assertEqual(assertions, [])  # no key file: no JWT
        self.assertTrue(self.google.metadata_calls)
        self.assertEqual(set(self.google.metadata_calls), {"Google"})
        for c, token, status in calls:
            self.assertIn(token, issued, c)
            self.assertEqual(status, 200, c)


class RefreshTest(AuthCase):
    expires_in = 6  # refreshed at half its life, no longer sent at 4.5 s

    def test_short_lived_token_is_refreshed_before_it_expires(self):
        port = free_port()
        w = self.worker(*self.args("--metrics-addr", "127.0.0.1:%d" % port), env=self.env())
        wait_until(lambda: http_get("http://127.0.0.1:%d/readyz" % port)[0] == 200,
                   timeout=30, what="ready")
        wait_until(lambda: len(self.google.snapshot()[2]) >= 4, timeout=60,
                   what="three refreshes")
        self.publish(30, self.env())
        wait_until(lambda: self.metric(port, "mayhem_messages_completed_total",
                                       'outcome="acked"') == 30, timeout=30, what="30 acked")
        _, events, _, _ = self.google.snapshot()
        # Each token was replaced before the endpoint ever had to refuse it.
        self.assertNotIn("401", [e for e, _ in events], events)
        w.signal(signal.SIGTERM)
        code, _, err = w.wait()
        self.assertEqual(code, 0, err[-3000:])


class RefusedTokenTest(AuthCase):
    def test_a_401_fetches_a_new_token_and_the_call_goes_again(self):
        port = free_port()
        w = self.worker(*self.args("--metrics-addr", "127.0.0.1:%d" % port), env=self.env())
        wait_until(lambda: http_get("http://127.0.0.1:%d/readyz" % port)[0] == 200,
                   timeout=30, what="ready")
        with self.google.lock:
            self.google.revoked.update(self.google.issued)  # as if revoked at Google
        self.publish(25, self.env())
        wait_until(lambda: self.metric(port, "mayhem_messages_completed_total",
                                       'outcome="acked"') == 25, timeout=30, what="25 acked")
        calls, events, issued, _ = self.google.snapshot()
        kinds = [e for e, _ in events]
        self.assertIn("401", kinds)
        self.assertGreaterEqual(len(issued), 3)  # the worker's first, the publisher's, a new one
        w.signal(signal.SIGTERM)
        code, _, err = w.wait()
        self.assertEqual(code, 0, err[-3000:])
        self.assert_no_secret(err)


class TokenEndpointDownTest(AuthCase):
    expires_in = 4

    def test_no_token_means_not_ready_and_no_ack_until_it_is_back(self):
        port = free_port()
        self.publish(20, self.env())
        w = self.worker(*self.args("--metrics-addr", "127.0.0.1:%d" % port,
                                   "--restart-latency", "5s"), env=self.env())
        wait_until(lambda: self.metric(port, "mayhem_messages_in_flight") == 20, timeout=30,
                   what="20 in flight")
        with self.google.lock:
            self.google.down = True
        wait_until(lambda: http_get("http://127.0.0.1:%d/readyz" % port)[0] == 503,
                   timeout=30, what="not ready once the token lapsed")
        acks_before = self.google.count(":acknowledge")
        # The restarts finish while there is no token: their acks wait.
        wait_until(lambda: self.metric(port, "mayhem_restarts_total", 'result="ok"') == 20,
                   timeout=30, what="20 restarts done")
        self.assertEqual(http_get("http://127.0.0.1:%d/readyz" % port)[0], 503)
        self.assertEqual(self.google.count(":acknowledge"), acks_before)
        self.assertEqual(self.metric(port, "mayhem_messages_completed_total", 'outcome="acked"'),
                         0)
        with self.google.lock:
            self.google.down = False
        wait_until(lambda: self.metric(port, "mayhem_messages_completed_total",
                                       'outcome="acked"') == 20, timeout=30, what="20 acked")
        wait_until(lambda: http_get("http://127.0.0.1:%d/readyz" % port)[0] == 200,
                   timeout=30, what="ready again")
        w.signal(signal.SIGTERM)
        code, _, err = w.wait()
        self.assertEqual(code, 0, err[-3000:])
        self.assertEqual(self.emulator.pull(self.sub), [])


class BadKeyFileTest(Harness):
    """No emulator needed: the key file is read before anything starts."""

    def test_bad_key_files_exit_2_naming_the_file(self):
        key, _ = make_key(self.tmp)
        missing = os.path.join(self.tmp, "missing.json")
        not_json = os.path.join(self.tmp, "not.json")
        with open(not_json, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nnot json\n")
        wrong_type = key_file(self.tmp, key, "http://127.0.0.1:1/token", type="authorized_user")
        bad_pem = key_file(self.tmp, key, "http://127.0.0.1:1/token")
        with open(bad_pem) as f:
            doc = json.load(f)
        doc["private_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        with open(bad_pem, "w") as f:
            json.dump(doc, f)
        base = ["--source", "pubsub", "--pubsub-subscription", "projects/p/subscriptions/s",
                "--dead-letter-topic", "projects/p/topics/d", "--pubsub-endpoint",
                "http://127.0.0.1:1", "--store", "memory", "--restarter", "simulate",
                "--pubsub-credentials", "adc"]
        for path, needle in [(missing, "cannot open"), (not_json, "not JSON"),
                             (wrong_type, "authorized_user"), (bad_pem, "not a PEM")]:
            env = {"GOOGLE_APPLICATION_CREDENTIALS": path}
            code, _, err = self.run_worker(*base, env=env)
            self.assertEqual(code, 2, err)
            self.assertIn(path, err)
            self.assertIn(needle, err)
            self.assertNotIn("PRIVATE KEY", err.replace("-----BEGIN PRIVATE KEY-----\nnot", ""))
            full = dict(os.environ, **env)
            r = subprocess.run([MAYHEM, "publish", "--pubsub-topic", "projects/p/topics/t",
                                "--pubsub-endpoint", "http://127.0.0.1:1", "--pubsub-credentials",
                                "adc", "--count", "1"], env=full, capture_output=True, text=True,
                               timeout=60)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(path, r.stderr)
        # An emulator (http, auto) needs no key: the same bad file is not read.
        w = self.worker(*base[:-2], env={"GOOGLE_APPLICATION_CREDENTIALS": missing})
        wait_until(lambda: "pubsub source started" in w.stderr() or not w.alive(), timeout=30,
                   what="the worker to start")
        self.assertTrue(w.alive(), w.stderr())
        w.signal(signal.SIGTERM)
        w.wait()


if __name__ == "__main__":
    unittest.main()
