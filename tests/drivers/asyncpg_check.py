"""asyncpg through shardgate: run by tests/drivers.rs as
`/usr/bin/python3 asyncpg_check.py HOST PORT USER PASSWORD DATABASE`.

asyncpg prepares (named, cached) statements for every query, pipelines executemany,
speaks COPY and cancels on timeout with a CancelRequest, so it exercises the proxy's
statement renaming, pooling and cancel forwarding. The proxy's pool is smaller than
the number of connections opened here. Exit 0 on success; otherwise a message saying
which check failed.
"""

import asyncio
import io
import sys
import time

import asyncpg

CONNECTIONS = 6


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def connect(args):
    host, port, user, password, database = args
    return await asyncpg.connect(
        host=host, port=int(port), user=user, password=password,
        database=database, ssl=False, timeout=10,
    )


async def worker(conn, i):
    """Interleaved transactions, statement reuse and pipelined batches on one connection."""
    # Plain fetches: each distinct text becomes a cached named statement.
    for n in range(10):
        check(await conn.fetchval("SELECT $1::int + $2::int", i, n) == i + n, "fetchval sum")
        rows = await conn.fetch("SELECT g FROM generate_series(1, $1::int) g", n + 1)
        check([r["g"] for r in rows] == list(range(1, n + 2)), "fetch series")

    # Explicit prepared statement, reused across pool checkouts.
    stmt = await conn.prepare("SELECT $1::text || '-' || $2::int")
    for n in range(12):
        check(await stmt.fetchval(f"w{i}", n) == f"w{i}-{n}", "prepared reuse")

    # A committed transaction with a pipelined executemany.
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO items (worker, n, label) VALUES ($1, $2, $3)",
            [(i, n, f"w{i}n{n}") for n in range(50)],
        )
        count = await conn.fetchval("SELECT count(*) FROM items WHERE worker = $1", i)
        check(count == 50, f"count in transaction: {count}")
        await asyncio.sleep(0.01)  # let other connections' transactions interleave

    # A rolled-back transaction leaves nothing behind.
    tr = conn.transaction()
    await tr.start()
    await conn.execute("INSERT INTO items (worker, n, label) VALUES ($1, 999, 'gone')", i)
    check(await conn.fetchval("SELECT count(*) FROM items WHERE worker = $1", i) == 51,
          "count before rollback")
    await tr.rollback()
    count = await conn.fetchval("SELECT count(*) FROM items WHERE worker = $1", i)
    check(count == 50, f"count after rollback: {count}")

    # Pipelined burst: executemany outside a transaction (asyncpg batches the Binds).
    await conn.executemany(
        "INSERT INTO burst (worker, n) VALUES ($1, $2)", [(i, n) for n in range(200)]
    )
    check(await stmt.fetchval("again", i) == f"again-{i}", "prepared after burst")


async def copy_checks(conn):
    records = [(1000 + n, n, f"copy {n}") for n in range(500)]
    result = await conn.copy_records_to_table(
        "items", records=records, columns=["worker", "n", "label"]
    )
    check(result == "COPY 500", f"copy_records_to_table: {result}")
    out = io.BytesIO()
    result = await conn.copy_from_query(
        "SELECT n, label FROM items WHERE worker >= $1 ORDER BY n", 1000, output=out,
        format="csv",
    )
    check(result == "COPY 500", f"copy_from_query: {result}")
    lines = out.getvalue().decode().splitlines()
    check(len(lines) == 500 and lines[0] == "0,copy 0" and lines[-1] == "499,copy 499",
          f"copied lines: {lines[:2]} .. {lines[-1:]}")
    # The connection still works with cached statements after COPY.
    check(await conn.fetchval("SELECT count(*) FROM items WHERE worker >= $1", 1000) == 500,
          "count after copy")


async def wait_sleeping(observer):
    """Waits until the server runs the pg_sleep(30), so a cancel cannot arrive early."""
    for _ in range(500):
        if await observer.fetchval(SLEEPING) > 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("pg_sleep(30) never started on the server")


SLEEPING = (
    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
    " AND state = 'active'"
)


async def cancel_checks(conn, observer):
    """asyncpg sends a CancelRequest when a query times out; the proxy must forward it.

    Runs while the pool is otherwise idle: a cancel that arrives while the client still
    waits for a server connection has nothing to cancel yet.
    """
    start = time.monotonic()
    tr = conn.transaction()
    await tr.start()
    try:
        await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(30)"), timeout=1.0)
        raise AssertionError("pg_sleep(30) returned before the timeout")
    except asyncio.TimeoutError:
        pass
    # asyncpg waits for the server to answer the cancelled query before the next one:
    # without a forwarded cancel this would take the full 30 s.
    try:
        await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=10)
        raise AssertionError("query after a cancelled one in a transaction succeeded")
    except asyncpg.exceptions.InFailedSQLTransactionError:
        pass  # the server aborted the transaction: the statement really was cancelled
    await tr.rollback()
    elapsed = time.monotonic() - start
    check(elapsed < 10, f"cancel took {elapsed:.1f}s")
    check(await conn.fetchval("SELECT 41 + 1") == 42, "connection usable after cancel")

    # The cancel reaches the statement that runs it, which fails with 57014.
    task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
    await wait_sleeping(observer)
    waiter = asyncio.get_running_loop().create_future()
    await conn._cancel(waiter)  # the CancelRequest asyncpg's timeout path sends
    try:
        await asyncio.wait_for(task, timeout=10)
        raise AssertionError("pg_sleep(30) was not cancelled")
    except asyncpg.exceptions.QueryCanceledError:
        pass
    check(await conn.fetchval("SELECT 'after'") == "after", "usable after QueryCanceledError")
    busy = await observer.fetchval(SLEEPING)
    check(busy == 0, f"{busy} pg_sleep(30) still running on the server")


async def main(args):
    conns = await asyncio.gather(*(connect(args) for _ in range(CONNECTIONS)))
    await conns[0].execute(
        "CREATE TABLE items (worker int NOT NULL, n int NOT NULL, label text);"
        "CREATE TABLE burst (worker int NOT NULL, n int NOT NULL)"
    )
    await asyncio.gather(*(worker(c, i) for i, c in enumerate(conns)))
    total = await conns[1].fetchval("SELECT count(*) FROM items")
    check(total == 50 * CONNECTIONS, f"items total {total}")
    rows = await conns[2].fetch("SELECT worker, count(*) AS c FROM burst GROUP BY worker")
    check(sorted((r["worker"], r["c"]) for r in rows) ==
          [(i, 200) for i in range(CONNECTIONS)], f"burst rows {rows}")
    # COPY while the other connections keep the small pool busy, then cancel.
    await asyncio.gather(
        copy_checks(conns[3]),
        *(worker_again(c, i) for i, c in enumerate(conns[:3] + conns[4:])),
    )
    await cancel_checks(conns[4], conns[5])
    await asyncio.gather(*(c.close() for c in conns))
    print("OK")


async def worker_again(conn, i):
    for n in range(20):
        check(await conn.fetchval("SELECT $1::int + $2::int", i, n) == i + n, "fetchval again")


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit("usage: asyncpg_check.py HOST PORT USER PASSWORD DATABASE")
    try:
        asyncio.run(asyncio.wait_for(main(sys.argv[1:]), timeout=60))
    except Exception as e:  # noqa: BLE001 - report any failure with its type
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
