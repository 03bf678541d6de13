"""A lean benchmark connection: an asyncio Protocol over the client core
(protocol/client.py), chat deliveries handed to a callback. Thousands of
these fit in one process.

It speaks our dialect (requests end with ``\\n``) or, with ``term=b"\\0"``,
the original client's: requests end with NUL and the server answers only
what the original did (no CHAT_ACK, no ERROR), so chat is sent with
:meth:`BenchConn.send`, not :meth:`BenchConn.request`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from clusterchat.protocol.acks import INTERVAL
from clusterchat.protocol.client import ClientProtocol, Event, Push, Reply, Unexpected
from clusterchat.protocol.messages import MsgId

Waiter = asyncio.Future[dict[str, Any]]
_ERROR = int(MsgId.ERROR)


#: Seconds a benchmark waits for a connection or a reply before it gives up:
#: a server that stops answering ends the run with a message, never a hang.
TIMEOUT = 30.0


class Closed(Exception):
    """The connection ended (or never answered); the text says why, with
    the server's last ERROR if it sent one before closing."""


class BenchConn(asyncio.Protocol):
    def __init__(
        self,
        on_push: Callable[[dict[str, Any]], None] | None = None,
        term: bytes = b"\n",
        acknowledge: bool = False,
    ) -> None:
        self.transport: asyncio.Transport | None = None
        #: ``bench --receipts``: acknowledge pushes as our clients do.
        self.core: ClientProtocol[Waiter] = ClientProtocol(
            legacy=term == b"\0", acknowledge=acknowledge
        )
        self.on_push = on_push
        self.uid = 0
        self.ticket: str | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        #: The errmsg of the last ERROR the server sent (it says why it closed).
        self.last_error = ""

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        on_push: Callable[[dict[str, Any]], None] | None = None,
        term: bytes = b"\n",
        acknowledge: bool = False,
    ) -> BenchConn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: cls(on_push, term, acknowledge), host, port),
                TIMEOUT,
            )
        except TimeoutError:
            raise Closed(f"could not connect to {host}:{port} within {TIMEOUT:g} s") from None
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._handle(self.core.receive_data(data))

    def _handle(self, events: list[Event[Waiter]]) -> None:
        on_push = self.on_push
        for event in events:
            if type(event) is Push:
                if on_push is not None:
                    on_push(event.msg)
            elif type(event) is Unexpected and event.msg.get("msgid") == _ERROR:
                self.last_error = str(event.msg.get("errmsg") or "")
            elif type(event) is Reply:
                if event.msg.get("msgid") == _ERROR:
                    self.last_error = str(event.msg.get("errmsg") or "")
                fut = event.token
                if fut is not None and not fut.done():
                    fut.set_result(event.msg)
        core = self.core
        if core.acks is not None:  # receipts: every 64 messages, or after a second
            if data := core.data_to_send():
                self._write(data)
            if self._ack_timer is None and core.unacknowledged:
                self._ack_timer = asyncio.get_running_loop().call_later(INTERVAL, self.ack_now)

    def ack_now(self) -> None:
        self._ack_timer = None
        self.core.acknowledge()
        if data := self.core.data_to_send():
            self._write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        self.transport = None
        why = self.closed_why()
        for fut in self.core.connection_lost():
            if fut is not None and not fut.done():
                fut.set_exception(Closed(why))

    def closed_why(self) -> str:
        """What a Closed says: the server's last ERROR, if any."""
        if self.last_error:
            return f"the server closed the connection: {self.last_error}"
        return "the server closed the connection"

    def _write(self, data: bytes) -> None:
        if self.transport is None:
            raise Closed(self.closed_why())
        self.transport.write(data)

    def send(self, doc: dict[str, Any]) -> None:
        """A request whose reply, if the dialect gives one, nobody waits for."""
        if self.transport is None:
            raise Closed(self.closed_why())
        self._write(self.core.send(doc))

    def request(self, doc: dict[str, Any]) -> Waiter:
        if self.transport is None:
            raise Closed(self.closed_why())
        fut: Waiter = asyncio.get_running_loop().create_future()
        self._write(self.core.send(doc, fut))
        return fut

    async def ask(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A request and its reply, waited for at most :data:`TIMEOUT`."""
        try:
            return await asyncio.wait_for(self.request(doc), TIMEOUT)
        except TimeoutError:
            raise Closed(f"no reply from the server within {TIMEOUT:g} s") from None

    def close(self) -> None:
        if self.transport is not None:
            self.ack_now()  # else what arrived would be stored for the next login
            self.transport.close()
