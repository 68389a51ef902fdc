"""Write-then-read rounds for pgguard's replica test (test/drivers/replica_test.go).

  ryw_rounds.py DRIVER URL TABLE ROUNDS

DRIVER is psycopg (psycopg 3) or asyncpg. Each round inserts id = round and
reads count(*) of that id back on the same connection; a read that does not
find its own write is a miss. Prints "misses M rounds N".
"""

import asyncio
import sys


def psycopg_rounds(url, table, n):
    import psycopg

    misses = 0
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(n):
            conn.execute("INSERT INTO %s VALUES (%%s)" % table, (i,))
            got = conn.execute("SELECT count(*) FROM %s WHERE id = %%s" % table, (i,)).fetchone()[0]
            if got != 1:
                misses += 1
    return misses


async def asyncpg_rounds(url, table, n):
    import asyncpg

    misses = 0
    conn = await asyncpg.connect(url)
    try:
        for i in range(n):
            await conn.execute("INSERT INTO %s VALUES ($1)" % table, i)
            got = await conn.fetchval("SELECT count(*) FROM %s WHERE id = $1" % table, i)
            if got != 1:
                misses += 1
    finally:
        await conn.close()
    return misses


def main():
    driver, url, table, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if driver == "psycopg":
        misses = psycopg_rounds(url, table, n)
    else:
        misses = asyncio.run(asyncpg_rounds(url, table, n))
    print("misses %d rounds %d" % (misses, n))


if __name__ == "__main__":
    main()
