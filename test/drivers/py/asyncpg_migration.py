"""asyncpg through a schema migration, for pgguard's driver test
(test/drivers/migration_test.go).

asyncpg prepares every query and caches the statement per connection. When
a migration changes what a cached statement returns, PostgreSQL answers its
next execution with "cached plan must not change result type" (0A000);
asyncpg then drops its cache and, outside a transaction, prepares the query
again and retries once. A type dropped and created again makes a cached
statement that names it fail with "cache lookup failed for type" (XX000)
until the client prepares it again. Two modes:

  transcript URL DDL_URL
      One connection runs a fixed sequence around migrations made over
      DDL_URL (a direct connection) and over URL itself — including one
      that holds a table's lock past a prepare's timeout — and prints what
      it observes, one JSON line per step. The Go test runs it directly and
      through pgguard and requires the same lines.

  replay URL DDL_URL KIND SESSIONS ROUNDS
      SESSIONS connections each run the statement of KIND ("alter" or
      "type") until warm, print "warm" and wait for a line on stdin (the Go
      test runs the migration over DDL_URL meanwhile), then run it ROUNDS
      times more and print the number of failures as JSON.

Debian's python3-asyncpg.
"""

import asyncio
import json
import re
import sys

import asyncpg

# What the replay's sessions run, by kind of migration.
REPLAY = {
    "alter": ("SELECT * FROM mig_load", ()),
    "type": ("SELECT $1::mig_load_mood::text", ("sad",)),
}


def outcome(e):
    """An error as the transcript shows it: its class, SQLSTATE and message,
    with a type's OID (different on every run) left out."""
    msg = str(e).split("\n")[0]
    return [type(e).__name__, getattr(e, "sqlstate", None), re.sub(r"type \d+", "type N", msg)]


async def transcript(url, ddl_url):
    out = []

    async def step(name, coro):
        try:
            v = await coro
            if isinstance(v, asyncpg.prepared_stmt.PreparedStatement):
                v = "prepared"
            if isinstance(v, list):
                v = [list(r.values()) for r in v]
            out.append(json.dumps([name, "ok", v], default=str))
        except Exception as e:
            out.append(json.dumps([name] + outcome(e)))

    async def prepare(name, conn, sql):
        try:
            return await conn.prepare(sql)
        except Exception as e:
            out.append(json.dumps([name] + outcome(e)))

    async def fetch(name, stmt, *args):
        if stmt is None:
            out.append(json.dumps([name, "not prepared"]))
            return
        await step(name, stmt.fetch(*args))

    ddl = await asyncpg.connect(ddl_url)
    await ddl.execute("""DROP TABLE IF EXISTS mig_ap; DROP TYPE IF EXISTS mig_ap_mood;
        CREATE TABLE mig_ap (a int); INSERT INTO mig_ap VALUES (1);
        CREATE TYPE mig_ap_mood AS ENUM ('happy', 'sad')""")
    conn = await asyncpg.connect(url)
    other = await asyncpg.connect(url)
    try:
        for _ in range(2):
            await step("warm", conn.fetch("SELECT * FROM mig_ap"))
            await step("warm mood", conn.fetchval("SELECT $1::mig_ap_mood::text", "sad"))
        explicit = await prepare("prepare", conn, "SELECT * FROM mig_ap WHERE a = $1")
        await fetch("explicit", explicit, 1)

        # A migration over a direct connection: asyncpg retries outside a
        # transaction, fails inside one, and an explicitly prepared
        # statement fails until prepared again.
        await ddl.execute("ALTER TABLE mig_ap ADD COLUMN b int")
        for _ in range(2):
            await step("after ALTER", conn.fetch("SELECT * FROM mig_ap"))
        await fetch("explicit after ALTER", explicit, 1)
        await step("other session", other.fetch("SELECT * FROM mig_ap WHERE a = $1", 1))
        explicit = await prepare("prepare again", conn, "SELECT * FROM mig_ap WHERE a = $1")
        await fetch("explicit prepared again", explicit, 1)
        await ddl.execute("ALTER TABLE mig_ap ADD COLUMN c int")
        try:
            async with conn.transaction():
                await step("in a transaction", conn.fetch("SELECT * FROM mig_ap"))
        except Exception as e:
            out.append(json.dumps(["transaction"] + outcome(e)))
        await step("after the transaction", conn.fetch("SELECT * FROM mig_ap"))

        # A type dropped and created again.
        await ddl.execute("DROP TYPE mig_ap_mood; CREATE TYPE mig_ap_mood AS ENUM ('happy', 'sad')")
        for _ in range(2):
            await step("after DROP TYPE", conn.fetchval("SELECT $1::mig_ap_mood::text", "happy"))
        await step("other session", other.fetchval("SELECT $1::mig_ap_mood::text", "sad"))
        await step("other session, new text", other.fetchval("SELECT $1::mig_ap_mood::text AS m", "sad"))

        # A migration that holds the table's lock past a prepare's timeout
        # (asyncpg cancels it), then the same prepared again.
        lock = ddl.transaction()
        await lock.start()
        await ddl.execute("ALTER TABLE mig_ap ADD COLUMN d int")
        await step("prepare past its timeout", conn.prepare("SELECT a, d FROM mig_ap", timeout=0.3))
        await lock.commit()
        again = await prepare("prepare after the lock", conn, "SELECT a, d FROM mig_ap")
        await fetch("use", again)
        await step("fetch", conn.fetch("SELECT a, d FROM mig_ap WHERE a = $1", 1))

        # A migration the client runs itself.
        await step("warm", other.fetch("SELECT a FROM mig_ap"))
        await step("ALTER through the same address", conn.execute("ALTER TABLE mig_ap ALTER COLUMN a TYPE int8"))
        fresh = await asyncpg.connect(url)
        await step("a new session", fresh.fetch("SELECT a FROM mig_ap"))
        await fresh.close()
        await step("other session", other.fetch("SELECT a FROM mig_ap"))
    finally:
        await conn.close()
        await other.close()
        await ddl.close()
    for line in out:
        print(line)


async def replay(url, kind, sessions, rounds):
    sql, args = REPLAY[kind]
    conns = [await asyncpg.connect(url) for _ in range(sessions)]
    failed = 0
    errors = {}

    async def run(conn, n):
        nonlocal failed
        for _ in range(n):
            try:
                await conn.fetch(sql, *args)
            except Exception as e:
                failed += 1
                key = " ".join(str(x) for x in outcome(e))
                errors[key] = errors.get(key, 0) + 1
            await asyncio.sleep(0.002)

    await asyncio.gather(*(run(c, 10) for c in conns))
    warm_failed, failed = failed, 0
    print("warm", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*(run(c, rounds) for c in conns))
    for c in conns:
        await c.close()
    print(json.dumps({"warm_failed": warm_failed, "failed": failed, "queries": sessions * rounds, "errors": errors}))


def main():
    if sys.argv[1] == "transcript":
        asyncio.run(transcript(sys.argv[2], sys.argv[3]))
    elif sys.argv[1] == "replay":
        asyncio.run(replay(sys.argv[2], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])))
    else:
        sys.exit("usage: asyncpg_migration.py transcript URL DDL_URL | replay URL DDL_URL KIND SESSIONS ROUNDS")


if __name__ == "__main__":
    main()
