"""Past its connection limit a node refuses newcomers with a clear error and
keeps serving everyone it has; the default limit keeps clear of the process's
file-descriptor limit, so accept() never fails."""

from __future__ import annotations

import asyncio
import resource
import subprocess
from pathlib import Path

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import FD_RESERVE
from clusterchat.protocol.messages import ErrCode, MsgId
from tests.helpers import free_ports, server_cmd, wait_port

FDS = 200


async def test_full_node_refuses_clearly_and_keeps_serving(tmp_path: Path) -> None:
    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FDS, FDS))

    port = free_ports(1)
    proc = subprocess.Popen(  # noqa: ASYNC220 - preexec_fn sets the child's fd limit
        server_cmd(port, f"sqlite+aiosqlite:///{tmp_path / 'full.db'}"),
        preexec_fn=low_fd_limit,
        stderr=subprocess.DEVNULL,
    )
    conns: list[ChatConnection] = []
    try:
        await wait_port(port)
        limit = FDS - FD_RESERVE
        refused = 0
        for _ in range(limit + 20):
            conn = await ChatConnection.open("127.0.0.1", port)
            await conn.send({"msgid": MsgId.PING})
            reply = await conn.recv()
            if reply["msgid"] == MsgId.PONG:
                conns.append(conn)
                continue
            assert reply["msgid"] == MsgId.ERROR and reply["errno"] == ErrCode.SERVER_FULL
            try:
                await conn.recv(timeout=5)
                raise AssertionError("a refused connection must be closed")
            except ConnectionClosed:
                refused += 1
            await conn.close()
        assert len(conns) >= limit - 1  # the probe connection of wait_port may still count
        assert refused >= 19
        # Everyone admitted is still served; a freed slot admits a newcomer.
        for conn in conns[:5]:
            assert (await conn.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
        await conns.pop().close()
        async with asyncio.timeout(10):
            while True:
                late = await ChatConnection.open("127.0.0.1", port)
                await late.send({"msgid": MsgId.PING})
                if (await late.recv())["msgid"] == MsgId.PONG:
                    conns.append(late)
                    break
                await late.close()
                await asyncio.sleep(0.05)
    finally:
        for conn in conns:
            await conn.close()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)
