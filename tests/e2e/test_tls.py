"""TLS, both ways the README offers: the node itself (--tls-cert/--tls-key),
or nginx's stream module terminating TLS in front of plain nodes."""

from __future__ import annotations

import asyncio
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
