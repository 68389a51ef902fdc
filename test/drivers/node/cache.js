// Result-cache client for pgguard's driver test (test/drivers/cache_test.go).
//
// Runs the cached query N times for each of ids 1 and 2 on one connection
// (parameterized, so node-postgres sends Parse/Bind/Describe/Execute/Sync of
// the unnamed statement), then again on a second connection, and prints one
// JSON line per distinct answer ("CHANGED ..." when an answer differs from
// the first).
//
// usage: node cache.js URL N
'use strict';

const { Client } = require('pg');

// Raw text for every type: what the server (or the cache) sent, unparsed.
const raw = { getTypeParser: () => (v) => v };

async function main() {
  const [url, n] = [process.argv[2], Number(process.argv[3])];
  const out = [];
  for (let attempt = 0; attempt < 2; attempt++) {
    const c = new Client({ connectionString: url, types: raw });
    await c.connect();
    for (const id of [1, 2]) {
      let first = null;
      for (let i = 0; i < n; i++) {
        const r = await c.query({ text: 'SELECT * FROM cache_drv WHERE id = $1', values: [id], rowMode: 'array' });
        const got = JSON.stringify({ fields: r.fields.map((f) => [f.name, f.dataTypeID, f.format]), rows: r.rows });
        if (first === null) {
          first = got;
          out.push(got);
        } else if (got !== first) {
          out.push('CHANGED ' + got);
        }
      }
    }
    await c.end();
  }
  console.log(out.join('\n'));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
