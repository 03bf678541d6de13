"""Nothing a client sends crashes the node, stalls it, or reaches another user."""

from __future__ import annotations

import socket

import pytest

from clusterchat.client.connection import ConnectionClosed
from clusterchat.protocol.messages import ErrCode, MsgId
from tests.conftest import PASSWORD, Connect, UserFactory

BAD_FRAMES: list[tuple[bytes, ErrCode]] = [
    (b"not json", ErrCode.MALFORMED),
    (b"{", ErrCode.MALFORMED),
    (b"[1,2,3]", ErrCode.MALFORMED),
    (b'"a string"', ErrCode.MALFORMED),
    (b"42", ErrCode.MALFORMED),
    (b"{}", ErrCode.INVALID_FIELD),
    (b'{"msgid":"6"}', ErrCode.INVALID_FIELD),
    (b'{"msgid":null}', ErrCode.INVALID_FIELD),
    (b'{"msgid":99}', ErrCode.UNKNOWN_MSGID),
    (b'{"msgid":-1}', ErrCode.UNKNOWN_MSGID),
    (b'{"msgid":2}', ErrCode.UNKNOWN_MSGID),  # a reply type is not a request
    (b'{"msgid":6,"msg":"x"}', ErrCode.INVALID_FIELD),
    (b'{"msgid":6,"toid":"7","msg":"x"}', ErrCode.INVALID_FIELD),
    (b'{"msgid":6,"toid":null,"msg":"x"}', ErrCode.INVALID_FIELD),
    (b'{"msgid":6,"toid":1e400,"msg":"x"}', ErrCode.INVALID_FIELD),
    (b'{"msgid":6,"toid":123456789012345678901234567890,"msg":"x"}', ErrCode.INVALID_FIELD),
    (b'{"msgid":6,"toid":-5,"msg":"x"}', ErrCode.INVALID_FIELD),
    (b'{"msgid":6,"toid":1,"msg":["x"]}', ErrCode.INVALID_FIELD),
    (b'{"msgid":7,"friendid":true}', ErrCode.INVALID_FIELD),
    (b'{"msgid":8,"groupname":"' + b"g" * 51 + b'"}', ErrCode.INVALID_FIELD),
    (b'{"msgid":8,"groupname":""}', ErrCode.INVALID_FIELD),
    (b'{"msgid":8,"groupname":"g","groupdesc":"' + b"d" * 201 + b'"}', ErrCode.INVALID_FIELD),
    (b'{"msgid":9,"groupid":{}}', ErrCode.INVALID_FIELD),
    (b'{"msgid":10,"groupid":1}', ErrCode.INVALID_FIELD),
    (b'{"msgid":4,"name":"' + b"n" * 51 + b'","password":"p"}', ErrCode.INVALID_FIELD),
    (b"\xff\xfe\xfd", ErrCode.MALFORMED),
]


@pytest.mark.parametrize(
    ("frame", "code"), BAD_FRAMES, ids=[f[0][:40].decode("latin-1") for f in BAD_FRAMES]
)
async def test_bad_request_gets_a_specific_error_and_the_connection_stays_usable(
    user: UserFactory, frame: bytes, code: ErrCode
) -> None:
    alice, bob = await user(), await user()
    await alice.conn.send_raw(frame + b"\n")
    err = await alice.conn.expect(MsgId.ERROR)
    assert err["errno"] == code, err
    assert err["errmsg"]
    # Still usable, and nobody else was touched.
    await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": "still here"})
    assert (await bob.conn.expect(MsgId.ONE_CHAT))["msg"] == "still here"


async def test_oversized_frame_gets_an_error_then_close(
    user: UserFactory, connect: Connect
) -> None:
    bob = await user()
    conn = await connect()
    await conn.send_raw(b'{"msgid":12}\n' + b"x" * (64 * 1024 + 1))
    assert (await conn.recv())["msgid"] == MsgId.PONG  # served what came before it
    err = await conn.expect(MsgId.ERROR)
    assert err["errno"] == ErrCode.FRAME_TOO_LARGE
    with pytest.raises(ConnectionClosed):
        await conn.recv()
    assert await bob.conn.request({"msgid": MsgId.PING}, MsgId.PONG)


async def test_long_text_below_the_frame_limit_is_delivered(user: UserFactory) -> None:
    alice, bob = await user(), await user()
    text = "é" * 30_000  # 60 KB of UTF-8
    await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": text})
    assert (await bob.conn.expect(MsgId.ONE_CHAT))["msg"] == text


async def test_garbage_storm_leaves_other_users_unaffected(
    user: UserFactory, connect: Connect
) -> None:
    alice, bob = await user(), await user()
    noisy = await connect()
    await noisy.send_raw(b"".join(f[0] + b"\n" for f in BAD_FRAMES) * 20)
    replies = []
    with pytest.raises(ConnectionClosed):  # past the flood limit (test_limits.py)
        while True:
            replies.append(await noisy.recv())
    assert all(r["msgid"] == MsgId.ERROR for r in replies)
    assert replies[-1]["errno"] == ErrCode.TOO_FAST and "closing" in replies[-1]["errmsg"]
    await alice.conn.send({"msgid": 6, "toid": bob.id, "msg": "fine"})
    assert (await bob.conn.expect(MsgId.ONE_CHAT))["msg"] == "fine"


async def test_sql_injection_is_just_text(user: UserFactory, connect: Connect) -> None:
    evil = "x'); DROP TABLE user; --"
    conn = await connect()
    uid = await conn.register(evil[:50], PASSWORD)
    ack = await conn.login(uid, PASSWORD)
    assert ack["name"] == evil[:50]
    alice = await user()
    assert alice.login_ack["errno"] == 0


async def test_request_split_into_single_bytes_is_served(user: UserFactory) -> None:
    alice, bob = await user(), await user()
    sock = alice.conn._writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = f'{{"msgid":6,"toid":{bob.id},"msg":"drip"}}\n'.encode()
    for i in range(len(frame)):
        await alice.conn.send_raw(frame[i : i + 1])
    assert (await bob.conn.expect(MsgId.ONE_CHAT))["msg"] == "drip"


async def test_many_requests_in_one_write_with_mixed_terminators(user: UserFactory) -> None:
    alice, bob = await user(), await user()
    batch = b"".join(
        f'{{"msgid":6,"toid":{bob.id},"msg":"{i}"}}'.encode() + (b"\n" if i % 2 else b"\x00")
        for i in range(50)
    )
    await alice.conn.send_raw(batch)
    assert [(await bob.conn.expect(MsgId.ONE_CHAT))["msg"] for _ in range(50)] == [
        str(i) for i in range(50)
    ]
