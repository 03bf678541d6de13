"""Soak checker: many receipt clients (ChatConnection, receipts on) on a 2-3 node
cluster of its own (private MariaDB database, Redis prefix, optionally its own
redis-server), bursts of 1:1 and group chats with a window of requests in
flight, one fault per scenario (vanished receivers behind a stalling proxy,
kill -9 of a node, Redis killed and restarted, MariaDB stalled or killed and
restarted, receivers that withhold receipts and drop, users hopping between
nodes with messages in flight); then every
user logs in again and each acknowledged mid must have arrived (duplicates
counted by mid; a tag arriving under two mids is a violation). Node RSS and
/metrics are sampled every 0.5 s.

    flock -s /tmp/quiet.lock timeout -s INT 180 python bench/soak.py burst --budget 67108864
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
# The nodes run this checkout's code too (a worktree's .venv may be another's,
# its clusterchat installed from there).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
)
os.environ.setdefault("CLUSTERCHAT_REGISTRATIONS", "0")

from tests.helpers import OwnRedis, StallingProxy, free_ports, stalling_mariadb  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.protocol import State  # noqa: E402

from clusterchat.client.connection import ChatConnection, ConnectionClosed  # noqa: E402
from clusterchat.cluster import launcher  # noqa: E402
from clusterchat.protocol.acks import INTERVAL  # noqa: E402
from clusterchat.protocol.client import ClientProtocol, Push, Reply  # noqa: E402
from clusterchat.protocol.messages import MsgId  # noqa: E402

PW = "s3cret"
MYSQL = "mysql+asyncmy://root@127.0.0.1:3306"
T0 = time.monotonic()


def log(*a: Any) -> None:
    print(f"[{time.monotonic() - T0:7.1f}]", *a, flush=True)


class _WsWriter:
    """What the soak asks of a connection's writer, for a WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.transport = ws.transport

    def is_closing(self) -> bool:
        return self.ws.state is not State.OPEN

    def get_extra_info(self, name: str) -> Any:
        return self.transport.get_extra_info(name)


class WsConn:
    """The soak's ChatConnection over a WebSocket, as the web page talks:
    one text message per request, receipts as ChatConnection sends them."""

    def __init__(self, ws: ClientConnection, core: ClientProtocol[Any]) -> None:
        self.ws = ws
        self.core = core
        self._writer = _WsWriter(ws)
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._sender = asyncio.ensure_future(self._send_all())
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False

    @classmethod
    async def open(cls, port: int, core: ClientProtocol[Any]) -> WsConn:
        ws = await connect(f"ws://127.0.0.1:{port}/ws", max_size=None, compression=None)
        return cls(ws, core)

    async def _send_all(self) -> None:
        """One writer, so requests and receipts leave in the order made."""
        while (data := await self._out.get()) is not None:
            for one in data.split(b"\n"):
                if one:
                    try:
                        await self.ws.send(one.decode())
                    except Exception:
                        return

    def _write(self, data: bytes) -> None:
        if data:
            self._out.put_nowait(data)

    def call(self, doc: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        if self._ended or self._writer.is_closing():
            raise ConnectionClosed("connection lost")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._write(self.core.send(doc, fut))
        return fut

    def _acknowledge(self) -> None:
        self._timer = None
        self.core.acknowledge()
        self._flush()

    def _flush(self) -> None:
        self._write(self.core.data_to_send())
        if self.core.unacknowledged and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(INTERVAL, self._acknowledge)

    async def listen(self, on_event: Any) -> None:
        try:
            while True:
                try:
                    text = await self.ws.recv(decode=False)
                except Exception:
                    return
                events = self.core.receive_message(bytes(text))
                self._flush()
                for ev in events:
                    if type(ev) is Reply and ev.token is not None and not ev.token.done():
                        ev.token.set_result(ev.msg)
                    on_event(ev)
        finally:
            self._lost()

    def _lost(self) -> None:
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
        self._out.put_nowait(None)
        for fut in self.core.connection_lost():
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionClosed("connection lost"))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        self._lost()


