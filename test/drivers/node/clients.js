// node-postgres clients for pgguard's driver test (test/drivers/node_test.go).
//
// A pg.Pool of many connections to pgguard; concurrent workers run
// transactions and autocommit queries with parameters and with NAMED prepared
// statements ({name, text, values}), which node-postgres prepares once per
// connection and then only binds: through transaction pooling those Binds
// land on servers that never saw the Parse. Every value read is checked.
// Exits non-zero with the first failures on stderr.
//
// usage: node clients.js URL TABLE WORKERS ROUNDS
'use strict';

const { Pool } = require('pg');

const [url, table, workers, rounds] = [process.argv[2], process.argv[3], Number(process.argv[4]), Number(process.argv[5])];

/** note is the text worker w stores in round seq. */
const note = (w, seq) => `n${w}'s note #${seq} ✓`;

/** check throws when got differs from want. */
function check(what, got, want) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

/** expectCode runs fn and requires it to fail with SQLSTATE code. */
async function expectCode(what, code, fn) {
  try {
    await fn();
  } catch (e) {
    if (e.code === code) return;
    throw new Error(`${what}: got ${e.code} ${e.message}, want ${code}`);
  }
  throw new Error(`${what}: succeeded, want ${code}`);
}

/** worker runs one client's rounds. */
async function worker(pool, w) {
  for (let seq = 0; seq < rounds; seq++) {
    // A transaction on one checked-out connection, mostly named statements.
    const c = await pool.connect();
    try {
      await c.query('BEGIN');
      await c.query({
        name: 'insert',
        text: `INSERT INTO ${table} (client, seq, kind, note, n) VALUES ($1, $2, 'tx', $3, $4)`,
        values: [w, seq, note(w, seq), seq],
      });
      const cnt = await c.query({ name: 'count', text: `SELECT count(*)::int AS n FROM ${table} WHERE client = $1 AND kind = $2`, values: [w, 'tx'] });
      check('count in transaction', cnt.rows[0].n, seq + 1);
      const upd = await c.query(`UPDATE ${table} SET n = n * 3 + $3 WHERE client = $1 AND seq = $2`, [w, seq, 1]);
      check('update rowCount', upd.rowCount, 1);
      const got = await c.query({ name: 'get', text: `SELECT n::int AS n, note FROM ${table} WHERE client = $1 AND seq = $2`, values: [w, seq] });
      check('read back', got.rows[0], { n: seq * 3 + 1, note: note(w, seq) });
      await c.query('COMMIT');
    } finally {
      c.release();
    }

    // Autocommit: each query may run on either server.
    const echo = await pool.query({ name: 'echo', text: 'SELECT $1::text || $2::int AS s, $3::bytea AS b', values: [note(w, seq), seq, Buffer.from([0, w & 255, seq & 255, 255])] });
    check('echo', [echo.rows[0].s, [...echo.rows[0].b]], [note(w, seq) + seq, [0, w & 255, seq & 255, 255]]);
    const after = await pool.query({ name: 'get', text: `SELECT n::int AS n, note FROM ${table} WHERE client = $1 AND seq = $2`, values: [w, seq] });
    check('read after commit', after.rows[0], { n: seq * 3 + 1, note: note(w, seq) });

    // A transaction that fails midway, then rolls back.
    const d = await pool.connect();
    try {
      await d.query('BEGIN');
      await d.query({ name: 'doom', text: `INSERT INTO ${table} (client, seq, kind) VALUES ($1, $2, 'doomed')`, values: [w, seq] });
      await expectCode('division by zero', '22012', () => d.query({ name: 'div', text: 'SELECT 1 / (0 * $1::int)', values: [w] }));
      await expectCode('aborted transaction', '25P02', () => d.query({ name: 'count', text: `SELECT count(*)::int AS n FROM ${table} WHERE client = $1 AND kind = $2`, values: [w, 'tx'] }));
      await d.query('ROLLBACK');
      await expectCode('named statement with a syntax error', '42601', () => d.query({ name: `bad${seq}`, text: 'SELEKT $1::int', values: [1] }));
      const n = await d.query({ name: 'count', text: `SELECT count(*)::int AS n FROM ${table} WHERE client = $1 AND kind = $2`, values: [w, 'doomed'] });
      check('doomed rows after rollback', n.rows[0].n, 0);
    } finally {
      d.release();
    }
  }
}

async function main() {
  const pool = new Pool({ connectionString: url, max: workers, connectionTimeoutMillis: 60000 });
  const failures = [];
  await Promise.all(
    Array.from({ length: workers }, (_, w) =>
      worker(pool, w).catch((e) => {
        failures.push(`worker ${w}: ${e.stack || e}`);
      }),
    ),
  );
  await pool.end();
  if (failures.length > 0) {
    console.error(`${failures.length} of ${workers} workers failed`);
    for (const f of failures.slice(0, 5)) console.error(f);
    process.exit(1);
  }
  console.log(`ok ${workers} workers x ${rounds} rounds`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
