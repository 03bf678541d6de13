"""The node's instructions per relayed chat, exact, for a machine too busy to time.

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \\
        .venv/bin/python bench/relay_instr.py [--dialect nul|modern] [-n 2000] [--batch 1] [--ticks]

The set-up of bench/relay_cpu.py (a node on SQLite, two users logged in
over TCP, their server-side transports swapped for ones that write
nowhere), then ``-n`` chats fed ``--batch`` frames a read, each read
followed by one loop iteration. Only that part runs inside
``functools.reduce``, which nothing else in the process calls, so callgrind
counts it alone. ``--ticks`` runs as many bare loop iterations instead (as
many as there are reads): subtract it, divide by ``-n``, and what is left
is the node's instructions per chat, repeatable to ~0.3% (PYTHONHASHSEED=0)
however loaded the machine. Like relay_cpu, it leaves out the kernel and
uvloop's socket code.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.relay_cpu import _Nowhere, _tick
from clusterchat.client.connection import ChatConnection
from clusterchat.config import HashCost, Settings
from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from clusterchat.server.connection import Connection
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits


async def _setup(
    tmp: str, legacy: bool
) -> tuple[Node, list[Connection], list[bytes], list[ChatConnection], list[Any]]:
    node = Node(
        Settings(
            host="127.0.0.1",
            port=0,
            db_url=f"sqlite+aiosqlite:///{Path(tmp) / 'chat.db'}",
            hash_cost=HashCost(time_cost=1, memory_kib=8, parallelism=1),
            limits=Limits(registrations_per_address=0, message_rate=0),
            trusted_proxies=(),
            history_days=0,
            shed_lag=0,
        )
    )
    await node.start()
    ids, clients = [], []
    for name in ("relay_a", "relay_b"):
        c = await ChatConnection.open("127.0.0.1", node.port, legacy=legacy)
        uid = await c.register(name, "password")
        assert (await c.login(uid, "password"))["errno"] == 0
        ids.append(uid)
        clients.append(c)  # kept open: closing them would log the users out
    peers, real = [], []
    for uid in ids:
        session = node.service.sessions[uid]
        peer = next(c for c in node.connections if c.session is session)
        real.append(peer.transport)
        peer.transport = _Nowhere()  # type: ignore[assignment]
        peers.append(peer)
    end = b"\0" if legacy else b"\n"
    msg = "1732844400000000000:1:0:pad"
    frames = [
        codec.dumps({"msgid": MsgId.ONE_CHAT, "toid": ids[1 - i], "msg": msg}).encode() + end
        for i in range(2)
    ]
    return node, peers, frames, clients, real


async def _stop(
    node: Node, peers: list[Connection], clients: list[ChatConnection], real: list[Any]
) -> None:
    for peer, transport in zip(peers, real, strict=True):
        peer.transport = transport
    for c in clients:
        await c.close()
    await node.stop()


async def _chats(peers: list[Connection], reads: list[bytes], n: int) -> None:
    for i in range(n):
        peers[i & 1].data_received(reads[i & 1])
        await _tick()


async def _ticks(n: int) -> None:
    for _ in range(n):
        await _tick()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dialect", choices=("nul", "modern"), default="nul")
    ap.add_argument("-n", type=int, default=2000, help="chats counted")
    ap.add_argument("--batch", type=int, default=1, help="chats a read (16: a window of 16)")
    ap.add_argument("--ticks", action="store_true", help="bare loop iterations instead")
    args = ap.parse_args()
    reads = args.n // args.batch
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    with tempfile.TemporaryDirectory() as tmp:
        node, peers, frames, clients, real = loop.run_until_complete(
            _setup(tmp, args.dialect == "nul")
        )
        data = [f * args.batch for f in frames]
        loop.run_until_complete(_chats(peers, data, 200))  # warm
        if args.ticks:
            counted = functools.partial(loop.run_until_complete, _ticks(reads))
        else:
            counted = functools.partial(loop.run_until_complete, _chats(peers, data, reads))
        functools.reduce(lambda _, __: counted(), [0, 1])
        loop.run_until_complete(_stop(node, peers, clients, real))


if __name__ == "__main__":
    main()
