"""The node's instructions per relayed chat, exact, for a machine too busy to time.

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \\
        .venv/bin/python bench/relay_instr.py [--dialect nul|modern] [-n 2000] [--batch 1] [--ticks]
        [--history-days 90 [--mariadb] [--pace 1000]]

bench/relay_cpu.py's set-up (its ``Relay``: a node on SQLite, two users
logged in over TCP, their server-side transports swapped for ones that
write nowhere), then ``-n`` chats fed ``--batch`` frames a read, each read
followed by one loop iteration. Only that part runs inside
``functools.reduce``, which nothing else in the process calls, so callgrind
counts it alone. ``--ticks`` runs as many bare loop iterations instead (as
many as there are reads): subtract it, divide by ``-n``, and what is left
is the node's instructions per chat, repeatable to ~0.3% (PYTHONHASHSEED=0)
however loaded the machine. Like relay_cpu, it leaves out the kernel and
uvloop's socket code. ``--history-days`` turns history on (on SQLite, or a
scratch MariaDB database with ``--mariadb``); ``--pace 1000`` keeps the
writer from running a round while counting, so the difference to history off
is the hot path's share alone (the writer's rounds: bench/history_writer_cost.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import sys
import tempfile
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.relay_cpu import Relay, _tick
from clusterchat.server import node
from clusterchat.server.connection import Connection

# The node's twice-a-second in-flight reports would fire inside the counted
# part now and then (about 800 instructions a chat at --batch 16, found by
# the perf14 helper): counts compare only without them.
node.REPORT_EVERY = 1e9


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
    ap.add_argument("--history-days", type=float, default=0, help="history on (0: off)")
    ap.add_argument("--mariadb", action="store_true", help="a scratch MariaDB, not SQLite")
    ap.add_argument("--pace", type=float, help="the history writer's pace, seconds")
    args = ap.parse_args()
    reads = args.n // args.batch
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        db = stack.enter_context(procs.scratch_db("instr")) if args.mariadb else ""
        relay = loop.run_until_complete(Relay.start(tmp, args.dialect, args.history_days, db))
        history = relay.node.service.history
        if history is not None and args.pace is not None:
            history.pace = args.pace
        peers = relay.peers
        data = [f * args.batch for f in relay.frames]
        loop.run_until_complete(_chats(peers, data, 200))  # warm
        if args.ticks:
            counted = functools.partial(loop.run_until_complete, _ticks(reads))
        else:
            counted = functools.partial(loop.run_until_complete, _chats(peers, data, reads))
        functools.reduce(lambda _, __: counted(), [0, 1])
        if history is not None:  # what is queued is written now, not at --pace
            history.pace = 0.0
            history.hurry()
        loop.run_until_complete(relay.stop())


if __name__ == "__main__":
    main()
