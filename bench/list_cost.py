"""What LIST_GROUPS costs an honest member of big groups, and what paging at
the limit gets an attacker, at the default flood limit (20 a second, burst 50).

    flock -x /tmp/quiet.lock .venv/bin/python bench/list_cost.py \
        [--groups 500] [--members 1000] [--attack-seconds 15] [--python PY]

A fresh SQLite store gets ``--members`` users, all of them in each of
``--groups`` groups (rows written straight to the store), and three more
groups of as many for the attack. Then a node (a child process, this
checkout's code; ``--python`` another checkout's interpreter runs that
checkout's) serves:

- honest: one member reads its whole list, page after page (``after``),
  waiting as long as each "too fast" refusal says. Printed: pages, seconds,
  the tokens that took (seconds x rate + burst, less what was left), and
  the node's CPU seconds (utime + stime from /proc).
- attack: 5 accounts in the three groups ask for the first page as fast
  as they are let, for ``--attack-seconds``. Printed: pages served, bytes,
  the node's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, select

from bench import procs
from bench.login_cpu import _CHEAP, PASSWORD, node_cpu
from clusterchat.service.passwords import Passwords
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import allgroup, groupuser, user

RATE, BURST = 20.0, 50
_RETRY = re.compile(r"retry in ([0-9.]+) s")


async def fill(db: str, groups: int, members: int) -> tuple[int, list[int]]:
    """The honest member's id, and the 5 attackers' (in three other groups)."""
    store = SqlStore(db)
    passwords = Passwords(_CHEAP)
    try:
        await store.create_schema()
        digest = await passwords.hash(PASSWORD)
        async with store.engine.begin() as conn:
            rows = [{"name": f"u{i:049d}", "namekey": f"u{i:049d}", "password": digest}
                    for i in range(members)]  # fmt: skip
            await conn.execute(insert(user), rows)
            ids = list((await conn.execute(select(user.c.id).order_by(user.c.id))).scalars())
            for g in range(groups + 3):
                name = f"g{g}"
                res = await conn.execute(insert(allgroup).values(groupname=name, groupkey=name))
                gid = res.lastrowid
                members_of = ids if g < groups else ids[1:]  # the attack: not the honest one
                await conn.execute(
                    insert(groupuser), [{"groupid": gid, "userid": u} for u in members_of]
                )
        return ids[0], ids[1:6]
    finally:
        passwords.close()
        await store.close()


class Conn:
    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    @classmethod
    async def login(cls, port: int, uid: int) -> Conn:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        c = cls(r, w)
        ack = await c.ask({"msgid": 1, "id": uid, "password": PASSWORD})
        assert ack.get("errno") == 0, ack
        return c

    async def ask(self, doc: dict[str, object]) -> dict[str, object]:
        self.w.write(json.dumps(doc).encode() + b"\n")
        reply: dict[str, object] = json.loads(await self.r.readline())
        return reply

    async def page(self, after: int) -> tuple[dict[str, object] | None, float, int]:
        """A GROUP_LIST (None and the wait it asks for, if refused) and its size."""
        doc: dict[str, object] = {"msgid": 21}
        if after:
            doc["after"] = after
        self.w.write(json.dumps(doc).encode() + b"\n")
        line = await self.r.readline()
        reply = json.loads(line)
        if "groups" in reply:
            return reply, 0.0, len(line)
        m = _RETRY.search(str(reply.get("errmsg", "")))
        assert m, reply
        return None, float(m.group(1)), len(line)


async def honest(port: int, uid: int) -> tuple[int, float, int]:
    c = await Conn.login(port, uid)
    pages = refused = 0
    after = 0
    start = time.monotonic()
    while True:
        reply, wait, _ = await c.page(after)
        if reply is None:
            refused += 1
            await asyncio.sleep(wait)
            continue
        pages += 1
        groups = reply["groups"]
        assert isinstance(groups, list)
        if not reply.get("more"):
            break
        after = int(groups[-1]["id"])
    c.w.close()
    return pages, time.monotonic() - start, refused


async def attack(port: int, uids: list[int], seconds: float) -> tuple[int, int]:
    conns = [await Conn.login(port, u) for u in uids]
    served = size = 0
    deadline = time.monotonic() + seconds

    async def one(c: Conn) -> None:
        nonlocal served, size
        while time.monotonic() < deadline:
            reply, wait, n = await c.page(0)
            if reply is None:
                await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                continue
            served += 1
            size += n

    await asyncio.gather(*(one(c) for c in conns))
    for c in conns:
        c.w.close()
    return served, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=500)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--attack-seconds", type=float, default=15.0)
    ap.add_argument("--python", default=procs.PY)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite+aiosqlite:///{Path(tmp) / 'chat.db'}"
        t = time.monotonic()
        me, attackers = asyncio.run(fill(db, args.groups, args.members))
        print(f"filled in {time.monotonic() - t:.0f} s", flush=True)
        port = procs.free_port()
        cost = f"{_CHEAP.time_cost},{_CHEAP.memory_kib},{_CHEAP.parallelism}"
        cmd = procs.node_cmd(port, db, "--hash-cost", cost, "--history-days", "0",
                             "--message-rate", str(RATE), python=args.python)  # fmt: skip
        with procs.process(cmd, port, cpu=None) as p:
            cpu = node_cpu(p.pid)
            pages, secs, refused = asyncio.run(honest(port, me))
            used = node_cpu(p.pid) - cpu
            tokens = secs * RATE + BURST
            print(
                f"honest, {args.groups} groups of {args.members}: {pages} pages in {secs:.1f} s "
                f"({refused} refusals; about {tokens:.0f} tokens), node CPU {used:.2f} s",
                flush=True,
            )
            time.sleep(3)  # the tokens come back
            cpu = node_cpu(p.pid)
            served, size = asyncio.run(attack(port, attackers, args.attack_seconds))
            used = node_cpu(p.pid) - cpu
            print(
                f"attack, 5 accounts in 3 groups of {args.members - 1}, "
                f"{args.attack_seconds:.0f} s: {served} pages ({size / 1e6:.1f} MB), "
                f"node CPU {used:.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
