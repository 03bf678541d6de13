"""One TCP connection: the asyncio Protocol that feeds bytes to the core.

A connection is a Protocol, not a Task with streams, so an idle logged-in
user costs a few hundred bytes. Requests are served in order: while one
awaits I/O (a login, an offline store), later frames wait in a small queue
and reading pauses if that queue grows.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from clusterchat.protocol import proxy
from clusterchat.protocol.framing import NUL, FrameDecoder, FrameTooLarge
from clusterchat.service.session import Session

if TYPE_CHECKING:
    from clusterchat.server.node import Node

log = logging.getLogger(__name__)

_QUEUE_PAUSE = 64  # queued frames before we stop reading from this peer
_OVERSIZE = (b"", -1)  # queue marker: the peer sent a frame over the limit
#: Bytes the transport buffers before it pauses us: past this, messages wait
#: in our own backlog, where they can still be stored offline.
_WRITE_HIGH = 64 * 1024
#: Seconds a cut-off connection may take to drain before it is aborted.
_LINGER = 10.0
#: Messages written this recently when the peer closes may never have been
#: read (they crossed its close on the wire): they are stored again. About
#: a round trip; 1 s covers the internet. A duplicate (same mid) is possible.
#: At most the last _RECENT_MAX of them: a person gets a few a second, and a
#: benchmark client getting thousands must not cost thousands of rows per close.
_RECENT = 1.0
_RECENT_MAX = 64
#: ``_proxy`` once refused after a PROXY line: input is discarded until the peer closes.
_DISCARD = b"\0refused"


class Connection(asyncio.Protocol):
    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_by_us",
        "_linger",
        "_older",
        "_out",
        "_paused",
        "_proxy",
        "_queue",
        "_recent",
        "_recent_since",
        "_tail",
        "address",
        "decoder",
        "last_seen",
        "node",
        "partial_since",
        "session",
        "transport",
    )

    def __init__(self, node: Node) -> None:
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(node.settings.max_frame)
        self.session = Session(self, node.clock())
        self._queue: deque[tuple[bytes, int]] | None = None
        self._paused = False
        # Chat messages waiting while the peer is not reading (writing paused).
        self._backlog: list[bytes] | None = None
        self._backlog_bytes = 0
        # Messages written while the transport's own buffer was not empty:
        # some of their bytes may not have reached the socket yet.
        self._tail: list[bytes] | None = None
        self._linger: asyncio.TimerHandle | None = None
        # Chat messages for this peer not yet written: written together once
        # the loop has read everything it can (one syscall, not one each).
        self._out: list[bytes] | None = None
        # What was written in the last one or two _RECENT periods, and
        # whether the close was ours (then the peer was still reading).
        self._recent: list[bytes] | None = None
        self._older: list[bytes] | None = None
        self._recent_since = 0.0
        self._by_us = False
        # From a trusted proxy: what arrived of a PROXY line, until it is read.
        self._proxy: bytes | None = None
        self.last_seen = node.clock()
        # When the request now arriving began (0: none is half-received).
        self.partial_since = 0.0
        self.address = ""

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.address = self.node.intern_address(peer[0] if peer else "")
        refusal = self.node.admit(self.address)
        if refusal is not None:
            self.transport.set_protocol(_Refused(self.transport, refusal))
            self.transport = None
            return
        if self.node.trusts(self.address):
            self._proxy = b""
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Half-open connections (a peer that vanished) die within ~90 s.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        self.node.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._proxy is not None:
            data = self._unproxy(data)
            if not data:
                return
        self.last_seen = now = self.node.clock()
        try:
            frames = self.decoder.feed(data)
            if not self.decoder.pending:
                self.partial_since = 0.0
            elif frames or not self.partial_since:  # a new request began
                self.partial_since = now
        except FrameTooLarge as exc:
            for item in exc.frames:
                self._serve(item)
            self._serve(_OVERSIZE)
            return
        if self._queue is None and len(frames) == 1:
            # The relay's usual case, without the general path's calls.
            frame, term = frames[0]
            try:
                work = self.node.service.handle(self.session, frame, term == NUL)
            except Exception:
                self._failed(frame)
                return
            if work is not None:
                self._queue = deque()
                self.node.spawn(self._drain(work))
            return
        for item in frames:
            self._serve(item)

    def _unproxy(self, data: bytes) -> bytes:
        """Read a PROXY line from a trusted proxy, if it sends one: the
        client's real address replaces the proxy's. Returns what follows."""
        if self._proxy is _DISCARD:
            return b""
        buf = self._proxy + data if self._proxy else data
        if not proxy.may_be_header(buf):
            self._proxy = None  # a direct connection from a trusted address
            return buf
        try:
            found = proxy.parse(buf)
        except proxy.BadHeader as exc:
            log.warning("closing connection from %s: %s", self.address, exc)
            self._proxy = None
            self.close()
            return b""
        if found is None:
            self._proxy = buf
            return b""
        self._proxy = None
        address, used = found
        if address is not None:
            refusal = self.node.readdress(self, address)
            if refusal is not None and self.transport is not None:
                # Say why and half-close; closing with input unread would
                # make the kernel reset the connection, losing the reason.
                self._proxy, self._by_us = _DISCARD, True
                self.transport.write(refusal)
                self.transport.write_eof()
                loop = asyncio.get_running_loop()
                self._linger = loop.call_later(2.0, self.transport.abort)
                return b""
        return buf[used:]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        unread = [] if self._by_us else ((self._older or []) + (self._recent or []))[-_RECENT_MAX:]
        self._older = self._recent = None
        if self._out:  # accepted for this peer, never written
            unread += self._out
            self._out = None
        if unread:
            self.node.service.spill(self.session, unread, cut_off=False)
        self.node.connection_closed(self)
        self.node.service.disconnected(self.session)
        self.transport = None

    # -- service.Peer ----------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing():
            return False
        if self._out is not None:  # what was queued before goes first
            self.flush()
        t.write(data)
        return True

    def deliver(self, data: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing():
            return False
        backlog = self._backlog
        if backlog is None:
            out = self._out
            if out is None:
                self._out = [data]
                self.node.write_soon(self)
            else:
                out.append(data)
            return True
        backlog.append(data)
        self._backlog_bytes += len(data)
        if self._backlog_bytes > self.node.settings.output_limit:
            self._cut_off()
        return True

    def flush(self, now: float = 0.0) -> None:
        """Write what is queued; ``now`` saves a clock read per connection
        when the node flushes many at once."""
        out, self._out = self._out, None
        if not out:
            return
        t = self.transport
        if t is None or t.is_closing():  # closed since they were accepted: keep them
            self.node.service.spill(self.session, out, cut_off=False)
            return
        t.write(out[0] if len(out) == 1 else b"".join(out))
        if t.get_write_buffer_size():  # the socket is full: remember what may wait
            if self._tail is None:
                self._tail = list(out)
            else:
                self._tail.extend(out)
        elif self._tail is not None:
            self._tail = None
        now = now or self.node.clock()
        recent = self._recent
        if now - self._recent_since > _RECENT:
            self._older, self._recent, self._recent_since = recent, out, now
        elif recent is None:
            self._recent = out
        else:
            recent.extend(out)
            if len(recent) > 2 * _RECENT_MAX:  # trimmed now and then, not per write
                del recent[:-_RECENT_MAX]
                self._older = None

    def age(self, now: float) -> None:
        """Let go of what was written long enough ago (the sweeper calls this)."""
        if self._recent is not None and now - self._recent_since > 2 * _RECENT:
            self._older = self._recent = None

    def close(self) -> None:
        if self.transport is not None:
            if self._out is not None:
                self.flush()
            self._by_us = True
            self.transport.close()

    # -- flow control: a peer that does not read -----------------------------------------

    def pause_writing(self) -> None:
        """The socket is full: hold chat messages here, stop taking requests."""
        self._backlog, self._backlog_bytes = [], 0
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        backlog, self._backlog = self._backlog or [], None
        for data in backlog:  # queued for the next flush, which may pause us again
            self.deliver(data)
        if self.transport is not None and not self._paused:
            self.transport.resume_reading()

    def _cut_off(self) -> None:
        """Past the output limit: disconnect, and let the service keep what did
        not reach the socket: the backlog, and the messages still (even
        partly) in the transport's buffer. They may also reach the peer while
        the connection closes: a duplicate (same mid), never a loss."""
        t = self.transport
        backlog, self._backlog = self._backlog or [], None
        tail, self._tail = self._tail or [], None
        unsent = t.get_write_buffer_size() if t is not None else 0
        waiting: list[bytes] = []
        for data in reversed(tail):
            if unsent <= 0:
                break
            waiting.append(data)
            unsent -= len(data)
        waiting.reverse()
        self.node.service.spill(self.session, waiting + backlog)
        self._by_us = True  # what else was written, the peer had the time to read
        if t is not None:
            t.close()  # flushes what it can, then FIN; cut hard if the peer never reads
            self._linger = asyncio.get_running_loop().call_later(_LINGER, t.abort)

    # -- request ordering ------------------------------------------------------------

    def _serve(self, item: tuple[bytes, int]) -> None:
        if self._queue is not None:
            self._queue.append(item)
            if len(self._queue) >= _QUEUE_PAUSE and not self._paused and self.transport:
                self._paused = True
                self.transport.pause_reading()
            return
        work = self._dispatch(item)
        if work is not None:
            self._queue = deque()
            self.node.spawn(self._drain(work))

    def _dispatch(self, item: tuple[bytes, int]) -> Any:
        frame, term = item
        if term == -1:
            self.node.service.frame_too_large(self.session, self.decoder.max_frame)
            self._queue = deque()  # nothing after this is served
            self.close()
            return None
        try:
            return self.node.service.handle(self.session, frame, term == NUL)
        except Exception:
            self._failed(frame)
            return None

    def _failed(self, frame: bytes) -> None:
        """A bug must cost one request, never the node (the service logs it)."""
        self.node.service.internal_error(self.session, frame)

    async def _drain(self, work: Any) -> None:
        await work
        queue = self._queue
        while queue:
            work = self._dispatch(queue.popleft())
            if work is not None:
                await work
            queue = self._queue
        if self.transport is None or self.transport.is_closing():
            return
        self._queue = None
        if self._paused:
            self._paused = False
            if self._backlog is None:  # else resume_writing resumes reading
                self.transport.resume_reading()


class _Refused(asyncio.Protocol):
    """A connection over the limit: say why, then close without a reset.

    Closing at once with the peer's first request unread would make the
    kernel send RST, and the peer would lose the explanation; so send it,
    half-close, and discard input until the peer closes (or a short while).
    """

    def __init__(self, transport: asyncio.Transport, why: bytes) -> None:
        self.transport = transport
        transport.write(why)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(2.0, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
