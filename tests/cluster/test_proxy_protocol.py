"""Behind a real nginx with `proxy_protocol on;`, the node sees each client's
real address, so per-address limits hold the abuser and nobody else."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.cluster.nginx import NGINX, nginx_command, standalone_conf
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, LoginErr, MsgId
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from tests.conftest import PASSWORD, unique
from tests.helpers import free_ports, wait_port

BAD, GOOD = "127.0.0.2", "127.0.0.3"


@pytest.fixture
async def behind_nginx(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Node, int]]:
    node = Node(
        replace(
            settings,
            trusted_proxies=("127.0.0.1",),
            max_connections_per_address=2,
            limits=Limits(registrations_per_address=0, login_failures_per_address=3),
        )
    )
    await node.start()
    port = free_ports(1)
    conf = tmp_path / "nginx.conf"
    conf.write_text(standalone_conf([f"127.0.0.1:{node.port}"], f"127.0.0.1:{port}", tmp_path))
    nginx = subprocess.Popen(  # noqa: ASYNC220 - a daemon for the test's lifetime
        nginx_command(conf, tmp_path, NGINX), stderr=subprocess.DEVNULL
    )
    try:
        await wait_port(port)
        yield node, port
    finally:
        nginx.terminate()
        await asyncio.to_thread(nginx.wait, 10)
        await node.stop()


async def _via(port: int, address: str) -> ChatConnection:
    return await ChatConnection.open("127.0.0.1", port, local_addr=(address, 0))


async def test_per_address_limits_use_the_real_address(
    behind_nginx: tuple[Node, int],
) -> None:
    node, port = behind_nginx
    conns = [await _via(port, BAD) for _ in range(2)]
    for c in conns:
        assert (await c.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    third = await _via(port, BAD)
    await third.send({"msgid": MsgId.PING})
    err = await third.recv()
    assert err["errno"] == ErrCode.SERVER_FULL and "address" in err["errmsg"], err
    with pytest.raises(ConnectionClosed):
        await third.recv()
    # Someone else through the same nginx is let in, and seen as themselves.
    good = await _via(port, GOOD)
    uid = await good.register(unique(), PASSWORD)
    # (the refused one may still be closing, under the proxy's address)
    assert {c.address for c in node.connections} - {"127.0.0.1"} == {BAD, GOOD}
    # The guesser's address is slowed down, the other is not.
    for n in range(4):
        await conns[0].login(2_000_000_000 + n, "guess")
    held = await conns[0].login(uid, PASSWORD)
    assert held["errno"] == LoginErr.TOO_MANY_FAILURES
    assert (await good.login(uid, PASSWORD))["errno"] == 0
    for c in [*conns, third, good]:
        await c.close()


async def test_a_proxy_line_from_an_untrusted_client_is_not_believed(
    behind_nginx: tuple[Node, int],
) -> None:
    node, _ = behind_nginx
    direct = await ChatConnection.open("127.0.0.1", node.port, local_addr=(BAD, 0))
    await direct.send_raw(b"PROXY TCP4 10.9.8.7 127.0.0.1 5555 6000\r\n")
    err = await direct.expect(MsgId.ERROR)
    assert err["errno"] == ErrCode.MALFORMED
    assert "10.9.8.7" not in {c.address for c in node.connections}
    await direct.close()
