"""The node's Python work per relayed chat, in process, without the network.

    .venv/bin/python bench/relay_cpu.py [--dialect nul|modern] [--rounds 7] [-n 20000]

A node on SQLite (history off) logs in two users over TCP; then their
server-side transports are swapped for ones that write nowhere, and the
script feeds one user's connection loadgen-shaped ONE_CHAT frames (the
partner's turn next, as at window 1) with ``data_received``, letting the
loop run one iteration after each as the node does (its end-of-tick
flush). Printed: CPU time (``process_time``) per chat minus that of a bare
loop iteration, the best of ``--rounds``, and whether the connection core
ran from its source or a compiled module (a mypyc build: BENCHMARKS.md).
What the kernel and uvloop's socket code cost is left out: this measures
what compiling or trimming the Python path can change.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

# This checkout's code, not that of the checkout whose .venv this may be (bench/procs.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from clusterchat.client.connection import ChatConnection
from clusterchat.config import HashCost, Settings
from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from clusterchat.server import core
from clusterchat.server.connection import Connection
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits


class _Nowhere:
    """A transport that takes every write and sends nothing."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_write_buffer_size(self) -> int:
        return 0


async def _tick() -> None:
    await asyncio.sleep(0)


@dataclass
class Relay:
    """A node with two users logged in whose server-side transports write nowhere.

    ``frames[i]`` is a loadgen-shaped ONE_CHAT from user ``i`` to the other,
    to feed ``peers[i].data_received``.
    """

    node: Node
    peers: list[Connection]
    frames: list[bytes]
    clients: list[ChatConnection]  # kept open: closing them would log the users out
    real: list[Any]  # the transports swapped out, put back by stop()

    @classmethod
    async def start(cls, tmp: str, dialect: str, history_days: float = 0, db: str = "") -> Relay:
        """``history_days``: 0, history off; ``db``: a store's URL (SQLite in
        ``tmp`` if empty)."""
        legacy = dialect == "nul"
        node = Node(
            Settings(
                host="127.0.0.1",
                port=0,
                db_url=db or f"sqlite+aiosqlite:///{Path(tmp) / 'chat.db'}",
                hash_cost=HashCost(time_cost=1, memory_kib=8, parallelism=1),
                limits=Limits(registrations_per_address=0, message_rate=0),
                trusted_proxies=(),
                history_days=history_days,
                shed_lag=0,  # no lag timer: callgrind's counts stay repeatable
            )
        )
        await node.start()
        ids, clients = [], []
        for name in ("relay_a", "relay_b"):
            c = await ChatConnection.open("127.0.0.1", node.port, legacy=legacy)
            uid = await c.register(name, "password")
            assert (await c.login(uid, "password"))["errno"] == 0
            ids.append(uid)
            clients.append(c)
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
        return cls(node, peers, frames, clients, real)

    async def stop(self) -> None:
        for peer, transport in zip(self.peers, self.real, strict=True):
            peer.transport = transport
        for c in self.clients:
            await c.close()
        await self.node.stop()


async def measure(dialect: str, rounds: int, n: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        relay = await Relay.start(tmp, dialect)
        peers, frames = relay.peers, relay.frames
        best_chat, best_tick = float("inf"), float("inf")
        per_round = []
        for _ in range(rounds):
            t = time.process_time()
            for _ in range(n):
                await _tick()
            tick = (time.process_time() - t) / n
            t = time.process_time()
            for i in range(n):
                peers[i & 1].data_received(frames[i & 1])
                await _tick()
            chat = (time.process_time() - t) / n
            best_tick, best_chat = min(best_tick, tick), min(best_chat, chat)
            per_round.append((chat - tick) * 1e6)
        await relay.stop()
        return (best_chat - best_tick) * 1e6, per_round


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dialect", choices=("nul", "modern"), default="nul")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("-n", type=int, default=20000)
    args = ap.parse_args()
    best, rounds = uvloop.run(measure(args.dialect, args.rounds, args.n))
    ran = Path(core.__file__ or "").name
    print(
        f"{args.dialect} {ran}: {best:.2f} µs a chat (best of {args.rounds}; "
        f"rounds {' '.join(f'{r:.2f}' for r in rounds)})"
    )


if __name__ == "__main__":
    main()
