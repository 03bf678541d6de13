"""What one connection owes its peer: the outbox, a sans-I/O state machine.

Every chat message accepted for a peer goes through one :class:`Outbox`,
which decides what is written now, what waits for a slow reader, and what
must be stored offline when the connection ends, whatever the reason. The
transport (``server/connection.py``, or a WebSocket adapter) only feeds it
events and does what it answers; nothing here touches a socket or a loop.

A message moves through three places, in this order::

    deliver() ─▶ pending ──take()──▶ window ──measured()──▶ (settled: gone)
                  │  ▲ resume()
        paused ─▶ held
                         end() returns pending + held + the unsafe part of window

- **pending**: accepted this loop tick, written together at its end (one
  write per tick, not one per message);
- **held**: accepted while the transport is paused (the peer is not reading
  as fast as it is sent to); past ``limit`` bytes the peer is cut off;
- **window**: written, but not yet known to be past the peer. A write only
  hands bytes to the kernel: if the peer then closes or resets, whatever
  it had not read is gone. The transport reports how many bytes are still
  in flight (its buffer plus the kernel's unacknowledged send queue) with
  :meth:`Outbox.measured`, about twice a second while the window is not
  empty; what was written before that report and lies beyond the bytes
  in flight plus a margin for the peer's own receive buffer (the last
  ``recent_max`` messages at most, when nothing is in flight) is settled,
  and everything once a report finds nothing in flight and nothing
  written since the previous one (the peer had that long to read).

When the connection ends, :meth:`Outbox.end` returns, in the order they
were accepted, the messages that must be stored for the peer's next login:

- never written (pending, held): always;
- in the window, after a FIN from the peer: what its kernel had not yet
  acknowledged (a program that closes with unread data sends RST instead,
  so with a FIN everything acknowledged was read);
- in the window, if the peer reset, was cut off, or was behind
  (transport paused, or bytes in flight at the last report) when we closed
  it: the part of the window that may not have been read. A peer that was
  keeping up gets again what was written since the last report or fits
  its receive buffer, capped at ``recent_max`` messages (a benchmark
  client closing must not cost thousands of rows).

A message the peer did read may so be stored again: at least once, and
duplicates carry the same ``mid``.

How a transport drives it (``server/connection.py`` is the TCP one):

- ``Peer.deliver(data)``: ``deliver``; FIRST → schedule a flush at the end
  of this loop iteration; OVER → cut the peer off (``end(CUT_OFF)``, store
  what it returns, close); REFUSED → return False (the service stores it);
- the flush, and before writing any reply: ``take`` and write what it gives;
- writing paused / resumed by the transport: ``pause`` / ``resume`` (if it
  returns True, schedule a flush);
- twice a second while not ``idle``: ``measured(bytes in flight)``;
- the peer's FIN: ``end(PEER_FINISHED, bytes in flight)``; a reset or any
  other loss: ``end(PEER_CLOSED)``; our close: ``measured`` then
  ``end(CLOSED_BY_US)``. Whatever ``end`` returns goes to
  ``ChatService.spill``.

With receipts (:mod:`clusterchat.server.receipts`, a client that opted in
at login), what is written goes to an :class:`Unacked` window instead and
is settled by the client's acknowledgements, not by the kernel's counts;
``end`` returns all of it that was not acknowledged. A write that would
take the window past its bounds is not made: ``take`` returns None and
``overflowed`` is set (cut the peer off, with ERROR 187). The bound is
checked once per write, not per message: ``deliver`` is the same either way.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from enum import Enum
from itertools import accumulate, islice

from clusterchat.budget import EVICT_STALL, Budget
from clusterchat.bus.base import Settlement
from clusterchat.server.receipts import Unacked

#: Bytes a peer's kernel may have acknowledged without its program having
#: read them (its receive buffer; 128 KiB on Linux until it reads).
RECEIVE_MARGIN = 256 * 1024
#: When the peer was keeping up: messages stored again at most, if it closes.
RECENT_MAX = 64
#: Written bytes remembered at most per connection: a kernel send buffer
#: (4 MiB on Linux) plus the transport's and the peer's buffers.
WINDOW_MAX = 6 * 1024 * 1024

# What deliver() answers.
QUEUED = 0  #: added to a write already scheduled this tick (or held)
FIRST = 1  #: the first this tick: schedule a write (``take``) for the end of it
OVER = 2  #: held past the limit: cut the peer off (``end(End.CUT_OFF)``)
REFUSED = 3  #: the outbox has ended: the caller stores the message itself


class End(Enum):
    """Why a connection ended, as far as what it owes is concerned."""

    PEER_FINISHED = "peer finished"  # a FIN: it read all its kernel took, or that RSTs
    PEER_CLOSED = "peer closed"  # RST from the peer, or the network
    CUT_OFF = "cut off"  # held more than the output limit
    CLOSED_BY_US = "closed by us"  # logout, timeouts, displaced, node shutdown


#: Reports (about twice a second) an outbox stays paused before what it
#: holds counts as stalled (about ``budget.EVICT_STALL``).
STALL_REPORTS = 4


class Outbox:
    __slots__ = (
        "_budget",
        "_ended",
        "_held",
        "_held_bytes",
        "_in_flight",
        "_paused",
        "_paused_reports",
        "_pending_bytes",
        "_since",
        "_unsettled",
        "_window",
        "_window_bytes",
        "limit",
        "overflowed",
        "pending",
        "receipts",
        "recent_max",
        "settled",
        "unmeasured",
        "window_max",
    )

    def __init__(
        self,
        limit: int,
        budget: Budget | None = None,
        recent_max: int = RECENT_MAX,
        window_max: int = WINDOW_MAX,
    ) -> None:
        self.limit = limit
        self.recent_max = recent_max
        self.window_max = window_max
        self._budget = budget
        #: Accepted and not yet taken (None: nothing); read by the core's
        #: flush, which asks take() only when there is something to take.
        self.pending: list[bytes] | None = None
        self._pending_bytes = 0
        self._held: list[bytes] | None = None  # not None while paused
        self._held_bytes = 0
        self._paused = False
        self._paused_reports = 0  # reports seen paused (``stalled``)
        self._window: deque[bytes] | None = None
        self._window_bytes = 0
        # Messages at the window's end written since the last report.
        self._since = 0
        # Bytes in flight at the last report (0: the peer was keeping up).
        self._in_flight = 0
        #: Bytes written since the last report or probe: past
        #: ``RECEIVE_MARGIN`` the transport probes (:meth:`probed`).
        self.unmeasured = 0
        self._ended = False
        #: Messages let go of as safely past the peer (for tests and metrics).
        self.settled = 0
        #: Receipts on: what is written waits here for the peer's acknowledgement.
        self.receipts: Unacked | None = None
        #: Receipts: a write was refused as over the window's bounds.
        self.overflowed = False
        # Settlements taken from receipts that stopped (see unsettled()).
        self._unsettled: list[Settlement] | None = None

    # -- what the service calls ---------------------------------------------------

    def deliver(self, data: bytes) -> int:
        """Accept a message for the peer; see QUEUED, FIRST, OVER, REFUSED."""
        if self._ended:
            return REFUSED
        if self._paused:
            held = self._held
            assert held is not None
            held.append(data)
            self._held_bytes += len(data)
            if self._budget is not None:
                self._budget.charge(len(data))
            return OVER if self._held_bytes > self.limit else QUEUED
        pending = self.pending
        self._pending_bytes += len(data)
        if pending is None:
            self.pending = [data]
            return FIRST
        pending.append(data)
        return QUEUED

    def keep(self, settlement: Settlement) -> None:
        """The message just accepted came in a batch from another node: with
        receipts, the batch is settled only when the peer confirms it (or it
        is stored); without, as soon as it is written."""
        receipts = self.receipts
        if receipts is not None and not self._ended:
            receipts.keep(settlement, len(self.pending or ()) + len(self._held or ()))

    def unsettled(self) -> list[Settlement]:
        """After :meth:`end` or :meth:`stop_receipts`: the settlements the
        messages they returned still hold; release each once those are stored."""
        out, self._unsettled = self._unsettled or [], None
        if self.receipts is not None:
            out += self.receipts.unsettled()
        return out

    def has_room(self, nbytes: int) -> bool:
        """Receipts: whether one more message of ``nbytes`` fits beside what
        is unacknowledged or not yet written (or nothing waits at all)."""
        receipts = self.receipts
        if receipts is None or self._ended:
            return True
        waiting = len(self.pending or ()) + len(self._held or ())
        if not waiting and not receipts.count:
            return True
        return receipts.room(waiting + 1, self._pending_bytes + self._held_bytes + nbytes)

    def start_receipts(self, receipts: Unacked) -> None:
        """From now on what is written is numbered and kept until acknowledged."""
        if not self._ended:
            self.receipts = receipts

    def stop_receipts(self) -> list[bytes]:
        """Receipts off (the user logs out): what was not acknowledged, and
        what was not yet written, oldest first, for their next login."""
        receipts, self.receipts = self.receipts, None
        if receipts is None:
            return []
        out = receipts.drain([*(self.pending or ()), *(self._held or ())])
        self._unsettled = receipts.unsettled()
        self.pending = None
        self._pending_bytes = 0
        if self._held is not None:
            self._held = []
        if self._budget is not None and self._held_bytes:
            self._budget.release(self._held_bytes)
        self._held_bytes = 0
        return out

    def ack(self, seq: int) -> bool:
        """The peer acknowledged everything numbered up to ``seq``. False if
        receipts are off or it never got that number."""
        receipts = self.receipts
        return receipts is not None and receipts.ack(seq)

    # -- what the transport calls --------------------------------------------------

    def take(self) -> bytes | None:
        """The bytes to write now (None: nothing, or paused); they join the window."""
        pending = self.pending
        if pending is None or self._paused or self._ended:
            return None
        receipts = self.receipts
        if receipts is not None:
            nbytes = self._pending_bytes
            if not receipts.room(len(pending), nbytes):
                self.overflowed = True  # kept pending: end() returns it
                return None
            self.pending, self._pending_bytes = None, 0
            return receipts.written(pending, nbytes)
        self.pending = None
        window = self._window
        if window is None:
            window = self._window = deque(pending)
        else:
            window.extend(pending)
        self._since += len(pending)
        self.unmeasured += self._pending_bytes
        size = self._window_bytes = self._window_bytes + self._pending_bytes
        self._pending_bytes = 0
        if size > self.window_max:
            self._trim(self.window_max)
        return pending[0] if len(pending) == 1 else b"".join(pending)

    def unwritten(self, nbytes: int) -> None:
        """The last ``nbytes`` taken were never written (the transport was
        closing by the time of the write): they are pending again, so that
        :meth:`end` returns them all. (With receipts :meth:`end` returns all
        that is not acknowledged anyway.)"""
        window = self._window
        if self.receipts is not None or self._ended or not window or nbytes <= 0:
            return
        n = self._tail_count(nbytes)
        back = [window.pop() for _ in range(n)]
        back.reverse()
        size = sum(map(len, back))
        self._window_bytes -= size
        self._since = max(0, self._since - n)
        self.pending = back + (self.pending or [])
        self._pending_bytes += size

    def pause(self) -> None:
        """The transport's buffer is full: hold what comes from now on."""
        if not self._paused and not self._ended:
            self._paused = True
            self._paused_reports = 0
            self._held = []
            self._held_bytes = 0

    def resume(self) -> bool:
        """The transport drained: what was held becomes pending. True if
        anything is pending: a write should be scheduled (``take``). That
        includes what was pending when it paused, which a write while
        paused did not take."""
        if not self._paused:
            return False
        self._paused = False
        held, self._held = self._held or [], None
        if self._budget is not None and self._held_bytes:
            self._budget.release(self._held_bytes)
        self._held_bytes = 0
        if self._ended:
            return False
        if held:
            if self.pending is None:
                self.pending = held
            else:
                self.pending.extend(held)
            self._pending_bytes += sum(map(len, held))
        return self.pending is not None

    def measured(self, in_flight: int) -> None:
        """``in_flight``: bytes written but not yet acknowledged by the peer's
        kernel (transport buffer plus kernel send queue). Settles what is
        safely past the peer: written before the previous report and
        beyond ``in_flight`` (plus a margin, if the peer is behind)."""
        self._in_flight = in_flight
        self.unmeasured = 0
        if self._paused:
            self._paused_reports += 1
        window = self._window
        if not window:
            self._since = 0
            return
        if in_flight:
            unsafe = self._tail_count(in_flight + RECEIVE_MARGIN)
        elif self._since >= self.recent_max:  # the cap below: no need to count
            unsafe = self._since
        elif self._since:  # acknowledged, but perhaps in the peer's receive buffer still
            unsafe = min(self._tail_count(RECEIVE_MARGIN), self.recent_max)
        else:  # all acknowledged, and a quiet period for its program to read them
            unsafe = 0
        self._drop(len(window) - max(unsafe, self._since))
        self._since = 0

    def probed(self, in_flight: int) -> None:
        """Bytes in flight, read right after a write between two reports:
        if the peer is behind, say so now (a reset before the next report
        must not take what its kernel never acknowledged as read). Settles
        nothing: a report does that."""
        self.unmeasured = 0
        if in_flight:
            self._in_flight = in_flight

    @property
    def idle(self) -> bool:
        """Nothing remembered: the transport need not report."""
        return not self._window and (self.receipts is None or not self.receipts.count)

    @property
    def empty(self) -> bool:
        """Nothing pending, held or remembered, and not paused: the transport
        may drop this outbox and start a new one with its next message."""
        return self.receipts is None and not (
            self._window or self.pending or self._held or self._paused
        )

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def stalled(self, now: float) -> int:
        """Bytes this outbox holds against the memory budget for a peer that
        has made no progress for ``EVICT_STALL`` seconds: held while it does
        not read (paused over as many reports), written and not acknowledged
        (receipts) while no receipt comes."""
        stalled = self._held_bytes if self._paused_reports >= STALL_REPORTS else 0
        receipts = self.receipts
        if receipts is not None and receipts.stalled(now, EVICT_STALL):
            stalled += receipts.nbytes
        return stalled

    @property
    def window_bytes(self) -> int:
        return self._window_bytes

    def end(self, how: End, in_flight: int = 0) -> list[bytes]:
        """The connection is over (or being cut off): what must be stored for
        the peer, oldest first. Afterwards every ``deliver`` is REFUSED and
        a second ``end`` returns nothing. ``in_flight``: for PEER_FINISHED,
        the bytes its kernel had not acknowledged when its FIN came."""
        if self._ended:
            return []
        self._ended = True
        self.overflowed = False
        window = self._window or deque()
        if how is End.PEER_FINISHED:
            # A socket closed with unread data sends RST, not FIN: the peer
            # read everything its kernel acknowledged; the rest crossed its close.
            unsafe = self._tail_count(in_flight)
        elif self._paused or how is End.CUT_OFF:  # not reading: none of it known read
            unsafe = len(window)
        elif self._in_flight:  # behind at the last report: that, and all since
            unsafe = self._since + self._tail_count(
                self._in_flight + RECEIVE_MARGIN, skip=self._since
            )
        elif how is End.PEER_CLOSED:  # keeping up: what may have crossed its close
            unsafe = min(max(self._since, self._tail_count(RECEIVE_MARGIN)), self.recent_max)
        else:  # closed by us while it kept up: it reads what we wrote, then our FIN
            unsafe = 0
        unsafe = min(unsafe, len(window))
        self.settled += len(window) - unsafe
        out = list(window)[len(window) - unsafe :] if unsafe else []
        waiting = [*(self.pending or ()), *(self._held or ())]
        out += self.receipts.drain(waiting) if self.receipts is not None else waiting
        if self._budget is not None and self._held_bytes:
            self._budget.release(self._held_bytes)
        self._window = None
        self.pending = self._held = None
        self._window_bytes = self._pending_bytes = self._held_bytes = 0
        self._since = 0
        self._paused = False
        return out

    # -- the window ------------------------------------------------------------------

    def _tail_count(self, nbytes: int, skip: int = 0) -> int:
        """How many messages, counted back from the window's end past its
        last ``skip``, cover ``nbytes``."""
        window = self._window
        if nbytes <= 0 or not window or skip >= len(window):
            return 0
        if not skip and nbytes >= self._window_bytes:
            return len(window)
        # Sizes summed from the end, and where they reach nbytes (C loops:
        # a busy peer's window holds thousands of messages at each report).
        covered = list(accumulate(map(len, islice(reversed(window), skip, None))))
        return min(bisect_left(covered, nbytes) + 1, len(covered))

    def _drop(self, n: int) -> None:
        """Let go of the window's ``n`` oldest messages (settled)."""
        window = self._window
        if not window or n <= 0:
            return
        if n >= len(window):
            self._window, self._window_bytes = None, 0
            self.settled += len(window)
            return
        self._window_bytes -= sum(map(len, islice(window, n)))
        self._window = deque(islice(window, n, None))  # in C, not n popleft() calls
        self.settled += n

    def _trim(self, most: int) -> None:
        """Forget the oldest written messages past ``most`` bytes: more than
        the kernel and the peer can be holding, so they are past it."""
        window = self._window
        assert window is not None
        n = len(window) - self._tail_count(most)
        self._drop(n)
        self._since = min(self._since, len(self._window or ()))
