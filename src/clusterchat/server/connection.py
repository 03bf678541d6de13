"""One TCP connection: the asyncio Protocol that feeds bytes to the core.

A connection is a Protocol, not a Task with streams, so an idle logged-in
user costs a few hundred bytes. Requests are served in order: while one
awaits I/O (a login, an offline store), later frames wait in a small queue
and reading pauses if that queue grows. What is owed to the peer (order,
coalescing, slow readers, what to store when it ends) is the
:class:`~clusterchat.server.outbox.Outbox`'s business; this class only
feeds it transport events and performs what it answers.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import sys
import termios
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from clusterchat.logs import connection_id
from clusterchat.protocol import codec, proxy
from clusterchat.protocol.framing import NUL, FrameDecoder, FrameTooLarge
from clusterchat.protocol.messages import ErrCode
from clusterchat.server.outbox import FIRST, OVER, QUEUED, End, Outbox
from clusterchat.server.receipts import Unacked
from clusterchat.service.session import Session

if TYPE_CHECKING:
    from clusterchat.server.host import Host

log = logging.getLogger(__name__)

_QUEUE_PAUSE = 64  # queued frames before we stop reading from this peer
_OVERSIZE = (b"", -1)  # queue marker: the peer sent a frame over the limit
#: Bytes the transport buffers before it pauses us: past this, messages wait
#: in the outbox, where they can still be stored offline.
_WRITE_HIGH = 64 * 1024
#: Seconds a cut-off connection may take to drain before it is aborted.
_LINGER = 10.0
_WINDOW_FULL = codec.error(
    ErrCode.RECEIPT_WINDOW_FULL,
    "too many messages not acknowledged (RECEIVED); closing. They are kept for your next login",
)
_RECEIPT_TIMEOUT = codec.error(
    ErrCode.RECEIPT_TIMEOUT,
    "nothing acknowledged (RECEIVED) for too long; closing. Unacknowledged messages are "
    "kept for your next login",
)


def _unacked(fd: int) -> int:
    """Bytes in the kernel's send queue the peer has not acknowledged."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"), sys.byteorder)
    except OSError:
        return 0


#: ``_proxy`` once refused after a PROXY line: input is discarded until the peer closes.
_DISCARD = b"\0refused"


