#!/usr/bin/env python3
"""Baseline: the no-work limit of a Pub/Sub REST consumer, for scripts/bench's pubsub scenario.

One HTTP connection (http.client, kept alive) to the emulator of PUBSUB_EMULATOR_HOST, in a loop:
pull 1,000 (returnImmediately), one acknowledge of the whole batch, until --count messages are
acked. No decoding, no work. The time is from the first message pulled to the last acknowledge
answered. Prints one summary line shaped like mayhem's. Standard library only.
"""

import argparse
import http.client
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscription", required=True, help="projects/P/subscriptions/S")
    ap.add_argument("--count", type=int, required=True)
    a = ap.parse_args()
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        sys.exit("pubsub_nowork.py: PUBSUB_EMULATOR_HOST is not set")
    conn = http.client.HTTPConnection(host, timeout=60)
    headers = {"Content-Type": "application/json"}

    def call(method, body):
        conn.request("POST", "/v1/%s:%s" % (a.subscription, method), json.dumps(body), headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            sys.exit("pubsub_nowork.py: %s: HTTP %d %s" % (method, r.status, data[:200]))
        return json.loads(data) if data else {}

    acked, start = 0, None
    deadline = time.monotonic() + 600
    while acked < a.count and time.monotonic() < deadline:
        got = call("pull", {"maxMessages": 1000, "returnImmediately": True})
        ids = [m["ackId"] for m in got.get("receivedMessages", [])]
        if not ids:
            continue
        if start is None:
            start = time.monotonic()
        call("acknowledge", {"ackIds": ids})
        acked += len(ids)
    seconds = time.monotonic() - (start or time.monotonic())
    print(json.dumps({"received": acked, "acked": acked, "retried": 0, "dead_lettered": 0,
                      "skipped": 0, "released": 0, "seconds": round(seconds, 3),
                      "msgs_per_s": round(acked / seconds, 1) if seconds > 0 else 0}))
    sys.exit(0 if acked >= a.count else 1)


if __name__ == "__main__":
    main()
