"""One process of pgguard's psycopg2 + SQLAlchemy driver test.

Run by test/drivers/python_test.go: three of these at once, each with its own
engine (pool_size=8, max_overflow=4, the seed app's settings) and more threads
than its pool holds, every thread doing transactions through pgguard and
checking what it reads. Exits non-zero with the first failures on stderr.

usage: sqlalchemy_clients.py URL TABLE PROCESS THREADS ROUNDS
"""

import sys
import threading
import traceback

import sqlalchemy
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError


def note(client, seq):
    """The text a client stores in round seq: quotes and non-ASCII included."""
    return "p%s's note #%d ✓" % (client, seq)


def work(engine, table, client, rounds, failures):
    """One thread: read-write transactions, a failing one, autocommit reads."""
    try:
        for seq in range(rounds):
            # A read-write transaction, committed by the context manager.
            with engine.begin() as conn:
                conn.execute(
                    text("INSERT INTO %s (client, seq, kind, note, n) VALUES (:c, :s, 'tx', :note, :n)" % table),
                    {"c": client, "s": seq, "note": note(client, seq), "n": seq},
                )
                count = conn.execute(
                    text("SELECT count(*) FROM %s WHERE client = :c AND kind = 'tx'" % table), {"c": client}
                ).scalar_one()
                if count != seq + 1:
                    raise AssertionError("saw %d rows in the transaction, want %d" % (count, seq + 1))
                res = conn.execute(
                    text("UPDATE %s SET n = n * 2 + 5 WHERE client = :c AND seq = :s" % table), {"c": client, "s": seq}
                )
                if res.rowcount != 1:
                    raise AssertionError("update touched %d rows" % res.rowcount)
                n, got = conn.execute(
                    text("SELECT n, note FROM %s WHERE client = :c AND seq = :s" % table), {"c": client, "s": seq}
                ).one()
                if n != seq * 2 + 5 or got != note(client, seq):
                    raise AssertionError("read back %r %r, want %r %r" % (n, got, seq * 2 + 5, note(client, seq)))

            # A transaction that fails midway: rolled back, nothing kept.
            try:
                with engine.begin() as conn:
                    conn.execute(
                        text("INSERT INTO %s (client, seq, kind) VALUES (:c, :s, 'doomed')" % table),
                        {"c": client, "s": seq},
                    )
                    conn.execute(text("SELECT 1 / 0"))
                raise AssertionError("division by zero succeeded")
            except DBAPIError as e:
                if getattr(e.orig, "pgcode", None) != "22012":
                    raise

            # Reads outside an explicit transaction (SQLAlchemy still opens
            # one per connection checkout; psycopg2 sends BEGIN).
            with engine.connect() as conn:
                got = conn.execute(text("SELECT :a || '-' || :b"), {"a": note(client, seq), "b": seq}).scalar_one()
                if got != "%s-%d" % (note(client, seq), seq):
                    raise AssertionError("echo %r" % got)
                doomed = conn.execute(
                    text("SELECT count(*) FROM %s WHERE client = :c AND kind = 'doomed'" % table), {"c": client}
                ).scalar_one()
                if doomed != 0:
                    raise AssertionError("%d rolled-back rows visible" % doomed)
    except Exception:
        failures.append("client %s: %s" % (client, traceback.format_exc()))


def main():
    url, table, proc, threads, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    engine = sqlalchemy.create_engine(url, pool_size=8, max_overflow=4, pool_timeout=60)
    failures = []
    ts = [
        threading.Thread(target=work, args=(engine, table, "%s.%d" % (proc, i), rounds, failures))
        for i in range(threads)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    engine.dispose()
    if failures:
        sys.stderr.write("%d of %d threads failed\n" % (len(failures), threads))
        for f in failures[:5]:
            sys.stderr.write(f + "\n")
        sys.exit(1)
    print("ok %d threads x %d rounds" % (threads, rounds))


if __name__ == "__main__":
    main()
