"""One connection to a node over asyncio streams, driving the client core.

Everything about the protocol (frames, reply matching, receipts) is in
:class:`clusterchat.protocol.client.ClientProtocol`; this class only reads,
writes and waits. It is read two ways:

- pulled (:meth:`ChatConnection.recv`, :meth:`~ChatConnection.expect`):
  every message in arrival order, and nothing is read until asked, so a
  test can play a slow reader. The tests drive the server this way.
- :meth:`~ChatConnection.listen`: read until the connection ends, each
  reply to a :meth:`~ChatConnection.call` resolving its future and every
  event (replies too) handed to a callback. The terminal client (client/session.py)
  runs on this.

``legacy=True`` ends each request with NUL, as the original C++ client does.

However the connection ends (the node's FIN, a reset, a write that fails
with a broken pipe, a timeout), it ends for the caller the same way: a read
sees the end (``recv`` raises :class:`ConnectionClosed`, ``listen``
returns), a write or a request made then raises :class:`ConnectionClosed`,
and requests still waiting fail with it. No OSError from inside asyncio
escapes a read or a write (:meth:`ChatConnection.open` raises OSError when
it cannot connect at all).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from clusterchat.protocol.acks import INTERVAL
from clusterchat.protocol.client import (
    ClientProtocol,
    Event,
    Push,
    ReceiptRefused,
    Reply,
    Undecodable,
    Unexpected,
)
from clusterchat.protocol.messages import MsgId

Waiter = asyncio.Future[dict[str, Any]]
OnEvent = Callable[[Event[Waiter]], None]


class ConnectionClosed(Exception):
    """The connection ended (the OSError that ended it, if any, is its
    ``__cause__``)."""


class ChatConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        legacy: bool = False,
        core: ClientProtocol[Waiter] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.core: ClientProtocol[Waiter] = core or ClientProtocol(legacy=legacy)
        self._inbox: deque[dict[str, Any]] = deque()  # pulled: what arrived, unread
        self._on_event: OnEvent | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        #: The connection ended (the reading side saw it, or we closed it):
        #: a request made now could never be answered.
        self._ended = False
        #: The OSError that ended it, if one did (a reset, a broken pipe).
        self._error: OSError | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        legacy: bool = False,
        core: ClientProtocol[Waiter] | None = None,
        **kw: Any,
    ) -> ChatConnection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20, **kw)
        return cls(reader, writer, legacy, core)

    @property
    def terminator(self) -> bytes:
        return self.core.terminator

    # -- writing -------------------------------------------------------------------

    async def send(self, doc: dict[str, Any]) -> None:
        """A request whose reply, if any, is read with :meth:`recv`."""
        await self.send_raw(self.core.send(doc))

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are, around the core (its FIFO does not know them).
        Raises :class:`ConnectionClosed` if the connection has ended."""
        self._check_open()
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:  # a broken pipe, a reset: the node is gone
            self._error = self._error or exc
            raise self._closed() from exc

    def call(self, doc: dict[str, Any]) -> Waiter:
        """Send a request now; its reply, matched in request order. Raises
        :class:`ConnectionClosed` if the connection has ended; the reply
        fails with it if the connection ends before the reply comes (while
        :meth:`listen` reads)."""
        self._check_open()
        fut: Waiter = asyncio.get_running_loop().create_future()
        data = self.core.send(doc, fut)
        self._writer.write(data)
        return fut

    def _check_open(self) -> None:
        """Raise ConnectionClosed if nothing can be sent: the end was read
        (a write would be lost, or fail), or the transport is closing (uvloop
        raises RuntimeError for a write on a closed one, asyncio drops it)."""
        if self._ended or self._writer.is_closing():
            raise self._closed() from self._error

    def _closed(self) -> ConnectionClosed:
        why = f": {self._error!r}" if self._error is not None else ""
        return ConnectionClosed(f"connection lost{why}")

    def _flush(self) -> None:
        """What the core wants written of its own accord (receipts)."""
        data = self.core.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)
        if self.core.unacknowledged and self._ack_timer is None:
            loop = asyncio.get_running_loop()
            self._ack_timer = loop.call_later(INTERVAL, self._acknowledge)

    def _acknowledge(self) -> None:
        self._ack_timer = None
        self.core.acknowledge()
        self._flush()

    def acknowledge(self) -> None:
        """Acknowledge now what arrived (before closing: the server would
        otherwise store it again for the next login), without the timer."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if not self._ended:
            self._acknowledge()

    # -- reading -------------------------------------------------------------------

    async def _read(self) -> bool:
        """One read through the core; False at the end of the stream, or if
        the stream failed: a reset (the server's FIN crossed a request we
        sent after it, and its kernel answered that with RST), a broken pipe
        (a write failed first: asyncio's reader raises that error from then
        on), a timeout."""
        try:
            data = await self._reader.read(65536)
        except OSError as exc:
            self._error = self._error or exc
            return False
        if not data:
            return False
        events = self.core.receive_data(data)
        self._flush()
        for event in events:
            if type(event) is Reply and event.token is not None:
                if not event.token.done():
                    event.token.set_result(event.msg)
                if self._on_event is not None:
                    self._on_event(event)
            elif self._on_event is not None:
                self._on_event(event)
            elif type(event) is Undecodable:
                raise ValueError(f"undecodable frame from the server: {event.reason}")
            else:
                assert type(event) in (Reply, Push, ReceiptRefused, Unexpected)
                self._inbox.append(event.msg)  # type: ignore[union-attr]
        return True

    async def listen(self, on_event: OnEvent) -> None:
        """Read until the connection ends (or fails); then every call still
        waiting fails with ConnectionClosed."""
        self._on_event = on_event
        try:
            while await self._read():
                pass
        finally:
            self._lost()

    def _lost(self) -> None:
        self._ended = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        for fut in self.core.connection_lost():
            if fut is not None and not fut.done():
                exc = self._closed()
                exc.__cause__ = self._error
                fut.set_exception(exc)

    async def recv(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """The next message from the server, in arrival order."""
        async with asyncio.timeout(timeout):
            while not self._inbox:
                if not await self._read():
                    raise ConnectionClosed("server closed the connection")
        return self._inbox.popleft()

    async def expect(self, msgid: int, timeout: float = 10.0) -> dict[str, Any]:
        """The next message, which must have ``msgid``."""
        msg = await self.recv(timeout)
        if msg.get("msgid") != msgid:
            raise AssertionError(f"expected msgid {msgid}, got {msg}")
        return msg

    async def request(
        self, doc: dict[str, Any], reply: int, timeout: float = 10.0
    ) -> dict[str, Any]:
        await self.send(doc)
        return await self.expect(reply, timeout)

    async def register(self, name: str, password: str) -> int:
        ack = await self.request(
            {"msgid": MsgId.REG, "name": name, "password": password}, MsgId.REG_ACK
        )
        if ack["errno"] != 0:
            raise RuntimeError(f"register {name!r} failed: {ack.get('errmsg')}")
        return int(ack["id"])

    async def login(self, uid: int, password: str, receipts: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {"msgid": MsgId.LOGIN, "id": uid, "password": password}
        if receipts:  # pushes come numbered ("seq"); acknowledge them with ``received``
            doc["receipts"] = True
        return await self.request(doc, MsgId.LOGIN_ACK)

    async def received(self, seq: int) -> None:
        """Receipts: every pushed message up to ``seq`` has arrived (no reply)."""
        await self.send({"msgid": MsgId.RECEIVED, "seq": seq})

    async def at_eof(self, timeout: float = 10.0) -> bool:
        """Wait for the server to close; True if it did (any data before is
        discarded; a reset or a broken pipe is a close too)."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(OSError):
                while await self._reader.read(65536):
                    pass
        return True

    # -- the end -------------------------------------------------------------------

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        self._lost()

    async def abort(self) -> None:
        """Go away at once, as a crashed client does: whatever arrived unread is lost."""
        self._writer.transport.abort()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
