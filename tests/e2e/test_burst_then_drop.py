"""A burst to a big group that stopped reading, then every member drops.

999 members are online but no longer read their sockets; the creator sends
30 large group messages; then every member's connection is reset (RST).
Whatever the server acknowledged must reach every member at their next
login (duplicates, same ``mid``, allowed), the node's memory must stay
bounded, and an unrelated pair must keep chatting meanwhile.

At main d496300 this lost 12,330 messages for 411 members on MariaDB (the
re-stores queued for the connection pool and timed out), and took the
node's RSS to 1.9 GB (3 GB on SQLite). The test runs the real server
process so its RSS can be read; ``CLUSTERCHAT_BURST_SIZE`` (bytes per
message, default 6000) runs it at the issue's 60 KB by hand (with
``--timeout 600``: it stores and reads back 1.8 GB).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol import codec
from clusterchat.protocol.messages import ErrCode, LoginErr, MsgId
from tests.conftest import FAST_HASH, PASSWORD, unique

# A load test with latency and memory bounds: alone, not beside other tests.
pytestmark = pytest.mark.serial

MEMBERS = 999
MESSAGES = 30
SIZE = int(os.environ.get("CLUSTERCHAT_BURST_SIZE", "6000"))
BUDGET = 128 * 1024 * 1024
OUTPUT_LIMIT = 256 * 1024


class Server:
    """``clusterchat server`` in a child process; its log is drained (and kept)."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.log: list[str] = []
        self.peak_rss = 0

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0  # exiting

    async def sample_rss(self) -> None:
        while self.proc.returncode is None:
            self.peak_rss = max(self.peak_rss, self.rss())
            await asyncio.sleep(0.02)


