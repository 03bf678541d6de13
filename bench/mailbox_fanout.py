"""A group message to many offline members, stored: wall time, the node's
event-loop time (the main thread's CPU time: asyncmy builds and escapes its
statements there; aiosqlite runs SQLite on a thread of its own) and the
longest stall a 1 ms ticker on the loop saw, then every member's delivery
(read the page, delete it). Uses the store's API only, so the same script
measures any revision: run it with PYTHONPATH at one checkout, then the
other, alternating.

    flock -x /tmp/quiet.lock .venv/bin/python bench/mailbox_fanout.py \\
        --db mysql+asyncmy://root@127.0.0.1:3306/cc_bench_fanout --members 1000 --kib 16

Measured 2026-11-29 (2 cores, shared; medians of 3; base d2d72d1 against
revision 0009, 1,000 members, 15.9 KiB text):

    MariaDB fan-out store   wall 830 -> 32 ms, loop CPU 581 -> 18 ms, stall 542 -> 7 ms
    SQLite  fan-out store   wall  91 -> 26 ms, loop CPU  15 -> 19 ms, stall   3 -> 7 ms
    MariaDB 1,000 deliveries wall 4.33 -> 5.70 s, loop CPU 3.57 -> 4.11 s
    SQLite  1,000 deliveries wall 4.37 -> 5.17 s, loop CPU 3.66 -> 4.36 s

Makes its own users and rows and deletes them after; a MariaDB database
named by --db is created and dropped (give it one of its own)."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time

from sqlalchemy import insert

from clusterchat.storage.base import Quota
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import mailbox, user


async def _timed(work: object) -> tuple[float, float, float]:
    """(wall, main-thread CPU, longest loop stall) of awaiting ``work``."""
    stall = 0.0
    running = True

    async def tick() -> None:
        nonlocal stall
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stall = max(stall, now - last - 0.001)
            last = now

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.01)
    w, c = time.perf_counter(), time.thread_time()
    await work  # type: ignore[misc]
    w, c = time.perf_counter() - w, time.thread_time() - c
    running = False
    await ticker
    return w, c, stall


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--kib", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    store = SqlStore(args.db, pool_size=2)
    await store.create_schema()
    tag = secrets.token_hex(3)
    quota = Quota(offline_messages=5000, offline_bytes=16 * 2**20)
    async with store.engine.begin() as conn:
        rows = [
            {"name": f"fo{tag}{i}", "namekey": f"fo{tag}{i}", "password": "x"}
            for i in range(args.members)
        ]
        await conn.execute(insert(user), rows)
    async with store.engine.connect() as conn:
        found = await conn.execute(user.select().where(user.c.name.like(f"fo{tag}%")))
        uids = sorted(found.scalars().all())
    body = "x" * (args.kib * 1024 - 200)
    stores, deliveries = [], []
    for r in range(args.rounds):
        msg = f'{{"msgid":5,"id":1,"name":"a","groupid":1,"msg":"{body}","mid":"b-{r}"}}'
        stores.append(await _timed(store.store_offline_within(uids, msg, quota)))

        async def deliver_all(msg: str = msg) -> None:
            for u in uids:
                page = await store.offline(u)
                assert [m for _, m in page] == [msg], (u, len(page))
                await store.delete_offline(u, [i for i, _ in page])

        deliveries.append(await _timed(deliver_all()))
    print(f"{args.db.split('+')[0]}: {len(uids)} members, {len(msg) / 1024:.1f} KiB text")
    for name, runs in (("fan-out store", stores), (f"{len(uids)} deliveries", deliveries)):
        med = [statistics.median(x[i] for x in runs) * 1000 for i in range(3)]
        print(
            f"  {name:18s} wall {med[0]:7.1f} ms  loop CPU {med[1]:7.1f} ms  "
            f"longest stall {med[2]:6.1f} ms  (medians of {len(runs)}; walls "
            f"{[round(x[0] * 1000) for x in runs]})"
        )
    async with store.engine.begin() as conn:
        await conn.execute(mailbox.delete().where(mailbox.c.userid.in_(uids)))
        await conn.execute(user.delete().where(user.c.id.in_(uids)))
    if store.engine.dialect.name == "mysql":
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP DATABASE `{store.engine.url.database}`")
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
