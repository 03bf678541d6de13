"""The benchmark connection over a WebSocket (``bench --transport ws``): the
same FIFO of replies as :class:`BenchConn`, framed by the ``websockets``
package's sans-I/O client, so thousands still fit in one process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from clusterchat.bench.conn import TIMEOUT, BenchConn, Closed
from clusterchat.protocol import wsframes


class WsBenchConn(BenchConn):
    def __init__(
        self, on_push: Callable[[dict[str, Any]], None] | None, uri: str, acknowledge: bool
    ) -> None:
        super().__init__(on_push, acknowledge=acknowledge)
        self.ws = ClientProtocol(parse_uri(uri), max_size=None)
        self.mask = os.urandom(4)
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        on_push: Callable[[dict[str, Any]], None] | None = None,
        term: bytes = b"\n",  # one text message per request: no terminator at all
        acknowledge: bool = False,
    ) -> BenchConn:
        loop = asyncio.get_running_loop()
        uri = f"ws://{host}:{port}/ws"
        try:
            async with asyncio.timeout(TIMEOUT):
                _, conn = await loop.create_connection(
                    lambda: cls(on_push, uri, acknowledge), host, port
                )
                await conn.opened
        except TimeoutError:
            raise Closed(f"could not open a WebSocket to {uri} within {TIMEOUT:g} s") from None
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.ws.send_request(self.ws.connect())
        self._write_ws()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        if ws.state is State.OPEN and not ws.reader.buffer and ws.current_size is None:
            # Between frames: chat messages here, anything else by the library.
            messages, used = wsframes.read(data, None, masked=False)
            self._handle(self.core.receive_messages(messages))
            if used == len(data):
                return
            data = data[used:]
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self._handle(self.core.receive_message(bytes(event.data)))
            elif isinstance(event, Response) and not self.opened.done():
                if self.ws.state is State.OPEN:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(Closed(f"HTTP {event.status_code}"))
        self._write_ws()  # pongs, close replies

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(Closed("connection closed"))
        super().connection_lost(exc)

    def _write(self, data: bytes) -> None:
        """The core's requests, one text message each (receipts may come
        several to a write)."""
        if self.transport is None or self.ws.state is not State.OPEN:
            raise Closed("connection closed")
        # A load generator's frames need no fresh random mask each (that
        # protects proxies from a script in a browser); one per connection.
        if self.ws.writes:
            self._write_ws()  # anything the library queued goes first
        self.transport.write(wsframes.encode(data, self.mask))

    def _write_ws(self) -> None:
        t = self.transport
        chunks = self.ws.data_to_send()
        if t is None or not chunks:
            return
        t.write(b"".join(chunks))
        if not chunks[-1]:
            t.close()
