"""MariaDB unreachable for a while: error replies, a live node, recovery on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from clusterchat import errors
from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.server.node import Node
from clusterchat.storage import sql
from tests.conftest import FAST_HASH, MYSQL_SERVER, PASSWORD, unique
from tests.helpers import CuttableProxy, stalling_mariadb


@pytest.fixture
async def proxy() -> AsyncIterator[CuttableProxy]:
    p = CuttableProxy(target_port=3306)
    await p.start()
    yield p
    await p.cut()


@pytest.fixture
async def node_via_proxy(proxy: CuttableProxy, mariadb_url: str) -> AsyncIterator[Node]:
    host = MYSQL_SERVER.rsplit(":", 1)[0]
    url = f"{host}:{proxy.port}/{mariadb_url.rsplit('/', 1)[1]}"
    n = Node(Settings(port=0, db_url=url, hash_cost=FAST_HASH, shed_lag=0.0))
    await n.start()
    yield n
    await n.stop()


async def _user(node: Node) -> tuple[ChatConnection, int]:
    conn = await ChatConnection.open("127.0.0.1", node.port)
    uid = await conn.register(unique(), PASSWORD)
    assert (await conn.login(uid, PASSWORD))["errno"] == 0
    return conn, uid


async def test_store_outage_gives_errors_and_recovers(
    node_via_proxy: Node, proxy: CuttableProxy, caplog: pytest.LogCaptureFixture
) -> None:
    node = node_via_proxy
    (alice, _), (carol, carol_id) = await _user(node), await _user(node)
    bob, bob_id = await _user(node)
    await bob.request({"msgid": 3}, MsgId.LOGOUT_ACK)

    await proxy.cut()
    # Needs the store: a clear, retryable refusal, every time...
    for _ in range(20):
        err = await alice.request({"msgid": 6, "toid": bob_id, "msg": "kept?"}, MsgId.ERROR)
        assert err["errno"] == ErrCode.UNAVAILABLE and err["re"] == 6
    # ...logged once with the driver's reason, not once a request.
    refused = [r.getMessage() for r in caplog.records if "request refused" in r.getMessage()]
    assert len(refused) == 1 and "database unavailable: " in refused[0], refused
    newcomer = await ChatConnection.open("127.0.0.1", node.port)
    reg = await newcomer.request(
        {"msgid": 4, "name": unique(), "password": PASSWORD}, MsgId.REG_ACK
    )
    assert reg["errno"] == 4
    assert (await bob.login(bob_id, PASSWORD))["errno"] == 4
    # Needs no store: unaffected.
    await alice.send({"msgid": 6, "toid": carol_id, "msg": "still live"})
    assert (await carol.expect(MsgId.ONE_CHAT))["msg"] == "still live"
    assert (await alice.expect(MsgId.CHAT_ACK))["status"] == "delivered"

    await proxy.start()
    # Recovered by itself: the refused message can be sent again and is kept.
    await alice.send({"msgid": 6, "toid": bob_id, "msg": "kept?"})
    assert (await alice.expect(MsgId.CHAT_ACK))["status"] == "stored"
    ack = await bob.login(bob_id, PASSWORD)
    assert ack["errno"] == 0 and len(ack["offlinemsg"]) == 1
    assert await newcomer.register(unique(), PASSWORD) > 0
    for c in (alice, carol, bob, newcomer):
        await c.close()


async def test_logins_on_a_silent_store_flow_get_an_error_in_time(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flows between a node and MariaDB go silent (a middlebox holds
    them: no FIN, no reset). Each login must be told "unavailable" within
    TX_TIMEOUT, more logins than the pool has connections too, and logins
    work again once the flows carry on; before, every login waited for ever
    (the pooled connection's read never returned) and held its connection."""
    monkeypatch.setattr(sql, "TX_TIMEOUT", 1.0)
    proxy, url = await stalling_mariadb(mariadb_url)
    node = Node(Settings(port=0, db_url=url, hash_cost=FAST_HASH, shed_lag=0.0, db_pool=2))
    await node.start()
    conns: list[ChatConnection] = []
    try:
        users = [await _user(node) for _ in range(4)]
        conns += [c for c, _ in users]
        for c, _ in users:
            await c.request({"msgid": 3}, MsgId.LOGOUT_ACK)
        proxy.stall()
        for c, uid in users:  # twice the pool, one after another
            assert (await c.login(uid, PASSWORD))["errno"] == 4
        proxy.flow()
        for c, uid in users:
            assert (await c.login(uid, PASSWORD))["errno"] == 0
    finally:
        for c in conns:
            await c.close()
        await node.stop()
        await proxy.close()


async def test_logins_get_new_connections_when_the_old_flows_stay_silent(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pooled connections' flows go silent for good, new ones would
    flow: each held connection fails one transaction in TX_TIMEOUT and is
    replaced, so logins work again without the old flows coming back."""
    monkeypatch.setattr(sql, "TX_TIMEOUT", 1.0)
    proxy, url = await stalling_mariadb(mariadb_url)
    node = Node(Settings(port=0, db_url=url, hash_cost=FAST_HASH, shed_lag=0.0, db_pool=2))
    await node.start()
    conn, uid = await _user(node)
    try:
        await conn.request({"msgid": 3}, MsgId.LOGOUT_ACK)
        proxy.stall_existing()
        errnos = []
        for _ in range(3):  # at most one failure per pooled connection
            errnos.append((await conn.login(uid, PASSWORD))["errno"])
            if errnos[-1] == 0:
                break
        assert errnos[-1] == 0 and set(errnos[:-1]) <= {4}, errnos
    finally:
        await conn.close()
        await node.stop()
        await proxy.close()


async def test_a_node_start_on_a_silent_store_fails_in_time(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MariaDB whose flow goes silent before the node's first query: the
    start must fail as Unavailable in TX_TIMEOUT (before, it waited for ever)."""
    monkeypatch.setattr(sql, "TX_TIMEOUT", 1.0)
    proxy, url = await stalling_mariadb(mariadb_url)
    proxy.stall()
    node = Node(Settings(port=0, db_url=url, hash_cost=FAST_HASH, shed_lag=0.0, db_pool=2))
    try:
        async with asyncio.timeout(10):
            with pytest.raises(errors.Unavailable, match="did not answer in 1 s"):
                await node.start()
    finally:
        await node.store.close()
        await proxy.close()
