"""atheris (libFuzzer) targets for the parts a client's bytes reach first.

- ``framing``: any byte stream, cut anywhere, gives the same frames as when
  fed whole; an oversized frame is refused the same way however it arrives.
- ``requests``: any frame decodes to a typed request or is refused with
  ``BadRequest``; nothing else escapes.
- ``service``: any sequence of frames, sent by a logged-in user and by an
  anonymous connection to a real ``ChatService`` (SQLite in memory), gets
  exactly one reply per request and never raises.

Run with ``fuzz/run.py`` (which instruments the package for coverage).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from clusterchat.bus.base import Settlement
from clusterchat.bus.local import LocalPresence, NoBus
from clusterchat.protocol import codec
from clusterchat.protocol.codec import BadRequest
from clusterchat.protocol.framing import BLANK_RUN_FRAME, FrameDecoder, FrameTooLarge
from clusterchat.protocol.messages import PUSHED
from clusterchat.service.chat import ChatService
from clusterchat.service.limits import Limits
from clusterchat.service.passwords import HashCost, Passwords
from clusterchat.service.session import NoReceipts, Session
from clusterchat.storage.sql import SqlStore

LIMIT = 256


def _frames(data: bytes, cuts: list[int]) -> tuple[list[tuple[bytes, int]], bool]:
    dec = FrameDecoder(max_frame=LIMIT)
    out: list[tuple[bytes, int]] = []
    prev = 0
    try:
        for cut in [*cuts, len(data)]:
            out += dec.feed(data[prev:cut])
            prev = cut
    except FrameTooLarge as exc:
        return _requests(out + exc.frames), True
    return _requests(out), False


def _requests(frames: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """Without the marks of blank runs, which count blank frames per read
    (for the flood limit), so depend on where reads end."""
    return [f for f in frames if f[0] != BLANK_RUN_FRAME]


def framing(data: bytes) -> None:
    if len(data) < 2:
        return
    # The first bytes say where to cut the rest.
    n = data[0] % 8
    body = data[1 + n :]
    cuts = sorted({b * len(body) // 256 for b in data[1 : 1 + n]})
    whole, too_large = _frames(body, [])
    pieces, too_large_2 = _frames(body, cuts)
    assert too_large == too_large_2, (body, cuts)
    if not too_large:  # (past the limit, how much was served first may differ)
        assert whole == pieces, (body, cuts, whole, pieces)
    for frame, term in pieces:
        assert frame and len(frame) <= LIMIT and term in (0, 10)


def requests(data: bytes) -> None:
    try:
        codec.decode_request(data)
    except BadRequest as exc:
        assert 100 <= int(exc.code) < 200 and exc.errmsg


class _Peer(NoReceipts):
    address = "fuzz"
    limit_key = "fuzz"

    def __init__(self) -> None:
        self.replies = 0

    def send(self, data: bytes) -> bool:
        if codec.loads(data).get("msgid") not in PUSHED:
            self.replies += 1
        return True

    def deliver(self, data: bytes, settlement: Settlement | None = None) -> bool:
        return self.send(data)

    def closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _Service:
    """One service for the whole run: a fresh one per input would spend the
    run creating schemas. Users and groups made by earlier inputs stay."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = SqlStore("sqlite+aiosqlite://")
        self.svc = ChatService(
            self.store,
            Passwords(HashCost(1, 8, 1)),
            LocalPresence(),
            NoBus(),
            limits=Limits(message_rate=0),
        )
        self.loop.run_until_complete(self._setup())

    async def _setup(self) -> None:
        await self.store.create_schema()
        await self.svc.start()
        self.user = Session(_Peer())
        for req in (
            b'{"msgid":4,"name":"fuzz","password":"pw"}',
            b'{"msgid":1,"id":1,"password":"pw"}',
        ):
            work = self.svc.handle(self.user, codec.read_request(req), legacy=False)
            if work is not None:
                await work
        assert self.user.uid == 1

    def run(self, data: bytes) -> None:
        self.loop.run_until_complete(self._one(data))

    async def _one(self, data: bytes) -> None:
        frames = [f for f in data.replace(b"\x00", b"\n").split(b"\n") if f.strip()][:16]
        if self.user.uid != 1:  # an earlier input logged the user out: back in
            work = self.svc.handle(
                self.user, codec.read_request(b'{"msgid":1,"id":1,"password":"pw"}'), False
            )
            if work is not None:
                await work
        stranger = Session(_Peer())
        for s in (self.user, stranger):
            peer: Any = s.peer
            peer.replies = 0
            for frame in frames:
                work = self.svc.handle(s, codec.read_request(frame.strip()), legacy=False)
                if work is not None:
                    await work
            assert peer.replies == len(frames), (frames, peer.replies)


_service: _Service | None = None


def service(data: bytes) -> None:
    global _service
    if _service is None:
        _service = _Service()
    _service.run(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "framing": framing,
    "requests": requests,
    "service": service,
}

#: Starting points: each target mutates these (and what it learns) further.
SEEDS = [
    b'{"msgid":1,"id":1,"password":"pw"}\n',
    b'{"msgid":4,"name":"a","password":"b"}\x00',
    b'{"msgid":6,"id":1,"toid":1,"msg":"hi","time":"now"}\n{"msgid":12}\n',
    b'{"msgid":7,"id":1,"friendid":2}\n{"msgid":8,"groupname":"g","groupdesc":"d"}\n',
    b'{"msgid":9,"groupid":1}\n{"msgid":10,"groupid":1,"msg":"x"}\n{"msgid":3}\n',
    b'{"msgid":1,"id":1,"ticket":"abc"}\n{"msgid":19}\n{"msgid":21}\n',
]
