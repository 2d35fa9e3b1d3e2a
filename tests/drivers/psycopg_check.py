"""psycopg 3 through shardgate: run by tests/drivers.rs as
`/usr/bin/python3 psycopg_check.py HOST PORT USER PASSWORD DATABASE`.

With `prepare_threshold=0` psycopg prepares every statement server-side under its own
names (`_pg3_N`) and reuses them, so the proxy must keep those statements valid across
pool checkouts; executemany and `conn.pipeline()` pipeline; `conn.cancel()` sends a
CancelRequest. Six connections share a pool of two. Exit 0 on success; otherwise a
message saying which check failed.
"""

import sys
import threading
import time

import psycopg
from psycopg import errors

CONNECTIONS = 6


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def connect(args, autocommit):
    host, port, user, password, database = args
    return psycopg.connect(
        host=host, port=port, user=user, password=password, dbname=database,
        sslmode="disable", connect_timeout=10, prepare_threshold=0, autocommit=autocommit,
    )


def worker(conn, i, barrier):
    """Repeated prepared queries, in and out of transactions, with other connections."""
    barrier.wait(timeout=20)
    cur = conn.cursor()
    for n in range(20):
        cur.execute("SELECT %s::int + %s::int, %s::text", (i, n, f"w{i}"))
        check(cur.fetchone() == (i + n, f"w{i}"), "parameterized select")
    if not conn.autocommit:
        conn.commit()  # implicit transaction: give the server back to the pool

    # Committed transaction with executemany (pipelined by psycopg).
    with conn.transaction():
        cur.executemany(
            "INSERT INTO items (worker, n, label) VALUES (%s, %s, %s)",
            [(i, n, f"w{i}n{n}") for n in range(50)],
        )
        cur.execute("SELECT count(*) FROM items WHERE worker = %s", (i,))
        check(cur.fetchone()[0] == 50, "count in transaction")
        time.sleep(0.01)  # let other connections' transactions interleave

    # A rolled-back transaction leaves nothing behind.
    with conn.transaction() as tx:
        cur.execute("INSERT INTO items (worker, n, label) VALUES (%s, 999, 'gone')", (i,))
        cur.execute("SELECT count(*) FROM items WHERE worker = %s", (i,))
        check(cur.fetchone()[0] == 51, "count before rollback")
        raise psycopg.Rollback(tx)
    cur.execute("SELECT count(*) FROM items WHERE worker = %s", (i,))
    check(cur.fetchone()[0] == 50, "count after rollback")
    if not conn.autocommit:
        conn.commit()

    # An explicit pipeline of prepared statements.
    counter = conn.cursor()
    with conn.pipeline():
        for n in range(100):
            cur.execute("INSERT INTO burst (worker, n) VALUES (%s, %s)", (i, n))
        counter.execute("SELECT count(*) FROM burst WHERE worker = %s", (i,))
    check(counter.fetchone()[0] == 100, "count after pipeline")
    if not conn.autocommit:
        conn.commit()

    # The same statements again, after many checkouts.
    for n in range(10):
        cur.execute("SELECT %s::int + %s::int, %s::text", (n, i, "again"))
        check(cur.fetchone() == (i + n, "again"), "parameterized select again")
    if not conn.autocommit:
        conn.commit()
    # psycopg really used server-side prepared statements (its private cache of names;
    # the rollback above made it send DEALLOCATE ALL and start over).
    names = getattr(getattr(conn, "_prepared", None), "_names", None)
    check(names is None or len(names) >= 3, f"prepared statement names: {names}")


def copy_checks(conn):
    cur = conn.cursor()
    with cur.copy("COPY items (worker, n, label) FROM STDIN") as copy:
        for n in range(500):
            copy.write_row((1000 + n, n, f"copy {n}"))
    check(cur.rowcount == 500, f"copy in rowcount {cur.rowcount}")
    rows = []
    with cur.copy("COPY (SELECT n, label FROM items WHERE worker >= 1000 ORDER BY n) TO STDOUT") as copy:
        for row in copy.rows():
            rows.append(row)
    check(len(rows) == 500 and rows[0] == ("0", "copy 0") and rows[-1] == ("499", "copy 499"),
          f"copied rows {rows[:2]} .. {rows[-1:]}")
    cur.execute("SELECT count(*) FROM items WHERE worker >= %s", (1000,))
    check(cur.fetchone()[0] == 500, "count after copy")


