"""A refused request had no effect; where the server cannot tell, it says so.

``test_mariadb_outage_under_load`` once saw "acknowledged 406, arrived 407":
a chat answered ``ERROR 150`` reached its receiver anyway. The path: the
store's connection died after MariaDB had committed the offline message but
before its OK came back. Here a proxy that reads MariaDB's protocol loses
exactly that answer, and a group chat meets a store that is down after some
members already have it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import Settings
from clusterchat.protocol.messages import ChatStatus, ErrCode, MsgId
from clusterchat.server.node import Node
from tests.conftest import FAST_HASH, MYSQL_SERVER, PASSWORD, unique
from tests.mysql_proxy import MariaDbProxy


@pytest.fixture
async def proxy() -> AsyncIterator[MariaDbProxy]:
    p = MariaDbProxy(target_port=int(MYSQL_SERVER.rsplit(":", 1)[1]))
    await p.start()
    yield p
    await p.cut()


@pytest.fixture
async def node(proxy: MariaDbProxy, mariadb_url: str) -> AsyncIterator[Node]:
    host = MYSQL_SERVER.rsplit(":", 1)[0]
    url = f"{host}:{proxy.port}/{mariadb_url.rsplit('/', 1)[1]}"
    n = Node(Settings(port=0, db_url=url, hash_cost=FAST_HASH, shed_lag=0.0))
    await n.start()
    yield n
    await n.stop()


async def _user(node: Node, login: bool = True) -> tuple[ChatConnection, int]:
    conn = await ChatConnection.open("127.0.0.1", node.port)
    uid = await conn.register(unique(), PASSWORD)
    if login:
        assert (await conn.login(uid, PASSWORD))["errno"] == 0
    return conn, uid


async def _offline_texts(node: Node, uid: int) -> list[str]:
    """What ``uid`` gets at login (closing the connection again)."""
    conn = await ChatConnection.open("127.0.0.1", node.port)
    try:
        ack = await conn.login(uid, PASSWORD)
        assert ack["errno"] == 0, ack
        return [json.loads(m)["msg"] for m in ack.get("offlinemsg", [])]
    finally:
        await conn.close()


async def test_a_chat_whose_commit_answer_is_lost_is_acknowledged_as_stored_once(
    node: Node, proxy: MariaDbProxy
) -> None:
    alice, _ = await _user(node)
    bob, bob_id = await _user(node, login=False)  # away: his messages are stored
    proxy.lose_next_commit("offlinemessage")
    reply = await alice.request(
        {"msgid": MsgId.ONE_CHAT, "toid": bob_id, "msg": "in doubt"}, MsgId.CHAT_ACK
    )
    assert proxy.commit_lost.is_set()  # the commit was done, its answer lost
    assert reply["status"] == ChatStatus.STORED
    assert await _offline_texts(node, bob_id) == ["in doubt"]  # kept, and once
    await alice.close()
    await bob.close()


async def test_a_chat_in_doubt_to_no_one_is_refused_as_such(
    node: Node, proxy: MariaDbProxy
) -> None:
    alice, _ = await _user(node)
    proxy.lose_next_commit("offlinemessage")
    reply = await alice.request(
        {"msgid": MsgId.ONE_CHAT, "toid": 987_654_321, "msg": "nobody"}, MsgId.ERROR
    )
    assert proxy.commit_lost.is_set()
    assert reply["errno"] == ErrCode.NO_SUCH_USER
    await alice.close()


async def test_a_chat_in_doubt_while_the_store_stays_away_gets_no_answer(
    node: Node, proxy: MariaDbProxy
) -> None:
    """Past the settle timeout the outcome is unknown: no refusal (it was in
    fact kept), the connection is closed unanswered, as if it had dropped."""
    node.service.settle_timeout = 0.5
    alice, _ = await _user(node)
    bob, bob_id = await _user(node, login=False)
    proxy.lose_next_commit("offlinemessage", then_cut=True)
    await alice.send({"msgid": MsgId.ONE_CHAT, "toid": bob_id, "msg": "kept, unanswered"})
    with pytest.raises(ConnectionClosed):
        reply = await alice.recv(timeout=10)
        raise AssertionError(f"answered while in doubt: {reply}")
    await alice.close()
    await proxy.start()
    assert await _offline_texts(node, bob_id) == ["kept, unanswered"]
    await bob.close()


async def test_a_group_chat_that_reached_some_members_is_not_refused(
    node: Node, proxy: MariaDbProxy
) -> None:
    alice, _ = await _user(node)
    carol, _ = await _user(node)
    bob, bob_id = await _user(node)
    ack = await alice.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": unique(), "groupdesc": ""},
        MsgId.CREATE_GROUP_ACK,
    )
    gid = ack["groupid"]
    for conn in (carol, bob):
        await conn.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await bob.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)  # away: needs the store
    first = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "first"}
    assert (await alice.request(first, MsgId.CHAT_ACK))["status"] == ChatStatus.SENT
    assert (await carol.expect(MsgId.GROUP_CHAT))["msg"] == "first"

    await proxy.cut()  # the store is down; the members are cached
    second = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "second"}
    reply = await alice.request(second, MsgId.CHAT_ACK)
    # Carol has it: a refusal would be a lie. The reply says who does not.
    assert reply["status"] == ChatStatus.PARTIAL and reply["missed"] == [bob_id], reply
    assert (await carol.expect(MsgId.GROUP_CHAT))["msg"] == "second"

    # With nobody reachable the request is refused, and has no effect.
    await carol.close()
    third = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "third"}
    refusal = await alice.request(third, MsgId.ERROR)
    assert refusal["errno"] == ErrCode.UNAVAILABLE

    await proxy.start()
    assert await _offline_texts(node, bob_id) == ["first"]
    await alice.close()
    await bob.close()


async def test_a_login_whose_offline_rows_cannot_be_deleted_is_answered_once(
    node: Node, proxy: MariaDbProxy
) -> None:
    """The store fails just after the login reply carried the offline
    messages: the login was answered, so no ERROR follows it; the rows are
    deleted once the store is back, so they do not come again."""
    alice, _ = await _user(node)
    bob, bob_id = await _user(node, login=False)
    chat = {"msgid": MsgId.ONE_CHAT, "toid": bob_id, "msg": "while away"}
    assert (await alice.request(chat, MsgId.CHAT_ACK))["status"] == ChatStatus.STORED
    proxy.cut_on("delete from offlinemessage")
    ack = await bob.login(bob_id, PASSWORD)
    assert [json.loads(m)["msg"] for m in ack["offlinemsg"]] == ["while away"]
    await bob.send({"msgid": MsgId.PING})
    assert (await bob.recv())["msgid"] == MsgId.PONG  # and no second answer to the login
    await proxy.start()
    async with asyncio.timeout(10):  # the delivery goes on by itself
        while await node.store.offline(bob_id):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await bob.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    await bob.close()
    assert await _offline_texts(node, bob_id) == []
    await alice.close()


async def test_a_group_chat_whose_commit_answer_is_lost_is_stored_once(
    node: Node, proxy: MariaDbProxy
) -> None:
    alice, _ = await _user(node)
    bob, bob_id = await _user(node)
    ack = await alice.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": unique(), "groupdesc": ""},
        MsgId.CREATE_GROUP_ACK,
    )
    gid = ack["groupid"]
    await bob.request({"msgid": MsgId.ADD_GROUP, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    await bob.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    proxy.lose_next_commit("offlinemessage")
    chat = {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": "in doubt"}
    assert (await alice.request(chat, MsgId.CHAT_ACK))["status"] == ChatStatus.SENT
    assert proxy.commit_lost.is_set()
    await bob.close()
    assert await _offline_texts(node, bob_id) == ["in doubt"]
    await alice.close()
