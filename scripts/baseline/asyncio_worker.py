#!/usr/bin/env python3
"""Baseline: the PyCon 2019 talk's worker shape in plain Python asyncio, for scripts/bench.

A publisher puts JSON payloads into a bounded asyncio.Queue; the consumer takes each one and
create_task()s a handler, never blocking its `while True`; the handler parses the JSON, derives
the host name, gathers save() and restart_host() (zero latency) with return_exceptions=True,
then "acks" by counting. In flight is capped like mayhem's --max-in-flight, and the ids are
formatted cheaply (run prefix + sequence number), as mayhem's simulator does, so the figure is
the pipeline's and not uuid4()'s. Prints one summary line shaped like mayhem's.
Standard library only (uvloop with --uvloop).
"""

import argparse
import asyncio
import json
import os
import sys
import time


def payloads(n):
    run = os.urandom(6).hex()
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    for seq in range(n):
        name = "".join(alnum[(seq * 7 + k * 13) % 36] for k in range(4))
        yield '{"message_id":"%s-%s-4000-8000-%012x","instance_name":"cattle-%s"}' % (
            run[:8], run[8:], seq, name)


async def save(msg):
    return True


async def restart_host(msg):
    return True


class Counts:
    received = acked = dead_lettered = 0


async def handle_message(payload, counts, slots):
    try:
        try:
            msg = json.loads(payload)
            msg["hostname"] = msg["instance_name"] + ".example.net"
        except (ValueError, KeyError):
            counts.dead_lettered += 1
            return
        results = await asyncio.gather(save(msg), restart_host(msg), return_exceptions=True)
        if all(r is True for r in results):
            counts.acked += 1  # ack
        else:
            counts.dead_lettered += 1
    finally:
        slots.release()


async def publish(queue, n):
    for p in payloads(n):
        await queue.put(p)
    await queue.put(None)


async def consume(queue, counts, max_in_flight):
    slots = asyncio.Semaphore(max_in_flight)
    tasks = set()
    while True:
        payload = await queue.get()
        if payload is None:
            break
        counts.received += 1
        await slots.acquire()
        t = asyncio.create_task(handle_message(payload, counts, slots))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))


async def main(args):
    counts = Counts()
    queue = asyncio.Queue(maxsize=args.queue_capacity)
    start = time.monotonic()
    await asyncio.gather(publish(queue, args.messages),
                         consume(queue, counts, args.max_in_flight))
    seconds = time.monotonic() - start
    done = counts.acked + counts.dead_lettered
    print(json.dumps({
        "received": counts.received, "acked": counts.acked, "retried": 0,
        "dead_lettered": counts.dead_lettered, "skipped": 0, "released": 0,
        "lease_extensions": 0, "abandoned": 0, "seconds": round(seconds, 3),
        "msgs_per_s": round(done / seconds, 1) if seconds > 0 else 0,
    }, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200000)
    ap.add_argument("--max-in-flight", type=int, default=1000)
    ap.add_argument("--queue-capacity", type=int, default=64)
    ap.add_argument("--uvloop", action="store_true",
                    help="run on uvloop (Debian package python3-uvloop) instead of asyncio's loop")
    args = ap.parse_args()
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            print("asyncio_worker: --uvloop: uvloop is not installed for this python3 "
                  "(Debian package python3-uvloop)", file=sys.stderr)
            sys.exit(2)
        uvloop.install()
    asyncio.run(main(args))
