"""The service against a real SQLite store, with peers we can cut at will."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Container
from pathlib import Path
from typing import Any

import pytest

from clusterchat.bus.base import Settlement
from clusterchat.bus.local import LocalPresence, NoBus
from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from clusterchat.service.chat import ChatService
from clusterchat.service.passwords import Passwords
from clusterchat.service.session import NoReceipts, Session
from clusterchat.storage.base import LoginView
from clusterchat.storage.sql import SqlStore
from tests.conftest import FAST_HASH


class Peer(NoReceipts):
    """A connection whose far end can vanish between two writes."""

    address = "test"
    limit_key = "test"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.open = True

    def send(self, data: bytes) -> bool:
        if not self.open:
            return False
        self.sent.append(codec.loads(data))
        return True

    def deliver(self, data: bytes, settlement: Settlement | None = None) -> bool:
        return self.send(data)

    def closing(self) -> bool:
        return not self.open

    def close(self) -> None:
        self.open = False


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ChatService]:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'svc.db'}")
    await store.create_schema()
    svc = ChatService(store, Passwords(FAST_HASH), LocalPresence(), NoBus())
    await svc.start()
    yield svc
    await svc.shutdown()
    await store.close()


async def request(svc: ChatService, s: Session, doc: dict[str, object]) -> None:
    work = svc.handle(s, codec.read_request(codec.dumps(doc).encode()), legacy=False)
    if work is not None:
        await work


async def login(svc: ChatService, name: str) -> tuple[Session, Peer]:
    peer = Peer()
    s = Session(peer)
    await request(svc, s, {"msgid": 4, "name": name, "password": "pw"})
    uid = peer.sent[-1]["id"]
    await request(svc, s, {"msgid": 1, "id": uid, "password": "pw"})
    assert peer.sent[-1]["errno"] == 0
    return s, peer


async def test_message_to_a_user_whose_connection_is_closing_is_stored(
    service: ChatService,
) -> None:
    alice, alice_peer = await login(service, "alice")
    bob, bob_peer = await login(service, "bob")
    bob_peer.close()  # the socket is gone; connection_lost has not run yet
    await request(service, alice, {"msgid": 6, "toid": bob.uid, "msg": "are you there?"})
    assert alice_peer.sent[-1] == {
        **alice_peer.sent[-1],
        "msgid": MsgId.CHAT_ACK,
        "status": "stored",
    }
    bob_id = bob.uid
    service.disconnected(bob)
    for task in list(service._background):  # the disconnect's bookkeeping
        await task
    peer = Peer()
    await request(service, Session(peer), {"msgid": 1, "id": bob_id, "password": "pw"})
    ack = peer.sent[-1]
    assert [json.loads(m)["msg"] for m in ack["offlinemsg"]] == ["are you there?"]


async def test_offline_messages_stay_stored_if_the_login_reply_cannot_be_written(
    service: ChatService,
) -> None:
    alice, _ = await login(service, "alice")
    bob, _ = await login(service, "bob")
    bob_id = bob.uid
    await request(service, bob, {"msgid": 3})
    await request(service, alice, {"msgid": 6, "toid": bob_id, "msg": "keep me"})

    gone = Peer()
    gone.open = False
    await request(service, Session(gone), {"msgid": 1, "id": bob_id, "password": "pw"})
    assert gone.sent == []
    for task in list(service._background):
        await task

    back = Peer()
    await request(service, Session(back), {"msgid": 1, "id": bob_id, "password": "pw"})
    ack = back.sent[-1]
    assert ack["errno"] == 0
    assert [json.loads(m)["msg"] for m in ack["offlinemsg"]] == ["keep me"]


async def test_messages_arriving_during_login_follow_the_offline_ones(
    service: ChatService,
) -> None:
    alice, _ = await login(service, "alice")
    bob, _ = await login(service, "bob")
    bob_id = bob.uid
    await request(service, bob, {"msgid": 3})
    await request(service, alice, {"msgid": 6, "toid": bob_id, "msg": "1"})

    peer = Peer()
    frame = codec.dumps({"msgid": 1, "id": bob_id, "password": "pw"}).encode()
    work = service.handle(Session(peer), codec.read_request(frame), legacy=False)
    assert work is not None
    task = asyncio.ensure_future(work)
    async with asyncio.timeout(5):
        # Yield until the login has registered bob but not yet replied.
        while bob_id not in service.sessions:  # noqa: ASYNC110
            await asyncio.sleep(0)
    await request(service, alice, {"msgid": 6, "toid": bob_id, "msg": "2"})
    await task
    ack, live = peer.sent[0], peer.sent[1]
    assert [json.loads(m)["msg"] for m in ack["offlinemsg"]] == ["1"]
    assert live["msg"] == "2"


async def test_message_stored_for_a_user_who_is_online_is_delivered_at_once(
    service: ChatService,
) -> None:
    """What another node stores while it missed a login reaches the user now."""
    bob, bob_peer = await login(service, "bob")
    payload = codec.encode({"msgid": 6, "id": 99, "name": "far", "toid": bob.uid, "msg": "late"})
    await service.store_offline([bob.uid], payload)
    for task in list(service._background):
        await task
    assert bob_peer.sent[-1]["msg"] == "late"
    assert await service.store.offline(bob.uid) == []


async def test_message_stored_while_the_login_reads_is_delivered_after_it(
    service: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that commits just after the login's read (another node's,
    say) must not wait for the next login. The soak saw this as messages
    arriving a minute and a half late."""
    bob, bob_peer = await login(service, "bob")
    uid = bob.uid
    await request(service, bob, {"msgid": 3})
    read = service.store.open_session

    async def read_then_store(
        uid: int, digest: str | None, known: Container[int] = frozenset()
    ) -> LoginView:
        view = await read(uid, digest, known)
        payload = codec.encode({"msgid": 6, "id": 99, "name": "far", "toid": uid, "msg": "x"})
        await service.store_offline([uid], payload)
        return view

    monkeypatch.setattr(service.store, "open_session", read_then_store)
    await request(service, bob, {"msgid": 1, "id": uid, "password": "pw"})
    for task in list(service._background):
        await task
    assert bob_peer.sent[-1].get("msg") == "x", bob_peer.sent[-2:]
    assert await service.store.offline(uid) == []


