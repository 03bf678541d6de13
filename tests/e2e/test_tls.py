"""TLS, both ways the README offers: the node itself (--tls-cert/--tls-key),
or nginx's stream module terminating TLS in front of plain nodes."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.cluster.nginx import NGINX, nginx_command, standalone_conf
from clusterchat.config import Settings
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.conftest import FAST_HASH, PASSWORD, unique
from tests.helpers import free_ports, wait_port


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(crt), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(crt), str(key)


def client_ctx(crt: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=crt)


@pytest.fixture
async def tls_node(tmp_path: Path, cert: tuple[str, str]) -> AsyncIterator[Node]:
    db = f"sqlite+aiosqlite:///{tmp_path / 'tls.db'}"
    n = Node(
        Settings(
            port=0, db_url=db, hash_cost=FAST_HASH, shed_lag=0.0, tls_cert=cert[0], tls_key=cert[1]
        )
    )
    await n.start()
    yield n
    await n.stop()


async def test_node_serves_tls(tls_node: Node, cert: tuple[str, str]) -> None:
    ctx = client_ctx(cert[0])
    a = await ChatConnection.open("127.0.0.1", tls_node.port, ssl=ctx)
    b = await ChatConnection.open("127.0.0.1", tls_node.port, ssl=ctx)
    a_id, b_id = await a.register(unique(), PASSWORD), await b.register(unique(), PASSWORD)
    await a.login(a_id, PASSWORD)
    await b.login(b_id, PASSWORD)
    await a.send({"msgid": 6, "toid": b_id, "msg": "over tls"})
    assert (await b.expect(MsgId.ONE_CHAT))["msg"] == "over tls"
    # Plain TCP gets nowhere: the node expects a TLS handshake.
    plain = await ChatConnection.open("127.0.0.1", tls_node.port)
    await plain.send({"msgid": MsgId.PING})
    with pytest.raises((ConnectionClosed, ConnectionError)):
        await plain.recv(timeout=5)
    for c in (a, b, plain):
        await c.close()


async def test_terminal_client_speaks_tls(tls_node: Node, cert: tuple[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "client", "127.0.0.1", str(tls_node.port),
        "--tls", "--tls-ca", cert[0],
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(b"register:tina:pw\n/ping\nquit\n"), 30)
    text = out.decode()
    assert "Registered tina with id" in text and f"pong from node {tls_node.node_id}" in text


async def test_nginx_terminates_tls_in_front_of_a_plain_node(
    tmp_path: Path, cert: tuple[str, str]
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}"
    node = Node(Settings(port=0, db_url=db, hash_cost=FAST_HASH, shed_lag=0.0))
    await node.start()
    listen = free_ports(1)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        standalone_conf([f"127.0.0.1:{node.port}"], f"127.0.0.1:{listen}", tmp_path, *cert)
    )
    nginx = await asyncio.create_subprocess_exec(
        *nginx_command(conf, tmp_path, NGINX), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_port(listen)
        conn = await ChatConnection.open("127.0.0.1", listen, ssl=client_ctx(cert[0]))
        uid = await conn.register(unique(), PASSWORD)
        assert (await conn.login(uid, PASSWORD))["errno"] == 0
        pong = await conn.request({"msgid": MsgId.PING}, MsgId.PONG)
        assert pong["node"] == node.node_id
        await conn.close()
    finally:
        nginx.terminate()
        await nginx.wait()
        await node.stop()


async def _client(port: int, *args: str, script: bytes = b"") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "client", "127.0.0.1", str(port), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(script), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_a_plain_client_at_a_tls_node_is_told_to_use_tls(tls_node: Node) -> None:
    """The node closes a plain connection at its first request without a
    word: the client looped "Connected / Not done: the connection is down /
    Reconnected" forever; now it says the server may require TLS and stops."""
    _, text = await _client(tls_node.port, script=b"register:tom:pw\n/ping\n")
    assert "it may require TLS (start the client with --tls)" in text, text
    assert "Reconnected" not in text, text


async def test_a_tls_client_at_a_plain_node_says_the_handshake_failed(tmp_path: Path) -> None:
    """A plain node takes the ClientHello for the start of a request and waits
    for its end: the client was silent for ~35 s, then printed "Cannot
    connect to HOST:PORT: " with no reason."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}"
    n = Node(Settings(port=0, db_url=db, hash_cost=FAST_HASH, shed_lag=0.0))
    await n.start()
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        code, text = await _client(n.port, "--tls", script=b"/ping\n")
        took = loop.time() - start
    finally:
        await n.stop()
    assert code == 1 and "TLS handshake failed" in text and "is the server using TLS" in text, text
    assert took < 25, took  # the handshake's own timeout (10 s), not the node's


async def test_the_node_logs_failed_handshakes_sampled(
    tls_node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain client at a TLS node left no trace in the node's log (asyncio
    reports failed handshakes only in debug mode); now each is logged, at
    most one line per interval with a count of the rest."""
    caplog.set_level(logging.WARNING, "clusterchat.server.tls")
    for _ in range(5):
        plain = await ChatConnection.open("127.0.0.1", tls_node.port)
        await plain.send({"msgid": MsgId.PING})
        assert await plain.at_eof()
        await plain.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "clusterchat.server.tls"]
    assert len(lines) == 1 and "TLS handshake failed from 127.0.0.1" in lines[0], lines
    # TLS clients still get in, and the node still counts them.
    c = await ChatConnection.open(
        "127.0.0.1", tls_node.port, ssl=client_ctx(tls_node.settings.tls_cert or "")
    )
    assert (await c.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    assert len(tls_node.connections) == 1
    await c.close()
