"""asyncpg after ALTER TABLE through shardgate: run by tests/drivers.rs as
`/usr/bin/python3 asyncpg_ddl_check.py HOST PORT USER PASSWORD DATABASE`, against a pool of one
server connection.

asyncpg caches a prepared statement per query text. After the table's columns change, the
server fails the cached statement with 0A000 "cached plan must not change result type";
asyncpg then prepares the query again under a new name and retries once, which works on a
direct connection. Through shardgate both names map to one shared server statement unless the
proxy notices the error. Exit 0 on success; otherwise a message saying which check failed.
"""

import asyncio
import sys

import asyncpg


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def connect(args):
    host, port, user, password, database = args
    return await asyncpg.connect(
        host=host, port=int(port), user=user, password=password,
        database=database, ssl=False, timeout=10,
    )


async def main(args):
    admin = await connect(args)
    await admin.execute("CREATE TABLE ddl_a (a int); INSERT INTO ddl_a VALUES (1)")
    first = await connect(args)
    rows = await first.fetch("SELECT * FROM ddl_a")
    check([dict(r) for r in rows] == [{"a": 1}], f"before ALTER: {rows}")
    await admin.execute("ALTER TABLE ddl_a ADD COLUMN b text DEFAULT 'new'")
    second = await connect(args)
    for who, conn in (("cached before ALTER", first), ("new connection", second)):
        for attempt in range(2):
            try:
                rows = await conn.fetch("SELECT * FROM ddl_a")
            except Exception as e:  # noqa: BLE001 - reported with its type
                raise AssertionError(f"{who}, fetch {attempt}: {type(e).__name__}: {e}") from e
            check([dict(r) for r in rows] == [{"a": 1, "b": "new"}],
                  f"{who}, fetch {attempt}: {rows}")
    for c in (admin, first, second):
        await c.close()
    print("OK")


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit("usage: asyncpg_ddl_check.py HOST PORT USER PASSWORD DATABASE")
    try:
        asyncio.run(asyncio.wait_for(main(sys.argv[1:]), timeout=30))
    except Exception as e:  # noqa: BLE001 - report any failure with its type
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