def _die_with_parent() -> None:
    """The server must not outlive a test killed by its timeout."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.asynccontextmanager
async def server(db_url: str) -> AsyncIterator[Server]:
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "server", "--port", "0", "--db", db_url,
        "--hash-cost", cost, "--message-rate", "0", "--memory-budget", str(BUDGET),
        "--output-limit", str(OUTPUT_LIMIT),
        # Setting up 999 members registers them in parallel from one address.
        "--register-queue", "1000",
        # The pair's receiver only reads: not "silent" however long this takes.
        "--idle-timeout", "3600",
        stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent,
    )  # fmt: skip
    assert proc.stderr is not None
    stderr = proc.stderr
    port = 0
    async with asyncio.timeout(20):
        while not port:
            line = (await stderr.readline()).decode()
            assert line, "server exited before listening"
            if "listening on" in line:
                port = int(line.split("listening on ")[1].split(",")[0].rsplit(":", 1)[1])
    srv = Server(proc, port)

    async def drain() -> None:
        while line := await stderr.readline():
            srv.log.append(line.decode())

    drainer = asyncio.ensure_future(drain())
    try:
        yield srv
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(30):
                await proc.wait()
        await drainer
        print("".join(srv.log[-40:]))


class RawMember:
    """A member on a plain socket: after joining, nothing reads it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.uid = 0

    @classmethod
    async def join(cls, port: int, gid: int) -> RawMember:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        m = cls(sock)
        ack = await m.request({"msgid": MsgId.REG, "name": unique(), "password": PASSWORD})
        assert ack.get("errno") == 0, ack
        m.uid = ack["id"]
        login = {"msgid": MsgId.LOGIN, "id": m.uid, "password": PASSWORD}
        async with asyncio.timeout(30):  # busy (errno 4) past the address's share: retry
            while (ack := await m.request(login))["errno"] == LoginErr.UNAVAILABLE:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert ack["errno"] == 0, ack
        ack = await m.request({"msgid": MsgId.ADD_GROUP, "groupid": gid})
        assert ack["msgid"] == MsgId.ADD_GROUP_ACK, ack
        return m

    async def request(self, doc: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, codec.dumps(doc).encode() + b"\n")
        while b"\n" not in self.buf:
            data = await loop.sock_recv(self.sock, 65536)
            assert data, "server closed"
            self.buf += data
        frame, _, self.buf = self.buf.partition(b"\n")
        return dict(codec.loads(frame))

    def reset(self) -> None:
        """Go away with a RST, everything unread lost with the socket."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


async def in_chunks(coros: list[Any], n: int = 50) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(coros), n):
        out += await asyncio.gather(*coros[i : i + n])
    return out


async def user(port: int) -> tuple[ChatConnection, int]:
    conn = await ChatConnection.open("127.0.0.1", port)
    uid = await conn.register(unique(), PASSWORD)
    async with asyncio.timeout(30):
        # 50 at once from one address pass its share of the password checks
        # (half the queue): told busy, they retry, as our clients do.
        while (ack := await conn.login(uid, PASSWORD))["errno"] == LoginErr.UNAVAILABLE:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert ack["errno"] == 0, ack
    return conn, uid


async def chat_pair(port: int) -> None:
    """One user chatting to another, one message at a time, timed to arrival,
    until stdin closes; then the latencies, as JSON, on stdout."""
    (a, _), (b, bid) = await user(port), await user(port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def stdin_closed() -> None:  # readable means closed: nothing is ever sent
        loop.remove_reader(sys.stdin.fileno())
        stop.set()

    loop.add_reader(sys.stdin.fileno(), stdin_closed)
    print("chatting", flush=True)
    latencies: list[float] = []
    i = 0
    while not stop.is_set():
        i += 1
        t0 = loop.time()
        await a.send({"msgid": MsgId.ONE_CHAT, "toid": bid, "msg": f"pair {i}"})
        ack = await a.recv(timeout=30)
        if ack["msgid"] == MsgId.ERROR:  # busy: the sender was told; retry
            assert ack["errno"] == ErrCode.BUSY, ack
            continue
        got = await b.expect(MsgId.ONE_CHAT, timeout=30)
        latencies.append(loop.time() - t0)
        assert got["msg"] == f"pair {i}"
        await asyncio.sleep(0.02)
    await a.close()
    await b.close()
    print(json.dumps(latencies), flush=True)


async def login_again(port: int, uid: int) -> tuple[ChatConnection, dict[str, Any]]:
    """Log in as a returning user would: retrying while the reset session is
    being logged out, or while the node sheds newcomers (ERROR 160)."""
    while True:
        conn = await ChatConnection.open("127.0.0.1", port)
        await conn.send({"msgid": MsgId.LOGIN, "id": uid, "password": PASSWORD})
        ack = await conn.recv(timeout=30)
        if ack["msgid"] == MsgId.LOGIN_ACK and ack["errno"] == 0:
            return conn, ack
        assert ack["msgid"] == MsgId.LOGIN_ACK or ack["errno"] == ErrCode.SERVER_FULL, ack
        await conn.close()
        await asyncio.sleep(0.1)


async def collect(port: int, uid: int, want: set[str]) -> set[str]:
    """Log in again and gather group messages until every wanted mid came."""
    async with asyncio.timeout(60):
        conn, ack = await login_again(port, uid)
        try:
            got = {json.loads(m)["mid"] for m in ack.get("offlinemsg", [])}
            while not want <= got:
                msg = await conn.recv(timeout=30)
                if msg["msgid"] == MsgId.GROUP_CHAT:
                    got.add(msg["mid"])
            return got
        finally:
            await conn.close()


async def test_burst_to_a_group_that_stopped_reading_then_drops(db_url: str) -> None:
    loop = asyncio.get_running_loop()
    async with server(db_url) as srv:
        port = srv.port
        creator, _ = await user(port)
        gid = (
            await creator.request(
                {"msgid": MsgId.CREATE_GROUP, "groupname": unique("g"), "groupdesc": ""},
                MsgId.CREATE_GROUP_ACK,
            )
        )["groupid"]
        members: list[RawMember] = await in_chunks(
            [RawMember.join(port, gid) for _ in range(MEMBERS)]
        )
        # The pair runs in a process of its own, so this one's work (reading
        # back 999 members' messages) does not count as the server's latency.
        pair = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.e2e.test_burst_then_drop", str(port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert pair.stdin is not None and pair.stdout is not None
        assert await pair.stdout.readline() == b"chatting\n"
        base_rss = srv.rss()
        sampler = asyncio.ensure_future(srv.sample_rss())

        t0 = loop.time()
        acked: set[str] = set()
        busy = 0
        for i in range(MESSAGES):
            text = f"{i:03d}|".ljust(SIZE, "x")
            await creator.send({"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": text})
            reply = await creator.recv(timeout=60)
            if reply["msgid"] == MsgId.ERROR:  # the budget is full: not sent, told so
                assert reply["errno"] == ErrCode.BUSY, reply
                busy += 1
            else:
                assert reply["msgid"] == MsgId.CHAT_ACK, reply
                acked.add(reply["mid"])
        burst = loop.time() - t0

        await creator.close()
        for m in members:
            m.reset()
        t1 = loop.time()
        counts = await in_chunks([collect(port, m.uid, acked) for m in members], 10)
        recovered = loop.time() - t1

        # Someone new, meanwhile and after: served at once.
        t2 = loop.time()
        newcomer, _ = await user(port)
        await newcomer.close()
        newcomer_s = loop.time() - t2

        pair.stdin.close()  # stop
        latencies = json.loads(await pair.stdout.read())
        assert await pair.wait() == 0
        sampler.cancel()
        lat = sorted(latencies)
        p99 = lat[int(len(lat) * 0.99) - 1] if lat else 0.0
        print(
            f"\n{db_url.split(':')[0]}: {len(acked)} acknowledged x {MEMBERS} members "
            f"({busy} busy), burst {burst:.1f} s, all recovered {recovered:.1f} s; "
            f"RSS {base_rss / 2**20:.0f} MiB before, peak {srv.peak_rss / 2**20:.0f} MiB "
            f"(budget {BUDGET / 2**20:.0f} MiB); pair: {len(lat)} messages, "
            f"p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms; newcomer {newcomer_s:.2f} s"
        )
        assert acked, "nothing was acknowledged"
        assert all(acked <= got for got in counts)  # nothing acknowledged lost
        assert srv.peak_rss < BUDGET  # the whole process, not only what is charged
        assert len(lat) > 50 and p99 < 0.25
        assert newcomer_s < 2.0


if __name__ == "__main__":
    asyncio.run(chat_pair(int(sys.argv[1])))
