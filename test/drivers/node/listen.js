// node-postgres LISTEN clients for pgguard's notification test
// (test/drivers/listen_test.go).
//
// usage: node listen.js URL CLIENTS CHANNELS EXPECTED
//
// CLIENTS connections each LISTEN on ch0..ch{CHANNELS-1} and count
// client.on('notification') until EXPECTED arrived: every payload
// "S<sender>:<seq>" exactly once, each sender's in increasing seq, none of
// a rolled-back transaction ("rb..."). Exits non-zero on the first failure.
'use strict';

const { Client } = require('pg');

const [url, clients, channels, expected] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5])];

async function client(i) {
  const c = new Client({ connectionString: url });
  await c.connect();
  let count = 0;
  const last = new Map();
  let fail = null;
  const done = new Promise((resolve, reject) => {
    c.on('notification', (m) => {
      try {
        if (m.payload.startsWith('rb')) throw new Error(`notification of a rolled-back transaction: ${m.channel} ${m.payload}`);
        const [sender, s] = m.payload.split(':');
        const seq = Number(s);
        if (last.has(sender) && seq <= last.get(sender)) throw new Error(`sender ${sender}: seq ${seq} after ${last.get(sender)}`);
        last.set(sender, seq);
        count++;
        if (count > expected) throw new Error(`more than ${expected} notifications`);
        if (count === expected) resolve();
      } catch (e) {
        fail = fail || e;
        reject(e);
      }
    });
  });
  for (let ch = 0; ch < channels; ch++) await c.query(`LISTEN ch${ch}`);
  const timer = setTimeout(() => { fail = fail || new Error(`client ${i}: ${count} of ${expected} notifications after 120s`); }, 120000);
  try {
    await Promise.race([done, new Promise((_, rej) => setInterval(() => fail && rej(fail), 100))]);
    await new Promise((r) => setTimeout(r, 300)); // a duplicate would still arrive
    if (fail) throw fail;
    console.log('ok', count);
  } finally {
    clearTimeout(timer);
    await c.end();
  }
}

(async () => {
  const results = await Promise.allSettled(Array.from({ length: clients }, (_, i) => client(i)));
  const bad = results.filter((r) => r.status === 'rejected');
  if (bad.length) {
    console.error(bad.slice(0, 5).map((r) => String(r.reason && r.reason.stack || r.reason)).join('\n'));
    process.exit(1);
  }
  process.exit(0);
})();
