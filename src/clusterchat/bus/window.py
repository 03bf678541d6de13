"""Delivery windows between nodes, as plain state machines (no I/O).

A sender keeps one :class:`SendWindow` per destination node; a receiver keeps
one :class:`ReceiveState` per source node. Every message between two nodes
carries the sender's ``epoch`` (new per process), its batch ``seq`` (0: no
items, nothing to acknowledge) and ``last``, the highest seq the sender has
sent to that destination, so a receiver sees a gap even from a message that
carries no items.

The rules, each enforced here and nowhere else:

- A batch ends exactly once: **acked** (the receiver said so after it handed
  every message in it to local connections or stored it, and every client
  with receipts confirmed or had stored its part) or **returned** to the
  sender for storing (publish failed, the receiver reported it missing, no
  acknowledgement came in time, or the receiver died or restarted before it
  settled a batch it took). A late ack of a returned batch is ignored.
- A batch the receiver *took* but whose receipts are still out is **kept**:
  out of the window (it no longer holds up senders), in ``kept`` bytes, until
  the receiver says it is settled. Past ``keep_limit`` bytes or ``keep_for``
  seconds the oldest kept batches come back for storing (a duplicate for the
  receiver at worst, never a loss). The receiver's epoch is watched: a new
  one means its old self died with what it had not settled.
- Acknowledgements are selective: an ack names the seqs it covers, so no batch
  is ever cleared by another batch's acknowledgement.
- The receiver never acknowledges a seq it did not take, reports every seq it
  never saw as missing (a *nack*), and ignores a batch whose seq it has already
  passed (the sender stores that one).
- Bytes held per destination (in flight, or returned and not yet stored) stay
  under ``limit``; past it :meth:`SendWindow.admit` says no and the sender
  waits or refuses. One batch larger than the limit may go alone, and kept
  batches that come back for storing join what is held however much they
  are (senders wait until they are stored).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

#: Timeouts more that a batch in flight after kept ones waits (see expire):
#: longer than a dead receiver takes to be found so (its heartbeat lapsing).
PATIENCE = 4


class Outcome(enum.Enum):
    IN_FLIGHT = "in flight"
    KEPT = "kept"  # taken by the receiver, its receipts still out
    ACKED = "acked"
    RETURNED = "returned"


@dataclass
class Flight(Generic[T]):
    """One batch handed to another node."""

    seq: int
    items: T
    size: int
    deadline: float
    outcome: Outcome = Outcome.IN_FLIGHT
    kept: bool = False  # was taken and kept: its bytes count in ``kept`` until returned


@dataclass
class SendWindow(Generic[T]):
    """What one node has handed to one other node and not yet seen settled."""

    limit: int
    timeout: float
    #: Kept batches (taken, receipts out): at most this long, and this many bytes.
    keep_for: float = 120.0
    keep_limit: int = 32 * 1024 * 1024
    last: int = 0  # highest seq dispatched
    held: int = 0  # bytes admitted and not yet acked, kept or stored
    kept: int = 0  # bytes taken by the receiver and not yet settled or stored
    peer: str = ""  # the receiver's epoch, as last heard from it
    _flights: dict[int, Flight[T]] = field(default_factory=dict)
    _kept: dict[int, Flight[T]] = field(default_factory=dict)
    _returned: dict[int, Flight[T]] = field(default_factory=dict)

    def admit(self, size: int) -> bool:
        """Reserve room for ``size`` bytes; False if the window is full."""
        if self.held and self.held + size > self.limit:
            return False
        self.held += size
        return True

    def cancel(self, size: int) -> None:
        """Give back room admitted for something that will not be dispatched."""
        self.held -= size

    def dispatch(self, items: T, size: int, now: float) -> int:
        """A batch of admitted items is being published: its seq."""
        self.last += 1
        self._flights[self.last] = Flight(self.last, items, size, now + self.timeout)
        return self.last

    def acked(self, runs: list[int]) -> None:
        """The receiver settled exactly the batches in these runs (see :func:`ranges`)."""
        for seq in self._within(runs, self._flights):
            flight = self._flights.pop(seq)
            flight.outcome = Outcome.ACKED
            self.held -= flight.size
        if self._kept:
            for seq in self._within(runs, self._kept):
                flight = self._kept.pop(seq)
                flight.outcome = Outcome.ACKED
                self.kept -= flight.size

    def taken(self, runs: list[int], now: float) -> list[Flight[T]]:
        """The receiver took the batches in these runs, but receipts for some
        of their messages are still out: keep them, out of the window. Returns
        the oldest kept batches past ``keep_limit``, to store."""
        for seq in self._within(runs, self._flights):
            flight = self._flights.pop(seq)
            flight.outcome, flight.kept = Outcome.KEPT, True
            flight.deadline = now + self.keep_for
            self.held -= flight.size
            self.kept += flight.size
            self._kept[seq] = flight
        over: list[Flight[T]] = []
        if self.kept > self.keep_limit:
            room = self.kept - self.keep_limit
            for seq in sorted(self._kept):
                if room <= 0:
                    break
                room -= self._kept[seq].size
                over.append(self._return(seq, self._kept))
        return over

    def heard(self, epoch: str) -> list[Flight[T]]:
        """A message from the receiver, its process ``epoch``: if that is new,
        its old self died, and what it kept comes back for storing."""
        if epoch == self.peer:
            return []
        self.peer = epoch
        return self.lost_kept()

    def lost_kept(self) -> list[Flight[T]]:
        """The receiver died: every kept batch comes back for storing, in seq order."""
        return [self._return(seq, self._kept) for seq in sorted(self._kept)]

    def refused(self, seq: int) -> Flight[T] | None:
        """Publishing the batch failed or reached nobody: it comes back."""
        return self._return(seq) if seq in self._flights else None

    def missing(self, runs: list[int]) -> list[Flight[T]]:
        """The receiver never saw the batches in these runs: they come back for storing."""
        return [self._return(seq) for seq in self._within(runs, self._flights)]

    def expire(self, now: float) -> list[Flight[T]]:
        """Batches unacknowledged (or kept) past their deadline come back for
        storing, in seq order. A batch in flight after kept ones waits
        ``PATIENCE`` timeouts more: if the receiver died, its kept batches
        come back first (:meth:`lost_kept`, :meth:`heard`), so its users get
        them in the order sent; if it did not, it is merely slow (its store
        failing, say), and its kept batches stay kept."""
        flights = self._flights
        late = [seq for seq, f in flights.items() if f.deadline <= now]
        if late and self._kept:
            first = min(self._kept)
            grace = PATIENCE * self.timeout
            late = [seq for seq in late if seq < first or flights[seq].deadline + grace <= now]
        out = [self._return(seq) for seq in late]
        if self._kept:
            top = max(late, default=0)
            early = [seq for seq, f in self._kept.items() if seq < top or f.deadline <= now]
            out += [self._return(seq, self._kept) for seq in early]
            out.sort(key=_seq)
        return out

    def stored(self, seq: int) -> None:
        """A returned batch is kept elsewhere now: its room is free."""
        flight = self._returned.pop(seq, None)
        if flight is not None:
            self.held -= flight.size

    def in_flight(self) -> int:
        return len(self._flights)

    def keeping(self) -> int:
        """Batches taken by the receiver whose receipts are still out."""
        return len(self._kept)

    def _within(self, runs: list[int], table: dict[int, Flight[T]]) -> list[int]:
        """Seqs in ``table`` that the runs cover (runs may span a restart's worth)."""
        out: list[int] = []
        for i in range(0, len(runs) - 1, 2):
            lo, hi = runs[i], runs[i + 1]
            if hi - lo < len(table):
                out.extend(s for s in range(lo, hi + 1) if s in table)
            else:
                out.extend(s for s in table if lo <= s <= hi)
        return out

    def _return(self, seq: int, table: dict[int, Flight[T]] | None = None) -> Flight[T]:
        flight = (self._flights if table is None else table).pop(seq)
        flight.outcome = Outcome.RETURNED
        if flight.kept:  # waiting to be stored holds up senders, whatever it was
            self.kept -= flight.size
            self.held += flight.size
        self._returned[seq] = flight
        return flight


@dataclass
class ReceiveState:
    """What one node has received from one other node (one epoch of it)."""

    epoch: str = ""
    highest: int = 0  # every seq up to here was seen, or reported missing
    _taking: set[int] = field(default_factory=set)
    _holding: set[int] = field(default_factory=set)  # taken, receipts still out
    _done: list[int] = field(default_factory=list)
    _kept: list[int] = field(default_factory=list)
    _missing: list[int] = field(default_factory=list)

    def arrived(self, epoch: str, seq: int, last: int) -> bool:
        """A message from the source; True if ``seq`` is a new batch to take
        (then call :meth:`taken` once every message in it is delivered or stored)."""
        if epoch != self.epoch:  # the sender restarted: its old batches are its old self's
            self.epoch, self.highest = epoch, 0
            self._taking.clear()
            self._holding.clear()
            self._done.clear()
            self._kept.clear()
            self._missing.clear()
        top = max(seq, last)
        if top > self.highest:  # never seen: at most two runs around seq
            gap_end = seq - 1 if seq > self.highest else top
            if gap_end > self.highest:
                self._missing += [self.highest + 1, gap_end]
            if seq > self.highest and top > seq:
                self._missing += [seq + 1, top]
        fresh = seq > self.highest
        self.highest = max(self.highest, top)
        if fresh:
            self._taking.add(seq)
        return fresh

    def taken(self, epoch: str, seq: int, settled: bool = True) -> None:
        """Every message of the batch is written to a connection or stored.
        ``settled``: and none waits for a client's receipt; else call
        :meth:`settled` once the last of those came (or was stored)."""
        if epoch == self.epoch and seq in self._taking:
            self._taking.remove(seq)
            if settled:
                self._done.append(seq)
            else:
                self._holding.add(seq)
                self._kept.append(seq)

    def settled(self, epoch: str, seq: int) -> None:
        if epoch == self.epoch and seq in self._holding:
            self._holding.remove(seq)
            self._done.append(seq)

    def due(self) -> bool:
        return bool(self._done or self._missing or self._kept)

    def drain(self) -> tuple[str, list[int], list[int]]:
        """(epoch, acks, nacks) to send back, as runs (see :func:`ranges`).
        Batches taken but not settled are acks too, as negated runs (see
        :func:`split_acks`; a node from before kept batches ignores them)."""
        done, self._done = self._done, []
        missing, self._missing = self._missing, []
        acks = ranges(done)
        if self._kept:
            kept, self._kept = self._kept, []
            acks += [-s for s in ranges(kept)]
        return self.epoch, acks, missing


def split_acks(runs: list[int]) -> tuple[list[int], list[int]]:
    """An answer's acks as (settled, taken) runs: taken ones come negated."""
    if not runs or runs[-1] > 0:  # the usual case: no batch waits for receipts
        return runs, []
    at = next(i for i in range(0, len(runs), 2) if runs[i] < 0)
    return runs[:at], [-s for s in runs[at:]]


def _seq(flight: Flight[T]) -> int:
    return flight.seq


def ranges(seqs: list[int]) -> list[int]:
    """Seqs as flat ``[lo, hi, lo, hi, ...]`` runs: an ack of many batches stays small."""
    out: list[int] = []
    for s in sorted(seqs):
        if out and s == out[-1] + 1:
            out[-1] = s
        elif not out or s > out[-1]:
            out += [s, s]
    return out
