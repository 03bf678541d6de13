"""The node's CPU per password login of a member of a big group.

    .venv/bin/python bench/login_cpu.py [--db sqlite|mariadb] [--members 1000]
        [--logins 300] [--rounds 2] [--src DIR ...]

A store is filled with ``--members`` users in one group and as many in
none; then a node (``clusterchat server``, a child process) takes
``--logins`` password logins of group members, one after another over TCP
(connect, LOGIN, read the reply, close), and as many of loners. Printed per
kind: the node's CPU (utime + stime from /proc, so its hashing threads
count and the client does not) per login, and the difference: what the
group costs a login reply. With several ``--src`` (source trees, e.g. an
older commit's ``git archive`` unpacked) the nodes run from each in turn,
A, B, A, B, … within one run, on the same store: compare those, not figures
across runs (the machine's speed varies). Run under ``flock -x
/tmp/quiet.lock``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import procs
from clusterchat.config import HashCost
from clusterchat.service.passwords import Passwords
from clusterchat.storage.sql import SqlStore

PASSWORD = "bench-password"
_CHEAP = HashCost(time_cost=1, memory_kib=8, parallelism=1)
_TICK = os.sysconf("SC_CLK_TCK")


async def fill(db: str, members: int) -> tuple[list[int], list[int]]:
    """``members`` users in one group and as many in none: their ids."""
    store = SqlStore(db)
    passwords = Passwords(_CHEAP)
    try:
        await store.create_schema()
        digest = await passwords.hash(PASSWORD)
        tag = os.getpid()
        grouped = [await store.create_user(f"m{tag}_{i}", digest) for i in range(members)]
        loners = [await store.create_user(f"l{tag}_{i}", digest) for i in range(members)]
        gid = await store.create_group(grouped[0], f"big{tag}", "a group of many")
        for uid in grouped[1:]:
            await store.join_group(uid, gid)
        return grouped, loners
    finally:
        passwords.close()
        await store.close()


def node_cpu(pid: int) -> float:
    """Seconds of CPU the process has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def login(port: int, uid: int) -> int:
    """One password login; returns the reply's size."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(json.dumps({"msgid": 1, "id": uid, "password": PASSWORD}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError(f"closed before the login reply: {buf[:200]!r}")
            buf += chunk
    reply = json.loads(buf)
    if reply.get("errno") != 0:
        raise RuntimeError(f"login {uid} refused: {reply}")
    return len(buf)


def measure(pid: int, port: int, uids: list[int]) -> float:
    """CPU seconds the node spent on logins of each of ``uids``."""
    before = node_cpu(pid)
    for uid in uids:
        login(port, uid)
    time.sleep(0.2)  # the node's work after the replies (logouts) counts too
    return node_cpu(pid) - before - 0.2 * idle_rate(pid)


def alternating(pid: int, port: int, a: list[int], b: list[int]) -> tuple[float, float]:
    """CPU ms per login of ``a`` and of ``b``, in blocks of 50 taken in
    turn (so a drift in the machine's speed falls on both)."""
    spent_a = spent_b = 0.0
    for i in range(0, len(a), 50):
        spent_a += measure(pid, port, a[i : i + 50])
        spent_b += measure(pid, port, b[i : i + 50])
    return spent_a * 1000 / len(a), spent_b * 1000 / len(b)


_idle: dict[int, float] = {}


def idle_rate(pid: int) -> float:
    """CPU seconds per second the node spends doing nothing (its timers)."""
    if pid not in _idle:
        before = node_cpu(pid)
        time.sleep(1.0)
        _idle[pid] = node_cpu(pid) - before
    return _idle[pid]


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "mariadb":
        with procs.scratch_db("login") as url:
            yield url
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'chat.db'}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=("sqlite", "mariadb"), default="sqlite")
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--logins", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--src", action="append", help="source tree to run the node from")
    args = ap.parse_args()
    sources = args.src or [str(procs.ROOT)]
    cost = f"{_CHEAP.time_cost},{_CHEAP.memory_kib},{_CHEAP.parallelism}"
    with database(args.db) as db:
        grouped, loners = asyncio.run(fill(db, args.members))
        results: dict[str, list[tuple[float, float]]] = {src: [] for src in sources}
        size = 0
        for r in range(args.rounds):
            for src in sources:
                port = procs.free_port()
                cmd = procs.node_cmd(port, db, "--hash-cost", cost, "--history-days", "0")
                env_path = str(Path(src) / "src")
                old = os.environ.get("PYTHONPATH")
                os.environ["PYTHONPATH"] = env_path
                try:
                    with procs.process(cmd, port, cpu=None) as p:
                        idle_rate(p.pid)
                        # Each round logs in other users: none is still online.
                        start = (r * args.logins) % args.members
                        pick = [grouped[(start + i) % args.members] for i in range(args.logins)]
                        alone = [loners[(start + i) % args.members] for i in range(args.logins)]
                        measure(p.pid, port, pick[:20])  # warm up (imports, caches of the code)
                        g, lone = alternating(p.pid, port, pick[20:], alone[20:])
                        size = login(port, pick[0])
                finally:
                    if old is None:
                        del os.environ["PYTHONPATH"]
                    else:
                        os.environ["PYTHONPATH"] = old
                results[src].append((g, lone))
                print(
                    f"round {r} {src}: member {g:.2f} ms, loner {lone:.2f} ms, "
                    f"group's cost {g - lone:.2f} ms a login",
                    flush=True,
                )
    print(f"{args.db}, {args.members}-member group, login reply {size} bytes:")
    for src, rows in results.items():
        g = statistics.median(x for x, _ in rows)
        lone = statistics.median(y for _, y in rows)
        print(f"  {src}: member {g:.2f} ms, loner {lone:.2f} ms, group {g - lone:.2f} ms (median)")


if __name__ == "__main__":
    main()