class Client:
    def __init__(self, uid: int, name: str) -> None:
        self.uid = uid
        self.name = name
        self.conn: ChatConnection | WsConn | None = None
        self.task: asyncio.Task[None] | None = None
        self.node = ""
        self.first_node = ""  # where it was at the fault (it may log in elsewhere after)
        self.proxy: StallingProxy | None = None
        #: Held while (re)opening, so a revival and the kill scenario's
        #: re-login never log the same user in twice.
        self.lock = asyncio.Lock()
        #: Logged in on ``conn`` (senders wait while a revival logs in).
        self.ready = False
        #: Talks over a WebSocket (through nginx's web port) instead of TCP.
        self.ws = False
        #: Confirms what it reads (False: reads with receipts on and never
        #: sends RECEIVED, as a client that withholds them).
        self.ack = True


class World:
    def __init__(self, port: int, web: dict[int, int]) -> None:
        self.port = port
        #: TCP port (nginx's, a node's) -> the WebSocket port in front of it.
        self.web = web
        # receiver -> list of (mid, tag, key) in arrival order
        self.got: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
        # receiver -> {mid: (tag, key)} acknowledged
        self.expect: dict[int, dict[str, tuple[str, str]]] = defaultdict(dict)
        # (key, receiver) -> mids in ack order (one sender connection, pipelined)
        self.order: dict[tuple[str, int], list[str]] = defaultdict(list)
        self.tally: Counter[str] = Counter()
        #: Logins told to retry, by errno (reported: a store or bus slow to
        #: come back shows here rather than as a failed run).
        self.login_retries: Counter[int] = Counter()
        self.doubt: set[str] = set()
        #: The latest a reply came after the soak stopped waiting (s).
        self.late_max = 0.0
        #: Seconds a sender waits for a reply before it sends again.
        self.reply_timeout = 20.0
        self.members: dict[int, list[int]] = {}
        self.pingers: set[asyncio.Task[Any]] = set()
        #: Set once the burst is over: connections ended from then on are ours.
        self.closing = False

    def on_push(self, uid: int, msg: dict[str, Any]) -> None:
        mid = msg.get("msgid")
        if mid == MsgId.ONE_CHAT:
            key = f"u{msg['id']}"
        elif mid == MsgId.GROUP_CHAT:
            key = f"g{msg['groupid']}:{msg['id']}"
        else:
            return
        self.got[uid].append((str(msg["mid"]), str(msg["msg"]).split(" ", 1)[0], key))

    async def open(self, c: Client, port: int | None = None, retry: int = 80) -> dict[str, Any]:
        core: ClientProtocol[Any] = ClientProtocol(acknowledge=c.ack)
        c.ready = False
        conn: ChatConnection | WsConn
        if c.ws:
            conn = await WsConn.open(self.web[port or self.port], core)
        else:
            conn = await ChatConnection.open("127.0.0.1", port or self.port, core=core)
        c.conn = conn
        fut = conn.call({"msgid": MsgId.PING})
        uid = c.uid

        def on_event(ev: Any) -> None:
            if type(ev) is Push:
                self.on_push(uid, ev.msg)

        c.task = asyncio.ensure_future(conn.listen(on_event))
        task = c.task
        if c.proxy is None:  # a vanished receiver stays away until the burst ends
            task.add_done_callback(lambda _t: self.revive(c, conn))

        async def pinger() -> None:
            while not task.done():
                await asyncio.sleep(2)
                if not task.done() and c.conn is conn and not (c.proxy and port == c.proxy.port):
                    try:
                        ping = conn.call({"msgid": MsgId.PING})
                    except ConnectionClosed:  # it ended between the read and now
                        return
                    ping.add_done_callback(lambda f: f.cancelled() or f.exception())

        self.pingers.add(asyncio.ensure_future(pinger()))
        pong = await asyncio.wait_for(fut, 30)
        if "node" not in pong:  # refused (too many connections, too fast)
            await conn.close()
            raise RuntimeError(f"ping {c.uid}: {pong}")
        c.node = str(pong["node"])
        c.first_node = c.first_node or c.node
        ack: dict[str, Any] = await asyncio.wait_for(
            conn.call({"msgid": MsgId.LOGIN, "id": c.uid, "password": PW, "receipts": True}), 60
        )
        # 2: the old session is still being ended; 4: too many logins at once
        # (from our one address); 150: the store or the bus is not back yet
        # (after a Redis restart): all say "retry".
        if ack.get("errno") in (2, 4, 150) and retry > 0:
            self.login_retries[ack["errno"]] += 1
            c.conn = None  # closed by us: not one to revive
            await conn.close()
            await asyncio.sleep(0.5)
            return await self.open(c, port, retry - 1)
        if ack.get("errno") != 0:
            raise RuntimeError(f"login {c.uid}: {ack}")
        for s in ack.get("offlinemsg") or []:
            self.on_push(c.uid, json.loads(s))
        c.ready = True
        return ack

    def revive(self, c: Client, dead: ChatConnection | WsConn) -> None:
        """A connection the server ended (a node killed, a memory budget's
        cut-off): log in again a moment later, as our clients do."""
        if not self.closing and c.conn is dead:
            self.pingers.add(asyncio.ensure_future(self.reopen(c, dead)))

    async def drop(self, c: Client, how: str) -> None:
        """End ``c``'s connection ourselves, as a client going away: "rst"
        (a reset: nothing more is read), "fin" (a close), "logout"."""
        conn, c.conn, c.ready = c.conn, None, False  # ours: not one to revive
        if conn is None:
            return
        if how == "logout":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.call({"msgid": MsgId.LOGOUT}), 5)
        if how == "rst":
            sock = conn._writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn._writer.transport.abort()
            with contextlib.suppress(Exception):
                await conn.close()
        else:
            await conn.close()
        self.tally[f"dropped {how}"] += 1

    async def reopen(self, c: Client, dead: ChatConnection | WsConn | None) -> bool:
        """Log ``c`` in again unless it already was since ``dead`` ended."""
        async with c.lock:
            for _ in range(20):
                if c.conn is not dead or self.closing:
                    return False
                await asyncio.sleep(0.3)
                try:
                    await self.open(c)
                    self.tally["logged in again"] += 1
                    return True
                except Exception:  # a node going away: try again
                    continue
        return False


