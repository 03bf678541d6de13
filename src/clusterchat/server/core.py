"""The connection core: one chat connection's logic, with no socket and no event loop.

In the spirit of h11 and websockets' ``protocol.py``, a transport feeds the
core what arrived (bytes from TCP with :meth:`ConnectionCore.receive_data`,
whole messages from a WebSocket with :meth:`ConnectionCore.receive_frame`,
the peer's FIN, the connection's loss) and the core decides the rest:
frames, requests served in order, what is owed to the peer (the
:class:`~clusterchat.server.outbox.Outbox`), receipts, a trusted proxy's
PROXY line, what to store when the connection ends. What it wants done on
the wire it asks of its :class:`Link` (write, pause or resume reading,
close), which only does that; the time comes in as ``now``. So the core can
be driven by a test with no socket (tests/server/test_core.py), and the TCP
and WebSocket transports (connection.py, websocket.py) are thin adapters.

Requests are served in order: while one awaits I/O (a login, an offline
store), later frames wait in a small queue, and reading pauses if that queue
grows. The awaiting itself is the node's: the core hands it a coroutine
(:meth:`CoreHost.spawn`). A connection gets its outbox with its first chat
message and gives it back once everything written is settled, so the many
idle ones cost nothing for it.

The core is also the service's :class:`~clusterchat.service.session.Peer`:
what the service writes (replies, deliveries, receipts) comes straight
here, with no adapter in between, on the path every chat takes.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import Future
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from clusterchat.protocol import codec, proxy
from clusterchat.protocol.framing import NEWLINE, NUL, FrameDecoder, FrameTooLarge
from clusterchat.protocol.messages import ErrCode
from clusterchat.server.outbox import FIRST, OVER, QUEUED, RECEIVE_MARGIN, REFUSED, End, Outbox
from clusterchat.server.receipts import Unacked
from clusterchat.service.session import Session

if TYPE_CHECKING:
    from clusterchat.budget import Budget
    from clusterchat.bus.base import Settlement
    from clusterchat.config import Settings
    from clusterchat.protocol.codec import BadRequest
    from clusterchat.protocol.messages import Request
    from clusterchat.service.counts import ServiceCounts
    from clusterchat.service.refusals import RefusalLog
    from clusterchat.service.session import Work

log = logging.getLogger(__name__)

#: Queued frames before the core stops reading from this peer.
QUEUE_PAUSE = 64
#: Seconds a cut-off connection may take to drain before it is aborted.
LINGER = 10.0
#: Seconds a client with receipts may leave a message from another node's
#: batch unconfirmed before it is stored for it anyway
#: (at most the receipt timeout): a batch is not pinned on its sender for long.
SETTLE_GRACE = 10.0
#: The grace while some node keeps more than half of what it may for this
#: node's clients to confirm (``Bus.pinned``): clients slow to confirm (an
#: attacker's, reading fast and never confirming) must not push a sender
#: past its limit, where it stores whole batches, others' messages in them
#: (found by attack: 17% of an innocent receiver's messages came twice).
#: Over our clients' 1-s receipt timer, a trip and a report's half second:
#: at 1 s, innocents 0.3 s away got 4.7% duplicates (a second attack).
SETTLE_GRACE_PRESSED = 2.5
_OVERSIZE = (b"", -1)  # queue marker: the peer sent a frame over the limit
_WINDOW_FULL = codec.error(
    ErrCode.RECEIPT_WINDOW_FULL,
    "too many messages not acknowledged (RECEIVED); closing. They are kept for your next login",
)
_RECEIPT_TIMEOUT = codec.error(
    ErrCode.RECEIPT_TIMEOUT,
    "nothing acknowledged (RECEIVED) for too long; closing. Unacknowledged messages are "
    "kept for your next login",
)
_EVICTED = codec.error(
    ErrCode.RECEIPT_WINDOW_FULL,
    "the server is short of memory and you hold the most of it unacknowledged (RECEIVED); "
    "closing. Unacknowledged messages are kept for your next login",
)
_LATE_TOO_OFTEN = codec.error(
    ErrCode.RECEIPT_TIMEOUT,
    "too many messages acknowledged (RECEIVED) more than 10 s late; closing. "
    "Unacknowledged messages are kept for your next login",
)
#: ``_queue`` once we close: what the peer sent after is dropped unread (a
#: flooder's 20,000 pipelined lines are not each decoded and refused).
_DROPPED: deque[tuple[bytes, int]] = deque(maxlen=0)
#: ``_proxy`` once refused after a PROXY line: input is discarded until the peer closes.
_DISCARD = b"\0refused"


class Link(Protocol):
    """The transport, as the core sees it (the adapters implement it)."""

    #: The client's address (a trusted proxy's PROXY line may change it).
    address: str
    #: What per-address limits count it under (an IPv6 address's /64).
    limit_key: str

    def write(self, data: bytes) -> bool:
        """Hand whole documents to the peer (a WebSocket frames each one).
        False if the transport is closing after it: closed already, or the
        write failed (the peer's reset had come, not yet read), so what it
        carried never left. One call where a write and a look would be two."""
        ...

    def closing(self) -> bool:
        """Nothing more can be written: the transport is closing or gone."""
        ...

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def close(self) -> None:
        """Close by us (the transport's goodbye, then :meth:`ConnectionCore.close`)."""

    def shut(self, linger: float | None = None) -> None:
        """Close the transport once what is written is sent; abort after
        ``linger`` seconds if the peer never reads it."""

    def refuse(self, why: bytes) -> None:
        """Write ``why``, half-close, and abort shortly if the peer stays."""

    def in_flight(self) -> int:
        """Bytes written that the peer's kernel has not acknowledged yet."""
        ...

    def readdress(self, address: str) -> bytes | None:
        """A trusted proxy named the client: count the connection under
        ``address``; the refusal to send if that address is over its limit."""
        ...


class Service(Protocol):
    """The chat service, as a connection sees it (service/chat.py ``ChatService``)."""

    counts: ServiceCounts
    refusals: RefusalLog

    def handle(self, s: Session, request: Request | BadRequest, legacy: bool) -> Work: ...
    def frame_too_large(self, s: Session, limit: int) -> None: ...
    def internal_error(self, s: Session, frame: bytes = b"") -> None: ...
    def spill(
        self,
        s: Session,
        payloads: list[bytes],
        cut_off: bool = True,
        settlements: Sequence[Settlement] = (),
        held: bool = False,
    ) -> None: ...
    def disconnected(self, s: Session) -> None: ...


class CoreHost(Protocol):
    """What the core needs from its node (server/host.py ``Host`` extends it)."""

    settings: Settings
    #: Bytes held for other people on this node (outboxes charge it).
    budget: Budget
    #: Frames of the connections with none half-received: one decoder for
    #: all of them (a connection splits off its own when a frame comes in parts).
    decoder: FrameDecoder
    #: Seconds a client with receipts may leave a message from another
    #: node's batch unconfirmed before it is stored for it anyway: SETTLE_GRACE,
    #: less while other nodes keep much for this node's clients (the host
    #: sets it before each round of reports).
    settle_grace: float

    @property
    def service(self) -> Service: ...

    #: The cores to flush once this loop iteration's reads are done (the
    #: host swaps in an empty list as it flushes them). A core joins once a
    #: tick, itself, without a call (:meth:`ConnectionCore._write_soon`).
    unflushed: list[ConnectionCore]

    def flush_soon(self) -> object:
        """Call ``flush()`` on each core in ``unflushed`` once this loop
        iteration's reads are done (asked by the first to join it)."""

    def watch(self, core: ConnectionCore) -> None:
        """Call ``core.report(now)`` twice a second while it answers True."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` (the queue's drain) as a task of the node."""


def _ended_outbox() -> Outbox:
    box = Outbox(0)
    box.end(End.CLOSED_BY_US)
    return box


#: The outbox of every connection that ended while it had none: it refuses
#: deliveries (the service stores them) and owes nothing. An ended outbox
#: changes no more, so one is shared.
_ENDED = _ended_outbox()


class ConnectionCore:
    __slots__ = (
        "_due",
        "_host",
        "_later",
        "_link",
        "_out",
        "_paused",
        "_proxy",
        "_queue",
        "_service",
        "_taken",
        "_watched",
        "decoder",
        "last_seen",
        "outbox",
        "partial_since",
        "room",
        "session",
    )

    #: Frame to typed request, before the service sees it; raises if it is
    #: none, and ``codec.read_request`` then gives the refusal (tests of
    #: ordering give the core opaque frames instead).
    decode: Callable[[bytes], Request] = codec.decode_valid

    def __init__(self, host: CoreHost, link: Link, now: float) -> None:
        self._host = host
        self._link = link
        self._service = host.service
        #: Who is logged in here; the service writes to it through this core.
        self.session = Session(self, now)
        #: The host's, until a frame arrives in parts: then one of its own.
        self.decoder = host.decoder
        #: None until the first chat message, and again once all is settled.
        self.outbox: Outbox | None = None
        self._queue: deque[tuple[bytes, int]] | None = None
        # Replies that joined a write due at the end of this tick (and what the
        # outbox had before them).
        self._out: list[bytes] | None = None
        # Bytes of _out that send() took from the outbox (written by then, as
        # far as the outbox knows).
        self._taken = 0
        # Replies in order while one made with reply_later() is not yet known:
        # each a one-item list, [None] until filled (None: nothing waits).
        self._later: deque[list[bytes | None]] | None = None
        self._paused = False  # reading paused because the queue is long
        # A flush is asked of the node for this loop iteration (one is enough).
        # One is whenever the outbox has messages pending (deliver's FIRST,
        # resume's True): send() takes from the outbox only then.
        self._due = False
        #: Receipts: set when the client acknowledges or the connection ends
        #: (made when a receipt_room waits).
        self.room: asyncio.Event | None = None
        # Whether the node asks this connection for in-flight reports.
        self._watched = False
        # From a trusted proxy: what arrived of a PROXY line, until it is read.
        self._proxy: bytes | None = None
        self.last_seen = now
        #: When the request now arriving began (0: none is half-received).
        self.partial_since = 0.0

    # -- what arrives ------------------------------------------------------------------

    @property
    def input_held(self) -> bool:
        """The node stopped reading this peer: its requests wait behind one
        of its own that awaits I/O. Its silence meanwhile is the node's."""
        return self._paused

    def expect_proxy(self) -> None:
        """The peer is a trusted proxy: it may begin with a PROXY line."""
        self._proxy = b""

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from a stream (TCP): frames ended by ``\\n`` or NUL."""
        if self._proxy is not None:
            data = self._unproxy(data)
            if not data:
                return
        self.last_seen = now
        decoder = self.decoder
        if self._queue is None:
            one = decoder.whole(data)
            if one is not None:  # the relay's usual read, without lists or a second call
                self.partial_since = 0.0
                work = self._handle(one, data[-1])
                if work is not None:
                    self._wait_for(work)
                return
        try:
            frames = decoder.feed(data)
            if not decoder.pending:
                self.partial_since = 0.0
            else:
                if decoder is self._host.decoder:  # shared: take what it holds
                    self.decoder = decoder.split_off()
                if frames or not self.partial_since:  # a new request began
                    self.partial_since = now
        except FrameTooLarge as exc:
            for item in exc.frames:
                self._serve(item)
            self._serve(_OVERSIZE)
            return
        self._serve_read(frames)

    def receive_frames(self, messages: list[bytes]) -> None:
        """Whole messages from a framed transport (a WebSocket), as many as
        one read held: requests of the modern dialect, answered together as
        :meth:`receive_data`'s are."""
        self._serve_read([(m, NEWLINE) for m in messages])

    def receive_frame(self, frame: bytes) -> None:
        """One whole message (a fragmented one, or one the WebSocket
        library parsed): a request of the modern dialect."""
        self._serve((frame, NEWLINE))

    def _serve_read(self, frames: list[tuple[bytes, int]]) -> None:
        """The requests of one read, in order. Requests read together (a
        client with many in flight) are answered together: their replies
        gather in _out and leave in one write."""
        together = self._out is None and len(frames) > 1
        if together:
            self._out = []
        for frame, term in frames:
            if self._queue is None:  # served now: _serve's case, without its calls
                work = self._handle(frame, term)
                if work is not None:
                    self._wait_for(work)
            else:  # behind a request that awaits I/O
                self._serve((frame, term))
        if together:
            self._write_replies()

    def receive_eof(self) -> None:
        """A FIN (or a WebSocket close): the peer read all its kernel
        acknowledged (else it would have sent RST); only what crossed its
        close is stored again. It may still read: the replies to its last
        requests are written first."""
        self._give_up_later()
        self._write_replies()
        self._end(End.PEER_FINISHED, self._link.in_flight())

    def connection_lost(self) -> None:
        self._end(End.PEER_CLOSED)
        self._service.disconnected(self.session)

    def writing_paused(self) -> None:
        """The socket is full: hold chat messages, stop taking requests."""
        if not self.ended:
            (self.outbox or self._new_outbox()).pause()
        self._link.pause_reading()

    def writing_resumed(self) -> None:
        if self.outbox is not None and self.outbox.resume():
            self._write_soon()
        if not self._paused:
            self._link.resume_reading()

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
            log.warning("closing connection from %s: %s", self._link.address, exc)
            self._proxy = None
            self._link.close()
            return b""
        if found is None:
            self._proxy = buf
            return b""
        self._proxy = None
        address, used = found
        if address is not None:
            refusal = self._link.readdress(address)
            if refusal is not None:
                # Say why and half-close; closing with input unread would
                # make the kernel reset the connection, losing the reason.
                self._proxy = _DISCARD  # not logged in yet: it owes nothing
                self._link.refuse(refusal)
                return b""
        return buf[used:]

    # -- request ordering ----------------------------------------------------------------

    def _handle(self, frame: bytes, term: int) -> Work:
        """The one call into the service: a request, and the I/O it awaits (if any)."""
        try:
            try:
                request: Request | BadRequest = self.decode(frame)
            except Exception:  # not a valid request: the refusal it earns
                request = codec.read_request(frame)
            return self._service.handle(self.session, request, term == NUL)
        except Exception:
            # A bug must cost one request, never the node (the service logs it).
            self._service.internal_error(self.session, frame)
            return None

    def _serve(self, item: tuple[bytes, int]) -> None:
        if self._queue is not None:
            self._queue.append(item)
            if len(self._queue) >= QUEUE_PAUSE and not self._paused:
                self._paused = True
                self._link.pause_reading()
            return
        work = self._dispatch(item)
        if work is not None:
            self._wait_for(work)

    def _dispatch(self, item: tuple[bytes, int]) -> Work:
        frame, term = item
        if term == -1:
            self._service.frame_too_large(self.session, self.decoder.max_frame)
            self._queue = deque()  # nothing after this is served
            self._link.close()
            return None
        return self._handle(frame, term)

    def _wait_for(self, work: Awaitable[None]) -> None:
        """A request awaits I/O: later ones queue until it is done. A future
        (a chat posted to another node, acknowledged when published) needs
        no task: its callback serves the queue; other work is driven by a
        task of the node's."""
        self._queue = deque()
        if isinstance(work, Future):
            work.add_done_callback(self._resume)
        else:
            self._host.spawn(self._drain(work))

    def _resume(self, done: Future[None]) -> None:
        """What queued behind a future, served until a request waits again."""
        queue = self._queue
        while queue:
            work = self._dispatch(queue.popleft())
            if work is not None:  # still queueing: no _wait_for, which starts a new queue
                if isinstance(work, Future):
                    work.add_done_callback(self._resume)
                else:
                    self._host.spawn(self._drain(work))
                return
            queue = self._queue
        self._drained()

    async def _drain(self, work: Awaitable[None]) -> None:
        await work
        queue = self._queue
        while queue:
            work_ = self._dispatch(queue.popleft())
            if work_ is not None:
                await work_
            queue = self._queue
        self._drained()

    def _drained(self) -> None:
        """Every queued request is served: read again."""
        if self._link.closing():
            return
        self._queue = None
        if self._paused:
            self._paused = False
            if self.outbox is None or not self.outbox.paused:  # else writing_resumed does
                self._link.resume_reading()

    # -- service.Peer: what the service writes ---------------------------------------------

    @property
    def address(self) -> str:
        return self._link.address

    @property
    def limit_key(self) -> str:
        return self._link.limit_key

    def closing(self) -> bool:
        return self._link.closing()

    def reply_later(self) -> Callable[[bytes | None], None]:
        """A reply whose bytes are known later (a CHAT_ACK waiting for the
        message's copy): replies sent meanwhile wait behind it, so the
        client sees them in the order of its requests, while its next
        requests are served at once. Call what this returns once, with the
        reply (None: nothing to send)."""
        slot: list[bytes | None] = [None]
        later = self._later
        if later is None:
            later = self._later = deque()
        later.append(slot)

        def fill(data: bytes | None) -> None:
            slot[0] = data if data is not None else b""
            self._release_later()

        return fill

    def _give_up_later(self) -> None:
        """The connection is closing: what is known of the replies waiting
        behind a :meth:`reply_later` goes now, in order (the server's own
        goodbye among them); a reply still unknown is not waited for."""
        later, self._later = self._later, None
        for (data,) in later or ():
            if data:
                self._send_now(data)

    def _release_later(self) -> None:
        later = self._later
        while later and later[0][0] is not None:
            data = later.popleft()[0]
            if data:
                self._send_now(data)
        if not later:
            self._later = None

    def send(self, data: bytes) -> bool:
        """Write a reply, after what was accepted for the peer before it.
        (After a :meth:`reply_later` not yet filled, it waits for that.)"""
        later = self._later
        if later is not None:
            later.append([data])
            return not self._link.closing()
        return self._send_now(data)

    def _send_now(self, data: bytes) -> bool:
        """Write a reply, after what was accepted for the peer before it.
        Replies leave at the end of this loop iteration, in one write with
        what the outbox has by then: a CHAT_ACK and the partner's message
        cost one system call, not two. Requests read together are answered
        together, in one write after the last of them (``receive_data``)."""
        if self._link.closing():
            return False
        outbox = self.outbox
        before = None
        if self._due and outbox is not None:  # messages may be pending: they go first
            before = outbox.take()
            if before is None and outbox.overflowed:
                self.overflowed()  # receipts: too much not acknowledged
                return False
        out = self._out
        if out is None:
            self._out = out = []
            if not self._due:  # _write_soon, inlined: once per chat in our dialect
                self._due = True
                unflushed = self._host.unflushed
                if not unflushed:
                    self._host.flush_soon()
                unflushed.append(self)
        if before is not None:
            out.append(before)
            self._taken += len(before)
        out.append(data)
        return True

    def deliver(self, data: bytes, settlement: Settlement | None = None) -> bool:
        outbox = self.outbox or self._new_outbox()
        verdict = outbox.deliver(data)
        if settlement is not None and verdict != REFUSED and outbox.receipts is not None:
            outbox.keep(settlement)
        if verdict == QUEUED:
            return True
        if verdict == FIRST:
            if not self._due:  # _write_soon, inlined: once per chat at w1
                self._due = True
                unflushed = self._host.unflushed
                if not unflushed:
                    self._host.flush_soon()
                unflushed.append(self)
            return True
        if verdict == OVER:
            self._cut_off()
            return True
        return False  # ended: the caller keeps it

    def start_receipts(self, carried: list[bytes], marks: Sequence[Settlement] = ()) -> bool:
        lim = self._host.settings.limits
        unacked = Unacked(
            self._host.budget, lim.receipt_window, lim.receipt_bytes, lim.receipt_timeout
        )
        for number, mark in enumerate(marks, 1):  # before any is written: 1 to n
            unacked.keep(mark, number)
        if carried:  # in the login reply, unnumbered there: 1 to n
            unacked.written(carried, sum(map(len, carried)))
        (self.outbox or self._new_outbox()).start_receipts(unacked)
        return not self.ended

    async def receipt_room(self, nbytes: int) -> bool:
        while (outbox := self.outbox) is not None and not outbox.has_room(nbytes):
            room = self.room = self.room or asyncio.Event()
            room.clear()
            await room.wait()
        return not self.ended

    def received(self, seq: int) -> bool | None:
        if self.room is not None:
            self.room.set()
        receipts = self.outbox.receipts if self.outbox is not None else None
        if receipts is None:
            return False
        released = receipts.released
        if not receipts.ack(seq):
            return False
        return True if receipts.released != released else None  # None: nothing new

    def stop_receipts(self) -> tuple[list[bytes], list[Settlement]]:
        if self.room is not None:
            self.room.set()
        outbox = self.outbox
        if outbox is None:
            return [], []
        return outbox.stop_receipts(), outbox.unsettled()

    def overflowed(self) -> None:
        """Receipts: too much written and not acknowledged: cut off, all kept."""
        self._receipts_failed(ErrCode.RECEIPT_WINDOW_FULL, _WINDOW_FULL)

    def _receipts_failed(self, code: ErrCode, why: bytes) -> None:
        self._service.counts.refused("error", code)
        self._service.refusals.note(self.session, f"receipts: closing ({code.name.lower()})")
        self._cut_off(why)

    def close(self) -> None:
        """Close by us (logout, timeouts, displaced, shutdown): the peer gets
        what was written, then FIN; what it may not get is stored. Requests
        still unread are not served."""
        self._queue = _DROPPED
        self._give_up_later()
        if self.ended:
            self._link.shut()
            return
        self.flush()
        if self.outbox is not None:
            self.outbox.measured(self._link.in_flight())  # is it behind, now?
        self._end(End.CLOSED_BY_US)
        self._link.shut()

    # -- the node's rounds: flushes once per tick, in-flight reports -----------------------

    def flush(self) -> None:
        """Write this tick's replies and what the outbox has, in one write
        (the node calls this once per loop iteration for every connection
        that was sent or delivered to)."""
        self._due = False
        link = self._link
        if link.closing():
            # Cut off, or the peer's reset was read in this iteration after
            # messages were accepted for it: nothing is taken, and what a
            # reply took goes back, so what was never written is pending and
            # end() returns all of it (as written, a peer that kept up would
            # get only its last few messages stored again).
            self._unwritten()
            return
        outbox = self.outbox
        out = self._out
        if outbox is None:  # replies alone: nothing was taken from an outbox
            if out is not None:
                self._out = None
                self._taken = 0
                link.write(out[0] if len(out) == 1 else b"".join(out))
            return
        data = outbox.take() if outbox.pending is not None else None  # None: only replies
        taken = self._taken
        if data is not None:
            taken += len(data)
            if out is not None:
                out.append(data)
        elif outbox.overflowed:
            self.overflowed()  # receipts: too much not acknowledged
            return
        if out is not None:
            self._out = None
            self._taken = 0
            data = out[0] if len(out) == 1 else b"".join(out)
        elif data is None:
            return
        if not link.write(data):
            # The write failed: what it carried of the outbox never left.
            if taken:
                outbox.unwritten(taken)
            return
        if outbox.unmeasured > RECEIVE_MARGIN:
            # More than a receive buffer since the last look: the peer may
            # not be reading. If it resets before the next report, what sits
            # unacknowledged in our send queue must be known to be unread.
            outbox.probed(link.in_flight())
        if not self._watched and not outbox.idle:
            self._watched = True
            self._host.watch(self)

    def _write_soon(self) -> None:
        """Ask the node for a flush at the end of this iteration, once: a
        reply deferred and then a delivery (or the reverse) share it."""
        if not self._due:
            self._due = True
            unflushed = self._host.unflushed
            if not unflushed:  # the first this tick: the host schedules the flushes
                self._host.flush_soon()
            unflushed.append(self)

    def report(self, now: float) -> bool:
        """Tell the outbox what is still in flight; False once it has
        nothing to remember (the node stops asking, and the outbox goes)."""
        outbox = self.outbox
        if outbox is None or outbox.ended or self._link.closing():
            self._watched = False
            return False
        receipts = outbox.receipts
        if receipts is not None and self._queue is not None:
            # Its requests wait behind one of its own that awaits our store
            # or bus, RECEIVED among them: silence meanwhile is ours.
            receipts.unread(now)
        elif receipts is not None:
            if receipts.overdue(now):
                self._watched = False
                self._receipts_failed(ErrCode.RECEIPT_TIMEOUT, _RECEIPT_TIMEOUT)
                return False
            late, settlements = receipts.late(now, min(self._host.settle_grace, receipts.timeout))
            if settlements:  # stored for it now: their batches need not wait for it
                self._service.spill(self.session, late, False, settlements, held=True)
                if receipts.stored_early > receipts.max_count:
                    # Each is a row outside the mailbox's quota (it was
                    # acknowledged): a client always late must not add them
                    # for ever. It is declared dead, as one that confirms nothing.
                    self._watched = False
                    self._receipts_failed(ErrCode.RECEIPT_TIMEOUT, _LATE_TOO_OFTEN)
                    return False
        outbox.measured(self._link.in_flight())
        if outbox.idle:
            self._watched = False
            if outbox.empty:  # nothing owed: the next message makes a new one
                self.outbox = None
        return self._watched

    def stalled(self, now: float) -> int:
        """Bytes this connection holds against the node's memory budget for
        a peer that has made no progress lately (``Outbox.stalled``)."""
        outbox = self.outbox
        return outbox.stalled(now) if outbox is not None and not outbox.ended else 0

    def evict(self) -> None:
        """The node's memory budget is over its limit and this connection
        holds the most of it: cut it off, what it holds stored (rather than
        refuse every sender on the node because of it)."""
        outbox = self.outbox
        if outbox is None or outbox.ended:
            return
        self._watched = False
        if outbox.receipts is not None:
            self._receipts_failed(ErrCode.RECEIPT_WINDOW_FULL, _EVICTED)
        else:  # as a peer past its output limit
            self._cut_off()

    # -- the end: what is stored --------------------------------------------------------

    @property
    def ended(self) -> bool:
        """Whether the connection has ended as far as deliveries go."""
        return self.outbox is _ENDED

    def _new_outbox(self) -> Outbox:
        self.outbox = Outbox(self._host.settings.output_limit, self._host.budget)
        return self.outbox

    def _write_replies(self) -> None:
        """Write the replies gathered so far now (before a close, or after
        the requests of one read)."""
        if self._link.closing():
            self._unwritten()
            return
        out = self._out
        if out is not None:
            self._out = None
            taken, self._taken = self._taken, 0
            if (
                out
                and not self._link.write(out[0] if len(out) == 1 else b"".join(out))
                and taken
                and self.outbox is not None
            ):
                self.outbox.unwritten(taken)  # the write failed (see flush)

    def _unwritten(self) -> None:
        """The transport is closing: this iteration's replies are not owed,
        but messages they took from the outbox go back to it (never written)."""
        self._out = None
        taken, self._taken = self._taken, 0
        if taken and self.outbox is not None:
            self.outbox.unwritten(taken)

    def _end(self, how: End, in_flight: int = 0, cut_off: bool = False) -> None:
        """The outbox is done with (see End); store what it says may be unread,
        wake what waits for room."""
        outbox = self.outbox
        self.outbox = _ENDED
        if outbox is None:
            return
        unread = outbox.end(how, in_flight)
        settlements = outbox.unsettled()
        if self.room is not None:
            self.room.set()
        if unread or settlements:
            self._service.spill(self.session, unread, cut_off, settlements)

    def _cut_off(self, why: bytes | None = None) -> None:
        """Past the output limit (or, with receipts, the unacknowledged
        window's bounds or time: ``why`` says which, and is written last):
        disconnect, and store what it was not sent and what it may not have
        read. Some of that may still reach it while the connection closes:
        a duplicate (same mid), never a loss."""
        self._end(End.CUT_OFF, cut_off=True)
        if not self._link.closing():
            self._give_up_later()
            self._write_replies()  # this iteration's replies, not yet written
            if why is not None:
                self._link.write(why)
        # Flushes what it can, then FIN; cut hard if the peer never reads.
        self._link.shut(LINGER)
