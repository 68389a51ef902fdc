"""Result-cache clients for pgguard's driver test (test/drivers/cache_test.go).

usage: cache_clients.py DRIVER URL N

Runs the cached query ("SELECT * FROM cache_drv WHERE id = $1") N times for
each of ids 1 and 2 with DRIVER (psycopg2, psycopg or asyncpg) on one
connection, then once more on a second connection, and prints one JSON line
per distinct answer: the Go test requires the same lines from a direct
connection and through pgguard, and no line saying an answer changed.
Debian's python3-psycopg2, python3-psycopg and python3-asyncpg.
"""

import asyncio
import json
import sys


def show(rows):
    def value(v):
        if isinstance(v, (bytes, bytearray, memoryview)):
            return "bytes:" + bytes(v).hex()
        return repr(v)
    return json.dumps([[value(v) for v in r] for r in rows], ensure_ascii=False)


def run_sync(connect, url, n, placeholder):
    sql = "SELECT * FROM cache_drv WHERE id = " + placeholder
    out = []
    for attempt in range(2):
        conn = connect(url)
        conn.autocommit = True
        cur = conn.cursor()
        for ident in (1, 2):
            first = None
            for _ in range(n):
                cur.execute(sql, (ident,))
                got = show(cur.fetchall())
                if first is None:
                    first = got
                    out.append(got)
                elif got != first:
                    out.append("CHANGED " + got)
        conn.close()
    return out


async def run_asyncpg(url, n):
    import asyncpg
    out = []
    for attempt in range(2):
        conn = await asyncpg.connect(url)
        for ident in (1, 2):
            first = None
            for _ in range(n):
                got = show([tuple(r.values()) for r in await conn.fetch("SELECT * FROM cache_drv WHERE id = $1", ident)])
                if first is None:
                    first = got
                    out.append(got)
                elif got != first:
                    out.append("CHANGED " + got)
        await conn.close()
    return out


def main():
    driver, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if driver == "psycopg2":
        import psycopg2
        out = run_sync(psycopg2.connect, url, n, "%s")
    elif driver == "psycopg":
        import psycopg
        out = run_sync(psycopg.connect, url, n, "%s")
    else:
        out = asyncio.run(run_asyncpg(url, n))
    print("\n".join(out))


if __name__ == "__main__":
    main()