async def register(port: int, n: int, tag: str) -> list[Client]:
    out: list[Client] = []

    async def one(i: int) -> Client:
        conn = await ChatConnection.open("127.0.0.1", port)
        try:
            name = f"{tag}{i}"
            uid = await conn.register(name, PW)
            return Client(uid, name)
        finally:
            await conn.close()

    for k in range(0, n, 25):
        out += await asyncio.gather(*(one(i) for i in range(k, min(n, k + 25))))
    return out


async def make_group(w: World, owner: Client, members: list[Client], name: str) -> int:
    assert owner.conn
    r = await owner.conn.call({"msgid": MsgId.CREATE_GROUP, "groupname": name, "groupdesc": ""})
    gid = int(r["groupid"])

    async def join(m: Client) -> None:
        assert m.conn
        r = await m.conn.call({"msgid": MsgId.ADD_GROUP, "groupid": gid})
        assert r.get("msgid") == MsgId.ADD_GROUP_ACK, r

    for k in range(0, len(members), 50):
        await asyncio.gather(*(join(m) for m in members[k : k + 50]))
    w.members[gid] = [owner.uid] + [m.uid for m in members]
    return gid


async def sender(
    w: World, c: Client, targets: list[tuple[str, int]], count: int, size: int, window: int
) -> None:
    """targets: ("u", uid) or ("g", gid); count messages round-robin; window in flight."""
    pad = "x" * size
    sem = asyncio.Semaphore(window)

    async def one(kind: str, to: int, tag: str) -> None:
        for tries in range(200):
            conn = c.conn
            if (
                conn is None
                or not c.ready
                or conn._writer.is_closing()
                or c.task is None
                or c.task.done()
            ):
                await asyncio.sleep(0.2)
                continue
            doc: dict[str, Any] = {"msg": f"{tag} {pad}"}
            if kind == "u":
                doc.update(msgid=MsgId.ONE_CHAT, toid=to)
            else:
                doc.update(msgid=MsgId.GROUP_CHAT, groupid=to)
            try:
                fut = conn.call(doc)
                r = await asyncio.wait_for(asyncio.shield(fut), w.reply_timeout)
            except asyncio.CancelledError:  # the burst timed out: sent, outcome unknown
                w.doubt.add(tag)
                raise
            except (ConnectionClosed, TimeoutError, OSError) as e:
                w.tally[f"no reply {type(e).__name__}"] += 1
                if isinstance(e, TimeoutError):
                    fut.add_done_callback(functools.partial(late, kind, to, tag, time.monotonic()))
                w.doubt.add(tag)
                tag = f"{tag}r"
                await asyncio.sleep(0.3)
                continue
            if r.get("msgid") == MsgId.CHAT_ACK:
                w.tally[f"ack {r.get('status')}"] += 1
                expect(kind, to, tag, r)
                return
            w.tally[f"refused {r.get('errno')}"] += 1
            await asyncio.sleep(min(0.05 * (tries + 1), 1.0))
        w.tally["gave up"] += 1

    def late(kind: str, to: int, tag: str, t0: float, fut: asyncio.Future[Any]) -> None:
        """A reply that came after we stopped waiting (and sent the message
        again under a new tag): an acknowledged one must arrive all the same."""
        if fut.cancelled() or fut.exception() is not None:
            w.tally["late: none"] += 1
            return
        r = fut.result()
        w.late_max = max(w.late_max, w.reply_timeout + time.monotonic() - t0)
        if r.get("msgid") == MsgId.CHAT_ACK:
            w.tally[f"late ack {r.get('status')}"] += 1
            expect(kind, to, tag, r, ordered=False)
        else:
            w.tally[f"late refused {r.get('errno')}"] += 1

    def expect(kind: str, to: int, tag: str, r: dict[str, Any], ordered: bool = True) -> None:
        mid = str(r["mid"])
        if kind == "u":
            rcv = [to]
            key = f"u{c.uid}"
        else:
            skip = set(r.get("missed") or []) | set(r.get("full") or [])
            if skip:
                w.tally["group skipped members"] += len(skip)
            rcv = [m for m in w.members[to] if m != c.uid and m not in skip]
            key = f"g{to}:{c.uid}"
        for u in rcv:
            w.expect[u][mid] = (tag, key)
            if ordered:  # (a late reply's message was sent again: no order to check)
                w.order[(key, u)].append(mid)

    tasks = []
    for n in range(count):
        kind, to = targets[n % len(targets)]
        await sem.acquire()
        t = asyncio.ensure_future(one(kind, to, f"{c.uid}.{n + 1}"))
        t.add_done_callback(lambda _t: sem.release())
        tasks.append(t)
        # order matters per pair: only pipeline, never reorder - call() writes in order
    await asyncio.gather(*tasks)


