"""A long-lived protocol client with no UI: requests, pushed messages, reconnects.

The protocol is the client core's (protocol/client.py: replies matched to
requests in order, receipts) over a :class:`ChatConnection`; pushed
messages go to ``on_push``, each frame to ``on_raw`` if given. When the
connection drops, the client reconnects with backoff and, if it was logged
in, logs in again. It asks for receipts at every login and acknowledges
what is pushed (:mod:`clusterchat.protocol.acks`): a message the server
wrote into a connection that then vanished comes again at the next login,
and duplicates (same ``mid``) are dropped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

from clusterchat.client.connection import ChatConnection, ConnectionClosed, Waiter
from clusterchat.protocol import codec
from clusterchat.protocol.client import (
    ClientProtocol,
    Event,
    Push,
    ReceiptRefused,
    TooLong,
    Unexpected,
    taken_order,
)
from clusterchat.protocol.framing import FrameTooLarge
from clusterchat.protocol.messages import ErrCode, LoginErr, MsgId
from clusterchat.protocol.replies import BANNED_TEXT, DISPLACED_TEXT, KICKED_TEXT

#: NOTICEs after which the session is over for good (the ticket is dead):
#: what to say instead of reconnecting.
_ENDED = {
    DISPLACED_TEXT: "Logged out: this account logged in elsewhere (another window or device). "
    "Not reconnecting; /login ID to log in here, or /quit.",
    KICKED_TEXT: "Logged out: an operator ended this session. Not reconnecting; /login ID "
    "to log in with your password, or /quit.",
    BANNED_TEXT: "Logged out: an operator banned this account. Not reconnecting; /quit.",
}

log = logging.getLogger(__name__)

KEEPALIVE = 30.0
#: How long to keep retrying a login refused as "already online" after a
#: reconnect: the old session may still be held by a node that just died.
RELOGIN_PATIENCE = 30.0
#: Seconds before a request refused as too fast is sent again (then twice as
#: long each time), and the longest pause before the refusal is shown.
FLOOD_PAUSE = 0.05
FLOOD_PATIENCE = 2.0
#: Message ids remembered to drop a redelivered duplicate.
SEEN_MIDS = 4096
#: Seconds a TLS handshake may take (a plain server never answers one).
TLS_HANDSHAKE_TIMEOUT = 10.0


class TlsFailed(OSError):
    """``--tls``: the TCP connection was made, the TLS handshake was not."""


#: A request that cannot be answered: the connection is down or went down.
ConnectionLost = ConnectionClosed

__all__ = ["ChatClient", "ConnectionLost", "TooLong"]


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
        #: Whether the server ever sent anything: a TLS-only node closes a
        #: plain connection at its first request, without a word.
        self._heard = False
        self._asked = False
        self.uid = 0
        self.name = ""
        # What logs us in again after a reconnect: the server's session ticket
        # when it gave one (then the password is not kept), else the password.
        self._password: str | None = None
        self._ticket: str | None = None
        #: The protocol, kept across reconnects (the server's frame limit,
        #: receipts); each connection starts it again with no request waiting.
        self.core: ClientProtocol[Waiter] = ClientProtocol(acknowledge=True, refuse_too_long=True)
        self._conn: ChatConnection | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False
        #: The server ended the session for good (the account logged in on
        #: another node, or an operator kicked or banned it): reconnecting
        #: would only be refused. What to say about it.
        self.displaced = False
        self._ended = ""
        self.connected = asyncio.Event()
        # Connected and, after a reconnect, logged in again: requests may go.
        self.ready = asyncio.Event()
        self._seen: dict[object, None] = {}  # recent message ids, oldest first

    @property
    def max_frame(self) -> int:
        """The largest request frame the server takes (bytes, without the
        newline): its LOGIN_ACK says (``maxframe``), else the default."""
        return self.core.max_frame

    # -- connection ---------------------------------------------------------------

    async def connect(self) -> None:
        if self.tls is None:
            conn = await ChatConnection.open(self.host, self.port, core=self.core)
        else:
            conn = await self._open_tls(self.tls)
        self._conn = conn
        self._reader_task = asyncio.ensure_future(self._read(conn))
        if self._keepalive_task is None:
            self._keepalive_task = asyncio.ensure_future(self._keepalive())
        self.connected.set()
        if not self.uid:  # else ready once logged in again (see _reconnect)
            self.ready.set()

    async def _open_tls(self, tls: ssl.SSLContext) -> ChatConnection:
        """A TLS connection, its handshake bounded; a plain server (which
        takes the handshake for a request and waits for its end) or a bad
        certificate raises :class:`TlsFailed` saying so."""
        try:
            return await ChatConnection.open(
                self.host,
                self.port,
                core=self.core,
                ssl=tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            )
        except ConnectionRefusedError:
            raise
        except ssl.SSLCertVerificationError as exc:
            why = f"TLS handshake failed: {exc.verify_message or exc}"
            raise TlsFailed(why) from exc
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror or str(exc) if isinstance(exc, OSError) else ""
            reason = reason or "the server closed the connection or did not answer"
            why = (
                f"TLS handshake failed ({reason}): is the server using TLS? (without --tls: plain)"
            )
            raise TlsFailed(why) from exc

    async def close(self) -> None:
        self._closing = True
        if self._conn is not None:
            # What was shown is acknowledged before the close, as before a
            # LOGOUT: a script that quit at once (`login:2:pw` then `quit`,
            # inside the one-second timer) had every message waiting for it
            # stored again, and shown again at each later login.
            self._conn.acknowledge()
        for task in (self._keepalive_task, self._reconnect_task, self._reader_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._conn is not None:
            await self._conn.close()

    async def _read(self, conn: ChatConnection) -> None:
        try:
            await conn.listen(self._event)
        except (OSError, ValueError, FrameTooLarge) as exc:
            log.debug("read failed: %s", exc)
        self.connected.clear()
        self.ready.clear()
        await conn.close()
        if self.tls is None and self._asked and not self._heard and not self._closing:
            # A server that closes at the first request, never having said a
            # word, is most likely a TLS node (--tls-cert): retrying is futile.
            self.displaced = True
            self.uid, self._password, self._ticket = 0, None, None
            self._ended = (
                f"The server at {self.host}:{self.port} closed the connection without "
                "answering: it may require TLS (start the client with --tls). Not reconnecting."
            )
        if self.displaced:
            self.on_status(self._ended)
        elif not self._closing:
            self._reconnect_task = asyncio.ensure_future(self._reconnect())

    def _event(self, event: Event[Waiter]) -> None:
        self._heard = True
        if self.on_raw is not None:
            self.on_raw(event.frame)
        if type(event) is Push:
            self._push(event.msg)
        elif type(event) is ReceiptRefused:  # RECEIVED has no reply
            log.warning("receipt refused: %s", event.msg.get("errmsg"))
        elif type(event) is Unexpected and event.msg.get("msgid") == MsgId.ERROR:
            self.on_status(f"Server: {event.msg.get('errmsg')}")  # it closes next

    def _dispatch(self, frame: bytes) -> None:
        """One whole frame, as if it had arrived on the connection."""
        for event in self.core.receive_message(frame):
            self._event(event)

    def _push(self, msg: dict[str, Any]) -> None:
        if msg.get("msgid") == MsgId.NOTICE and msg.get("text") in _ENDED:
            self.displaced = True  # the server closes the connection next
            self._ended = _ENDED[msg["text"]]
            self.uid, self._password, self._ticket = 0, None, None
        mid = msg.get("mid")
        if mid is not None:
            if mid in self._seen:  # delivery between nodes is at least once
                return
            self._seen[mid] = None
            if len(self._seen) > SEEN_MIDS:
                del self._seen[next(iter(self._seen))]
        self.on_push(msg)

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
                back = await self._relogin()
                if back is None:
                    continue
                if back:
                    self.on_status(f"Reconnected to {self.host}:{self.port}, logged in again.")
                else:
                    self.on_status(
                        f"Reconnected to {self.host}:{self.port}, but not logged in: /login ID"
                    )
            else:
                self.on_status(f"Reconnected to {self.host}:{self.port}.")
            self.ready.set()
            return

    async def _reopen(self) -> None:
        """The server ended the session for good and no reconnect is under
        way: a login or registration the user asks for opens a connection
        again. Without it the menu offered "1. login" and every try said
        "the connection is down (reconnecting)", which it never was."""
        if not self.displaced or self._closing or self.connected.is_set():
            return
        try:
            await self.connect()
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self.displaced, self._ended = False, ""

    async def reconnected(self, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, for a reconnect under way to
        finish; at once if none is (connected, closing, or displaced)."""
        if self.ready.is_set() or self._closing or self.displaced:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout)

    async def _relogin(self) -> bool | None:
        """Log in again after a reconnect: True if in, False if refused (the
        session is over: logged out here), None if the connection was lost."""
        deadline = asyncio.get_running_loop().time() + RELOGIN_PATIENCE
        secret = {"ticket": self._ticket} if self._ticket else {"password": self._password}
        while True:
            try:
                ack = await self._login_request({"id": self.uid, **secret})
            except ConnectionLost:
                return None
            if ack.get("errno") == 0:
                ticket = ack.get("ticket")  # tickets rotate: the old one is dead now
                if isinstance(ticket, str):
                    self._ticket = ticket
                # Stored while we were away: shown as if they had just
                # arrived, in the order the server took them.
                docs = []
                for item in ack.get("offlinemsg") or []:
                    with contextlib.suppress(ValueError):
                        doc = codec.loads(item) if isinstance(item, str) else item
                        if isinstance(doc, dict):
                            docs.append(doc)
                for doc in sorted(docs, key=taken_order):
                    self._push(doc)
                return True
            retry = ack.get("errno") in (LoginErr.ALREADY_ONLINE, LoginErr.UNAVAILABLE)
            if not retry or asyncio.get_running_loop().time() > deadline:
                self.on_status(f"Could not log in again: {ack.get('errmsg')}")
                self.uid, self._password, self._ticket = 0, None, None
                return False
            await asyncio.sleep(0.5)

    async def _login_request(self, fields: dict[str, Any]) -> dict[str, Any]:
        """LOGIN asking for receipts (the core acknowledges what comes)."""
        return await self._send({"msgid": MsgId.LOGIN, "receipts": True, **fields})

    async def _keepalive(self) -> None:
        """nginx and NATs drop idle TCP connections; a ping now and then keeps ours."""
        while True:
            await asyncio.sleep(KEEPALIVE)
            if self.ready.is_set():
                with contextlib.suppress(ConnectionLost, OSError):
                    await self.request({"msgid": MsgId.PING})

    # -- requests ------------------------------------------------------------------

    async def request(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Send ``doc`` and return its reply. A request refused as over the
        flood limit was not served: it is sent again after a pause (doubling,
        about 3 s in all), so a script piping a batch is paced, not cut."""
        if doc.get("msgid") in (MsgId.REG, MsgId.PING):
            await self._reopen()
        if not self.ready.is_set():
            raise ConnectionLost("not connected (reconnecting)")
        pause = FLOOD_PAUSE
        while True:
            reply = await self._send(doc)
            too_fast = reply.get("msgid") == MsgId.ERROR and reply.get("errno") == ErrCode.TOO_FAST
            if not too_fast or pause > FLOOD_PATIENCE:
                return reply
            await asyncio.sleep(pause)
            pause *= 2

    async def _send(self, doc: dict[str, Any]) -> dict[str, Any]:
        conn = self._conn
        if not self.connected.is_set() or conn is None:
            raise ConnectionLost("not connected")
        self._asked = True
        return await conn.call(doc)  # TooLong if over the server's limit: nothing sent

    async def login(self, uid: int, password: str) -> dict[str, Any]:
        await self._reopen()
        if not self.ready.is_set():
            raise ConnectionLost("not connected (reconnecting)")
        ack = await self._login_request({"id": uid, "password": password})
        if ack.get("errno") == 0:
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
