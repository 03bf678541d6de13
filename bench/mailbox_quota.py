"""The offline quota check of one group message to many offline members
with full-ish mailboxes: the old check (COUNT and SUM over each receiver's
mailbox, query MAILBOXES) against the tally read (revision 0008), alternated
A, B, A, B in one run, and a whole fan-out store (check, insert, tally).

    flock -x /tmp/quiet.lock .venv/bin/python bench/mailbox_quota.py \\
        --db sqlite+aiosqlite:////tmp/mq.db --members 1000 --stored 1000

Makes its own users and rows and deletes them after (MariaDB: pass a
database of its own, e.g. mysql+asyncmy://...:3306/cc_bench_mq; dropped
after by the caller)."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time

from sqlalchemy import insert

from clusterchat.storage import queries as q
from clusterchat.storage.base import Quota
from clusterchat.storage.sql import SqlStore, _over_mailbox
from clusterchat.storage.tables import mailbox, offlinemessage, user


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--stored", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    store = SqlStore(args.db, pool_size=1)
    await store.create_schema()
    tag = secrets.token_hex(3)
    quota = Quota(offline_messages=5000, offline_bytes=10**8)
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(user),
            [
                {"name": f"mq{tag}{i}", "namekey": f"mq{tag}{i}", "password": "x"}
                for i in range(args.members)
            ],
        )
    async with store.engine.connect() as conn:
        uids = sorted(
            (await conn.execute(user.select().where(user.c.name.like(f"mq{tag}%")))).scalars().all()
        )
    t0 = time.perf_counter()
    msg = "x" * 60
    for u in uids:
        async with store.engine.begin() as conn:
            await conn.execute(
                insert(offlinemessage),
                [{"userid": u, "message": msg, "size": 60} for _ in range(args.stored)],
            )
            tally = {"userid": u, "n": args.stored, "bytes": 60 * args.stored}
            await conn.execute(insert(mailbox), [tally])
    print(f"filled {len(uids)} x {args.stored} rows in {time.perf_counter() - t0:.1f} s")

    async def old() -> None:
        async with store.engine.begin() as conn:
            for i in range(0, len(uids), 1000):
                (await conn.execute(q.MAILBOXES, {"uids": uids[i : i + 1000]})).all()

    async def new() -> None:
        async with store.engine.begin() as conn:
            await _over_mailbox(conn, uids, 60, quota)

    times: dict[str, list[float]] = {"old check": [], "tally check": []}
    for _ in range(args.rounds):
        for name, fn in (("old check", old), ("tally check", new)):
            t = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - t)
    fanout = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        await store.store_offline_within(uids, "hello group", quota)
        fanout.append(time.perf_counter() - t)
    for name, ts in (*times.items(), ("whole fan-out store (new)", fanout)):
        runs = [round(x, 3) for x in ts]
        print(f"{name:28s} median {statistics.median(ts) * 1000:9.1f} ms  runs {runs}")
    ratio = statistics.median(times["old check"]) / statistics.median(times["tally check"])
    print(f"old/tally check ratio: {ratio:.0f}x")
    async with store.engine.begin() as conn:
        await conn.execute(offlinemessage.delete().where(offlinemessage.c.userid.in_(uids)))
        await conn.execute(mailbox.delete().where(mailbox.c.userid.in_(uids)))
        await conn.execute(user.delete().where(user.c.id.in_(uids)))
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
