"""Fuzzing the request handlers: whatever a client sends, the service never
raises, and in our dialect every request gets exactly one reply."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterchat.bus.base import Settlement
from clusterchat.bus.local import LocalPresence, NoBus
from clusterchat.protocol import codec
from clusterchat.protocol.messages import PUSHED
from clusterchat.service.chat import ChatService
from clusterchat.service.passwords import Passwords
from clusterchat.service.session import NoReceipts, Session
from clusterchat.storage.sql import SqlStore
from tests.conftest import FAST_HASH

FIELDS = ["msgid", "id", "toid", "friendid", "groupid", "name", "password", "ticket",
          "msg", "time", "groupname", "groupdesc"]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=0, max_value=30),
    st.floats(allow_nan=False),
    st.text(max_size=80),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=4)
requests = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=6).map(
        lambda d: codec.dumps(d).encode()
    ),
    st.fixed_dictionaries(
        {"msgid": st.integers(min_value=0, max_value=25)},
        optional={f: values for f in FIELDS[1:]},
    ).map(lambda d: codec.dumps(d).encode()),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\x00" not in b and b.strip()),
)


class Peer(NoReceipts):
    address = "fuzz"
    limit_key = "fuzz"

    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = []
        self.pushed = 0

    def send(self, data: bytes) -> bool:
        msg = codec.loads(data)
        if msg.get("msgid") in PUSHED:
            self.pushed += 1
        else:
            self.replies.append(msg)
        return True

    def deliver(self, data: bytes, settlement: Settlement | None = None) -> bool:
        return self.send(data)

    def closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def _run(frames: list[bytes]) -> None:
    store = SqlStore("sqlite+aiosqlite://")
    await store.create_schema()
    svc = ChatService(store, Passwords(FAST_HASH), LocalPresence(), NoBus())
    await svc.start()
    try:
        # One logged-in user and one anonymous connection, both fed the same input.
        setup, anon = Peer(), Peer()
        user, stranger = Session(setup), Session(anon)
        for req in (
            b'{"msgid":4,"name":"fuzz","password":"pw"}',
            b'{"msgid":1,"id":1,"password":"pw"}',
        ):
            work = svc.handle(user, codec.read_request(req), legacy=False)
            if work is not None:
                await work
        assert user.uid == 1
        setup.replies.clear()
        for frame in frames:
            for s in (user, stranger):
                work = svc.handle(s, codec.read_request(frame), legacy=False)
                if work is not None:
                    await work
        assert len(setup.replies) == len(frames), setup.replies
        assert len(anon.replies) == len(frames), anon.replies
        for _ in range(3):  # let background work (logouts) finish
            await asyncio.sleep(0)
    finally:
        await svc.shutdown()
        await store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=8))
def test_any_requests_get_one_reply_each_and_never_raise(frames: list[bytes]) -> None:
    asyncio.run(_run(frames))
