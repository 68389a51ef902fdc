"""LISTEN clients for pgguard's notification test (test/drivers/listen_test.go).

usage: listen_clients.py psycopg|asyncpg URL CLIENTS CHANNELS EXPECTED

CLIENTS connections each LISTEN on channels ch0..ch{CHANNELS-1} and read
notifications until EXPECTED arrived. Payloads are "S<sender>:<seq>": each
client requires every one exactly once, each sender's in increasing seq,
and none from a rolled-back transaction (payload "rb..."). psycopg 3 runs
one thread per connection and reads conn.notifies(); asyncpg (statement
cache on: it prepares LISTEN under a name) uses add_listener. Prints "ok N"
per client; exits non-zero with the first failures on stderr.
"""

import asyncio
import sys
import threading
import traceback


class Checker:
    def __init__(self, expected):
        self.expected = expected
        self.count = 0
        self.last = {}

    def add(self, channel, payload):
        if payload.startswith("rb"):
            raise AssertionError("notification of a rolled-back transaction: %s %s" % (channel, payload))
        sender, seq = payload.split(":")
        seq = int(seq)
        if seq <= self.last.get(sender, -1):
            raise AssertionError("sender %s: seq %d after %d (duplicate or out of order)" % (sender, seq, self.last[sender]))
        self.last[sender] = seq
        self.count += 1
        if self.count > self.expected:
            raise AssertionError("more than %d notifications" % self.expected)


def run_psycopg(url, clients, channels, expected):
    import psycopg

    errors = []
    out = threading.Lock()

    def client(i):
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                for c in range(channels):
                    conn.execute("LISTEN ch%d" % c)
                check = Checker(expected)
                gen = conn.notifies()
                for n in gen:
                    check.add(n.channel, n.payload)
                    if check.count == expected:
                        gen.close()
                        break
                with out:
                    print("ok", check.count, flush=True)
        except Exception:
            errors.append("psycopg client %d: %s" % (i, traceback.format_exc()))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def run_asyncpg(url, clients, channels, expected):
    import asyncpg

    async def client(i):
        conn = await asyncpg.connect(url)
        try:
            check = Checker(expected)
            done = asyncio.get_running_loop().create_future()

            def on_note(_conn, _pid, channel, payload):
                if done.done():
                    return
                try:
                    check.add(channel, payload)
                    if check.count == expected:
                        done.set_result(None)
                except Exception as e:
                    done.set_exception(e)

            for c in range(channels):
                await conn.add_listener("ch%d" % c, on_note)
            await asyncio.wait_for(done, 120)
            await asyncio.sleep(0.3)  # a duplicate would still arrive
            if check.count != expected:
                raise AssertionError("%d notifications, want %d" % (check.count, expected))
            print("ok", check.count, flush=True)
        finally:
            await conn.close()

    async def main():
        results = await asyncio.gather(*(client(i) for i in range(clients)), return_exceptions=True)
        return ["asyncpg client %d: %r" % (i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]

    return asyncio.run(main())


def main():
    mode, url = sys.argv[1], sys.argv[2]
    clients, channels, expected = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    errors = (run_psycopg if mode == "psycopg" else run_asyncpg)(url, clients, channels, expected)
    if errors:
        sys.stderr.write("\n".join(errors[:5]) + "\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
