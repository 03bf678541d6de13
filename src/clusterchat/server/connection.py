"""One TCP connection: the asyncio Protocol that feeds bytes to the core.

A connection is a Protocol, not a Task with streams, so an idle logged-in
user costs a few hundred bytes. Requests are served in order: while one
awaits I/O (a login, an offline store), later frames wait in a small queue
and reading pauses if that queue grows. What is owed to the peer (order,
coalescing, slow readers, what to store when it ends) is the
:class:`~clusterchat.server.outbox.Outbox`'s business; this class only
feeds it transport events and performs what it answers. A connection gets
its outbox with its first chat message and gives it back once everything
written is settled, so the many idle ones cost nothing for it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import sys
import termios
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

from clusterchat.logs import names_connection
from clusterchat.protocol import codec, proxy
from clusterchat.protocol.framing import NUL, FrameDecoder, FrameTooLarge
from clusterchat.protocol.messages import ErrCode
from clusterchat.server.outbox import FIRST, OVER, QUEUED, End, Outbox
from clusterchat.server.receipts import Unacked
from clusterchat.service.session import Session, Work

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


def _ended_outbox() -> Outbox:
    box = Outbox(0)
    box.end(End.CLOSED_BY_US)
    return box


#: The outbox of every connection that ended while it had none: it refuses
#: deliveries (the service stores them) and owes nothing. An ended outbox
#: changes no more, so one is shared.
_ENDED = _ended_outbox()


class Connection(asyncio.Protocol):
    __slots__ = (
        "_linger",
        "_out",
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
        #: None until the first chat message, and again once all is settled.
        self.outbox: Outbox | None = None
        self._queue: deque[tuple[bytes, int]] | None = None
        # Replies that joined a write due at the end of this tick (and what the
        # outbox had before them).
        self._out: list[bytes] | None = None
        self._paused = False
        self._linger: asyncio.TimerHandle | None = None
        # Receipts: set when the client acknowledges or the connection ends.
        self._room: asyncio.Event | None = None
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
        # Socket options come from the listener (tune_listener), not from
        # here: asking the transport for its socket keeps one per connection.
        self.node.connections.add(self)

    @names_connection
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
                work = self.node.service.handle(
                    self.session, codec.read_request(frame), term == NUL
                )
            except Exception:
                self._failed(frame)
                return
            if work is not None:
                self._wait(work)
            return
        if self._out is not None or len(frames) < 2:
            for item in frames:
                self._serve(item)
            return
        # Requests read together (a client with many in flight) are answered
        # together: their replies gather in _out and leave in one write.
        self._out = []
        for item in frames:
            self._serve(item)
        self._write_replies()

    def eof_received(self) -> bool:
        """A FIN: the peer read all its kernel acknowledged (else it would
        have sent RST); only what crossed its close is stored again. It may
        still read: the replies to its last requests are written first."""
        self._write_replies()
        self._end(End.PEER_FINISHED, self._in_flight())
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

    @names_connection
    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        self._end(End.PEER_CLOSED)
        self.node.connection_closed(self)
        self.node.service.disconnected(self.session)
        self.transport = None

    def refusal(self, why: bytes) -> bytes:
        """What a connection over a limit is told before it is closed."""
        return why

    # -- service.Peer ----------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Write a reply, after what was accepted for the peer before it. If
        a write is due at the end of this loop iteration anyway (a message
        for the peer came first), the reply joins it: a CHAT_ACK and the
        partner's message cost one system call, not two. Requests read
        together are answered together, in one write after the last of them
        (``data_received``). Else it leaves now."""
        t = self.transport
        if t is None or t.is_closing():
            return False
        outbox = self.outbox
        before = outbox.take() if outbox is not None else None  # goes first
        if before is None and outbox is not None and outbox.overflowed:
            self.overflowed()  # receipts: too much not acknowledged
            return False
        out = self._out
        if out is None:
            if before is None:  # nothing due this tick: no reason to wait
                self._write(data)
                return True
            self._out = out = []  # the outbox's first message asked for the flush
        if before is not None:
            out.append(before)
        out.append(data)
        return True

    def deliver(self, data: bytes) -> bool:
        outbox = self.outbox or self._new_outbox()
        verdict = outbox.deliver(data)
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
        (self.outbox or self._new_outbox()).start_receipts(unacked)
        return not self.ended

    def received(self, seq: int) -> bool:
        if self._room is not None:
            self._room.set()
        outbox = self.outbox
        return outbox is not None and outbox.ack(seq)

    async def receipt_room(self, nbytes: int) -> bool:
        while (outbox := self.outbox) is not None and not outbox.has_room(nbytes):
            room = self._room = self._room or asyncio.Event()
            room.clear()
            await room.wait()
        return not self.ended

    def stop_receipts(self) -> list[bytes]:
        if self._room is not None:
            self._room.set()
        outbox = self.outbox
        return outbox.stop_receipts() if outbox is not None else []

    def overflowed(self) -> None:
        """Receipts: too much written and not acknowledged: cut off, all kept."""
        self._receipts_failed(ErrCode.RECEIPT_WINDOW_FULL, _WINDOW_FULL)

    def _receipts_failed(self, code: ErrCode, why: bytes) -> None:
        service = self.node.service
        service.counts.refused("error", code)
        service.refusals.note(self.session, f"receipts: closing ({code.name.lower()})")
        self._cut_off(why)

    def flush(self, now: float = 0.0) -> None:
        """Write this tick's replies and what the outbox has, in one write
        (the node calls this once per loop iteration for every connection
        that was sent or delivered to)."""
        outbox = self.outbox
        data = outbox.take() if outbox is not None else None
        if data is None and outbox is not None and outbox.overflowed:
            self.overflowed()  # receipts: too much not acknowledged
            return
        out = self._out
        if out is not None:
            self._out = None
            if data is not None:
                out.append(data)
            data = out[0] if len(out) == 1 else b"".join(out)
        elif data is None:
            return
        t = self.transport
        if t is None or t.is_closing():
            return  # cut off meanwhile: the outbox's end() kept its part
        self._write(data)
        if not self._watched and outbox is not None and not outbox.idle:
            self._watched = True
            self.node.watch(self)

    def _write(self, data: bytes) -> None:
        """Hand bytes of whole documents to the transport."""
        t = self.transport
        assert t is not None
        t.write(data)

    def _write_replies(self) -> None:
        """Write the replies gathered so far now (before a close, or after
        the requests of one read)."""
        out = self._out
        if out is not None:
            self._out = None
            t = self.transport
            if out and t is not None and not t.is_closing():
                self._write(out[0] if len(out) == 1 else b"".join(out))

    def report(self) -> bool:
        """Tell the outbox what is still in flight; False once it has
        nothing to remember (the node stops asking, and the outbox goes)."""
        outbox = self.outbox
        if self.transport is None or outbox is None or outbox.ended:
            self._watched = False
            return False
        receipts = outbox.receipts
        if receipts is not None and receipts.overdue(self.node.clock()):
            self._watched = False
            self._receipts_failed(ErrCode.RECEIPT_TIMEOUT, _RECEIPT_TIMEOUT)
            return False
        outbox.measured(self._in_flight())
        if outbox.idle:
            self._watched = False
            if outbox.empty:  # nothing owed: the next message makes a new one
                self.outbox = None
        return self._watched

    def _new_outbox(self) -> Outbox:
        self.outbox = Outbox(self.node.settings.output_limit, self.node.budget)
        return self.outbox

    def _end(self, how: End, in_flight: int = 0, cut_off: bool = False) -> None:
        """The outbox is done with (see End); store what it says may be unread."""
        outbox = self.outbox
        self.outbox = _ENDED
        if outbox is not None:
            self._store(outbox.end(how, in_flight), cut_off=cut_off)

    @property
    def ended(self) -> bool:
        """Whether the connection has ended as far as deliveries go."""
        return self.outbox is _ENDED

    def _in_flight(self) -> int:
        """Bytes written that the peer's kernel has not acknowledged yet."""
        t = self.transport
        if t is None:
            return 0
        sock = t.get_extra_info("socket")
        n = t.get_write_buffer_size()
        return n + _unacked(sock.fileno()) if sock is not None else n

    def close(self) -> None:
        """Close by us (logout, timeouts, displaced, shutdown): the peer gets
        what was written, then FIN; what it may not get is stored."""
        t = self.transport
        if t is None or self.ended:
            if t is not None:
                t.close()
            return
        self.flush()
        if self.outbox is not None:
            self.outbox.measured(self._in_flight())  # is it behind, now?
        self._end(End.CLOSED_BY_US)
        t.close()

    def _store(self, unread: list[bytes], cut_off: bool) -> None:
        """The outbox has ended: keep what it owed, wake what waits for room."""
        if self._room is not None:
            self._room.set()
        if unread:
            self.node.service.spill(self.session, unread, cut_off=cut_off)

    # -- flow control: a peer that does not read -----------------------------------------

    def pause_writing(self) -> None:
        """The socket is full: hold chat messages, stop taking requests."""
        if not self.ended:
            (self.outbox or self._new_outbox()).pause()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.outbox is not None and self.outbox.resume():
            self.node.write_soon(self)
        if self.transport is not None and not self._paused:
            self.transport.resume_reading()

    def _cut_off(self, why: bytes | None = None) -> None:
        """Past the output limit (or, with receipts, the unacknowledged
        window's bounds or time: ``why`` says which, and is written last):
        disconnect, and store what it was not sent and what it may not have
        read. Some of that may still reach it while the connection closes:
        a duplicate (same mid), never a loss."""
        self._end(End.CUT_OFF, cut_off=True)
        t = self.transport
        if t is not None and not t.is_closing():
            self._write_replies()  # this iteration's replies, not yet written
            if why is not None:
                self._write(why)
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
            self._wait(work)

    def _dispatch(self, item: tuple[bytes, int]) -> Work:
        frame, term = item
        if term == -1:
            self.node.service.frame_too_large(self.session, self.decoder.max_frame)
            self._queue = deque()  # nothing after this is served
            self.close()
            return None
        try:
            return self.node.service.handle(self.session, codec.read_request(frame), term == NUL)
        except Exception:
            self._failed(frame)
            return None

    def _failed(self, frame: bytes) -> None:
        """A bug must cost one request, never the node (the service logs it)."""
        self.node.service.internal_error(self.session, frame)

    def _wait(self, work: Awaitable[None]) -> None:
        """A request waits on I/O: later ones queue until it is done. A future
        (a chat posted to another node, acknowledged when published) needs
        no task: its callback serves the queue."""
        self._queue = deque()
        if isinstance(work, asyncio.Future):
            work.add_done_callback(self._resume)
        else:
            self.node.spawn(self._drain(work))

    def _resume(self, done: asyncio.Future[Any]) -> None:
        """What queued behind a future, served until a request waits again."""
        queue = self._queue
        while queue:
            work = self._dispatch(queue.popleft())
            if work is not None:  # still queueing: no _wait, which starts a new queue
                if isinstance(work, asyncio.Future):
                    work.add_done_callback(self._resume)
                else:
                    self.node.spawn(self._drain(work))
                return
            queue = self._queue
        self._drained()

    async def _drain(self, first: Awaitable[None]) -> None:
        await first
        queue = self._queue
        while queue:
            work = self._dispatch(queue.popleft())
            if work is not None:
                await work
            queue = self._queue
        self._drained()

    def _drained(self) -> None:
        """Every queued request is served: read again."""
        if self.transport is None or self.transport.is_closing():
            return
        self._queue = None
        if self._paused:
            self._paused = False
            if self.outbox is None or not self.outbox.paused:  # else resume_writing does
                self.transport.resume_reading()


def tune_listener(server: asyncio.Server) -> None:
    """Set the options every accepted connection needs on the listening
    sockets: Linux copies them into each socket it accepts, so they cost
    nothing per connection (no system calls, no socket object kept)."""
    for sock in server.sockets:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Half-open connections (a peer that vanished) die within ~90 s.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


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
