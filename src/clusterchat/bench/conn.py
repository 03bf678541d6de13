"""A lean benchmark connection: an asyncio Protocol, replies matched FIFO,
chat deliveries handed to a callback. Thousands of these fit in one process.

It speaks our dialect (requests end with ``\\n``) or, with ``term=b"\\0"``,
the original client's: requests end with NUL and the server answers only
what the original did (no CHAT_ACK, no ERROR), so chat is sent with
:meth:`BenchConn.send`, not :meth:`BenchConn.request`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from clusterchat.protocol import codec
from clusterchat.protocol.acks import INTERVAL, Acks, received
from clusterchat.protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder
from clusterchat.protocol.messages import PUSHED, MsgId

_ERROR, _RECEIVED = int(MsgId.ERROR), int(MsgId.RECEIVED)


class Closed(Exception):
    pass


class BenchConn(asyncio.Protocol):
    def __init__(
        self, on_push: Callable[[dict[str, Any]], None] | None = None, term: bytes = b"\n"
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self.term = term
        self.decoder = FrameDecoder(16 * DEFAULT_MAX_FRAME)
        self.pending: deque[asyncio.Future[dict[str, Any]]] = deque()
        self.on_push = on_push
        self.uid = 0
        self.ticket: str | None = None
        #: ``bench --receipts``: acknowledge pushes as our clients do.
        self.acks: Acks | None = None
        self._ack_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        on_push: Callable[[dict[str, Any]], None] | None = None,
        term: bytes = b"\n",
    ) -> BenchConn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(on_push, term), host, port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for frame, _ in self.decoder.feed(data):
            self._dispatch(codec.loads(frame))

    def _dispatch(self, msg: Any) -> None:
        if msg.get("msgid") in PUSHED:
            if self.acks is not None and "seq" in msg:
                self.saw(msg["seq"])
            if self.on_push is not None:
                self.on_push(msg)
        elif msg.get("msgid") == _ERROR and msg.get("re") == _RECEIVED:
            return  # RECEIVED has no reply: this one answers no request
        elif self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_result(msg)

    def saw(self, seq: int) -> None:
        """Receipts: every 64 messages, or after a second, say what arrived."""
        acks = self.acks
        assert acks is not None
        due = acks.saw(seq)
        if due is not None:
            self.send(received(due))
        elif self._ack_timer is None and acks.seen > acks.sent:
            self._ack_timer = asyncio.get_running_loop().call_later(INTERVAL, self.ack_now)

    def ack_now(self) -> None:
        self._ack_timer = None
        due = self.acks.take() if self.acks is not None else None
        if due is not None and self.transport is not None:
            self.send(received(due))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        self.transport = None
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(Closed("connection closed"))

    def send(self, doc: dict[str, Any]) -> None:
        if self.transport is None:
            raise Closed("connection closed")
        self.transport.write(codec.dumps(doc).encode() + self.term)

    def request(self, doc: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.send(doc)
        self.pending.append(fut)
        return fut

    def close(self) -> None:
        if self.transport is not None:
            if self.acks is not None:
                self.ack_now()  # else what arrived would be stored for the next login
            self.transport.close()
