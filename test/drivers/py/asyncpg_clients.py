"""asyncpg clients for pgguard's driver test (test/drivers/psycopg_test.go).

asyncpg runs every query as a named prepared statement that it caches per
connection (statement_cache_size), so through transaction pooling its Binds
land on servers that never saw the Parse. Two modes:

  transcript URL TABLE
      One connection (statement cache of 3, so it evicts) runs a fixed
      sequence — cached statements, explicit prepare, errors, a
      transaction, executemany, a cursor (Execute with a row limit), binary
      COPY both ways, a type asyncpg must introspect — and prints what it
      observes, one JSON line per step. The Go test runs it directly and
      through pgguard and requires the same lines.

  load URL TABLE WORKERS ROUNDS
      An asyncpg pool of WORKERS connections (reset with RESET ALL and
      friends on every release) and as many concurrent tasks running
      transactions, executemany and cached statements, checking every value
      read. Exits non-zero with the first failures on stderr.

Debian's python3-asyncpg.
"""

import asyncio
import io
import json
import sys
import traceback

import asyncpg


def note(client, seq):
    """The text a client stores in round seq: quotes and non-ASCII included."""
    return "a%s's note #%d ✓" % (client, seq)


async def transcript(url, table):
    out = []

    def say(step, value):
        out.append(json.dumps([step, value], default=str, ensure_ascii=False))

    def err(e):
        return [type(e).__name__, getattr(e, "sqlstate", None)]

    conn = await asyncpg.connect(url, statement_cache_size=3)
    try:
        await conn.execute("TRUNCATE %s" % table)
        say("fetchval", await conn.fetchval("SELECT $1::int + 1", 41))
        rows = await conn.fetch("SELECT $1::text AS t, $2::bytea AS b, $3::numeric * 2 AS n, $4::int[] AS a", "t ✓'", b"\x00\xff", 1.25, [1, 2, None])
        say("types", [list(r.items()) for r in rows])
        # More distinct statements than the cache holds, twice over.
        vals = []
        for _ in range(2):
            for k in range(6):
                vals.append(await conn.fetchval("SELECT $1::int * 10 + %d" % k, k))
        say("cache eviction", vals)
        stmt = await conn.prepare("SELECT $1::int * 2, $2::text")
        say("prepared", [list(await stmt.fetchrow(i, "x%d" % i)) for i in range(5)])
        try:
            await conn.fetchval("SELECT 1 / (0 * $1::int)", 1)
        except asyncpg.PostgresError as e:
            say("error", err(e))
        say("after error", await stmt.fetchval(21, "y"))
        try:
            await conn.fetchval("SELEKT 1")
        except asyncpg.PostgresError as e:
            say("syntax error", err(e))

        async with conn.transaction(isolation="serializable"):
            say("isolation", await conn.fetchval("SELECT current_setting('transaction_isolation')"))
            await conn.executemany("INSERT INTO %s (client, seq, kind, note, n) VALUES ($1, $2, 'tx', $3, $4)" % table,
                                   [("x", i, note("x", i), i) for i in range(30)])
            say("executemany", await conn.fetchval("SELECT count(*) FROM %s" % table))
            cur = []
            async for r in conn.cursor("SELECT seq, note FROM %s ORDER BY seq" % table, prefetch=7):
                cur.append(list(r))
            say("cursor", cur)
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO %s (client, seq, kind) VALUES ('x', 99, 'doomed')" % table)
                await conn.execute("SELECT 1 / 0")
        except asyncpg.PostgresError as e:
            say("failed transaction", err(e))
        say("doomed rows", await conn.fetchval("SELECT count(*) FROM %s WHERE kind = 'doomed'" % table))

        # Binary COPY in and out.
        await conn.copy_records_to_table(table, columns=["client", "seq", "kind", "note", "n"],
                                         records=[("c", i, "copy", note("c", i), i * 3) for i in range(50)])
        buf = io.BytesIO()
        await conn.copy_from_query("SELECT seq, note FROM %s WHERE kind = 'copy' ORDER BY seq" % table, output=buf, format="csv")
        say("copy", buf.getvalue().decode())
        # A type asyncpg does not know: it introspects it with a query of its own.
        say("enum", await conn.fetchval("SELECT 'sad'::ap_mood"))
        say("enum array", await conn.fetchval("SELECT ARRAY['happy', 'sad']::ap_mood[]"))
    finally:
        await conn.close()
    for line in out:
        print(line)


