"""psycopg 3 clients for pgguard's driver test (test/drivers/psycopg_test.go).

Two modes:

  transcript URL
      One connection runs a fixed sequence — pipelines (one with an error in
      the middle), statements run often enough that psycopg prepares them
      (prepare_threshold), executemany, a transaction in a pipeline, a
      server-side cursor — and prints what it observes, one JSON line per
      step. The Go test runs it on a direct connection and through pgguard
      and requires the same lines.

  load URL TABLE THREADS ROUNDS
      THREADS threads, each on its own connection, run pipelined
      transactions and prepared statements and check every value they read.
      Exits non-zero with the first failures on stderr.

Debian's python3-psycopg (3.1) with the system libpq (pipeline mode needs
libpq >= 14).
"""

import json
import sys
import threading
import traceback

import psycopg
from psycopg import errors


def note(client, seq):
    """The text a client stores in round seq: quotes and non-ASCII included."""
    return "q%s's note #%d ✓" % (client, seq)


def transcript(url):
    out = []

    def say(step, value):
        out.append(json.dumps([step, value], default=str, ensure_ascii=False))

    def err(e):
        return [type(e).__name__, getattr(getattr(e, "diag", None), "sqlstate", None)]

    with psycopg.connect(url, autocommit=True, prepare_threshold=3) as conn:
        # Plain pipeline: several statements, results read at the end.
        with conn.pipeline():
            c1 = conn.execute("SELECT %s::int + 1, %s::text", (41, "forty-two ✓"))
            c2 = conn.execute("SELECT generate_series(1, %s)", (5,))
            c3 = conn.execute("SELECT %s::bytea, %s::numeric * 2", (b"\x00\x01\xff", "1.25"))
        say("pipeline", [c1.fetchall(), c2.fetchall(), c3.fetchall()])

        # An error in the middle of a pipeline: later statements are aborted
        # until the sync; the connection works after it. psycopg reads what
        # has arrived at each execute, so an error that came back early
        # would be raised by the next execute instead of the sync: the
        # failing statement first waits for a lock a second connection
        # holds until every statement is queued, so that the error can
        # only arrive at the sync, on any machine.
        got = []
        with psycopg.connect(url) as gate:
            gate.execute("SELECT pg_advisory_xact_lock(4242)")
            try:
                with conn.pipeline() as p:
                    a = conn.execute("SELECT 'before'")
                    conn.execute("SELECT (SELECT 1 FROM pg_advisory_xact_lock(4242)) / (0 * %s::int)", (1,))
                    c = conn.execute("SELECT 'after'")
                    gate.rollback()
                    p.sync()
            except errors.DivisionByZero as e:
                got.append(err(e))
        try:
            got.append(a.fetchall())
        except Exception as e:
            got.append(err(e))
        try:
            got.append(c.fetchall())
        except Exception as e:
            got.append(err(e))
        got.append(conn.execute("SELECT 'recovered'").fetchall())
        say("pipeline error", got)

        # Two syncs in one pipeline: the second batch runs after the first failed.
        got = []
        try:
            with conn.pipeline() as p:
                conn.execute("SELECT 1 / 0")
                p.sync()
        except errors.DivisionByZero as e:
            got.append(err(e))
        with conn.pipeline() as p:
            x = conn.execute("SELECT 'second batch'")
            p.sync()
            y = conn.execute("SELECT 'third batch'")
        got += [x.fetchall(), y.fetchall()]
        say("pipeline syncs", got)

        # Run the same statements often enough that psycopg prepares them
        # (prepare_threshold=3: named statements _pg3_N from the 4th run).
        vals = []
        for i in range(6):
            vals.append(conn.execute("SELECT %s::int * 10 + %s::int", (i, 7)).fetchone())
            vals.append(conn.execute("SELECT upper(%s::text)", ("ab%d" % i,)).fetchone())
        say("prepared", vals)
        with conn.pipeline():
            cs = [conn.execute("SELECT %s::int * 10 + %s::int", (i, 8)) for i in range(5)]
        say("prepared in a pipeline", [c.fetchone() for c in cs])

    with psycopg.connect(url, prepare_threshold=2) as conn:
        # A transaction in a pipeline, with executemany.
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE pg3_t (id int PRIMARY KEY, v text) ON COMMIT DROP")
            with conn.pipeline():
                cur = conn.cursor()
                cur.executemany("INSERT INTO pg3_t VALUES (%s, %s)", [(i, note("t", i)) for i in range(20)])
                cur2 = conn.execute("SELECT count(*), sum(id) FROM pg3_t")
                cur3 = conn.execute("UPDATE pg3_t SET v = v || '!' WHERE id % 2 = 0")
            say("transaction pipeline", [cur2.fetchone(), cur3.rowcount])
            # A server-side cursor inside the transaction.
            with conn.cursor(name="pg3_cur") as sc:
                sc.itersize = 7
                sc.execute("SELECT id, v FROM pg3_t ORDER BY id")
                say("server-side cursor", [list(r) for r in sc])
        # A failed transaction rolls back and the session goes on.
        try:
            with conn.transaction():
                conn.execute("SELECT 1 / 0")
        except errors.DivisionByZero as e:
            say("failed transaction", err(e))
        say("after", conn.execute("SELECT %s::text", ("ok",)).fetchone())
        conn.commit()
    for line in out:
        print(line)


