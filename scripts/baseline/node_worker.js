#!/usr/bin/env node
// Baseline: the PyCon 2019 talk's worker shape in plain Node.js (no npm packages), for
// scripts/bench.
//
// A publisher hands JSON payloads to a bounded queue; the consumer takes each one and starts a
// handler without awaiting it (the talk's create_task); the handler parses the JSON, derives the
// host name, gathers save() and restartHost() (zero latency) with Promise.allSettled (the
// talk's gather(..., return_exceptions=True)), then "acks" by counting. In flight is capped like
// mayhem's --max-in-flight, and ids are formatted cheaply (run prefix + sequence number), as
// mayhem's simulator does. Prints one summary line shaped like mayhem's.
'use strict';

const crypto = require('crypto');

function parseArgs(argv) {
  const o = { messages: 200000, maxInFlight: 1000, queueCapacity: 64 };
  for (let i = 0; i < argv.length; i += 2) {
    const v = Number(argv[i + 1]);
    if (argv[i] === '--messages') o.messages = v;
    else if (argv[i] === '--max-in-flight') o.maxInFlight = v;
    else if (argv[i] === '--queue-capacity') o.queueCapacity = v;
    else { console.error('node_worker.js: unknown flag ' + argv[i]); process.exit(2); }
  }
  return o;
}

// A bounded async queue: put() waits while it is full, get() while it is empty.
class Queue {
  constructor(capacity) { this.capacity = capacity; this.items = []; this.getters = []; this.putters = []; }
  async put(x) {
    while (this.items.length >= this.capacity) await new Promise((r) => this.putters.push(r));
    this.items.push(x);
    const g = this.getters.shift(); if (g) g();
  }
  async get() {
    while (this.items.length === 0) await new Promise((r) => this.getters.push(r));
    const x = this.items.shift();
    const p = this.putters.shift(); if (p) p();
    return x;
  }
}

const ALNUM = 'abcdefghijklmnopqrstuvwxyz0123456789';
const RUN = crypto.randomBytes(6).toString('hex');

function payload(seq) {
  let name = '';
  for (let k = 0; k < 4; k++) name += ALNUM[(seq * 7 + k * 13) % 36];
  return '{"message_id":"' + RUN.slice(0, 8) + '-' + RUN.slice(8) + '-4000-8000-' +
    seq.toString(16).padStart(12, '0') + '","instance_name":"cattle-' + name + '"}';
}

async function save(msg) { return true; }
async function restartHost(msg) { return true; }

const counts = { received: 0, acked: 0, deadLettered: 0 };
let inFlight = 0;
let slotWaiter = null;

async function handleMessage(raw) {
  try {
    let msg;
    try {
      msg = JSON.parse(raw);
      if (typeof msg.instance_name !== 'string') throw new Error('no instance_name');
      msg.hostname = msg.instance_name + '.example.net';
    } catch (e) { counts.deadLettered++; return; }
    const results = await Promise.allSettled([save(msg), restartHost(msg)]);
    if (results.every((r) => r.status === 'fulfilled' && r.value === true)) counts.acked++; // ack
    else counts.deadLettered++;
  } finally {
    inFlight--;
    if (slotWaiter) { const w = slotWaiter; slotWaiter = null; w(); }
  }
}

async function publish(queue, n) {
  for (let i = 0; i < n; i++) await queue.put(payload(i));
  await queue.put(null);
}

async function consume(queue, maxInFlight) {
  for (;;) {
    const raw = await queue.get();
    if (raw === null) break;
    counts.received++;
    while (inFlight >= maxInFlight) await new Promise((r) => { slotWaiter = r; });
    inFlight++;
    handleMessage(raw); // fire and forget, like create_task
  }
  while (inFlight > 0) await new Promise((r) => { slotWaiter = r; });
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const queue = new Queue(o.queueCapacity);
  const start = process.hrtime.bigint();
  await Promise.all([publish(queue, o.messages), consume(queue, o.maxInFlight)]);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const done = counts.acked + counts.deadLettered;
  console.log(JSON.stringify({
    received: counts.received, acked: counts.acked, retried: 0, dead_lettered: counts.deadLettered,
    skipped: 0, released: 0, lease_extensions: 0, abandoned: 0,
    seconds: Math.round(seconds * 1000) / 1000,
    msgs_per_s: seconds > 0 ? Math.round((done / seconds) * 10) / 10 : 0,
  }));
}

main();
