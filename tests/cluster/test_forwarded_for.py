"""The WebSocket path's real client addresses: behind a real nginx that sets
X-Forwarded-For, per-address limits hold the abuser and nobody else; a
client that sends the header itself, directly, is not believed."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from clusterchat.cluster.nginx import NGINX, nginx_command, standalone_conf
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, LoginErr, MsgId, RegErr
from clusterchat.protocol.trusted import TrustedProxies
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from tests.conftest import PASSWORD, unique
from tests.helpers import free_ports, wait_port
from tests.web.conftest import WsChat

BAD, GOOD = "127.0.0.2", "127.0.0.3"


def _limited(settings: Settings, trusted: tuple[str, ...]) -> Settings:
    return replace(
        settings,
        http_port=0,
        trusted_proxies=trusted,
        max_connections_per_address=2,
        limits=Limits(registrations_per_address=2, login_failures_per_address=3),
    )


async def _ws(port: int, address: str, forged: str | None = None) -> WsChat:
    headers = {"X-Forwarded-For": forged} if forged else {}
    ws = await connect(
        f"ws://127.0.0.1:{port}/ws", local_addr=(address, 0), additional_headers=headers
    )
    return WsChat(ws)


async def _refused(port: int, address: str, forged: str | None = None) -> dict[str, object]:
    with pytest.raises(InvalidStatus) as refused:
        await _ws(port, address, forged)
    assert refused.value.response.status_code == 503
    body = json.loads(refused.value.response.body)
    assert isinstance(body, dict)
    return body


async def _reg(conn: WsChat) -> int:
    ack = await conn.request(
        {"msgid": MsgId.REG, "name": unique(), "password": PASSWORD}, MsgId.REG_ACK
    )
    return int(ack["errno"])


@pytest.fixture
async def behind_nginx(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Node, int]]:
    """A node trusting only nginx (127.0.0.1), its HTTP port behind nginx's
    http block as `cluster up` writes it; yields the node and nginx's port."""
    node = Node(_limited(settings, ("127.0.0.1",)))
    await node.start()
    base = free_ports(2)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        standalone_conf(
            [f"127.0.0.1:{node.port}"],
            f"127.0.0.1:{base}",
            tmp_path,
            http_upstreams=[f"127.0.0.1:{node.http.port}"],
            http_listen=f"127.0.0.1:{base + 1}",
        )
    )
    nginx = subprocess.Popen(  # noqa: ASYNC220 - a daemon for the test's lifetime
        nginx_command(conf, tmp_path, NGINX), stderr=subprocess.DEVNULL
    )
    try:
        await wait_port(base + 1)
        yield node, base + 1
    finally:
        nginx.terminate()
        await asyncio.to_thread(nginx.wait, 10)
        await node.stop()


async def test_through_nginx_limits_use_the_real_address(
    behind_nginx: tuple[Node, int],
) -> None:
    node, port = behind_nginx
    # The attacker claims to be GOOD: nginx appends its real address, which wins.
    conns = [await _ws(port, BAD, forged=GOOD) for _ in range(2)]
    for c in conns:
        assert (await c.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    err = await _refused(port, BAD, forged="10.9.8.7")
    assert err["errno"] == ErrCode.SERVER_FULL and "address" in str(err["errmsg"]), err
    # Someone else through the same nginx is let in, and seen as themselves
    # (had the forged header counted, GOOD would be at its cap already).
    good = await _ws(port, GOOD)
    uid = await good.register(unique(), PASSWORD)
    addresses = {c.address for c in node.connections} - {"127.0.0.1"}
    assert addresses == {BAD, GOOD}, addresses
    # The guesser's address is slowed down, the other is not.
    for n in range(4):
        await conns[0].login(2_000_000_000 + n, "guess")
    held = await conns[1].login(uid, PASSWORD)
    assert held["errno"] == LoginErr.TOO_MANY_FAILURES
    assert (await good.login(uid, PASSWORD))["errno"] == 0
    # The registration meter too: BAD's third account is refused, GOOD's second is not.
    assert [await _reg(conns[1]) for _ in range(3)] == [0, 0, RegErr.TOO_MANY]
    another = await _ws(port, GOOD)
    assert await _reg(another) == 0
    for c in [*conns, good, another]:
        await c.close()


async def test_a_forged_header_from_an_untrusted_peer_is_ignored(
    settings: Settings,
) -> None:
    """127.0.0.1 is not a trusted proxy here: what it says it forwards is ignored."""
    node = Node(_limited(settings, ("127.0.0.9",)))
    await node.start()
    try:
        port = node.http.port
        a = await _ws(port, "127.0.0.1", forged="10.0.0.1")
        b = await _ws(port, "127.0.0.1", forged="10.0.0.2, 10.0.0.3")
        assert {c.address for c in node.connections} == {"127.0.0.1"}
        err = await _refused(port, "127.0.0.1", forged="10.0.0.4")
        assert err["errno"] == ErrCode.SERVER_FULL
        # One meter of accounts and one of guesses, whatever address is claimed.
        uid = await a.register(unique(), PASSWORD)
        assert [await _reg(b), await _reg(a)] == [0, RegErr.TOO_MANY]
        for n in range(4):
            await a.login(2_000_000_000 + n, "guess")
        assert (await b.login(uid, PASSWORD))["errno"] == LoginErr.TOO_MANY_FAILURES
        await a.close()
        await b.close()
    finally:
        await node.stop()


async def test_a_trusted_peer_without_a_usable_header_keeps_its_address(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A tool on the proxy's machine: trusted, not readdressed, not capped.
    A header naming no address (a proxy misconfigured) is warned about, once."""
    node = Node(_limited(settings, ("127.0.0.1",)))
    await node.start()
    try:
        port = node.http.port
        conns = [await _ws(port, "127.0.0.1") for _ in range(3)]
        conns += [await _ws(port, "127.0.0.1", forged="unknown") for _ in range(2)]
        assert {c.address for c in node.connections} == {"127.0.0.1"}
        warned = [r for r in caplog.records if "names no client address" in r.getMessage()]
        assert len(warned) == 1, warned
        for c in conns:
            await c.close()
    finally:
        await node.stop()


async def test_a_trusted_network_is_believed_and_no_one_outside_it(settings: Settings) -> None:
    """--trusted-proxy 127.0.0.0/30: a proxy at 127.0.0.2 is believed (a
    load balancer fleet connects from a range); 127.0.0.5 is not."""
    node = Node(_limited(settings, TrustedProxies(["127.0.0.0/30"]).specs))
    await node.start()
    try:
        port = node.http.port
        inside = await _ws(port, "127.0.0.2", forged="10.1.1.1")
        outside = await _ws(port, "127.0.0.5", forged="10.2.2.2")
        assert {c.address for c in node.connections} == {"10.1.1.1", "127.0.0.5"}
        await inside.close()
        await outside.close()
    finally:
        await node.stop()