def work(url, table, client, rounds, failures):
    try:
        with psycopg.connect(url, prepare_threshold=2) as conn:
            for seq in range(rounds):
                # A pipelined read-write transaction.
                with conn.transaction():
                    with conn.pipeline():
                        conn.execute(
                            "INSERT INTO %s (client, seq, kind, note, n) VALUES (%%s, %%s, 'tx', %%s, %%s)" % table,
                            (client, seq, note(client, seq), seq),
                        )
                        cnt = conn.execute("SELECT count(*) FROM %s WHERE client = %%s AND kind = 'tx'" % table, (client,))
                        upd = conn.execute("UPDATE %s SET n = n * 4 + 3 WHERE client = %%s AND seq = %%s" % table, (client, seq))
                        got = conn.execute("SELECT n, note FROM %s WHERE client = %%s AND seq = %%s" % table, (client, seq))
                    if cnt.fetchone()[0] != seq + 1:
                        raise AssertionError("count %r, want %d" % (cnt, seq + 1))
                    if upd.rowcount != 1:
                        raise AssertionError("update touched %d rows" % upd.rowcount)
                    row = got.fetchone()
                    if row != (seq * 4 + 3, note(client, seq)):
                        raise AssertionError("read back %r" % (row,))

                # A pipeline whose middle statement fails: nothing kept.
                try:
                    with conn.transaction():
                        with conn.pipeline():
                            conn.execute("INSERT INTO %s (client, seq, kind) VALUES (%%s, %%s, 'doomed')" % table, (client, seq))
                            conn.execute("SELECT 1 / (0 * %s::int)", (seq,))
                            conn.execute("INSERT INTO %s (client, seq, kind) VALUES (%%s, %%s, 'doomed')" % table, (client, seq + 100))
                    raise AssertionError("division by zero succeeded")
                except errors.DivisionByZero:
                    pass

                # Statements prepared by psycopg (prepare_threshold=2), outside
                # a transaction block: each may land on either server.
                conn.autocommit = True
                try:
                    for k in range(4):
                        r = conn.execute("SELECT %s::text || '-' || %s::int", (note(client, seq), k)).fetchone()
                        if r != ("%s-%d" % (note(client, seq), k),):
                            raise AssertionError("echo %r" % (r,))
                    r = conn.execute("SELECT count(*) FROM %s WHERE client = %%s AND kind = 'doomed'" % table, (client,)).fetchone()
                    if r != (0,):
                        raise AssertionError("%r rolled-back rows visible" % (r,))
                finally:
                    conn.autocommit = False
    except Exception:
        failures.append("client %s: %s" % (client, traceback.format_exc()))


def load(url, table, threads, rounds):
    failures = []
    ts = [threading.Thread(target=work, args=(url, table, "t%d" % i, rounds, failures)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if failures:
        sys.stderr.write("%d of %d threads failed\n" % (len(failures), threads))
        for f in failures[:5]:
            sys.stderr.write(f + "\n")
        sys.exit(1)
    print("ok %d threads x %d rounds" % (threads, rounds))


def main():
    if sys.argv[1] == "transcript":
        transcript(sys.argv[2])
    elif sys.argv[1] == "load":
        load(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: psycopg3_clients.py transcript URL | load URL TABLE THREADS ROUNDS")


if __name__ == "__main__":
    main()
