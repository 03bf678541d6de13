"""A protocol client with no UI: connect, send requests, await replies.

The terminal client, the benchmark and the tests all drive the server
through this class, so it speaks both dialects (``legacy=True`` ends each
request with NUL, as the original C++ client does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from clusterchat.protocol import codec
from clusterchat.protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder
from clusterchat.protocol.messages import MsgId


class ConnectionClosed(Exception):
    pass


class ChatConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        legacy: bool = False,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(max_frame=16 * DEFAULT_MAX_FRAME)
        self._inbox: deque[dict[str, Any]] = deque()
        self.terminator = b"\x00" if legacy else b"\n"

    @classmethod
    async def open(cls, host: str, port: int, legacy: bool = False, **kw: Any) -> ChatConnection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20, **kw)
        return cls(reader, writer, legacy)

    async def send(self, doc: dict[str, Any]) -> None:
        await self.send_raw(codec.dumps(doc).encode() + self.terminator)

    async def send_raw(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def recv(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """The next message from the server, in arrival order."""
        async with asyncio.timeout(timeout):
            while not self._inbox:
                data = await self._reader.read(65536)
                if not data:
                    raise ConnectionClosed("server closed the connection")
                for frame, _ in self._decoder.feed(data):
                    self._inbox.append(codec.loads(frame))
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
        """Wait for the server to close; True if it did (any data before is discarded)."""
        async with asyncio.timeout(timeout):
            while await self._reader.read(65536):
                pass
        return True

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def abort(self) -> None:
        """Go away at once, as a crashed client does: whatever arrived unread is lost."""
        self._writer.transport.abort()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