SLEEPING = (
    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
    " AND state = 'active'"
)


def cancel_checks(conn, observer):
    """conn.cancel() from another thread cancels the running pg_sleep (57014)."""
    outcome = {}

    def sleeper():
        try:
            conn.execute("SELECT pg_sleep(30)")
            outcome["result"] = "returned"
        except Exception as e:  # noqa: BLE001 - reported below
            outcome["result"] = e

    start = time.monotonic()
    thread = threading.Thread(target=sleeper)
    thread.start()
    # Cancel only once the server runs it: a cancel that arrives while the client still
    # waits for a pooled server connection has nothing to cancel yet.
    for _ in range(500):
        if observer.execute(SLEEPING).fetchone()[0] > 0:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("pg_sleep(30) never started on the server")
    conn.cancel()
    thread.join(timeout=10)
    check(not thread.is_alive(), "pg_sleep(30) not cancelled within 10 s")
    result = outcome.get("result")
    check(isinstance(result, errors.QueryCanceled), f"expected QueryCanceled, got {result!r}")
    check(result.sqlstate == "57014", f"sqlstate {result.sqlstate}")
    check(time.monotonic() - start < 10, "cancel too slow")
    check(conn.execute("SELECT %s::int * 2", (21,)).fetchone()[0] == 42,
          "connection usable after cancel")
    busy = observer.execute(SLEEPING).fetchone()[0]
    check(busy == 0, f"{busy} pg_sleep(30) still running on the server")


def eviction_checks(args):
    """A cache of two statements: psycopg (with libpq before 17) evicts the oldest with the SQL
    command `DEALLOCATE _pg3_N`, in and out of transactions, which shardgate must answer."""
    for autocommit in (True, False):
        conn = connect(args, autocommit=autocommit)
        conn.prepared_max = 2
        for rnd in range(2):
            for n in range(5):
                got = conn.execute(f"SELECT {n} + %s::int", (rnd,)).fetchone()[0]
                check(got == n + rnd, f"evicting cache (autocommit={autocommit}): {got}")
            if not autocommit:
                conn.commit()
        conn.close()


def run_threads(targets):
    errors_seen = []

    def wrap(fn, *a):
        try:
            fn(*a)
        except BaseException as e:  # noqa: BLE001 - collected and re-raised
            errors_seen.append(e)

    threads = [threading.Thread(target=wrap, args=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
        check(not t.is_alive(), "a worker thread hung")
    if errors_seen:
        raise errors_seen[0]


def main(args):
    # Half the connections autocommit, half use psycopg's implicit transactions.
    conns = [connect(args, autocommit=i % 2 == 0) for i in range(CONNECTIONS)]
    with conns[0].transaction():
        conns[0].execute("CREATE TABLE items (worker int NOT NULL, n int NOT NULL, label text)")
        conns[0].execute("CREATE TABLE burst (worker int NOT NULL, n int NOT NULL)")
    barrier = threading.Barrier(CONNECTIONS)
    run_threads([(worker, c, i, barrier) for i, c in enumerate(conns)])
    total = conns[2].execute("SELECT count(*) FROM items").fetchone()[0]
    check(total == 50 * CONNECTIONS, f"items total {total}")
    rows = conns[4].execute("SELECT worker, count(*) FROM burst GROUP BY worker ORDER BY 1").fetchall()
    check(rows == [(i, 100) for i in range(CONNECTIONS)], f"burst rows {rows}")
    # COPY and cancel while other connections keep the small pool busy.
    run_threads([
        (copy_checks, conns[0]),
        (cancel_checks, conns[2], conns[4]),
        (worker_again, conns[1], 1),
        (worker_again, conns[3], 3),
    ])
    eviction_checks(args)
    for c in conns:
        c.close()
    print("OK")


def worker_again(conn, i):
    for n in range(30):
        check(conn.execute("SELECT %s::int + %s::int", (i, n)).fetchone()[0] == i + n,
              "select again")
        if not conn.autocommit:
            conn.commit()


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit("usage: psycopg_check.py HOST PORT USER PASSWORD DATABASE")
    try:
        main(sys.argv[1:])
    except Exception as e:  # noqa: BLE001 - report any failure with its type
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
