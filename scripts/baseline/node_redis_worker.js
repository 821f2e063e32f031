#!/usr/bin/env node
// Baseline: mayhem's job on a Redis stream, in Node.js, for scripts/bench's Redis scenario.
//
// The client is node-redis v4, the official Redis client for Node.js, from the Debian package
// node-redis (nothing is downloaded; ioredis is not packaged in Debian). The package installs
// into /usr/share/nodejs, which Debian's own node searches and other builds of node (NodeSource's)
// do not: run it with NODE_PATH=/usr/share/nodejs, as scripts/bench does.
//
// One connection. XREADGROUP COUNT <count> of new entries (as many as mayhem's --max-in-flight
// 1000 lets run at once); as soon as a batch arrives the next read is sent, so Redis prepares it
// while this one is worked on. Every entry of the batch gets a handler at once (the talk's
// create_task): it parses the JSON payload, derives the host name, and gathers save() and
// restartHost() with Promise.allSettled (the talk's gather(..., return_exceptions=True)); both
// resolve at once, like mayhem's --save-latency 0 --restart-latency 0. Once the whole batch has
// settled, one XACK carries every id of it, not awaited: node-redis writes it together with
// whatever is sent in the same tick. An undecodable payload is counted as dead-lettered and
// acked (no dead-letter stream; the bench's payloads all decode). Ends when a read returns no
// entry (the stream, filled before it starts, is consumed) and every XACK has been answered.
// Prints one summary line shaped like mayhem's. Exit 1 on any Redis error (no reconnect).
'use strict';

function loadRedis() {
  try {
    return require('redis');
  } catch (e) {
    if (e.code !== 'MODULE_NOT_FOUND') throw e;
    console.error("node_redis_worker.js: cannot load 'redis': install the Debian package " +
      'node-redis and run with NODE_PATH=/usr/share/nodejs');
    process.exit(2);
  }
}

function parseArgs(argv) {
  const o = { url: 'redis://127.0.0.1:6379/0', stream: 'mayhem:restarts', group: 'node',
    consumer: 'node', count: 1000 };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i].replace(/^--/, '');
    if (!(flag in o) || argv[i + 1] === undefined) {
      console.error('node_redis_worker.js: unknown flag or missing value: ' + argv[i]);
      process.exit(2);
    }
    o[flag] = flag === 'count' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return o;
}

async function save(msg) { return true; }
async function restartHost(msg) { return true; }

const counts = { received: 0, acked: 0, deadLettered: 0 };

// true: carried out (ack); false: undecodable (dead-lettered, then acked all the same).
async function handleMessage(raw) {
  let msg;
  try {
    msg = JSON.parse(raw);
    if (typeof msg.message_id !== 'string' || typeof msg.instance_name !== 'string') {
      throw new Error('no message_id or instance_name');
    }
    msg.hostname = msg.instance_name + '.example.net';
  } catch (e) {
    return false;
  }
  const results = await Promise.allSettled([save(msg), restartHost(msg)]);
  return results.every((r) => r.status === 'fulfilled' && r.value === true);
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const { createClient } = loadRedis();
  const client = createClient({ url: o.url,
    socket: { reconnectStrategy: () => new Error('no reconnect in a benchmark') } });
  client.on('error', (e) => {
    console.error('node_redis_worker.js: redis: ' + e.message);
    process.exit(1);
  });
  await client.connect();
  try {
    await client.xGroupCreate(o.stream, o.group, '0', { MKSTREAM: true });
  } catch (e) {
    if (!String(e.message).startsWith('BUSYGROUP')) throw e;
  }

  const read = () => client.xReadGroup(o.group, o.consumer, { key: o.stream, id: '>' },
    { COUNT: o.count });
  const acks = [];
  const start = process.hrtime.bigint();
  // Every turn consumes at least one entry of a stream nobody adds to, or ends the loop.
  let next = read();
  for (;;) {
    const reply = await next;
    const batch = reply && reply.length ? reply[0].messages : [];
    if (batch.length === 0) break;
    next = read();
    counts.received += batch.length;
    const done = await Promise.all(batch.map((e) => handleMessage(e.message.payload)));
    const bad = done.filter((ok) => !ok).length;
    counts.deadLettered += bad;
    acks.push(client.xAck(o.stream, o.group, batch.map((e) => e.id)).then((n) => {
      counts.acked += n - Math.min(n, bad);
    }));
  }
  await Promise.all(acks);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await client.quit();
  const finished = counts.acked + counts.deadLettered;
  console.log(JSON.stringify({
    received: counts.received, acked: counts.acked, retried: 0,
    dead_lettered: counts.deadLettered, skipped: 0, released: 0,
    seconds: Math.round(seconds * 1000) / 1000,
    msgs_per_s: seconds > 0 ? Math.round((finished / seconds) * 10) / 10 : 0,
  }));
}

main().catch((e) => {
  console.error('node_redis_worker.js: ' + (e && e.stack ? e.stack : e));
  process.exit(1);
});
