#!/usr/bin/env node
// Baseline: mayhem's job on a Pub/Sub subscription in Node.js with Google's official client,
// @google-cloud/pubsub (streaming pull over gRPC), for scripts/bench's pubsub scenario.
//
// The client is not a Debian package: it comes from the npm registry, pinned by package.json and
// package-lock.json beside this file, and `npm ci` installs it into node_modules here (make
// deps-bench), never at build or test time. It talks to the emulator of PUBSUB_EMULATOR_HOST as
// every Google client does.
//
// Flow control 1,000 messages (mayhem's --max-in-flight 1000). Every message gets a handler at
// once: it parses the JSON payload, derives the host name, and gathers save() and restartHost()
// with Promise.allSettled (the talk's gather(..., return_exceptions=True)); both resolve at once,
// like mayhem's --save-latency 0 --restart-latency 0; then message.ack() (the client batches the
// acks). Once --count messages are done the subscription is closed, which sends the acks still
// batched; the time is from the first message to that close. Prints one summary line shaped like
// mayhem's. Exit 1 on a client error.
'use strict';

let PubSub;
try {
  ({ PubSub } = require('@google-cloud/pubsub'));
} catch (e) {
  if (e.code !== 'MODULE_NOT_FOUND') throw e;
  console.error("node_pubsub_worker.js: cannot load '@google-cloud/pubsub': run `npm ci` in " +
    'scripts/baseline (make deps-bench)');
  process.exit(2);
}

function parseArgs(argv) {
  const o = { project: 'p', subscription: 'bench', count: 1000, flow: 1000 };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i].replace(/^--/, '');
    if (!(flag in o) || argv[i + 1] === undefined) {
      console.error('node_pubsub_worker.js: unknown flag or missing value: ' + argv[i]);
      process.exit(2);
    }
    o[flag] = flag === 'count' || flag === 'flow' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return o;
}

async function save(msg) { return true; }
async function restartHost(msg) { return true; }

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
  if (!process.env.PUBSUB_EMULATOR_HOST) {
    console.error('node_pubsub_worker.js: PUBSUB_EMULATOR_HOST is not set (a benchmark against ' +
      'the emulator only)');
    process.exit(2);
  }
  const pubsub = new PubSub({ projectId: o.project });
  const sub = pubsub.subscription(o.subscription, {
    flowControl: { maxMessages: o.flow, allowExcessMessages: false },
  });
  const counts = { received: 0, acked: 0, deadLettered: 0 };
  let start = null;
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  sub.on('error', (e) => {
    console.error('node_pubsub_worker.js: ' + e.message);
    process.exit(1);
  });
  sub.on('message', async (m) => {
    if (start === null) start = process.hrtime.bigint();
    counts.received += 1;
    const ok = await handleMessage(m.data.toString());
    m.ack();
    if (ok) counts.acked += 1; else counts.deadLettered += 1;
    if (counts.acked + counts.deadLettered === o.count) finish();
  });
  await finished;
  await sub.close(); // flushes the acks still batched
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await pubsub.close();
  console.log(JSON.stringify({
    received: counts.received, acked: counts.acked, retried: 0,
    dead_lettered: counts.deadLettered, skipped: 0, released: 0,
    seconds: Math.round(seconds * 1000) / 1000,
    msgs_per_s: Math.round(((counts.acked + counts.deadLettered) / seconds) * 10) / 10,
  }));
  process.exit(0);
}

main().catch((e) => {
  console.error('node_pubsub_worker.js: ' + (e && e.stack ? e.stack : e));
  process.exit(1);
});
