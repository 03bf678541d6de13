"""The benchmark scenarios. Each creates its own users (a unique name prefix
per run), reports ops/s, latency percentiles and losses, and stops by itself."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterchat.bench.conn import BenchConn, Closed
from clusterchat.bench.stats import Result
from clusterchat.protocol.messages import ErrCode, MsgId

PASSWORD = "bench-pw"
_BUSY = 4  # REG_ACK / LOGIN_ACK errno: service unavailable or busy, retry
_RETRIES = 200
#: Told when the server under test refuses a benchmark for a limit of its own.
_LIMITS_HINT = (
    ' (start the server under test with --registrations 0 --message-rate 0: README, "Benchmarking")'
)


class BenchError(Exception):
    """The server under test refused what the benchmark needs: one line for
    the person running it, not a traceback."""


def _refused(what: str, ack: dict[str, Any]) -> BenchError:
    why = str(ack.get("errmsg") or ack)
    hint = _LIMITS_HINT if "too many" in why else ""
    return BenchError(f"the server refused {what}: {why}{hint}")


def explain(exc: Closed) -> str:
    """A connection the server closed, with the flags to run it with if it
    closed it for a limit (the flood limit: ERROR 170 "too many requests")."""
    why = str(exc)
    return why + (_LIMITS_HINT if "too many" in why else "")


def _check_open(conns: Sequence[BenchConn]) -> None:
    """A run during which the server closed connections measured nothing
    worth a table: say why instead."""
    closed = [c for c in conns if c.transport is None]
    if closed:
        why = explain(Closed(closed[0].closed_why()))
        raise BenchError(f"{len(closed)} of {len(conns)} connections were closed: {why}")


Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class Options:
    targets: list[tuple[str, int]]
    users: int = 200
    concurrency: int = 16
    pairs: int = 10
    window: int = 1
    seconds: float = 5.0
    warmup: float = 1.0
    members: int = 20
    senders: int = 1
    msg_size: int = 32
    #: login: logins started per second regardless of how fast they finish (an
    #: open loop, to offer more than the server can take); 0: ``concurrency`` at
    #: a time. soak: messages per second per user (default 2).
    rate: float = 0.0
    #: The server's process id, to sample its memory (soak).
    server_pid: int = 0
    #: "tcp", or "ws": WebSockets to the targets' HTTP ports (--http-port).
    transport: str = "tcp"
    #: "modern" (requests end with a newline; every chat is acknowledged) or
    #: "nul" (the original client's: NUL-terminated, no CHAT_ACK). TCP only.
    dialect: str = "modern"
    #: Log in asking for receipts and acknowledge pushes, as our clients do.
    receipts: bool = False

    @property
    def nul(self) -> bool:
        return self.dialect == "nul"

    @property
    def label(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.targets)


def _now_us() -> float:
    return time.perf_counter_ns() / 1000


async def _bounded(
    n: int, conc: int, work: Callable[[int], Awaitable[None]], progress: Progress, phase: str
) -> None:
    """Run work(0..n-1) with at most ``conc`` in flight."""
    counter = itertools.count()
    done = 0

    async def worker() -> None:
        nonlocal done
        while (i := next(counter)) < n:
            await work(i)
            done += 1
            progress(phase, done, n)

    await asyncio.gather(*(worker() for _ in range(min(conc, n))))


async def _open(
    opts: Options, i: int, on_push: Callable[[dict[str, Any]], None] | None = None
) -> BenchConn:
    host, port = opts.targets[i % len(opts.targets)]
    if opts.transport == "ws":
        from clusterchat.bench.wsconn import WsBenchConn

        return await WsBenchConn.open(host, port, on_push, acknowledge=opts.receipts)
    term = b"\0" if opts.nul else b"\n"
    return await BenchConn.open(host, port, on_push, term, acknowledge=opts.receipts)


async def _register_all(opts: Options, n: int, progress: Progress) -> list[int]:
    prefix = f"b{os.urandom(4).hex()}"
    ids = [0] * n
    conns = [await _open(opts, i) for i in range(min(opts.concurrency, n))]

    async def reg(i: int) -> None:
        conn = conns[i % len(conns)]
        doc = {"msgid": MsgId.REG, "name": f"{prefix}{i}", "password": PASSWORD}
        for _attempt in range(_RETRIES):
            ack = await conn.ask(doc)
            if ack.get("errno") != _BUSY:
                break
            await asyncio.sleep(0.05)  # a busy server: wait for it
        if ack.get("errno") != 0:
            raise _refused(f"registering user {i + 1} of {n}", ack)
        ids[i] = int(ack["id"])

    # One request in flight per connection keeps replies matched.
    await _bounded(n, len(conns), reg, progress, "registering")
    for c in conns:
        c.close()
    return ids


async def _login(
    conn: BenchConn, uid: int, secret: dict[str, str], receipts: bool = False
) -> dict[str, Any]:
    doc: dict[str, Any] = {"msgid": MsgId.LOGIN, "id": uid, **secret}
    if receipts:  # the connection's core acknowledges (opened with opts.receipts)
        doc["receipts"] = True
    ack = await conn.ask(doc)
    if ack.get("errno") == 0:
        conn.uid = uid
        conn.ticket = ack.get("ticket")
    return ack


PushFor = Callable[[int], Callable[[dict[str, Any]], None]]


async def _login_all(
    opts: Options, ids: Sequence[int], progress: Progress, on_push: PushFor | None = None
) -> list[BenchConn]:
    conns: list[BenchConn | None] = [None] * len(ids)

    async def one(i: int) -> None:
        conn = await _open(opts, i, on_push(i) if on_push else None)
        ack = await _login(conn, ids[i], {"password": PASSWORD}, opts.receipts)
        if ack.get("errno") != 0:
            raise _refused(f"logging in user {ids[i]}", ack)
        conns[i] = conn

    await _bounded(len(ids), opts.concurrency, one, progress, "logging in")
    return [c for c in conns if c is not None]


# -- scenarios -------------------------------------------------------------------------


async def reg(opts: Options, progress: Progress) -> Result:
    result = Result("reg", opts.label)
    conns = [await _open(opts, i) for i in range(opts.concurrency)]
    prefix = f"r{os.urandom(4).hex()}"
    refused: Counter[object] = Counter()  # by errno; the first reply of each says why
    first: dict[object, dict[str, Any]] = {}

    async def one(i: int) -> None:
        conn = conns[i % len(conns)]
        t0 = _now_us()
        ack = await conn.ask({"msgid": MsgId.REG, "name": f"{prefix}{i}", "password": PASSWORD})
        result.latencies_us.append(_now_us() - t0)
        if ack.get("errno") == 0:
            result.ops += 1
        else:
            result.errors += 1
            refused[ack.get("errno")] += 1
            first.setdefault(ack.get("errno"), ack)

    start = time.perf_counter()
    await _bounded(opts.users, len(conns), one, progress, "registering")
    result.seconds = time.perf_counter() - start
    for c in conns:
        c.close()
    if refused and not result.ops:  # a table of 0 ops and N errors said nothing of why
        raise _refused("every registration", next(iter(first.values())))
    for errno, n in refused.items():
        result.notes[f"refused: {first[errno].get('errmsg') or first[errno]}"] = n
    return result


async def login(opts: Options, progress: Progress) -> Result:
    """Fresh users log in, each on its own connection: ``concurrency`` at a
    time, or ``rate`` a second whatever the server's pace (then the latency of
    each accepted login, and how many were shed as busy, tell how it copes)."""
    ids = await _register_all(opts, opts.users, progress)
    result = Result("login", opts.label)
    conns: list[BenchConn] = []
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        t0 = _now_us()
        try:
            conn = await _open(opts, i)
            conns.append(conn)
            ack = await _login(conn, ids[i], {"password": PASSWORD})
        except (Closed, OSError):
            result.errors += 1
            return
        if ack.get("errno") == 0:
            result.latencies_us.append(_now_us() - t0)
            result.ops += 1
        elif ack.get("errno") == _BUSY:
            result.shed += 1
        else:
            result.errors += 1
        done += 1
        progress("login storm", done, len(ids))

    start = time.perf_counter()
    if opts.rate > 0:
        tasks = []
        for i in range(len(ids)):
            await asyncio.sleep(max(0.0, start + i / opts.rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        result.notes["offered"] = f"{opts.rate:g} logins/s"
    else:
        await _bounded(len(ids), opts.concurrency, one, lambda *_: None, "login storm")
    result.seconds = time.perf_counter() - start
    for c in conns:
        c.close()
    return result


async def reconnect(opts: Options, progress: Progress) -> Result:
    """Every user drops at once and logs back in with its session ticket."""
    ids = await _register_all(opts, opts.users, progress)
    first = await _login_all(opts, ids, progress)
    tickets = {c.uid: c.ticket for c in first}
    for c in first:
        c.close()
    await asyncio.sleep(0.5)  # let the node notice the drops
    result = Result("reconnect", opts.label)
    conns: list[BenchConn] = []
    done = 0

    refused: Counter[str] = Counter()

    async def back(i: int) -> None:
        """Log user i back in as our clients do: a connection shed, or a login
        refused as busy (4) or as "already online" while the old session is
        dropped (2), is retried after a short, jittered pause."""
        nonlocal done
        uid = ids[i]
        t0 = _now_us()
        for _attempt in range(100):
            ticket = tickets.get(uid)
            secret = {"ticket": ticket} if ticket else {"password": PASSWORD}
            conn: BenchConn | None = None
            try:
                conn = await _open(opts, i)
                ack = await _login(conn, uid, secret)
            except (Closed, OSError):  # the connection was shed
                ack = {"errno": _BUSY}
            errno = ack.get("errno")
            if ack.get("msgid") == MsgId.ERROR and errno == ErrCode.SERVER_FULL:
                errno = _BUSY  # shed at connect ("overloaded; try again shortly")
            if errno == 0 and conn is not None:
                conns.append(conn)
                result.latencies_us.append(_now_us() - t0)
                result.ops += 1
                done += 1
                progress("reconnecting", done, len(ids))
                return
            if conn is not None:
                conn.close()
            if errno not in (2, _BUSY):
                result.errors += 1
                refused[str(ack.get("errmsg"))] += 1
                return
            result.shed += errno == _BUSY
            await asyncio.sleep(random.uniform(0.05, 0.5))
        result.errors += 1
        refused["still refused after 100 tries"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(back(i) for i in range(len(ids))))
    result.seconds = time.perf_counter() - start
    result.notes["all back in"] = f"{result.seconds:.2f} s"
    for why, n in refused.items():
        result.notes[f"refused: {why}"] = n
    for c in conns:
        c.close()
    return result


def _payload(seq: int, sender: int, size: int) -> str:
    head = f"{time.perf_counter_ns()}:{seq}:{sender}:"
    return head + "x" * max(0, size - len(head))


class ChatFlow:
    """Windowed senders and the receivers' bookkeeping, shared by chat and group.

    Each message carries its send time, sequence number and sender; it
    retires when all ``fanout`` deliveries have arrived, freeing a window slot.
    """

    def __init__(self, opts: Options, result: Result, senders: int, fanout: int) -> None:
        self.opts, self.result, self.fanout = opts, result, fanout
        self.window = [asyncio.Semaphore(opts.window) for _ in range(senders)]
        self.outstanding: dict[int, int] = {}  # seq -> deliveries still due
        self.measure_from = float("inf")
        self.seqs = itertools.count()
        self.sent = 0
        self.flooded = 0
        #: Why the server closed a connection mid-run (the run stops at once).
        self.closed_why = ""

    def on_push(self, msg: dict[str, Any]) -> None:
        sent_ns, seq_s, sender, _ = str(msg.get("msg", "")).split(":", 3)
        now = time.perf_counter_ns()
        if now / 1e9 >= self.measure_from:
            self.result.ops += 1
            self.result.latencies_us.append((now - int(sent_ns)) / 1000)
        seq = int(seq_s)
        left = self.outstanding.get(seq, 0) - 1
        if left > 0:
            self.outstanding[seq] = left
        elif seq in self.outstanding:
            del self.outstanding[seq]
            self.window[int(sender)].release()

    def _replied(self, seq: int, sender: int, reply: asyncio.Future[dict[str, Any]]) -> None:
        """A refused message will never arrive: count it and free its slot."""
        if reply.cancelled():
            return
        if (exc := reply.exception()) is not None:
            self._closed(str(exc))
            return
        msg = reply.result()
        if msg.get("msgid") != MsgId.ERROR:
            return
        self.result.errors += 1
        if msg.get("errno") == ErrCode.TOO_FAST:
            self.result.notes["refused by the flood limit"] = self.flooded = self.flooded + 1
        if self.outstanding.pop(seq, None) is not None:
            self.window[sender].release()

    def _closed(self, why: str) -> None:
        """The server closed a connection: stop every sender now (one waiting
        for a window slot that the closed connection's messages held would
        wait forever)."""
        if not self.closed_why:
            self.closed_why = why
            for window in self.window:
                window.release()

    async def run(
        self, senders: list[tuple[BenchConn, dict[str, Any]]], progress: Progress
    ) -> None:
        now = time.perf_counter()
        nul = self.opts.nul
        self.measure_from = now + self.opts.warmup
        stop_at = self.measure_from + self.opts.seconds

        async def send_loop(k: int, conn: BenchConn, template: dict[str, Any]) -> None:
            while (left := stop_at - time.perf_counter()) > 0 and not self.closed_why:
                try:  # bounded: deliveries that never come end the run, not hang it
                    await asyncio.wait_for(self.window[k].acquire(), left)
                except TimeoutError:
                    return
                if self.closed_why:
                    return
                seq = next(self.seqs)
                self.outstanding[seq] = self.fanout
                doc = {**template, "msg": _payload(seq, k, self.opts.msg_size)}
                try:
                    if nul:  # the original's dialect acknowledges nothing
                        conn.send(doc)
                    else:
                        reply = conn.request(doc)
                        reply.add_done_callback(functools.partial(self._replied, seq, k))
                except Closed as exc:
                    self.result.errors += 1
                    self._closed(str(exc))
                    return
                self.sent += 1

        ticker = asyncio.ensure_future(_tick(self.opts, progress))
        busy = asyncio.ensure_future(self._cpu(stop_at))
        try:
            await asyncio.gather(*(send_loop(k, c, t) for k, (c, t) in enumerate(senders)))
            if self.closed_why:
                raise BenchError(explain(Closed(self.closed_why)))
            await asyncio.sleep(min(2.0, 0.5 + self.opts.seconds / 10))  # stragglers
        finally:
            ticker.cancel()
            busy.cancel()
        self.result.seconds = self.opts.seconds
        self.result.lost = sum(self.outstanding.values())
        self.result.notes["messages sent"] = self.sent
        self.result.notes["dialect"] = self.opts.dialect

    async def _cpu(self, stop_at: float) -> None:
        """CPU use over the measured interval, in percent of one core: this
        client's, and the server's if --server-pid names it (on this
        machine): which of the two is the limit."""
        pid = self.opts.server_pid
        await asyncio.sleep(max(0.0, self.measure_from - time.perf_counter()))
        t0, c0, s0 = time.perf_counter(), time.process_time(), _cpu_seconds(pid)
        ops0 = self.result.ops
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        wall = time.perf_counter() - t0
        self.result.notes["client CPU %"] = round(100 * (time.process_time() - c0) / wall, 1)
        s1 = _cpu_seconds(pid)
        if s0 is not None and s1 is not None:
            self.result.notes["server CPU %"] = round(100 * (s1 - s0) / wall, 1)
            if self.result.ops > ops0:  # less disturbed by other load than a rate
                self.result.notes["server CPU us per delivery"] = round(
                    (s1 - s0) * 1e6 / (self.result.ops - ops0), 2
                )


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of a process on this machine (None: unknown)."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _tick(opts: Options, progress: Progress) -> None:
    total = int((opts.warmup + opts.seconds) * 10)
    for i in range(total):
        progress("measuring", i, total)
        await asyncio.sleep(0.1)


async def chat(opts: Options, progress: Progress) -> Result:
    """Pairs (users 2i and 2i+1) message each other; with two targets every
    pair spans two nodes."""
    result = Result("chat", opts.label)
    if opts.receipts:
        result.notes["receipts"] = "on"
    ids = await _register_all(opts, opts.pairs * 2, progress)
    flow = ChatFlow(opts, result, senders=len(ids), fanout=1)
    conns = await _login_all(opts, ids, progress, on_push=lambda _i: flow.on_push)
    senders = [(c, {"msgid": MsgId.ONE_CHAT, "toid": ids[i ^ 1]}) for i, c in enumerate(conns)]
    try:
        await flow.run(senders, progress)
        _check_open(conns)
    finally:
        for c in conns:
            c.close()
    return result


async def group(opts: Options, progress: Progress) -> Result:
    """One group of ``members``; ``senders`` of them talk, everyone else receives."""
    result = Result("group", opts.label)
    if opts.receipts:
        result.notes["receipts"] = "on"
    ids = await _register_all(opts, opts.members, progress)
    flow = ChatFlow(opts, result, senders=opts.senders, fanout=opts.members - 1)
    conns = await _login_all(opts, ids, progress, on_push=lambda _i: flow.on_push)
    name = f"g{os.urandom(4).hex()}"
    ack = await conns[0].ask({"msgid": MsgId.CREATE_GROUP, "groupname": name, "groupdesc": "bench"})
    if ack.get("errno", 0) != 0 or "groupid" not in ack:
        raise _refused("creating the group", ack)
    gid = int(ack["groupid"])
    for ack in await asyncio.gather(
        *(c.ask({"msgid": MsgId.ADD_GROUP, "groupid": gid}) for c in conns[1:])
    ):
        if ack.get("errno", 0) != 0:
            raise _refused("joining the group", ack)
    senders = [(conns[k], {"msgid": MsgId.GROUP_CHAT, "groupid": gid}) for k in range(opts.senders)]
    try:
        await flow.run(senders, progress)
        _check_open(conns)
    finally:
        for c in conns:
            c.close()
    return result


SCENARIOS: dict[str, Callable[[Options, Progress], Awaitable[Result]]] = {
    "reg": reg,
    "login": login,
    "reconnect": reconnect,
    "chat": chat,
    "group": group,
}
