"""Redis's wire protocol on two connections of the bus's own: PUBLISH
batches out, the subscription in.

Every chat between nodes crosses these two, so they skip redis-py's general
machinery (its pipeline cost ~50 µs of Python per round trip, its pub/sub
reader ~25 µs per message received, against ~10 and ~2 µs here): the
commands of one flush leave in one write, and replies are parsed by hiredis
in ``data_received`` and handed on there, with no task woken per reply.
Everything else the bus asks of Redis (presence, scripts, events) still goes
through redis-py.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)


def command(*args: bytes) -> bytes:
    """One command as RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class _Wire(asyncio.Protocol):
    """One connection: bytes in, each complete reply to ``on_reply``."""

    def __init__(self, on_reply: Callable[[Any], None]) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._on_reply = on_reply
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.heard = 0  # replies so far: a watchdog sees whether any came

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not False:
                self.heard += 1
                self._on_reply(reply)
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self.close(RedisConnectionError(f"bad reply from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(exc or RedisConnectionError("Redis closed the connection"))

    def close(self, why: BaseException) -> None:
        if not self.lost.done():
            self.lost.set_exception(why)
            self.lost.exception()  # retrieved: nobody need await it
        if self.transport is not None:
            self.transport.abort()

    @property
    def closed(self) -> bool:
        return self.lost.done()


async def _open(url: str, wire: _Wire, timeout: float) -> int:
    """Connect ``wire`` to the Redis at ``url`` and log in if the URL has a
    password (the database number does not matter to pub/sub). Returns how
    many answers the login will get."""
    kw: dict[str, Any] = dict(parse_url(url))
    loop = asyncio.get_running_loop()
    context: ssl.SSLContext | None = None
    if kw.get("connection_class") is SSLConnection:
        context = ssl.create_default_context(cafile=kw.get("ssl_ca_certs"))
        if kw.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            if "path" in kw:
                transport, _ = await loop.create_unix_connection(lambda: wire, kw["path"])
            else:
                host, port = kw.get("host", "localhost"), kw.get("port", 6379)
                transport, _ = await loop.create_connection(lambda: wire, host, port, ssl=context)
    except TimeoutError as exc:
        raise RedisTimeoutError("timed out connecting to Redis") from exc
    wire.transport = transport  # uvloop may call connection_made later
    if not kw.get("password"):
        return 0
    user = [kw["username"].encode()] if kw.get("username") else []
    transport.write(command(b"AUTH", *user, kw["password"].encode()))
    return 1


class Publisher:
    """A connection that only publishes: :meth:`publish` writes a batch of
    PUBLISH commands at once and answers their receiver counts, batch after
    batch in the order sent. Opened on first use and after a failure; a
    batch unanswered within ``timeout`` drops the connection (its answers
    could no longer be matched) and fails.

    The timeout is one watchdog timer checking the oldest batch every
    ``timeout / 4`` (so a batch fails within 1.25 times ``timeout``), not a
    timeout and shield per batch: those cost ~9 µs a batch, a batch holds a
    few chats, and every chat between nodes is in one."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._wire: _Wire | None = None
        #: Per batch sent: its future, the answers so far, how many it still
        #: needs, and when it was sent (loop time).
        self._waiting: deque[tuple[asyncio.Future[list[int]], list[int], int, float]] = deque()
        self._setup = 0  # answers to the login commands, not ours to hand on
        self._watchdog: asyncio.TimerHandle | None = None

    async def publish(
        self, messages: list[tuple[bytes, bytes]], more: list[bytes] | None = None
    ) -> list[int]:
        """Each ``(channel, data)`` published, in order: how many subscribers
        got it; then ``more`` (commands made with :func:`command`, answered
        with integers) in the same write: their answers follow."""
        wire = self._wire
        if wire is None or wire.closed:
            wire = await self._connect()
        assert wire.transport is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[int]] = loop.create_future()
        self._waiting.append((fut, [], len(messages) + len(more or ()), loop.time()))
        out = b"".join(
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(channel), channel, len(data), data)
            for channel, data in messages
        )
        wire.transport.write(out + b"".join(more) if more else out)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout / 4, self._watch)
        # Not shielded: fut is ours alone; if our caller is cancelled, the
        # answers still arriving for it are skipped (_on_reply).
        return await fut

    def _watch(self) -> None:
        """Fail everything sent if the oldest batch waited past the timeout."""
        self._watchdog = None
        if not self._waiting:
            return  # re-armed by the next publish
        loop = asyncio.get_running_loop()
        if loop.time() - self._waiting[0][3] > self.timeout:
            self._drop(self._wire, RedisTimeoutError("Redis did not answer a PUBLISH in time"))
            return
        self._watchdog = loop.call_later(self.timeout / 4, self._watch)

    async def _connect(self) -> _Wire:
        self._drop(self._wire, RedisConnectionError("reconnecting"))
        wire = _Wire(self._on_reply)
        self._setup = await _open(self.url, wire, self.timeout)
        wire.lost.add_done_callback(lambda _: self._drop(wire, RedisConnectionError("lost")))
        self._wire = wire
        return wire

    def _on_reply(self, reply: Any) -> None:
        if self._setup:
            self._setup -= 1
            if isinstance(reply, ResponseError):  # AUTH refused: nothing will work
                self._drop(self._wire, reply)
            return
        if not self._waiting:
            self._drop(self._wire, RedisConnectionError("an answer nobody asked for"))
            return
        fut, counts, left, sent = self._waiting[0]
        counts.append(reply if isinstance(reply, int) else 0)
        if left > 1:
            self._waiting[0] = (fut, counts, left - 1, sent)
            return
        self._waiting.popleft()
        if not fut.done():
            fut.set_result(counts)

    def _drop(self, wire: _Wire | None, why: BaseException) -> None:
        """Close ``wire`` (if it is still ours) and fail what it owed."""
        if wire is None or wire is not self._wire:
            return
        self._wire = None
        wire.close(why)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self._waiting = self._waiting, deque()
        for fut, _, _, _ in waiting:
            if not fut.done():
                if isinstance(why, RedisTimeoutError):
                    fut.set_exception(RedisTimeoutError(str(why)))
                else:
                    fut.set_exception(RedisConnectionError(f"lost Redis: {why}"))
                fut.exception()

    def close(self) -> None:
        self._drop(self._wire, RedisConnectionError("closed"))


class Subscription:
    """A connection subscribed to ``channels``: every message is handed to
    ``on_message(channel, data)`` from ``data_received``, in the order
    Redis sent them."""

    def __init__(
        self,
        url: str,
        channels: list[bytes],
        on_message: Callable[[bytes, bytes], None],
        timeout: float,
    ) -> None:
        self.url = url
        self.channels = channels
        self.on_message = on_message
        self.timeout = timeout
        self._wire: _Wire | None = None
        self._confirmed = 0
        self._ready: asyncio.Future[None] | None = None

    async def open(self) -> None:
        """Connect and subscribe; returns once Redis confirmed every channel."""
        self._ready = asyncio.get_running_loop().create_future()
        self._confirmed = 0
        self._wire = wire = _Wire(self._on_reply)
        try:
            await _open(self.url, wire, self.timeout)
            assert wire.transport is not None
            wire.transport.write(command(b"SUBSCRIBE", *self.channels))
            async with asyncio.timeout(self.timeout):
                await asyncio.wait([self._ready, wire.lost], return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError as exc:
            wire.close(RedisTimeoutError("Redis did not confirm the subscription"))
            raise RedisTimeoutError("Redis did not confirm the subscription") from exc
        if wire.closed:
            wire.lost.result()  # raises why

    async def watch(self, every: float) -> None:
        """Returns (raising why) once the connection is lost. After ``every``
        seconds with nothing heard, a PING must be answered within the timeout."""
        wire = self._wire
        assert wire is not None and wire.transport is not None
        while True:
            heard = wire.heard
            done, _ = await asyncio.wait([wire.lost], timeout=every)
            if done:
                wire.lost.result()
            if wire.heard == heard:  # silent: is Redis still there?
                wire.transport.write(command(b"PING"))
                done, _ = await asyncio.wait([wire.lost], timeout=self.timeout)
                if done:
                    wire.lost.result()
                if wire.heard == heard:
                    wire.close(RedisTimeoutError("Redis did not answer a PING in time"))
                    wire.lost.result()

    def _on_reply(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            try:
                self.on_message(reply[1], reply[2])
            except Exception:  # a bug costs this message (never acknowledged), not the link
                log.exception("handling a message from Redis failed")
        elif isinstance(reply, list) and reply and reply[0] == b"subscribe":
            self._confirmed += 1
            ready = self._ready
            if self._confirmed == len(self.channels) and ready is not None and not ready.done():
                ready.set_result(None)
        elif isinstance(reply, ResponseError):
            assert self._wire is not None
            self._wire.close(reply)
        # else: the login's answers, a PING's pong

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close(RedisConnectionError("closed"))
