# ruff: noqa: E501  (recorded replies, one a line)
"""What each dialect sees, byte for byte, for one script of requests.

The same script runs twice: both users on our dialect, then both on the
original's (NUL). The expected bytes were recorded from the server before
the legacy decisions moved into one reply filter (protocol/dialect.py), so
any change in what either dialect is sent (a reply, a field, key order, an
event) fails here. Varying values (times, tickets) are normalised first.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clusterchat.bus.base import Settlement
from clusterchat.bus.local import LocalPresence, NoBus
from clusterchat.protocol import codec
from clusterchat.service.chat import ChatService
from clusterchat.service.passwords import Passwords
from clusterchat.service.session import NoReceipts, Session
from clusterchat.storage.sql import SqlStore
from tests.conftest import FAST_HASH


class Peer(NoReceipts):
    """Records every write, raw, as ``send`` (a reply) or ``deliver`` (a push)."""

    address = "dialect"
    limit_key = "dialect"

    def __init__(self) -> None:
        self.wire: list[str] = []
        self.closed = False

    def send(self, data: bytes) -> bool:
        self.wire.append("send " + _normal(data))
        return True

    def deliver(self, data: bytes, settlement: Settlement | None = None) -> bool:
        self.wire.append("deliver " + _normal(data))
        return True

    def closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _normal(data: bytes) -> str:
    text = data.decode()
    text = re.sub(r'(\\?"ts\\?":)\d+', r"\g<1>T", text)
    text = re.sub(r'("ticket":)"[^"]+"', r'\1"K"', text)
    return text


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ChatService]:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'dialect.db'}")
    await store.create_schema()
    svc = ChatService(
        store, Passwords(FAST_HASH), LocalPresence(), NoBus(), node_id="n1", history_days=1
    )
    await svc.start()
    yield svc
    await svc.shutdown()
    await store.close()


async def _send(svc: ChatService, s: Session, frame: bytes, legacy: bool) -> None:
    work = svc.handle(s, codec.read_request(frame), legacy)
    if work is not None:
        await work


async def _settle(svc: ChatService) -> None:
    for _ in range(5):
        for task in list(svc._background):
            await task
        await asyncio.sleep(0)


SCRIPT: list[tuple[str, bytes]] = [
    # Before logging in.
    ("a", b'{"msgid":12}'),
    ("a", b'{"msgid":19}'),
    ("a", b"garbage"),
    ("a", b'{"msgid":77}'),
    ("a", b'{"msgid":1,"id":"seven","password":"p"}'),
    ("a", b'{"msgid":4,"name":7,"password":"p"}'),
    ("a", b'{"msgid":1,"id":1}'),
    ("a", b'{"msgid":1,"id":1,"password":"wrong"}'),
    ("a", b'{"msgid":4,"name":" ","password":"pw"}'),
    ("a", b'{"msgid":4,"name":"alice","password":"pw"}'),
    ("b", b'{"msgid":4,"name":"bob","password":"pw"}'),
    ("c", b'{"msgid":4,"name":"carol","password":"pw"}'),
    ("a", b'{"msgid":4,"name":"alice","password":"pw"}'),
    ("a", b'{"msgid":1,"id":1,"password":"pw"}'),
    ("b", b'{"msgid":1,"id":2,"password":"pw"}'),
    ("a", b'{"msgid":1,"id":1,"password":"pw"}'),
    ("a", b'{"msgid":12}'),
    # Chats: delivered, stored, to nobody, too long a time.
    ("a", b'{"msgid":6,"toid":2,"msg":"hi bob","time":"t1"}'),
    ("a", b'{"msgid":6,"toid":3,"msg":"hi carol"}'),
    ("a", b'{"msgid":6,"toid":999,"msg":"nobody"}'),
    ("a", b'{"msgid":6,"toid":2,"msg":"x","time":"' + b"t" * 65 + b'"}'),
    # Friends.
    ("a", b'{"msgid":7,"friendid":2}'),
    ("a", b'{"msgid":7,"friendid":2}'),
    ("a", b'{"msgid":7,"friendid":1}'),
    ("a", b'{"msgid":7,"friendid":999}'),
    ("a", b'{"msgid":19}'),
    # Groups.
    ("a", b'{"msgid":8,"groupname":"g1","groupdesc":"d"}'),
    ("a", b'{"msgid":8,"groupname":"g1","groupdesc":"d"}'),
    ("a", b'{"msgid":8,"groupname":" "}'),
    ("b", b'{"msgid":9,"groupid":1}'),
    ("b", b'{"msgid":9,"groupid":1}'),
    ("b", b'{"msgid":9,"groupid":999}'),
    ("a", b'{"msgid":10,"groupid":1,"msg":"all of you","time":"t2"}'),
    ("a", b'{"msgid":10,"groupid":999,"msg":"x"}'),
    ("c", b'{"msgid":1,"id":3,"password":"pw"}'),
    ("c", b'{"msgid":10,"groupid":1,"msg":"let me in"}'),
    ("a", b'{"msgid":21}'),
    ("a", b'{"msgid":37,"groupid":1,"userid":2,"role":"admin"}'),
    ("a", b'{"msgid":38,"groupid":1,"groupdesc":"new"}'),
    ("a", b'{"msgid":44,"groupid":1,"userid":3}'),
    ("c", b'{"msgid":45}'),
    ("a", b'{"msgid":36,"groupid":1,"userid":2}'),
    ("a", b'{"msgid":39,"groupid":1,"userid":2}'),
    ("a", b'{"msgid":36,"groupid":1,"userid":3}'),
    # History.
    ("a", b'{"msgid":60,"userid":2}'),
    ("a", b'{"msgid":60,"groupid":1}'),
    ("a", b'{"msgid":60}'),
    ("a", b'{"msgid":60,"userid":999}'),
    # Managing friends and blocks.
    ("a", b'{"msgid":33}'),
    ("a", b'{"msgid":31,"userid":2}'),
    ("a", b'{"msgid":31,"userid":1}'),
    ("b", b'{"msgid":6,"toid":1,"msg":"blocked"}'),
    ("a", b'{"msgid":33}'),
    ("a", b'{"msgid":32,"userid":2}'),
    ("a", b'{"msgid":30,"friendid":2}'),
    ("a", b'{"msgid":30,"friendid":1}'),
    ("a", b'{"msgid":35,"groupid":1}'),
    ("b", b'{"msgid":40,"groupid":1}'),
    # Receipts, logging out, and back.
    ("a", b'{"msgid":63,"seq":1}'),
    ("a", b'{"msgid":3}'),
    ("a", b'{"msgid":6,"toid":2,"msg":"gone"}'),
    ("b", b'{"msgid":6,"toid":1,"msg":"while away"}'),
    ("a", b'{"msgid":1,"id":1,"password":"pw"}'),
]


async def _run(svc: ChatService, legacy: bool) -> dict[str, list[str]]:
    peers = {k: Peer() for k in "abc"}
    sessions = {k: Session(p) for k, p in peers.items()}
    for who, frame in SCRIPT:
        await _send(svc, sessions[who], frame, legacy)
        await _settle(svc)
    svc.frame_too_large(sessions["a"], 100)
    svc.internal_error(sessions["a"], b'{"msgid":6}')
    svc.kicked(2)
    svc.displaced(1)
    await _settle(svc)
    return {k: p.wire for k, p in peers.items()}


async def test_our_dialect_sees_exactly_these_bytes(service: ChatService) -> None:
    got = await _run(service, legacy=False)
    assert got == MODERN
    assert dict(service.counts.refusals) == MODERN_REFUSALS


async def test_the_original_dialect_sees_exactly_these_bytes(service: ChatService) -> None:
    got = await _run(service, legacy=True)
    assert got == LEGACY
    assert dict(service.counts.refusals) == LEGACY_REFUSALS


MODERN: dict[str, list[str]] = {
    "a": [
        'send {"msgid":13,"node":"n1"}\n',
        'send {"errmsg":"log in first","errno":110,"msgid":11,"re":19}\n',
        'send {"errmsg":"request is not valid JSON in UTF-8","errno":100,"msgid":11,"re":null}\n',
        'send {"errmsg":"unknown msgid 77","errno":101,"msgid":11,"re":77}\n',
        'send {"errmsg":"field \'id\': Expected `int`, got `str`","errno":102,"msgid":11,"re":1}\n',
        'send {"errmsg":"field \'name\': Expected `str`, got '
        '`int`","errno":102,"msgid":11,"re":4}\n',
        'send {"errmsg":"give a password","errno":1,"msgid":2}\n',
        'send {"errmsg":"wrong id or password","errno":1,"msgid":2}\n',
        'send {"errmsg":"the name is empty or only spaces","errno":1,"msgid":5}\n',
        'send {"errno":0,"id":1,"msgid":5}\n',
        'send {"errmsg":"the name \'alice\' is taken","errno":1,"msgid":5}\n',
        'send {"errno":0,"id":1,"maxframe":65536,"msgid":2,"name":"alice","ticket":"K"}\n',
        'send {"errmsg":"already logged in here; log out first","errno":3,"msgid":2}\n',
        'send {"msgid":13,"node":"n1"}\n',
        'send {"errno":0,"mid":"n1-1","msgid":18,"status":"delivered","ts":T}\n',
        'send {"errno":0,"mid":"n1-2","msgid":18,"status":"stored","ts":T}\n',
        'send {"errmsg":"no user has id 999","errno":120,"msgid":11,"re":6}\n',
        'send {"errmsg":"field \'time\': Expected `str` of length <= '
        '64","errno":102,"msgid":11,"re":6}\n',
        'send {"errno":0,"friend":{"id":2,"name":"bob","state":"online"},"msgid":14}\n',
        'send {"errmsg":"you are already friends with 2","errno":122,"msgid":11,"re":7}\n',
        'send {"errmsg":"you cannot befriend yourself","errno":121,"msgid":11,"re":7}\n',
        'send {"errmsg":"no user has id 999","errno":120,"msgid":11,"re":7}\n',
        'send {"errno":0,"friends":[{"id":2,"name":"bob","state":"online"}],"msgid":20}\n',
        'send {"errno":0,"groupdesc":"d","groupid":1,"groupname":"g1","msgid":15}\n',
        'send {"errmsg":"a group named \'g1\' already exists","errno":131,"msgid":11,"re":8}\n',
        'send {"errmsg":"field \'groupname\': the group name is empty or only '
        'spaces","errno":102,"msgid":11,"re":8}\n',
        'send {"errno":0,"mid":"n1-4","msgid":18,"status":"sent","ts":T}\n',
        'send {"errmsg":"no group has id 999","errno":130,"msgid":11,"re":10}\n',
        "send "
        '{"errno":0,"groups":[{"groupdesc":"d","groupname":"g1","id":1,"users":[{"id":1,"name":"alice","role":"creator","state":"online"},{"id":2,"name":"bob","role":"normal","state":"online"}]}],"msgid":22}\n',
        'send {"errno":0,"groupid":1,"msgid":41,"re":37}\n',
        'send {"errno":0,"groupid":1,"msgid":41,"re":38}\n',
        'send {"errno":0,"groupid":1,"msgid":41,"re":44,"userid":3}\n',
        'send {"errno":0,"groupid":1,"msgid":41,"re":36}\n',
        'send {"errmsg":"user 2 is not a member of group 1","errno":127,"msgid":11,"re":39}\n',
        'send {"errmsg":"user 3 is not a member of group 1","errno":127,"msgid":11,"re":36}\n',
        'send {"errno":0,"messages":[{"from":1,"id":1024,"mid":"n1-1","msg":"hi '
        'bob","name":"alice","ts":T}],"more":false,"msgid":61,"name":"bob","userid":2}\n',
        'send {"errno":0,"groupid":1,"messages":[{"from":1,"id":3072,"mid":"n1-4","msg":"all '
        'of you","name":"alice","ts":T}],"more":false,"msgid":61}\n',
        'send {"errmsg":"give exactly one of userid and groupid","errno":182,"msgid":11,"re":60}\n',
        'send {"errmsg":"no user has id 999","errno":120,"msgid":11,"re":60}\n',
        'send {"blocked":[],"errno":0,"msgid":34}\n',
        'send {"errno":0,"msgid":41,"name":"bob","re":31,"userid":2}\n',
        'send {"errmsg":"you cannot block yourself","errno":125,"msgid":11,"re":31}\n',
        'send {"blocked":[{"id":2,"name":"bob"}],"errno":0,"msgid":34}\n',
        'send {"errno":0,"msgid":41,"re":32,"userid":2}\n',
        'send {"errno":0,"friendid":2,"msgid":41,"re":30}\n',
        'send {"errmsg":"you cannot unfriend yourself","errno":125,"msgid":11,"re":30}\n',
        'send {"errno":0,"groupid":1,"msgid":41,"re":35}\n',
        'send {"errmsg":"receipts are off on this connection; ask for them in '
        'LOGIN","errno":188,"msgid":11,"re":63}\n',
        'send {"errno":0,"msgid":17}\n',
        'send {"errmsg":"log in first","errno":110,"msgid":11,"re":6}\n',
        "send "
        '{"errno":0,"id":1,"maxframe":65536,"msgid":2,"name":"alice","offlinemsg":["{\\"id\\":2,\\"mid\\":\\"n1-5\\",\\"msg\\":\\"while '
        'away\\",\\"msgid\\":6,\\"name\\":\\"bob\\",\\"time\\":\\"\\",\\"toid\\":1,\\"ts\\":T}"],"ticket":"K"}\n',
        'send {"errmsg":"request exceeds the 100-byte frame limit; closing the '
        'connection","errno":103,"msgid":11,"re":null}\n',
        'send {"errmsg":"internal error","errno":199,"msgid":11,"re":null}\n',
        'send {"event":"displaced","msgid":23,"text":"you logged in somewhere else; this session has ended"}\n',
    ],
    "b": [
        'send {"errno":0,"id":2,"msgid":5}\n',
        'send {"errno":0,"id":2,"maxframe":65536,"msgid":2,"name":"bob","ticket":"K"}\n',
        'deliver {"id":1,"mid":"n1-1","msg":"hi '
        'bob","msgid":6,"name":"alice","time":"t1","toid":2,"ts":T}\n',
        'deliver {"friend":{"id":1,"name":"alice","state":"online"},"msgid":24}\n',
        'send {"errno":0,"groupid":1,"groupname":"g1","msgid":16}\n',
        'send {"errmsg":"you are already a member of group 1","errno":133,"msgid":11,"re":9}\n',
        'send {"errmsg":"no group has id 999","errno":130,"msgid":11,"re":9}\n',
        'deliver {"groupid":1,"id":1,"mid":"n1-4","msg":"all of '
        'you","msgid":10,"name":"alice","time":"t2","ts":T}\n',
        "deliver "
        '{"by":1,"byname":"alice","event":"role","groupid":1,"id":2,"msgid":43,"name":"bob","role":"admin"}\n',
        "deliver "
        '{"by":1,"byname":"alice","event":"edited","groupdesc":"new","groupid":1,"groupname":"g1","inviteonly":false,"msgid":43}\n',
        "deliver "
        '{"by":1,"byname":"alice","event":"removed","groupid":1,"id":2,"msgid":43,"name":"bob"}\n',
        'send {"errmsg":"user 1 does not accept this from you","errno":123,"msgid":11,"re":6}\n',
        'deliver {"event":"unfriended","id":1,"msgid":42,"name":"alice"}\n',
        'send {"errmsg":"no group has id 1","errno":130,"msgid":11,"re":40}\n',
        'send {"errno":0,"mid":"n1-5","msgid":18,"status":"stored","ts":T}\n',
        'send {"event":"kicked","msgid":23,"text":"an operator ended this session"}\n',
    ],
    "c": [
        'send {"errno":0,"id":3,"msgid":5}\n',
        "send "
        '{"errno":0,"id":3,"maxframe":65536,"msgid":2,"name":"carol","offlinemsg":["{\\"id\\":1,\\"mid\\":\\"n1-2\\",\\"msg\\":\\"hi '
        'carol\\",\\"msgid\\":6,\\"name\\":\\"alice\\",\\"time\\":\\"\\",\\"toid\\":3,\\"ts\\":T}"],"ticket":"K"}\n',
        'send {"errmsg":"you are not in this group","errno":132,"msgid":11,"re":10}\n',
        "deliver "
        '{"by":1,"byname":"alice","event":"invited","groupdesc":"new","groupid":1,"groupname":"g1","id":3,"msgid":43}\n',
        "send "
        '{"errno":0,"invites":[{"by":1,"byname":"alice","groupdesc":"new","groupid":1,"groupname":"g1"}],"msgid":46}\n',
    ],
}

MODERN_REFUSALS: dict[tuple[str, int], int] = {
    ("error", 100): 1,
    ("error", 101): 1,
    ("error", 102): 4,
    ("error", 110): 2,
    ("error", 120): 3,
    ("error", 121): 1,
    ("error", 122): 1,
    ("error", 123): 1,
    ("error", 125): 2,
    ("error", 127): 2,
    ("error", 130): 3,
    ("error", 131): 1,
    ("error", 132): 1,
    ("error", 133): 1,
    ("error", 182): 1,
    ("error", 188): 1,
    ("login", 1): 2,
    ("login", 3): 1,
    ("register", 1): 2,
}

LEGACY: dict[str, list[str]] = {
    "a": [
        'send {"errmsg":"field \'id\': Expected `int`, got `str`","errno":1,"msgid":2}\n',
        'send {"errmsg":"field \'name\': Expected `str`, got `int`","errno":1,"msgid":5}\n',
        'send {"errmsg":"give a password","errno":1,"msgid":2}\n',
        'send {"errmsg":"wrong id or password","errno":1,"msgid":2}\n',
        'send {"errmsg":"the name is empty or only spaces","errno":1,"msgid":5}\n',
        'send {"errno":0,"id":1,"msgid":5}\n',
        'send {"errmsg":"the name \'alice\' is taken","errno":1,"msgid":5}\n',
        'send {"errno":0,"id":1,"msgid":2,"name":"alice"}\n',
        'send {"errmsg":"already logged in here; log out first","errno":3,"msgid":2}\n',
        "send "
        '{"errno":0,"id":1,"msgid":2,"name":"alice","offlinemsg":["{\\"id\\":2,\\"mid\\":\\"n1-5\\",\\"msg\\":\\"while '
        'away\\",\\"msgid\\":6,\\"name\\":\\"bob\\",\\"time\\":\\"\\",\\"toid\\":1,\\"ts\\":T}"]}\n',
    ],
    "b": [
        'send {"errno":0,"id":2,"msgid":5}\n',
        'send {"errno":0,"id":2,"msgid":2,"name":"bob"}\n',
        'deliver {"id":1,"mid":"n1-1","msg":"hi '
        'bob","msgid":6,"name":"alice","time":"t1","toid":2,"ts":T}\n',
        'deliver {"groupid":1,"id":1,"mid":"n1-4","msg":"all of '
        'you","msgid":10,"name":"alice","time":"t2","ts":T}\n',
    ],
    "c": [
        'send {"errno":0,"id":3,"msgid":5}\n',
        "send "
        '{"errno":0,"id":3,"msgid":2,"name":"carol","offlinemsg":["{\\"id\\":1,\\"mid\\":\\"n1-2\\",\\"msg\\":\\"hi '
        'carol\\",\\"msgid\\":6,\\"name\\":\\"alice\\",\\"time\\":\\"\\",\\"toid\\":3,\\"ts\\":T}"]}\n',
    ],
}

LEGACY_REFUSALS: dict[tuple[str, int], int] = {
    ("error", 100): 1,
    ("error", 101): 5,
    ("error", 102): 2,
    ("error", 110): 2,
    ("error", 120): 2,
    ("error", 121): 1,
    ("error", 122): 1,
    ("error", 123): 1,
    ("error", 125): 2,
    ("error", 127): 2,
    ("error", 130): 3,
    ("error", 131): 1,
    ("error", 132): 1,
    ("error", 133): 1,
    ("error", 188): 1,
    ("login", 1): 3,
    ("login", 3): 1,
    ("register", 1): 3,
}