class Watch:
    def __init__(self, pids: dict[str, int], http: dict[str, int]) -> None:
        self.pids = pids
        self.http = http
        self.max_rss: dict[str, int] = {}
        self.max_budget: dict[str, float] = {}
        self.stop = False

    def rss(self, pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
        except OSError:
            pass
        return 0

    def metrics(self, port: int) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("#") or not any(
                        s in line
                        for s in (
                            "budget",
                            "held_bytes",
                            "bus_window",
                            "receipt_unacked_bytes",
                            "slow_consumer",
                            "offline_backlog",
                        )
                    ):
                        continue
                    k, _, v = line.rpartition(" ")
                    out[k] = float(v)
        except Exception:
            pass
        return out

    async def run(self) -> None:
        while not self.stop:
            for n, pid in self.pids.items():
                self.max_rss[n] = max(self.max_rss.get(n, 0), self.rss(pid))
            for n, port in self.http.items():
                m = await asyncio.to_thread(self.metrics, port)
                for k, v in m.items():
                    key = f"{n} {k}"
                    self.max_budget[key] = max(self.max_budget.get(key, 0), v)
            await asyncio.sleep(0.5)


class OwnMariaDB:
    """A mariadbd of the soak's own on a free port, to SIGKILL and restart
    with its data (the shared one at 3306 must never be stopped)."""

    def __init__(self) -> None:
        self.datadir = Path(tempfile.mkdtemp(prefix="ccsoak-mariadb-"))
        self.port = free_ports(1)
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"mysql+asyncmy://root@127.0.0.1:{self.port}"

    async def start(self) -> None:
        d = self.datadir
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            ["mariadbd", "--no-defaults", f"--datadir={d}", f"--port={self.port}",
             f"--socket={d / 'mysqld.sock'}", f"--pid-file={d / 'mysqld.pid'}",
             f"--log-error={d / 'error.log'}", "--bind-address=127.0.0.1",
             "--skip-name-resolve", "--character-set-server=utf8mb4",
             "--collation-server=utf8mb4_general_ci", "--user=root"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        probe = ["mariadb", "-h127.0.0.1", f"-P{self.port}", "-uroot", "-e", "SELECT 1"]
        for _ in range(300):
            r = await asyncio.to_thread(subprocess.run, probe, capture_output=True, check=False)
            if r.returncode == 0:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"own mariadbd on {self.port} did not answer")

    async def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)

    async def remove(self) -> None:
        await self.kill()
        shutil.rmtree(self.datadir, ignore_errors=True)