def test_a_message_held_while_a_login_is_answered_keeps_its_settlement() -> None:
    """Whether the login asked for receipts is known only late in the login
    (after the session is registered): a message from another node's batch
    held meanwhile keeps the batch unsettled until it is delivered with it
    or stored (found by review: held then, it settled at once, and the
    receipts window that took it was the only copy)."""
    s = Session(Peer())
    assert s.race.login_started() and s.race.claimed()
    settlement = Settlement()
    assert s.deliver(b"held\n", settlement)
    assert settlement.held
    assert s.race.reply_sent() == [b"held\n"]
    assert s.race.take_settlements() == [(0, settlement)]


async def test_a_client_refused_receipts_gets_what_is_stored_while_it_is_online(
    service: ChatService,
) -> None:
    """A login asking for receipts on a peer that cannot have them (False
    from start_receipts: here a transport without them; on a socket, one
    that ended meanwhile) goes on without: the offline delivery must not
    take the receipts path (its rows waiting for receipts that never come)."""
    peer = Peer()
    s = Session(peer)
    await request(service, s, {"msgid": 4, "name": "carol", "password": "pw"})
    uid = peer.sent[-1]["id"]
    await request(service, s, {"msgid": 1, "id": uid, "password": "pw", "receipts": True})
    assert peer.sent[-1]["errno"] == 0 and not s.receipts
    msg = codec.encode_text(json.dumps({"msgid": 6, "mid": "x-1", "msg": "while online"}))
    await service.store_offline([uid], msg)  # a store that raced the login: nudged
    async with asyncio.timeout(10):
        while not any(m.get("msg") == "while online" for m in peer.sent):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
