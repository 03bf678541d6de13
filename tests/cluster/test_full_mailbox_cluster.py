"""A receiver's cut-offs cannot grow its mailbox past the quota, whichever
node its senders are on.

tests/e2e/test_full_mailbox_cutoffs.py covers senders on the receiver's own
node. A sender on another node used to get its CHAT_ACK as soon as Redis
took the batch, so the receiver's node could not refuse the message: it was
delivered live, and a receiver that reads and never confirms was cut off
and what it held stored past the quota, at every round (20 rounds against
a 5-message quota: 62-95 rows, 20 cut-offs). Now the receiver's node marks a full mailbox
next to the user's presence in Redis, and a sender's node that sees the
mark sends the message down the stored path, where the quota refuses it
before any acknowledgement (ERROR 171)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from clusterchat.bus import scripts
from clusterchat.bus.redis import RedisCluster
from clusterchat.client.connection import ChatConnection
from clusterchat.config import Limits, Settings
from clusterchat.protocol import codec
from clusterchat.protocol.messages import ChatStatus, ErrCode, MsgId
from clusterchat.server.node import Node
from tests.cluster.conftest import PRESENCE_TTL
from tests.conftest import FAST_HASH, PASSWORD
from tests.helpers import ScriptGate, redis_prefix
from tests.mailboxes import (
    QUOTA,
    ROUNDS,
    SMALL,
    WINDOW,
    a_full_member_misses_a_group_message,
    chat,
    logged_in,
    quota_limits,
    registered,
    stored_rows,
)

REFUSED = (ErrCode.MAILBOX_FULL, ErrCode.MAILBOX_SHARE_FULL)


def _settings(db_url: str, redis_url: str, prefix: str, name: str, quota: int) -> Settings:
    limits = quota_limits(Limits(registrations_per_address=0, rejoin_after=0.0), quota)
    return Settings(
        host="127.0.0.1",
        port=0,
        db_url=db_url,
        hash_cost=FAST_HASH,
        limits=limits,
        trusted_proxies=(),
        shed_lag=0.0,
        redis_url=redis_url,
        redis_prefix=prefix,
        presence_ttl=PRESENCE_TTL,
        node_id=name,
    )


async def _pair(db_url: str, redis_url: str, quota: int) -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes of one cluster: the senders' and the receiver's."""
    prefix = redis_prefix("ccfull")
    senders = Node(_settings(db_url, redis_url, prefix, "a", quota))
    receivers = Node(_settings(db_url, redis_url, prefix, "b", quota))
    await senders.start()
    await receivers.start()
    try:
        yield senders, receivers
    finally:
        await receivers.stop()
        await senders.stop()
        r = aioredis.Redis.from_url(redis_url)
        try:
            stale = [k async for k in r.scan_iter(match=f"{prefix}*")]
            if stale:
                await r.delete(*stale)
        finally:
            await r.aclose()


@pytest.fixture
async def small_pair(db_url: str, shared_redis: str) -> AsyncIterator[tuple[Node, Node]]:
    """A quota smaller than the window, as in the same-node test."""
    async for pair in _pair(db_url, shared_redis, SMALL):
        yield pair


@pytest.fixture
async def qpair(db_url: str, shared_redis: str) -> AsyncIterator[tuple[Node, Node]]:
    async for pair in _pair(db_url, shared_redis, QUOTA):
        yield pair


async def _settled(senders: Node, receivers: Node, uid: int) -> None:
    """The receiver's session is over, what it left is stored, and every
    batch the senders' node sent is acknowledged and settled (so whatever
    was in flight is delivered or stored, and counted)."""
    async with asyncio.timeout(20):
        while uid in receivers.service.sessions:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert await receivers.service.restorer.drain(10)
        while True:
            stats = senders.service.bus.window_stats()
            assert stats is not None
            if not (stats.unacked or stats.held or stats.kept):
                break
            await asyncio.sleep(0.02)
        assert await receivers.service.restorer.drain(10)