async def mysql(sql: str, url: str = MYSQL) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    e = create_async_engine(url + "/")
    try:
        async with e.begin() as c:
            await c.execute(text(sql))
    finally:
        await e.dispose()


async def main() -> int:
    ap = argparse.ArgumentParser()
    scenarios = ["burst", "vanish", "kill", "redis", "dbstall", "dbkill"]
    scenarios += ["withhold", "hop", "fanin"]
    ap.add_argument("scenario", choices=scenarios)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--group", type=int, default=200)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--gsenders", type=int, default=5)
    ap.add_argument("--gcount", type=int, default=40)
    ap.add_argument("--budget", default="67108864", help="bytes")
    ap.add_argument("--quiet", type=float, default=4.0)
    ap.add_argument(
        "--away", type=float, default=0.0, help="fraction of users away during the burst"
    )
    ap.add_argument(
        "--churn", type=float, default=0.25, help="withhold/hop: fraction of users that churn"
    )
    ap.add_argument("--fanin", type=int, default=5, help="fanin: receivers that stop reading")
    ap.add_argument("--ws", type=float, default=0.0, help="fraction of users on WebSockets")
    ap.add_argument("--reply-timeout", type=float, default=20.0, help="seconds, then resend")
    ap.add_argument("--period", type=float, default=2.0, help="withhold/hop: seconds between")
    ap.add_argument("--burst-timeout", type=float, default=100.0, help="seconds")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--arg", action="append", default=[])
    a = ap.parse_args()

    run = Path(f"/tmp/soak/run-{a.scenario}-{secrets.token_hex(3)}")
    run.mkdir(parents=True)  # noqa: ASYNC240 - before anything runs
    dbname = f"cc_soak_{secrets.token_hex(4)}"
    server = MYSQL
    owndb: OwnMariaDB | None = None
    if a.scenario == "dbkill":
        owndb = OwnMariaDB()
        await owndb.start()
        server = owndb.url
    db_url = f"{server}/{dbname}"
    prefix = f"ccsoak:{secrets.token_hex(4)}:"
    own: OwnRedis | None = None
    redis_url = "redis://127.0.0.1:6379/0"
    if a.scenario == "redis":
        own = OwnRedis(run)
        await own.start()
        redis_url = own.url
    node_db = db_url
    dbproxy: StallingProxy | None = None
    if a.scenario == "dbstall":
        # the store must exist first: create through the direct url by a node start
        await mysql(f"CREATE DATABASE `{dbname}`", server)
        dbproxy, node_db = await stalling_mariadb(db_url)
    base = free_ports(a.nodes + 1)
    httpb = free_ports(a.nodes + 1)
    args = ["--db", node_db, "--redis", redis_url, "--redis-prefix", prefix,
            "--presence-ttl", "2", "--hash-cost", "1,8,1", "--message-rate", "0",
            "--max-connections-per-address", "0", "--memory-budget", a.budget, *a.arg]  # fmt: skip
    env = dict(kv.split("=", 1) for kv in a.env)
    state = await asyncio.to_thread(
        launcher.up, run / "cluster", a.nodes, base + a.nodes, base, "127.0.0.1", args,
        env=env, web_port=httpb + a.nodes, http_base_port=httpb,
    )  # fmt: skip
    port = base + a.nodes
    pids = {p.name: p.pid for p in state.procs if p.name.startswith("node")}
    watch = Watch(pids, {f"node{i}": httpb + i for i in range(a.nodes)})
    wt = asyncio.ensure_future(watch.run())
    web = {port: httpb + a.nodes} | {base + i: httpb + i for i in range(a.nodes)}
    w = World(port, web)
    w.reply_timeout = a.reply_timeout
    rc = 1
    try:
        log("cluster up", run, pids)
        users = await register(port, a.users, f"s{secrets.token_hex(2)}_")
        log("registered", len(users))
        for c in random.sample(users, int(len(users) * a.ws)):
            c.ws = True
        vanish: list[Client] = []
        if a.scenario in ("vanish", "fanin"):
            vanish = users[: len(users) // 4 if a.scenario == "vanish" else a.fanin]
            for c in vanish:
                c.proxy = StallingProxy(port)
                await c.proxy.start()
        for k in range(0, len(users), 50):
            await asyncio.gather(
                *(w.open(c, c.proxy.port if c.proxy else None) for c in users[k : k + 50])
            )
        log("logged in; nodes:", Counter(c.node for c in users))
        gids = []
        for _ in range(a.groups):
            mem = random.sample(users, a.group)
            gids.append((await make_group(w, mem[0], mem[1:], f"sg{secrets.token_hex(3)}"), mem))
        log("groups", [g for g, _ in gids])
        n = len(users)
        jobs = []
        churn = users[: int(len(users) * a.churn)] if a.scenario in ("withhold", "hop") else []
        away = users[len(users) - int(len(users) * a.away) :] if a.away else []
        for c in away:  # they come back only for the final login
            await w.drop(c, "logout")
        quiet_ids = {id(c) for c in vanish + away}
        if a.scenario == "withhold":
            quiet_ids |= {id(c) for c in churn}  # receivers only
        for i, c in enumerate(users):
            if id(c) in quiet_ids:
                continue  # vanished users only receive
            targets = [("u", users[(i + d) % n].uid) for d in (1, 7, 31)]
            if a.scenario == "fanin":  # everyone to the few that stop reading
                targets = [("u", v.uid) for v in vanish]
            jobs.append(sender(w, c, targets, a.count, a.size, a.window))
        for gid, mem in gids:
            for s in [m for m in mem if id(m) not in quiet_ids][: a.gsenders]:
                jobs.append(sender(w, s, [("g", gid)], a.gcount, a.size, a.window))

        burst_over = asyncio.Event()

        async def churner(c: Client) -> None:
            """Drop and come back, again and again, while messages to ``c`` are
            in flight: withhold, through nginx, confirming or not at random;
            hop, directly on another node than the last."""
            ports = [base + i for i in range(a.nodes)]
            while not burst_over.is_set():
                await asyncio.sleep(random.uniform(0.5, 1.5) * a.period)
                if burst_over.is_set():
                    break
                async with c.lock:
                    await w.drop(c, random.choice(["rst", "rst", "fin", "logout"]))
                    if a.scenario == "withhold":
                        c.ack = random.random() < 0.3
                        port = None
                    else:
                        last = ports[int(c.node.removeprefix("node") or 0)]
                        port = random.choice([p for p in ports if p != last])
                    for _ in range(20):
                        try:
                            await w.open(c, port)
                            break
                        except Exception as e:  # a node busy: try again
                            w.tally[f"churn open failed {str(e)[:60]}"] += 1
                            await asyncio.sleep(0.3)
                    w.tally["churned"] += 1
            c.ack = True

        async def fault() -> None:
            if churn:
                await asyncio.gather(*(churner(c) for c in churn))
                return
            await asyncio.sleep(1.0)
            if vanish:
                for c in vanish:
                    assert c.proxy
                    c.proxy.stall_existing()
                log("stalled", len(vanish), "receivers")
            elif a.scenario == "kill":
                victim = "node1"
                os.kill(pids[victim], signal.SIGKILL)
                log("killed", victim)
                dead = [(c, c.conn) for c in users if c.node == victim]
                await asyncio.sleep(0.5)
                for c, conn in dead:  # relogin elsewhere as a client would
                    await w.reopen(c, conn)
                log("relogged", len(dead), Counter(c.node for c, _ in dead))
            elif a.scenario == "redis":
                assert own
                await own.kill()
                log("redis killed")
                await asyncio.sleep(3)
                await own.start()
                log("redis back")
            elif a.scenario == "dbkill":
                assert owndb
                await owndb.kill()
                log("db killed")
                await asyncio.sleep(3)
                await owndb.start()
                log("db back")
            elif a.scenario == "dbstall":
                assert dbproxy
                dbproxy.stall()
                log("db stalled")
                await asyncio.sleep(8)
                dbproxy.flow()
                log("db flows")

        t_burst = time.monotonic()
        faulting = asyncio.ensure_future(fault())
        sending = asyncio.gather(*jobs)
        try:
            await asyncio.wait_for(asyncio.shield(sending), a.burst_timeout)
        except TimeoutError:  # what was acknowledged must arrive all the same
            log("burst timed out", dict(w.tally))
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            w.tally["burst timed out"] += 1
        burst_over.set()
        await asyncio.wait_for(faulting, 60)
        log("burst done in %.1fs" % (time.monotonic() - t_burst), dict(w.tally))
        if vanish:
            await asyncio.sleep(2)
            for c in vanish:  # log in again elsewhere (directly via nginx)
                await w.open(c)
            log("vanished re-logged in")

        # wait for quiet
        async def quiet() -> int:
            """Arrivals so far, once none came for --quiet seconds."""
            last = -1
            while (now := sum(len(v) for v in w.got.values())) != last:
                last = now
                await asyncio.sleep(a.quiet)
            return last

        last = await quiet()
        log("live arrivals", last)

        w.closing = True

        async def bye(c: Client) -> None:
            if c.conn and c.task and not c.task.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.conn.call({"msgid": MsgId.LOGOUT}), 10)

        await asyncio.gather(*(bye(c) for c in users))
        await asyncio.sleep(1)
        for c in users:
            if c.conn:
                await c.conn.close()
            if c.proxy:
                await c.proxy.close()
        await asyncio.sleep(1)
        # everyone logs in again
        for k in range(0, len(users), 50):
            await asyncio.gather(*(w.open(c) for c in users[k : k + 50]))
        await quiet()
        await asyncio.gather(*(bye(c) for c in users))
        for c in users:
            if c.conn:
                await c.conn.close()
        # check
        acked = sum(len(v) for v in w.expect.values())
        lost = 0
        dup_same = 0
        dup_other = 0
        order_bad = 0
        lost_by: Counter[str] = Counter()
        examples: list[str] = []
        nodes_of = {c.uid: c.first_node for c in users}
        # A refusal (or a group member listed missed or full) means no effect:
        # such a message must not arrive (a request left unanswered may).
        unexpected = 0
        for u, got_u in w.got.items():
            exp_u = w.expect.get(u, {})
            for m, t, _ in got_u:
                if m not in exp_u and t not in w.doubt:
                    unexpected += 1
                    if len(examples) < 10:
                        examples.append(f"user {u} got {m} tag {t}, never acknowledged to it")
        for u, exp in w.expect.items():
            got = w.got.get(u, [])
            cnt = Counter(m for m, _, _ in got)
            dup_same += sum(v - 1 for v in cnt.values() if v > 1)
            tagmids: dict[tuple[str, str], set[str]] = defaultdict(set)
            for m, t, key in got:
                tagmids[(key, t)].add(m)
            dup_other += sum(len(s) - 1 for s in tagmids.values() if len(s) > 1)
            for m, (t, key) in exp.items():
                if m not in cnt:
                    lost += 1
                    # sender's node (the mid's prefix) -> the receiver's node at the fault
                    lost_by[f"{m.rsplit('-', 1)[0]}->{nodes_of.get(u, '?')}"] += 1
                    if len(examples) < 5:
                        examples.append(f"user {u} missing {m} tag {t} from {key}")
        for (pkey, u), mids in w.order.items():
            pos: dict[str, int] = {}
            for i, (m, _, gk) in enumerate(w.got.get(u, [])):
                if gk == pkey and m not in pos:
                    pos[m] = i
            seq = [pos[m] for m in mids if m in pos]
            order_bad += sum(1 for x, y in itertools.pairwise(seq) if y < x)
        delivered = sum(len(v) for v in w.got.values())
        res = {
            "scenario": a.scenario, "acked_deliveries": acked, "arrivals": delivered,
            "lost": lost, "dup_same_mid": dup_same, "dup_other_mid": dup_other,
            "refused_but_arrived": unexpected,
            "order_inversions": order_bad, "tally": dict(w.tally),
            "login_retries": dict(w.login_retries), "lost_by_node": dict(lost_by),
            "latest_reply_s": round(w.late_max, 1),
            "max_rss_mib": watch.max_rss, "budget_metrics_max": watch.max_budget,
        }  # fmt: skip
        log("RESULT", json.dumps(res, sort_keys=True))
        for e in examples:
            log(e)
        rc = 0 if lost == 0 and dup_other == 0 and unexpected == 0 else 2
    finally:
        watch.stop = True
        await wt
        await asyncio.to_thread(launcher.down, run / "cluster")
        if dbproxy:
            await dbproxy.close()
        if own:
            await own.kill()
        if owndb:
            await owndb.remove()
        else:
            await mysql(f"DROP DATABASE IF EXISTS `{dbname}`")
        if not own:
            import redis.asyncio as aioredis

            r = aioredis.Redis.from_url(redis_url)
            keys = [k async for k in r.scan_iter(f"{prefix}*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()
        shutil.rmtree(run / "cluster" / "tmp", ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
