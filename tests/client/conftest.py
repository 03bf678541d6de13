"""The real client (`clusterchat client` in a child process) against a real node."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clusterchat.config import Settings
from clusterchat.server.node import Node
from tests.conftest import FAST_HASH
from tests.helpers import server_cmd

CLIENT_ENV = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "CLUSTERCHAT_HOME": "/nonexistent"}


@pytest.fixture
async def lone_node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(
        Settings(
            port=0,
            db_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
            hash_cost=FAST_HASH,
            shed_lag=0.0,
        )
    )
    await n.start()
    yield n
    await n.stop()


class Scripted:
    """`clusterchat client` with stdin a pipe: one command in, one event per line out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, port: int, *args: str) -> Scripted:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clusterchat", "client", "127.0.0.1", str(port), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=CLIENT_ENV,
        )  # fmt: skip
        return cls(proc)

    async def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Read output lines until one matches ``pattern``."""
        assert self.proc.stdout is not None
        rx = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"client exited before {pattern!r}; saw {self.lines}")
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if m := rx.search(line):
                    return m

    async def quit(self) -> int:
        await self.say("quit")
        async with asyncio.timeout(10):
            return await self.proc.wait()


@pytest.fixture
async def scripted() -> AsyncIterator[list[Scripted]]:
    started: list[Scripted] = []
    yield started
    for s in started:
        if s.proc.returncode is None:
            s.proc.kill()
            await s.proc.wait()


@pytest.fixture
def server_port(tmp_path: Path) -> Iterator[int]:
    """A node in a child process, for the pseudo-terminal tests (which block)."""
    from tests.helpers import free_ports

    port = free_ports(1)
    proc = subprocess.Popen(
        server_cmd(port, f"sqlite+aiosqlite:///{tmp_path / 'pty.db'}"),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on" in line:
            break
    else:
        raise AssertionError("server did not start")
    yield port
    proc.terminate()
    proc.wait(timeout=10)
    proc.stderr.close()
