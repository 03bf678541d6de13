"""A long-lived protocol client with no UI: requests, pushed messages, reconnects.

Every reply the server sends answers exactly one request, in request order,
so replies are matched to a FIFO of waiting futures; messages in
:data:`~clusterchat.protocol.messages.PUSHED` go to ``on_push``. When the
connection drops, the client reconnects with backoff and, if it was logged
in, logs in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

from clusterchat.protocol import codec
from clusterchat.protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder
from clusterchat.protocol.messages import PUSHED, LoginErr, MsgId

log = logging.getLogger(__name__)

KEEPALIVE = 30.0
#: How long to keep retrying a login refused as "already online" after a
#: reconnect: the old session may still be held by a node that just died.
RELOGIN_PATIENCE = 30.0
#: Message ids remembered to drop a redelivered duplicate.
SEEN_MIDS = 4096


class ConnectionLost(Exception):
    pass


class TooLong(Exception):
    """A request whose frame the server would not take: nothing was sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request of {size} bytes, over the {limit}-byte frame limit")
        self.size, self.limit = size, limit


class ChatClient:
    def __init__(
        self,
        host: str,
        port: int,
        on_push: Callable[[dict[str, Any]], None],
        on_status: Callable[[str], None],
        on_raw: Callable[[bytes], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.on_push, self.on_status, self.on_raw = on_push, on_status, on_raw
        self.tls = tls
        self.uid = 0
        self.name = ""
        # What logs us in again after a reconnect: the server's session ticket
        # when it gave one (then the password is not kept), else the password.
        self._password: str | None = None
        self._ticket: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._reader_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = asyncio.Event()
        # Connected and, after a reconnect, logged in again: requests may go.
        self.ready = asyncio.Event()
        self._seen: dict[object, None] = {}  # recent message ids, oldest first
        #: The largest request frame the server takes (bytes, without the
        #: newline): its LOGIN_ACK says (``maxframe``), else the default.
        self.max_frame = DEFAULT_MAX_FRAME

    # -- connection ---------------------------------------------------------------

    async def connect(self) -> None:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, limit=1 << 20
        )
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read(reader, writer))
        if self._keepalive_task is None:
            self._keepalive_task = asyncio.ensure_future(self._keepalive())
        self.connected.set()
        if not self.uid:  # else ready once logged in again (see _reconnect)
            self.ready.set()

    async def close(self) -> None:
        self._closing = True
        for task in (self._keepalive_task, self._reconnect_task, self._reader_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._fail_pending()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(max_frame=16 * DEFAULT_MAX_FRAME)
        try:
            while data := await reader.read(65536):
                for frame, _ in decoder.feed(data):
                    self._dispatch(frame)
        except (OSError, ValueError) as exc:
            log.debug("read failed: %s", exc)
        writer.close()
        self.connected.clear()
        self.ready.clear()
        self._fail_pending()
        if not self._closing:
            self._reconnect_task = asyncio.ensure_future(self._reconnect())

    def _dispatch(self, frame: bytes) -> None:
        if self.on_raw is not None:
            self.on_raw(frame)
        try:
            msg = codec.loads(frame)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if msg.get("msgid") in PUSHED:
            self._push(msg)
        elif self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_result(msg)

    def _push(self, msg: dict[str, Any]) -> None:
        mid = msg.get("mid")
        if mid is not None:
            if mid in self._seen:  # delivery between nodes is at least once
                return
            self._seen[mid] = None
            if len(self._seen) > SEEN_MIDS:
                del self._seen[next(iter(self._seen))]
        self.on_push(msg)

    def _fail_pending(self) -> None:
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(ConnectionLost("connection lost"))

    async def _reconnect(self) -> None:
        self.on_status("Connection lost; reconnecting...")
        delay = 0.2
        while not self._closing:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                await self.connect()
            except OSError:
                continue
            if self.uid and (self._ticket or self._password):
                if not await self._relogin():
                    continue
                self.on_status(f"Reconnected to {self.host}:{self.port}, logged in again.")
            else:
                self.on_status(f"Reconnected to {self.host}:{self.port}.")
            self.ready.set()
            return

    async def _relogin(self) -> bool:
        deadline = asyncio.get_running_loop().time() + RELOGIN_PATIENCE
        secret = {"ticket": self._ticket} if self._ticket else {"password": self._password}
        while True:
            try:
                ack = await self._send({"msgid": MsgId.LOGIN, "id": self.uid, **secret})
            except ConnectionLost:
                return False
            if ack.get("errno") == 0:
                self._note_limits(ack)
                ticket = ack.get("ticket")  # tickets rotate: the old one is dead now
                if isinstance(ticket, str):
                    self._ticket = ticket
                # Stored while we were away: shown as if they had just arrived.
                for item in ack.get("offlinemsg") or []:
                    with contextlib.suppress(ValueError):
                        doc = codec.loads(item) if isinstance(item, str) else item
                        if isinstance(doc, dict):
                            self._push(doc)
                return True
            retry = ack.get("errno") in (LoginErr.ALREADY_ONLINE, LoginErr.UNAVAILABLE)
            if not retry or asyncio.get_running_loop().time() > deadline:
                self.on_status(f"Could not log in again: {ack.get('errmsg')}")
                self.uid, self._password, self._ticket = 0, None, None
                return True
            await asyncio.sleep(0.5)

    async def _keepalive(self) -> None:
        """nginx and NATs drop idle TCP connections; a ping now and then keeps ours."""
        while True:
            await asyncio.sleep(KEEPALIVE)
            if self.ready.is_set():
                with contextlib.suppress(ConnectionLost, OSError):
                    await self.request({"msgid": MsgId.PING})

    # -- requests ------------------------------------------------------------------

    async def request(self, doc: dict[str, Any]) -> dict[str, Any]:
        if not self.ready.is_set():
            raise ConnectionLost("not connected (reconnecting)")
        return await self._send(doc)

    async def _send(self, doc: dict[str, Any]) -> dict[str, Any]:
        if not self.connected.is_set() or self._writer is None:
            raise ConnectionLost("not connected")
        frame = codec.dumps(doc).encode()
        if len(frame) > self.max_frame:  # the server would close the connection
            raise TooLong(len(frame), self.max_frame)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        self._writer.write(frame + b"\n")
        return await fut

    def _note_limits(self, ack: dict[str, Any]) -> None:
        limit = ack.get("maxframe")
        if isinstance(limit, int) and limit > 0:
            self.max_frame = limit

    async def login(self, uid: int, password: str) -> dict[str, Any]:
        ack = await self.request({"msgid": MsgId.LOGIN, "id": uid, "password": password})
        if ack.get("errno") == 0:
            self._note_limits(ack)
            self.uid, self.name = uid, str(ack.get("name", ""))
            ticket = ack.get("ticket")
            self._ticket = ticket if isinstance(ticket, str) else None
            self._password = None if self._ticket else password
        return ack

    async def logout(self) -> dict[str, Any]:
        reply = await self.request({"msgid": MsgId.LOGOUT})
        self.forget()
        return reply

    def forget(self) -> None:
        """Logged out: nothing to log in again with."""
        self.uid, self.name, self._password, self._ticket = 0, "", None, None