class Connection(asyncio.Protocol):
    __slots__ = (
        "_fd",
        "_linger",
        "_paused",
        "_proxy",
        "_queue",
        "_room",
        "_watched",
        "address",
        "decoder",
        "id",
        "last_seen",
        "node",
        "outbox",
        "partial_since",
        "session",
        "transport",
    )

    def __init__(self, node: Host[Connection]) -> None:
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(node.settings.max_frame)
        self.session = Session(self, node.clock())
        self.outbox = Outbox(node.settings.output_limit, node.budget)
        self._queue: deque[tuple[bytes, int]] | None = None
        self._paused = False
        self._linger: asyncio.TimerHandle | None = None
        # Receipts: set when the client acknowledges or the connection ends.
        self._room: asyncio.Event | None = None
        self._fd = -1
        # Whether the node asks this connection for in-flight reports.
        self._watched = False
        # From a trusted proxy: what arrived of a PROXY line, until it is read.
        self._proxy: bytes | None = None
        self.last_seen = node.clock()
        # When the request now arriving began (0: none is half-received).
        self.partial_since = 0.0
        self.address = ""
        self.id = node.new_connection_id()  # on its log lines (clusterchat.logs)

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.address = self.node.intern_address(peer[0] if peer else "")
        refusal = self.node.admit(self.address)
        if refusal is not None:
            self.transport.set_protocol(_Refused(self.transport, self.refusal(refusal)))
            self.transport = None
            return
        if self.node.trusts(self.address):
            self._proxy = b""
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._fd = sock.fileno()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Half-open connections (a peer that vanished) die within ~90 s.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        self.node.connections.add(self)

    def data_received(self, data: bytes) -> None:
        token = connection_id.set(self.id)
        try:
            self._received(data)
        finally:
            connection_id.reset(token)

    def _received(self, data: bytes) -> None:
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

    def eof_received(self) -> bool:
        """A FIN: the peer read all its kernel acknowledged (else it would
        have sent RST); only what crossed its close is stored again."""
        self._store(self.outbox.end(End.PEER_FINISHED, self._in_flight()), cut_off=False)
        return False  # close our side too

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
                self._proxy = _DISCARD  # not logged in yet: it owes nothing
                self.transport.write(refusal)
                self.transport.write_eof()
                loop = asyncio.get_running_loop()
                self._linger = loop.call_later(2.0, self.transport.abort)
                return b""
        return buf[used:]

    def connection_lost(self, exc: Exception | None) -> None:
        token = connection_id.set(self.id)
        try:
            self._lost()
        finally:
            connection_id.reset(token)

    def _lost(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        self._store(self.outbox.end(End.PEER_CLOSED), cut_off=False)
        self.node.connection_closed(self)
        self.node.service.disconnected(self.session)
        self.transport = None

    def refusal(self, why: bytes) -> bytes:
        """What a connection over a limit is told before it is closed."""
        return why

    # -- service.Peer ----------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing():
            return False
        self.flush()  # what was queued before goes first
        if t.is_closing():  # it was cut off (receipts: over the window)
            return False
        t.write(data)
        return True

    def deliver(self, data: bytes) -> bool:
        verdict = self.outbox.deliver(data)
        if verdict == QUEUED:
            return True
        if verdict == FIRST:
            self.node.write_soon(self)
            return True
        if verdict == OVER:
            self._cut_off()
            return True
        return False  # ended: the caller keeps it

    def start_receipts(self, carried: list[bytes]) -> bool:
        lim = self.node.settings.limits
        unacked = Unacked(
            self.node.budget, lim.receipt_window, lim.receipt_bytes, lim.receipt_timeout
        )
        if carried:  # in the login reply, unnumbered there: 1 to n
            unacked.written(carried, sum(map(len, carried)))
        self.outbox.start_receipts(unacked)
        return True

    def received(self, seq: int) -> bool:
        if self._room is not None:
            self._room.set()
        return self.outbox.ack(seq)

    async def receipt_room(self, nbytes: int) -> bool:
        box = self.outbox
        while not box.has_room(nbytes):
            room = self._room = self._room or asyncio.Event()
            room.clear()
            await room.wait()
        return not box.ended

    def stop_receipts(self) -> list[bytes]:
        if self._room is not None:
            self._room.set()
        return self.outbox.stop_receipts()

    def _store(self, unread: list[bytes], cut_off: bool) -> None:
        """The outbox has ended: keep what it owed, wake what waits for room."""
        if self._room is not None:
            self._room.set()
        if unread:
            self.node.service.spill(self.session, unread, cut_off=cut_off)

    def flush(self, now: float = 0.0) -> None:
        """Write what the outbox has for this tick (the node calls this once
        per loop iteration for every connection that was delivered to)."""
        data = self.outbox.take()
        if data is None:
            if self.outbox.overflowed:
                self.overflowed()
            return
        t = self.transport
        assert t is not None  # the outbox ends before the transport goes
        t.write(data)
        if not self._watched:
            self._watched = True
            self.node.watch(self)

    def overflowed(self) -> None:
        """Receipts: too much written and not acknowledged: cut off, all kept."""
        self._receipts_failed(ErrCode.RECEIPT_WINDOW_FULL, _WINDOW_FULL)

    def _receipts_failed(self, code: ErrCode, why: bytes) -> None:
        service = self.node.service
        service.counts.refused("error", code)
        service.refusals.note(self.session, f"receipts: closing ({code.name.lower()})")
        self._cut_off(why)

    def report(self) -> bool:
        """Tell the outbox what is still in flight; False once it has
        nothing to remember (the node stops asking)."""
        t = self.transport
        if t is None or self.outbox.ended:
            self._watched = False
            return False
        receipts = self.outbox.receipts
        if receipts is not None and receipts.overdue(self.node.clock()):
            self._watched = False
            self._receipts_failed(ErrCode.RECEIPT_TIMEOUT, _RECEIPT_TIMEOUT)
            return False
        self.outbox.measured(self._in_flight())
        if self.outbox.idle:
            self._watched = False
        return self._watched

    def _in_flight(self) -> int:
        """Bytes written that the peer's kernel has not acknowledged yet."""
        t = self.transport
        n = t.get_write_buffer_size() if t is not None else 0
        return n + _unacked(self._fd) if self._fd >= 0 else n

    def close(self) -> None:
        """Close by us (logout, timeouts, displaced, shutdown): the peer gets
        what was written, then FIN; what it may not get is stored."""
        t = self.transport
        if t is None or self.outbox.ended:
            if t is not None:
                t.close()
            return
        self.flush()
        self.outbox.measured(self._in_flight())  # is it behind, now?
        self._store(self.outbox.end(End.CLOSED_BY_US), cut_off=False)
        t.close()

    # -- flow control: a peer that does not read -----------------------------------------

    def pause_writing(self) -> None:
        """The socket is full: hold chat messages, stop taking requests."""
        self.outbox.pause()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.outbox.resume():
            self.node.write_soon(self)
        if self.transport is not None and not self._paused:
            self.transport.resume_reading()

    def _cut_off(self, why: bytes | None = None) -> None:
        """Past the output limit (or, with receipts, the unacknowledged
        window's bounds or time: ``why`` says which): disconnect, and store
        what it was not sent and what it may not have read. Some of that may
        still reach it while the connection closes: a duplicate (same mid),
        never a loss."""
        self._store(self.outbox.end(End.CUT_OFF), cut_off=True)
        t = self.transport
        if why is not None and t is not None and not t.is_closing():
            self.send(why)
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
            if not self.outbox.paused:  # else resume_writing resumes reading
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