async def test_senders_on_another_node_cannot_grow_a_full_mailbox(
    small_pair: tuple[Node, Node],
) -> None:
    """As the same-node test, with the senders on node a and the receiver on
    node b: rounds of log in with receipts, read, confirm nothing while two
    senders send past a window, leave. Once the mailbox is at its quota,
    node a sees it marked full and refuses: the first round's cut-off is
    the only one."""
    a, b = small_pair
    senders = [await logged_in(a), await logged_in(a)]
    first, uid = await registered(b)
    await first.close()
    refused = cut_offs = 0
    rows: list[int] = []
    for r in range(ROUNDS):
        mute = await ChatConnection.open("127.0.0.1", b.port)
        ack = await mute.login(uid, PASSWORD, receipts=True)
        assert ack["errno"] == 0 and ack["receipts"] is True, ack
        for i in range(WINDOW + 2):
            reply = await chat(senders[i % 2][0], uid, f"r{r} m{i}")
            if reply["msgid"] == MsgId.ERROR:
                assert reply["errno"] in REFUSED, reply
                assert "not sent" in reply["errmsg"]
                refused += 1
            else:
                assert reply["msgid"] == MsgId.CHAT_ACK and reply["errno"] == 0, reply
        await asyncio.sleep(0.05)  # what node a published reaches node b (or not)
        if uid in b.service.sessions:  # not cut off: it leaves (confirming nothing)
            await mute.abort()
        else:
            cut_offs += 1
            await mute.close()
        await _settled(a, b, uid)
        rows.append(await stored_rows(b, uid))
    print(f"rows after each round: {rows}; cut-offs {cut_offs}, refused {refused}")
    assert max(rows) <= SMALL + WINDOW + 1, rows
    assert cut_offs == 1, rows  # the first round's window overflowed; no other
    assert refused >= (ROUNDS - 1) * (WINDOW + 2)  # from the second round on, all refused
    for c, _ in senders:
        await c.close()


async def test_an_honest_receiver_gets_live_messages_from_another_node_again(
    qpair: tuple[Node, Node],
) -> None:
    """Full: a sender on the other node is refused as for an offline
    receiver. Once the receiver confirms what it was kept, the mark goes and
    that sender's next message is delivered live."""
    a, b = qpair
    (sender, _), (receiver, uid) = await logged_in(a), await registered(b)
    kept = []
    for i in range(QUOTA):
        ack = await chat(sender, uid, f"kept {i}")
        assert ack["status"] == ChatStatus.STORED, ack
        kept.append(ack["mid"])
    ack = await receiver.login(uid, PASSWORD, receipts=True)
    got = [codec.loads(m) for m in ack.get("offlinemsg", ())]
    refusal = await chat(sender, uid, "while full")
    assert refusal["msgid"] == MsgId.ERROR and refusal["errno"] == ErrCode.MAILBOX_FULL, refusal
    while len(got) < QUOTA:
        if got:
            await receiver.received(len(got))
        got.append(await receiver.expect(MsgId.ONE_CHAT))
    assert [m["mid"] for m in got] == kept
    await receiver.received(QUOTA)
    # Below the quota: node a routes to node b again once the mark's clearing
    # reaches it. Until then its messages take the stored path: refused
    # while the confirmed rows are not yet deleted, stored (and delivered
    # from the store) once they are and the mark is not yet cleared.
    stored: list[str] = []
    async with asyncio.timeout(10):
        while True:
            live = await chat(sender, uid, "live again")
            if live["msgid"] == MsgId.CHAT_ACK and live["status"] == ChatStatus.DELIVERED:
                break
            if live["msgid"] == MsgId.CHAT_ACK:
                assert live["status"] == ChatStatus.STORED, live
                stored.append(live["mid"])
            else:
                assert live["errno"] == ErrCode.MAILBOX_FULL, live
            await asyncio.sleep(0.05)
    arrived: list[str] = []
    async with asyncio.timeout(10):
        while not {live["mid"], *stored} <= set(arrived):
            arrived.append((await receiver.expect(MsgId.ONE_CHAT))["mid"])
    assert len(arrived) == len(stored) + 1, arrived  # each once
    await receiver.received(QUOTA + len(arrived))
    async with asyncio.timeout(10):  # confirmed: the stored ones' rows go too
        while await stored_rows(b, uid):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    for c in (sender, receiver):
        await c.close()


async def test_a_full_member_on_another_node_is_listed_in_full(
    qpair: tuple[Node, Node],
) -> None:
    """A group message from node a to a member on node b whose mailbox is
    full: kept within the quota as for a member away, so refused for them
    and listed in the CHAT_ACK's ``full``; the other member gets it live."""
    a, b = qpair
    await a_full_member_misses_a_group_message(a, b, QUOTA)


