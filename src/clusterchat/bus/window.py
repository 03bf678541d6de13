"""Delivery windows between nodes, as plain state machines (no I/O).

A sender keeps one :class:`SendWindow` per destination node; a receiver keeps
one :class:`ReceiveState` per source node. Every message between two nodes
carries the sender's ``epoch`` (new per process), its batch ``seq`` (0: no
items, nothing to acknowledge) and ``last``, the highest seq the sender has
sent to that destination, so a receiver sees a gap even from a message that
carries no items.

The rules, each enforced here and nowhere else:

- A batch ends exactly once: **acked** (the receiver said so after it handed
  every message in it to local connections or stored it) or **returned** to the
  sender for storing (publish failed, the receiver reported it missing, or no
  acknowledgement came in time). A late ack of a returned batch is ignored.
- Acknowledgements are selective: an ack names the seqs it covers, so no batch
  is ever cleared by another batch's acknowledgement.
- The receiver never acknowledges a seq it did not take, reports every seq it
  never saw as missing (a *nack*), and ignores a batch whose seq it has already
  passed (the sender stores that one).
- Bytes held per destination (in flight, or returned and not yet stored) stay
  under ``limit``; past it :meth:`SendWindow.admit` says no and the sender
  waits or refuses. One batch larger than the limit may go alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class Outcome(enum.Enum):
    IN_FLIGHT = "in flight"
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


@dataclass
class SendWindow(Generic[T]):
    """What one node has handed to one other node and not yet seen settled."""

    limit: int
    timeout: float
    last: int = 0  # highest seq dispatched
    held: int = 0  # bytes admitted and not yet acked or stored
    _flights: dict[int, Flight[T]] = field(default_factory=dict)
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
        """The receiver took exactly the batches in these runs (see :func:`ranges`)."""
        for seq in self._within(runs):
            flight = self._flights.pop(seq, None)
            if flight is not None:
                flight.outcome = Outcome.ACKED
                self.held -= flight.size

    def refused(self, seq: int) -> Flight[T] | None:
        """Publishing the batch failed or reached nobody: it comes back."""
        return self._return(seq)

    def missing(self, runs: list[int]) -> list[Flight[T]]:
        """The receiver never saw the batches in these runs: they come back for storing."""
        return [f for f in map(self._return, self._within(runs)) if f is not None]

    def expire(self, now: float) -> list[Flight[T]]:
        """Batches unacknowledged past their deadline come back for storing."""
        late = [seq for seq, f in self._flights.items() if f.deadline <= now]
        return [f for f in map(self._return, late) if f is not None]

    def stored(self, seq: int) -> None:
        """A returned batch is kept elsewhere now: its room is free."""
        flight = self._returned.pop(seq, None)
        if flight is not None:
            self.held -= flight.size

    def in_flight(self) -> int:
        return len(self._flights)

    def _within(self, runs: list[int]) -> list[int]:
        """Seqs of batches in flight that the runs cover (runs may span a restart's worth)."""
        flights = self._flights
        out: list[int] = []
        for i in range(0, len(runs) - 1, 2):
            lo, hi = runs[i], runs[i + 1]
            if hi - lo < len(flights):
                out.extend(s for s in range(lo, hi + 1) if s in flights)
            else:
                out.extend(s for s in flights if lo <= s <= hi)
        return out

    def _return(self, seq: int) -> Flight[T] | None:
        flight = self._flights.pop(seq, None)
        if flight is None:
            return None
        flight.outcome = Outcome.RETURNED
        self._returned[seq] = flight
        return flight


@dataclass
class ReceiveState:
    """What one node has received from one other node (one epoch of it)."""

    epoch: str = ""
    highest: int = 0  # every seq up to here was seen, or reported missing
    _taking: set[int] = field(default_factory=set)
    _done: list[int] = field(default_factory=list)
    _missing: list[int] = field(default_factory=list)

    def arrived(self, epoch: str, seq: int, last: int) -> bool:
        """A message from the source; True if ``seq`` is a new batch to take
        (then call :meth:`taken` once every message in it is delivered or stored)."""
        if epoch != self.epoch:  # the sender restarted: its old batches are its old self's
            self.epoch, self.highest = epoch, 0
            self._taking.clear()
            self._done.clear()
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

    def taken(self, epoch: str, seq: int) -> None:
        if epoch == self.epoch and seq in self._taking:
            self._taking.remove(seq)
            self._done.append(seq)

    def due(self) -> bool:
        return bool(self._done or self._missing)

    def drain(self) -> tuple[str, list[int], list[int]]:
        """(epoch, acks, nacks) to send back, as runs (see :func:`ranges`)."""
        done, self._done = self._done, []
        missing, self._missing = self._missing, []
        return self.epoch, ranges(done), missing


def ranges(seqs: list[int]) -> list[int]:
    """Seqs as flat ``[lo, hi, lo, hi, ...]`` runs: an ack of many batches stays small."""
    out: list[int] = []
    for s in sorted(seqs):
        if out and s == out[-1] + 1:
            out[-1] = s
        elif not out or s > out[-1]:
            out += [s, s]
    return out
