"""Limits a public server needs: each hit gets a clear refusal, and nobody
else is affected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from clusterchat.client.connection import ChatConnection, ConnectionClosed
from clusterchat.config import Settings
from clusterchat.protocol.messages import ErrCode, LoginErr, MsgId
from clusterchat.server.node import Node
from clusterchat.service.limits import FailureLimiter, Limits
from tests.conftest import PASSWORD, unique

RATE, BURST = 50.0, 10


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[Node]:
    n = Node(
        replace(
            settings,
            max_connections_per_address=4,
            limits=Limits(
                login_failures=3,
                login_failures_per_address=6,
                max_group_size=2,
                message_rate=RATE,
                message_burst=BURST,
            ),
        )
    )
    await n.start()
    yield n
    await n.stop()


async def test_password_guessing_is_cut_short(limited: Node) -> None:
    conn = await ChatConnection.open("127.0.0.1", limited.port)
    victim = await conn.register(unique(), PASSWORD)
    for _ in range(3):
        assert (await conn.login(victim, "guess"))["errno"] == LoginErr.BAD_CREDENTIALS
    refused = await conn.login(victim, PASSWORD)  # even the right password, for now
    assert refused["errno"] == LoginErr.TOO_MANY_FAILURES
    assert "try again in" in refused["errmsg"]
    # Another account from the same address is still fine...
    other = await conn.register(unique(), PASSWORD)
    assert (await conn.login(other, PASSWORD))["errno"] == 0
    await conn.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    # ...until the address itself has failed too often.
    for uid in range(2_000_000_000, 2_000_000_003):
        await conn.login(uid, "guess")
    assert (await conn.login(other, PASSWORD))["errno"] == LoginErr.TOO_MANY_FAILURES
    await conn.close()


async def test_group_size_is_capped(limited: Node) -> None:
    conns = [await ChatConnection.open("127.0.0.1", limited.port) for _ in range(3)]
    ids = []
    for c in conns:
        uid = await c.register(unique(), PASSWORD)
        await c.login(uid, PASSWORD)
        ids.append(uid)
    gid = (await conns[0].request({"msgid": 8, "groupname": unique("g")}, MsgId.CREATE_GROUP_ACK))[
        "groupid"
    ]
    await conns[1].request({"msgid": 9, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    err = await conns[2].request({"msgid": 9, "groupid": gid}, MsgId.ERROR)
    assert err["errno"] == ErrCode.GROUP_FULL and "full" in err["errmsg"]
    for c in conns:
        await c.close()


async def test_connections_per_address_are_capped(limited: Node) -> None:
    kept = [await ChatConnection.open("127.0.0.1", limited.port) for _ in range(4)]
    for c in kept:
        assert (await c.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    extra = await ChatConnection.open("127.0.0.1", limited.port)
    await extra.send({"msgid": MsgId.PING})
    err = await extra.recv()
    assert err["errno"] == ErrCode.SERVER_FULL and "address" in err["errmsg"]
    with pytest.raises(ConnectionClosed):
        await extra.recv()
    # Someone at another address is let in meanwhile.
    other = await ChatConnection.open("127.0.0.1", limited.port, local_addr=("127.0.0.2", 0))
    assert (await other.request({"msgid": MsgId.PING}, MsgId.PONG))["msgid"] == MsgId.PONG
    for c in [*kept, extra, other]:
        await c.close()


def test_failure_window_expires() -> None:
    now = [0.0]
    lim = FailureLimiter(2, 10.0, clock=lambda: now[0])
    lim.failed("k")
    assert lim.wait("k") == 0
    lim.failed("k")
    assert lim.wait("k") == 10.0
    now[0] = 10.5
    assert lim.wait("k") == 0


async def _pair(port: int, legacy: bool = False) -> tuple[ChatConnection, ChatConnection, int]:
    """A logged-in sender (in the given dialect) and a modern receiver."""
    sender = await ChatConnection.open("127.0.0.1", port, legacy=legacy)
    receiver = await ChatConnection.open("127.0.0.1", port)
    ids = []
    for c in (sender, receiver):
        uid = await c.register(unique(), PASSWORD)
        assert (await c.login(uid, PASSWORD))["errno"] == 0
        ids.append(uid)
    return sender, receiver, ids[1]


def _chat(toid: int, n: int) -> dict[str, object]:
    return {"msgid": MsgId.ONE_CHAT, "toid": toid, "msg": f"m{n}"}


async def test_a_flooding_user_is_told_to_slow_down(limited: Node) -> None:
    sender, receiver, to = await _pair(limited.port)
    bystander, friend, friend_id = await _pair(limited.port)
    for n in range(BURST + 5):
        await sender.send(_chat(to, n))
    replies = [await sender.recv() for _ in range(BURST + 5)]
    acked = [r for r in replies if r["msgid"] == MsgId.CHAT_ACK]
    refused = [r for r in replies if r["msgid"] == MsgId.ERROR]
    assert len(acked) >= BURST and refused, replies
    assert all(r["errno"] == ErrCode.TOO_FAST and r["re"] == MsgId.ONE_CHAT for r in refused)
    assert "retry in" in refused[0]["errmsg"]
    # Exactly the acknowledged messages arrived, in order; the refused did not.
    got = [(await receiver.expect(MsgId.ONE_CHAT))["msg"] for _ in acked]
    assert got == sorted(got, key=lambda m: int(m[1:])) and len(set(got)) == len(acked)
    # Someone else on the node is not slowed down at all...
    await bystander.request(_chat(friend_id, 0), MsgId.CHAT_ACK)
    assert (await friend.expect(MsgId.ONE_CHAT))["msg"] == "m0"
    # ...and the flooder, having waited as told, may send again (each
    # refusal cost a token too: the wait grew with them).
    told = float(refused[-1]["errmsg"].rsplit("retry in ", 1)[1].split()[0])
    await asyncio.sleep(told + 1 / RATE)
    assert (await sender.request(_chat(to, 99), MsgId.CHAT_ACK))["msgid"] == MsgId.CHAT_ACK
    assert (await receiver.expect(MsgId.ONE_CHAT))["msg"] == "m99"
    # Leaving is never refused.
    await sender.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    for c in (sender, receiver, bystander, friend):
        await c.close()


async def test_requests_before_login_are_metered_too(limited: Node) -> None:
    # Before: 200 PINGs sent at once before login got 200 PONGs, as fast as
    # the node could answer, from each of an address's connections.
    anonymous = await ChatConnection.open("127.0.0.1", limited.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = BURST + BURST // 2  # past it, refused regardless: closed (test_flood_regardless.py)
    await anonymous.send_raw(b'{"msgid":12}\n' * sent)
    replies = [await anonymous.recv() for _ in range(sent)]
    took = loop.time() - started  # a loaded machine spreads them: the bucket refills
    pongs = [r for r in replies if r["msgid"] == MsgId.PONG]
    refused = [r for r in replies if r["msgid"] == MsgId.ERROR]
    assert BURST <= len(pongs) <= BURST + RATE * took + 1, (len(pongs), took)
    assert len(pongs) + len(refused) == sent
    assert all(r["errno"] == ErrCode.TOO_FAST and r["re"] == MsgId.PING for r in refused)
    # Logging in afterwards starts with a full bucket, as before.
    await asyncio.sleep(BURST / RATE)  # the anonymous bucket refills: register, log in
    uid = await anonymous.register(unique(), PASSWORD)
    assert (await anonymous.login(uid, PASSWORD))["errno"] == 0
    for _ in range(BURST):
        assert (await anonymous.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    await anonymous.close()


async def test_unreadable_lines_are_metered_like_requests(limited: Node) -> None:
    # Before: 20,000 lines of garbage on one connection got 20,000 ERROR 100s,
    # as fast as the node could answer; only the log of them was bounded.
    flooder = await ChatConnection.open("127.0.0.1", limited.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await flooder.send_raw(b"not json\n" * 20_000)
    replies = []
    with pytest.raises(ConnectionClosed):
        while True:
            replies.append(await flooder.recv())
    took = loop.time() - started
    *unreadable, last = replies
    assert BURST <= len(unreadable) <= BURST + RATE * took + 1, (len(unreadable), took)
    assert all(r["errno"] == ErrCode.MALFORMED for r in unreadable)
    assert last["errno"] == ErrCode.TOO_FAST, last
    assert last["errmsg"] == (
        "too many unreadable requests (request is not valid JSON in UTF-8): "
        f"at most {RATE:g} a second (bursts of {BURST}); closing"
    )
    # Its address's other connections are metered on their own: an honest
    # client logs in, and its occasional bad line gets the usual answer.
    honest = await ChatConnection.open("127.0.0.1", limited.port)
    uid = await honest.register(unique(), PASSWORD)
    assert (await honest.login(uid, PASSWORD))["errno"] == 0
    await honest.send_raw(b'{"msgid": 6, "toid": "ann", "msg": "hi"}\n')
    err = await honest.expect(MsgId.ERROR)
    assert err["errno"] == ErrCode.INVALID_FIELD and err["re"] == MsgId.ONE_CHAT
    assert (await honest.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    await honest.close()


async def test_an_original_client_over_the_limit_is_slowed_not_dropped(limited: Node) -> None:
    sender, receiver, to = await _pair(limited.port, legacy=True)
    count = BURST + 40  # 40 past the burst: at RATE/s, no less than 0.8 s
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(count):
        await sender.send(_chat(to, n))
    got = [(await receiver.expect(MsgId.ONE_CHAT))["msg"] for _ in range(count)]
    took = loop.time() - started
    assert got == [f"m{n}" for n in range(count)]  # every one, in order
    assert took >= (count - BURST - 1) / RATE
    for c in (sender, receiver):
        await c.close()