async def test_a_mailbox_filled_during_a_session_is_marked_for_the_other_node(
    qpair: tuple[Node, Node],
) -> None:
    """The mark follows the tally during a session too: stores noticed for
    a receiver online on node b fill its mailbox, node b marks it in Redis,
    and node a's next message to it is refused instead of delivered live."""
    a, b = qpair
    (sender, sid), (receiver, uid) = await logged_in(a), await registered(b)
    assert (await receiver.login(uid, PASSWORD, receipts=True))["receipts"] is True
    first = await chat(sender, uid, "live")
    assert first["status"] == ChatStatus.DELIVERED, first
    assert (await receiver.expect(MsgId.ONE_CHAT))["mid"] == first["mid"]
    service = b.service
    for i in range(QUOTA):  # stored for it while it is online (a store racing its login)
        text = codec.one_chat(sid, "s", uid, f"stored {i}", "", 0, f"x-{i}")[:-1].decode()
        await service.store.store_offline(uid, text, service.quota, sid)
    await service._after_store([uid])  # noticed: the tally is read again
    bus = a.service.bus
    assert isinstance(bus, RedisCluster)
    r = aioredis.Redis.from_url(bus._url)
    try:
        async with asyncio.timeout(10):  # marked in Redis, and node a has the event
            while await r.get(f"{bus.prefix}full:{uid}") != b"b" or bus._routes.get(uid):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        await r.aclose()
    reply = await chat(sender, uid, "after it filled")
    assert reply["msgid"] == MsgId.ERROR and reply["errno"] == ErrCode.MAILBOX_FULL, reply
    assert await stored_rows(b, uid) == QUOTA
    for c in (sender, receiver):
        await c.close()


async def test_a_mailbox_filled_from_another_node_while_logging_in_is_marked(
    db_url: str, shared_redis: str
) -> None:
    """Node b reads the receiver's tally (one under the quota), and before
    its CLAIM runs node a stores one more for them (offline, as far as
    Redis says: its nudge finds nobody). Once logged in, the receiver's
    mailbox is full: node a's next message must be refused, not delivered
    live (and stored past the quota at a cut-off). Node b reads the tally
    again once it holds the user (a store from then on is noticed there)
    and marks the mailbox; node a refuses from then on."""
    sha = hashlib.sha1(scripts.CLAIM.encode()).hexdigest().encode()
    gate = ScriptGate(int(shared_redis.rsplit(":", 1)[1].split("/")[0]), sha)
    await gate.start()
    prefix = redis_prefix("ccfull")
    a = Node(_settings(db_url, shared_redis, prefix, "a", QUOTA))
    b = Node(_settings(db_url, gate.url, prefix, "b", QUOTA))
    await a.start()
    await b.start()
    r = aioredis.Redis.from_url(shared_redis)
    try:
        await r.script_load(scripts.CLAIM)  # b's EVALSHA finds it: one command to hold
        (sender, _), (first, uid) = await logged_in(a), await registered(b)
        await first.close()
        for i in range(QUOTA - 1):
            assert (await chat(sender, uid, f"kept {i}"))["status"] == ChatStatus.STORED
        receiver = await ChatConnection.open("127.0.0.1", b.port)
        gate.armed = True
        login = asyncio.ensure_future(receiver.login(uid, PASSWORD, receipts=True))
        async with asyncio.timeout(10):
            await gate.held.wait()  # b read the tally; its CLAIM has not run
        last = await chat(sender, uid, "fills it")
        assert last["status"] == ChatStatus.STORED, last
        gate.open()
        assert (await login)["errno"] == 0
        bus = a.service.bus
        assert isinstance(bus, RedisCluster)
        async with asyncio.timeout(5):  # b re-read the tally and marked it; a has the event
            while await r.get(f"{prefix}full:{uid}") != b"b" or bus._routes.get(uid):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        reply = await chat(sender, uid, "after the login")
        assert reply["msgid"] == MsgId.ERROR and reply["errno"] == ErrCode.MAILBOX_FULL, reply
        for c in (sender, receiver):
            await c.close()
    finally:
        await b.stop()
        await a.stop()
        await gate.close()
        stale = [k async for k in r.scan_iter(match=f"{prefix}*")]
        if stale:
            await r.delete(*stale)
        await r.aclose()