async def work(pool, table, client, rounds):
    for seq in range(rounds):
        async with pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("INSERT INTO %s (client, seq, kind, note, n) VALUES ($1, $2, 'tx', $3, $4)" % table,
                                   client, seq, note(client, seq), seq)
                cnt = await conn.fetchval("SELECT count(*) FROM %s WHERE client = $1 AND kind = 'tx'" % table, client)
                if cnt != seq + 1:
                    raise AssertionError("count %r, want %d" % (cnt, seq + 1))
                res = await conn.execute("UPDATE %s SET n = n * 5 + 2 WHERE client = $1 AND seq = $2" % table, client, seq)
                if res != "UPDATE 1":
                    raise AssertionError("update: %s" % res)
                row = await conn.fetchrow("SELECT n, note FROM %s WHERE client = $1 AND seq = $2" % table, client, seq)
                if (row["n"], row["note"]) != (seq * 5 + 2, note(client, seq)):
                    raise AssertionError("read back %r" % (row,))
            # A session parameter set on this connection: the pool's
            # RESET ALL on release takes it back to the startup value.
            if seq % 2 == 0:
                await conn.execute("SET application_name = 'ap-%s-%d'" % (client, seq))
                got = await conn.fetchval("SELECT current_setting('application_name')")
                if got != "ap-%s-%d" % (client, seq):
                    raise AssertionError("application_name %r after SET" % got)
        async with pool.acquire() as conn:
            got = await conn.fetchval("SELECT current_setting('application_name')")
            if got != "asyncpg-load":
                raise AssertionError("application_name %r after the pool's reset, want the startup value" % got)
            try:
                async with conn.transaction():
                    await conn.executemany("INSERT INTO %s (client, seq, kind) VALUES ($1, $2, 'doomed')" % table,
                                           [(client, seq), (client, seq + 100)])
                    await conn.fetchval("SELECT 1 / (0 * $1::int)", seq)
                raise AssertionError("division by zero succeeded")
            except asyncpg.DivisionByZeroError:
                pass
        # Cached statements on any connection of the pool, outside transactions.
        for k in range(3):
            got = await pool.fetchval("SELECT $1::text || '-' || $2::int", note(client, seq), k)
            if got != "%s-%d" % (note(client, seq), k):
                raise AssertionError("echo %r" % got)
        doomed = await pool.fetchval("SELECT count(*) FROM %s WHERE client = $1 AND kind = 'doomed'" % table, client)
        if doomed != 0:
            raise AssertionError("%d rolled-back rows visible" % doomed)


async def load(url, table, workers, rounds):
    pool = await asyncpg.create_pool(url, min_size=workers, max_size=workers, command_timeout=60,
                                     server_settings={"application_name": "asyncpg-load"})
    failures = []

    async def run(client):
        try:
            await work(pool, table, client, rounds)
        except Exception:
            failures.append("client %s: %s" % (client, traceback.format_exc()))

    await asyncio.gather(*(run("w%d" % i) for i in range(workers)))
    await pool.close()
    if failures:
        sys.stderr.write("%d of %d workers failed\n" % (len(failures), workers))
        for f in failures[:5]:
            sys.stderr.write(f + "\n")
        sys.exit(1)
    print("ok %d workers x %d rounds" % (workers, rounds))


def main():
    if sys.argv[1] == "transcript":
        asyncio.run(transcript(sys.argv[2], sys.argv[3]))
    elif sys.argv[1] == "load":
        asyncio.run(load(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
    else:
        sys.exit("usage: asyncpg_clients.py transcript URL TABLE | load URL TABLE WORKERS ROUNDS")


if __name__ == "__main__":
    main()
