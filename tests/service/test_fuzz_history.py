"""HISTORY with arbitrary fields, on a service that keeps history: exactly one
reply each (a page or a specific ERROR), never an exception."""

from __future__ import annotations

import asyncio
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterchat.bus.local import LocalPresence, NoBus
from clusterchat.protocol import codec
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.service.chat import ChatService
from clusterchat.service.passwords import Passwords
from clusterchat.service.session import Session
from clusterchat.storage.sql import SqlStore
from tests.conftest import FAST_HASH
from tests.service.test_fuzz_handlers import Peer, values

ints = st.one_of(
    st.integers(min_value=-3, max_value=3), st.integers(min_value=-(2**70), max_value=2**70)
)
field = st.one_of(ints, values)
histories = st.fixed_dictionaries(
    {"msgid": st.just(int(MsgId.HISTORY))},
    optional={"userid": field, "groupid": field, "before": field, "limit": field},
).map(lambda d: codec.dumps(d).encode())
chats = st.sampled_from(
    [b'{"msgid":6,"toid":1,"msg":"to me"}', b'{"msgid":10,"groupid":1,"msg":"to us"}']
)
EXPECTED = {
    int(ErrCode.INVALID_FIELD),
    int(ErrCode.HISTORY_TARGET),
    int(ErrCode.HISTORY_NOT_MEMBER),
    int(ErrCode.NO_SUCH_USER),
    int(ErrCode.NO_SUCH_GROUP),
}


async def _run(frames: list[bytes]) -> None:
    # A file, not the in-memory database: its one shared connection would mix
    # the history writer's transactions with the requests'.
    with tempfile.TemporaryDirectory() as tmp:
        await _run_on(f"sqlite+aiosqlite:///{tmp}/h.db", frames)


async def _run_on(url: str, frames: list[bytes]) -> None:
    store = SqlStore(url)
    await store.create_schema()
    svc = ChatService(store, Passwords(FAST_HASH), LocalPresence(), NoBus(), history_days=1)
    await svc.start()
    try:
        peer = Peer()
        user = Session(peer)
        for req in (
            b'{"msgid":4,"name":"fuzz","password":"pw"}',
            b'{"msgid":1,"id":1,"password":"pw"}',
            b'{"msgid":8,"groupname":"g"}',
        ):
            work = svc.handle(user, codec.read_request(req), legacy=False)
            if work is not None:
                await work
        assert user.uid == 1, peer.replies
        peer.replies.clear()
        for frame in frames:
            work = svc.handle(user, codec.read_request(frame), legacy=False)
            if work is not None:
                await work
        assert len(peer.replies) == len(frames), peer.replies
        for reply in peer.replies:
            if reply["msgid"] == MsgId.ERROR:
                assert reply["errno"] in EXPECTED or reply["re"] != MsgId.HISTORY, reply
            elif reply["msgid"] == MsgId.HISTORY_PAGE:
                assert isinstance(reply["messages"], list) and isinstance(reply["more"], bool)
    finally:
        await svc.shutdown()
        await store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(histories, chats), min_size=1, max_size=8))
def test_any_history_request_gets_one_reply_and_never_raises(frames: list[bytes]) -> None:
    asyncio.run(_run(frames))
