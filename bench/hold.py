"""Server memory per idle logged-in connection, TCP and WebSocket, in one run.

    .venv/bin/python bench/hold.py -k 10000

For each transport: a fresh node (SQLite, cheap hashes: hashing does not
change what a connection costs), k users registered, the node's RSS read,
k connections opened and logged in, left idle a moment, RSS read again.
Prints one JSON line per transport: bytes per connection = RSS growth / k.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import free_port
from clusterchat.bench.scenarios import Options, _login_all, _register_all

PY = sys.executable


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def quiet(_phase: str, _done: int, _total: int) -> None:
    pass


async def measure(transport: str, k: int, workdir: Path) -> dict[str, object]:
    port, http = free_port(), free_port()
    db = f"sqlite+aiosqlite:///{workdir / f'{transport}.db'}"
    server = await asyncio.create_subprocess_exec(
        PY, "-m", "clusterchat", "server", "--port", str(port), "--http-port", str(http),
        "--db", db, "--hash-cost", "1,8,1", "--message-rate", "0", "--login-queue", "0",
        "--registrations", "0",
        "--log-level", "WARNING",
        env={**os.environ, "CLUSTERCHAT_HOME": str(workdir)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", http)
                w.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        tcp = Options(targets=[("127.0.0.1", port)], concurrency=32)
        ids = await _register_all(tcp, k, quiet)
        await asyncio.sleep(1)  # let the registration connections' close settle
        before = rss_kib(server.pid)
        target = ("127.0.0.1", http if transport == "ws" else port)
        opts = Options(targets=[target], concurrency=64, transport=transport)
        conns = await _login_all(opts, ids, quiet)
        await asyncio.sleep(2)
        after = rss_kib(server.pid)
        for c in conns:
            c.close()
        return {
            "transport": transport,
            "connections": len(conns),
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kb_per_connection": round((after - before) * 1024 / len(conns) / 1000, 2),
        }
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", type=int, default=10_000, help="connections [default 10000]")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for transport in ("tcp", "ws"):
            print(json.dumps(await measure(transport, args.k, Path(tmp))), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
