// Write-then-read rounds for pgguard's replica test
// (test/drivers/replica_test.go): node ryw.js URL TABLE ROUNDS. Each round
// inserts id = round and reads count(*) of that id back on the same
// connection; prints "misses M rounds N".
const { Client } = require('pg');

async function main() {
  const [url, table, rounds] = [process.argv[2], process.argv[3], Number(process.argv[4])];
  const c = new Client({ connectionString: url });
  await c.connect();
  let misses = 0;
  for (let i = 0; i < rounds; i++) {
    await c.query(`INSERT INTO ${table} VALUES ($1)`, [i]);
    const r = await c.query({ text: `SELECT count(*)::int AS n FROM ${table} WHERE id = $1`, values: [i], name: 'ryw_read' });
    if (r.rows[0].n !== 1) misses++;
  }
  await c.end();
  console.log(`misses ${misses} rounds ${rounds}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
