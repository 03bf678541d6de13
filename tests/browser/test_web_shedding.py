"""A page opened while the node sheds load recovers by itself.

The node runs as a process of its own (in-process it would share its event
loop with Playwright's driver) with a short ``--shed-lag``, and is made late
for real: stopped (SIGSTOP) and continued in turn, its loop-lag timer then
fires late and it sheds (server/load.py). A browser opening the page then
must get the page and its files, see that the server is busy and being
retried, and, once the node keeps up again, log in on the same page,
never reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import expect

from tests.browser.conftest import NewPage
from tests.conftest import FAST_HASH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, proc: asyncio.subprocess.Process, http_port: int) -> None:
        self.proc = proc
        self.http_port = http_port
        self.log: list[str] = []
        self.shedding = asyncio.Event()

    async def drain(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace"))
            if "refusing new connections" in self.log[-1]:
                self.shedding.set()

    async def shed_count(self) -> float:
        """Connections refused for load, from /metrics (itself refused, 503,
        while the node sheds: asked again until it answers)."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        async with asyncio.timeout(15):
            while True:
                try:
                    text = await asyncio.to_thread(_get, url)
                    break
                except urllib.error.HTTPError as exc:
                    assert exc.code == 503, exc
                    await asyncio.sleep(0.2)
        for line in text.splitlines():
            if line.startswith("clusterchat_shed_connections_total "):
                return float(line.split()[1])
        raise AssertionError("no clusterchat_shed_connections_total in /metrics")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


@contextlib.asynccontextmanager
async def node_process(tmp_path: Path) -> AsyncIterator[Node]:
    port, http_port = _free_port(), _free_port()
    cost = f"{FAST_HASH.time_cost},{FAST_HASH.memory_kib},{FAST_HASH.parallelism}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "server", "--port", str(port),
        "--http-port", str(http_port), "--db", f"sqlite+aiosqlite:///{tmp_path / 'web.db'}",
        "--hash-cost", cost, "--shed-lag", "0.2",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    node = Node(proc, http_port)
    drain = asyncio.ensure_future(node.drain())
    try:
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(OSError):
                    _, w = await asyncio.open_connection("127.0.0.1", http_port)
                    w.close()
                    break
                await asyncio.sleep(0.1)
        yield node
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        await proc.wait()
        await drain


async def pause_in_turn(pid: int, stop: asyncio.Event) -> None:
    """Stopped 0.6 s of every 0.7 s: each time it runs again its lag timer is
    0.6 s late (past --shed-lag) and it sheds for a second, so it sheds
    throughout."""
    try:
        while not stop.is_set():
            os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(0.6)
            os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_page_opened_while_the_node_sheds_logs_in_once_it_keeps_up(
    new_page: NewPage, tmp_path: Path
) -> None:
    async with node_process(tmp_path) as node:
        stop = asyncio.Event()
        pausing = asyncio.ensure_future(pause_in_turn(node.proc.pid, stop))
        try:
            async with asyncio.timeout(15):
                await node.shedding.wait()
            page = await new_page(node.http_port)
            await page.evaluate("window.notReloaded = true")
            # The page and its files were served; the chat connection was not.
            await expect(page.locator("#auth-form")).to_be_visible()
            await expect(page.locator("#banner")).to_contain_text(
                "Server busy or unreachable. Retrying in"
            )
            await page.click("#tab-register")
            await page.fill("#reg-name", "Patient")
            await page.fill("#password", "pw")
            await page.click("#auth-submit")
            await expect(page.locator("#auth-error")).to_have_text("Waiting for the server…")
        finally:
            stop.set()
            await pausing
        # Its WebSocket was among the connections refused for load.
        assert await node.shed_count() >= 1
        # It keeps up again: the page connects and the registration goes through.
        await expect(page.locator("#me-id")).to_have_text(re.compile(r"user id \d+"))
        await expect(page.locator("#banner")).to_be_hidden()
        assert await page.evaluate("window.notReloaded") is True
