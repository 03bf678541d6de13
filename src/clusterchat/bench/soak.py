"""The soak: hours of ordinary use, to catch what only time shows.

Users chat in pairs at a human pace, and keep coming and going: every
second some log out or drop their connection, and come back a moment later
(by ticket or by password), so live delivery, offline storage, login and
ticket paths all run all the time. At the end everyone logs in once more
and every acknowledged message must have arrived. With ``--server-pid``
the server's resident memory is sampled; its growth after the first
minute is reported, since a leak shows there and not in a short run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterchat.bench.conn import BenchConn, Closed
from clusterchat.bench.scenarios import (
    PASSWORD,
    BenchError,
    Options,
    Progress,
    _login,
    _open,
    _register_all,
)
from clusterchat.bench.stats import Result
from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId

#: Seconds after which the memory baseline is taken (start-up, caches, pools).
SETTLE = 60.0


@dataclass
class _User:
    uid: int
    conn: BenchConn | None = None
    ticket: str | None = None
    got: set[str] = field(default_factory=set)
    drops: list[int] = field(default_factory=list)  # when it closed without logging out (ns)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, opts: Options, progress: Progress) -> None:
        self.opts, self.progress = opts, progress
        self.result = Result("soak", opts.label)
        self.users: list[_User] = []
        self.acked: dict[int, set[str]] = {}  # receiver uid -> acknowledged texts
        self.sent = 0
        self.churned = 0
        self.with_receipts = 0  # logins the server granted receipts (--receipts)
        self.rss: list[tuple[float, int]] = []
        self._returns: set[asyncio.Task[None]] = set()

    def _on_push(self, user: _User) -> Any:
        def push(msg: dict[str, Any]) -> None:
            text = str(msg.get("msg", ""))
            if msg.get("msgid") == MsgId.ONE_CHAT and text not in user.got:
                user.got.add(text)
                sent_ns = int(text.split(":", 1)[0])
                # Time to arrive, including any time stored while the user was away.
                self.result.latencies_us.append((time.perf_counter_ns() - sent_ns) / 1000)

        return push

    async def _connect(self, i: int, user: _User) -> bool:
        """Log the user in (ticket if it has one); False if the server said no."""
        conn = await _open(self.opts, i, self._on_push(user))
        secret = {"ticket": user.ticket} if user.ticket else {"password": PASSWORD}
        ack = await _login(conn, user.uid, secret, self.opts.receipts)
        if ack.get("errno") != 0:
            conn.close()
            return False
        user.ticket = conn.ticket or user.ticket
        self.with_receipts += bool(ack.get("receipts"))
        for item in ack.get("offlinemsg") or []:
            self._on_push(user)(codec.loads(item))
        user.conn = conn
        return True

    async def _pair_loop(self, i: int, stop_at: float) -> None:
        me, peer = self.users[i], self.users[i ^ 1]
        pace = 1.0 / (self.opts.rate or 2.0)
        n = 0
        while time.perf_counter() < stop_at:
            await asyncio.sleep(pace * random.uniform(0.5, 1.5))
            conn = me.conn
            if conn is None:
                continue  # away for now (churn)
            text = f"{time.perf_counter_ns()}:{i}:{n}"
            n += 1
            try:
                reply = await conn.ask({"msgid": MsgId.ONE_CHAT, "toid": peer.uid, "msg": text})
            except Closed:
                continue
            self.sent += 1
            if reply.get("msgid") == MsgId.CHAT_ACK:
                self.acked.setdefault(peer.uid, set()).add(text)
            else:
                self.result.errors += 1

    async def _churn(self, stop_at: float) -> None:
        """Some users leave (log out, or just drop) and come back soon after."""
        per_second = max(1, len(self.users) // 20)
        while time.perf_counter() < stop_at:
            await asyncio.sleep(1.0)
            for i in random.sample(range(len(self.users)), per_second):
                user = self.users[i]
                if user.conn is None:
                    continue
                conn, user.conn = user.conn, None
                if random.random() < 0.5:
                    with contextlib.suppress(Closed):
                        await conn.ask({"msgid": MsgId.LOGOUT})
                    user.ticket = None  # a logout revokes the ticket
                else:
                    user.drops.append(time.perf_counter_ns())
                conn.close()
                task = asyncio.ensure_future(self._back(i, random.uniform(0.2, 3.0)))
                self._returns.add(task)
                task.add_done_callback(self._returns.discard)
                self.churned += 1

    async def _back(self, i: int, after: float = 0.0) -> None:
        await asyncio.sleep(after)
        user = self.users[i]
        for _ in range(100):  # "already online" while the old session is dropped
            if await self._connect(i, user):
                return
            await asyncio.sleep(0.1)
        self.result.errors += 1

    async def _memory(self, stop_at: float) -> None:
        pid = self.opts.server_pid
        start = time.perf_counter()
        while pid and time.perf_counter() < stop_at:
            kib = rss_kib(pid)
            if kib is not None:
                self.rss.append((time.perf_counter() - start, kib))
            await asyncio.sleep(5.0)

    async def run(self) -> Result:
        opts = self.opts
        n = opts.users - opts.users % 2
        ids = await _register_all(opts, n, self.progress)
        self.users = [_User(uid) for uid in ids]
        for i, user in enumerate(self.users):
            if not await self._connect(i, user):
                raise BenchError(f"the server refused logging in user {user.uid}")
        start = time.perf_counter()
        stop_at = start + opts.seconds
        ticker = asyncio.ensure_future(self._tick(start, stop_at))
        await asyncio.gather(
            *(self._pair_loop(i, stop_at) for i in range(n)),
            self._churn(stop_at),
            self._memory(stop_at),
        )
        ticker.cancel()
        await asyncio.gather(*self._returns)  # the last users coming back
        # Everyone in once more: what was stored for them arrives now.
        for i, user in enumerate(self.users):
            if user.conn is None:
                await self._back(i)
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline and self._missing():  # noqa: ASYNC110 - a deadline
            await asyncio.sleep(0.1)
        for user in self.users:
            if user.conn is not None:
                user.conn.close()
        return self._finish(time.perf_counter() - start)

    async def _tick(self, start: float, stop_at: float) -> None:
        total = int(stop_at - start)
        while True:
            self.progress("soaking", min(total, int(time.perf_counter() - start)), total)
            await asyncio.sleep(0.5)

    def _lost_at_drops(self) -> int:
        """Missing messages sent within a second of their receiver closing its
        connection: written to a socket whose reader was going away."""
        by_uid = {u.uid: u for u in self.users}
        n = 0
        for uid, texts in self.acked.items():
            user = by_uid[uid]
            for text in texts - user.got:
                sent = int(text.split(":", 1)[0])
                n += any(-1_000_000_000 <= d - sent <= 1_000_000_000 for d in user.drops)
        return n

    def _missing(self) -> int:
        by_uid = {u.uid: u for u in self.users}
        return sum(len(texts - by_uid[uid].got) for uid, texts in self.acked.items())

    def _finish(self, seconds: float) -> Result:
        r = self.result
        r.seconds = seconds
        r.ops = sum(len(t) for t in self.acked.values())
        r.lost = self._missing()
        if r.lost:
            r.notes["lost: sent within 1 s of the receiver dropping"] = self._lost_at_drops()
        r.notes["sent"] = self.sent
        r.notes["comings and goings"] = self.churned
        if self.opts.receipts:
            r.notes["logins with receipts"] = self.with_receipts
        if self.rss:
            base = next((kib for t, kib in self.rss if t >= SETTLE), self.rss[0][1])
            r.notes["server RSS MiB (first, base, last)"] = (
                f"{self.rss[0][1] / 1024:.1f}, {base / 1024:.1f}, {self.rss[-1][1] / 1024:.1f}"
            )
            r.notes["rss_growth_kib"] = self.rss[-1][1] - base
        return r


async def soak(opts: Options, progress: Progress) -> Result:
    return await Soak(opts, progress).run()
