#!/usr/bin/python3
"""Baseline for scenario 6 of scripts/bench: the seed's TCP log collector shape in Python
asyncio streams on uvloop, speaking mayhem's `--source tcp` protocol.

One task per connection: readline(), json.loads() the request, answer with one json.dumps()
line ({"message_id": ..., "outcome": "acked"}; a line that does not parse is answered
{"message_id": null, "line": N, "outcome": "dead_lettered", "error": ...}). Nothing is behind
it: no save, no restart, no queue. `mayhem publish --tcp` drives it exactly as it drives the
worker. It runs until SIGTERM/SIGINT, then prints {"received": N, "seconds": S} on stdout.

uvloop is the Debian package python3-uvloop, installed for /usr/bin/python3 (hence the shebang:
a python3 earlier on PATH may not have it). Without uvloop it says so and exits 2.
"""

import argparse
import asyncio
import json
import signal
import sys
import time

try:
    import uvloop
except ImportError:
    print("asyncio_tcp_collector: uvloop is missing (Debian package python3-uvloop, for "
          "/usr/bin/python3)", file=sys.stderr)
    sys.exit(2)

received = 0


async def handle(reader, writer):
    global received
    line_no = 0
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            line_no += 1
            received += 1
            try:
                msg = json.loads(line)
                answer = {"message_id": msg["message_id"], "outcome": "acked"}
            except (ValueError, KeyError, TypeError) as e:
                answer = {"message_id": None, "line": line_no, "outcome": "dead_lettered",
                          "error": str(e)}
            writer.write((json.dumps(answer) + "\n").encode())
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(host, port):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    server = await asyncio.start_server(handle, host, port, limit=1 << 20)
    t0 = time.monotonic()
    print("listening", flush=True, file=sys.stderr)
    await stop.wait()
    server.close()
    print(json.dumps({"received": received, "seconds": round(time.monotonic() - t0, 3)}),
          flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:7479", help="HOST:PORT")
    a = ap.parse_args()
    host, _, port = a.listen.rpartition(":")
    uvloop.install()
    asyncio.run(main(host, int(port)))
