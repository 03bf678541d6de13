"""Receipts, with no socket and no loop: whatever the interleaving of
pushes, writes, acknowledgements, pauses and the end, nothing the client
did not acknowledge is lost, nothing it acknowledged is stored, order is
kept and the window's bounds hold. A message from another node's batch
settles that batch exactly when the client acknowledges it, or is handed
back unsettled with what is to be stored."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterchat.budget import Budget
from clusterchat.bus.base import Settlement
from clusterchat.server.outbox import FIRST, OVER, QUEUED, REFUSED, End, Outbox
from clusterchat.server.receipts import Unacked, stamp, unstamp
from clusterchat.service.stored_rows import StoredRow

MAX_COUNT = 12
MAX_BYTES = 3000
LIMIT = 2000  # --output-limit: held while the transport is paused


def doc(i: int, size: int = 0) -> bytes:
    return msgspec.json.encode({"msgid": 6, "mid": f"m{i}", "msg": "x" * size}) + b"\n"


def test_stamp_adds_the_number_last_and_unstamp_removes_it() -> None:
    data = doc(1, 3)
    stamped = stamp(data, 42)
    assert stamped.endswith(b',"seq":42}\n')
    assert msgspec.json.decode(stamped)["seq"] == 42
    assert unstamp(stamped) == data
    # Text that looks like the field is escaped inside a JSON string.
    tricky = msgspec.json.encode({"msg": ',"seq":1}'}) + b"\n"
    assert unstamp(stamp(tricky, 7)) == tricky


def test_ack_releases_in_order_and_refuses_unsent_numbers() -> None:
    budget = Budget(0)
    box = Outbox(LIMIT, budget)
    box.start_receipts(Unacked(budget))
    for i in range(5):
        box.deliver(doc(i))
    wire = box.take()
    assert wire is not None
    assert [msgspec.json.decode(line)["seq"] for line in wire.splitlines()] == [1, 2, 3, 4, 5]
    assert not box.idle
    assert not box.ack(6)  # never sent
    assert box.ack(2)
    assert box.ack(1)  # old: nothing changes
    assert box.end(End.PEER_FINISHED) == [doc(2), doc(3), doc(4)]
    assert budget.used == 0


def test_no_progress_for_the_timeout_is_overdue() -> None:
    r = Unacked(timeout=10)
    assert not r.overdue(0.0)  # empty
    r.written([doc(1)], len(doc(1)))
    assert not r.overdue(100.0)  # first seen waiting
    assert not r.overdue(110.0)
    assert r.overdue(110.5)
    r.written([doc(2)], len(doc(2)))
    r.ack(1)  # progress: the clock starts again
    assert not r.overdue(111.0)
    assert not r.overdue(120.0)
    assert r.overdue(121.5)


def test_a_client_confirming_a_little_now_and_then_is_overdue_all_the_same() -> None:
    """One message confirmed every 9 s (timeout 10) is progress, but the rest
    waits: it would hold them, and another node's copy, for ever."""
    r = Unacked(timeout=10)
    assert not r.overdue(0.0)
    r.written([doc(i) for i in range(1, 11)], 10 * len(doc(1)))
    now, seq = 0.0, 0
    while not r.overdue(now):
        now += 0.5
        if now % 9 == 0:
            seq += 1
            assert r.ack(seq)
        assert now < 30, "never overdue"
    assert now > 20  # twice the timeout: the first message waited that long


def test_logout_returns_unacknowledged_and_unwritten_then_plain() -> None:
    box = Outbox(LIMIT)
    box.start_receipts(Unacked())
    box.deliver(doc(1))
    box.deliver(doc(2))
    box.take()
    box.ack(1)
    box.deliver(doc(3))  # accepted, not yet written
    assert box.stop_receipts() == [doc(2), doc(3)]
    assert box.receipts is None and box.take() is None
    box.deliver(doc(4))
    assert box.take() == doc(4)  # no number any more


@dataclass
class World:
    box: Outbox
    budget: Budget
    accepted: list[bytes] = field(default_factory=list)
    #: What the client received (its connection may lose what is in flight).
    seen: int = 0
    written: int = 0
    acked: int = 0
    stored: list[bytes] | None = None
    #: One per accepted message: as if each came in its own batch from another node.
    settlements: list[Settlement] = field(default_factory=list)
    unsettled: list[Settlement] | None = None
    #: Of each accepted message: whether a login read it from the store
    #: (its row stays there until the receipt), and those whose row the
    #: receipt deleted.
    in_store: list[bool] = field(default_factory=list)
    confirmed_rows: list[int] = field(default_factory=list)

    def deliver(self, data: bytes, from_store: bool = False) -> None:
        verdict = self.box.deliver(data)
        assert verdict in (QUEUED, FIRST, OVER, REFUSED)
        if verdict == REFUSED:
            return
        i = len(self.accepted)
        self.accepted.append(data)
        self.in_store.append(from_store)
        settlement = (
            StoredRow(lambda: self.confirmed_rows.append(i)) if from_store else Settlement()
        )
        self.box.keep(settlement)
        self.settlements.append(settlement)
        if verdict == OVER:
            self.end(End.CUT_OFF)

    def check_settled(self) -> None:
        """Settled exactly what the client acknowledged, nothing after it;
        rows deleted for exactly the acknowledged of those from the store."""
        assert [not s.held for s in self.settlements] == [
            i < self.acked for i in range(len(self.settlements))
        ]
        assert self.confirmed_rows == [i for i in range(self.acked) if self.in_store[i]]

    def to_store(self) -> list[bytes]:
        """What must be stored at the end: the unacknowledged, less those
        still in the store."""
        return [m for i, m in enumerate(self.accepted) if i >= self.acked and not self.in_store[i]]

    def to_settle(self) -> list[Settlement]:
        return [
            st for i, st in enumerate(self.settlements) if i >= self.acked and not self.in_store[i]
        ]

    def take(self) -> None:
        wire = self.box.take()
        r = self.box.receipts
        assert r is not None
        assert r.count <= MAX_COUNT and r.nbytes <= MAX_BYTES  # the bounds always hold
        if wire is None:
            if self.box.overflowed:  # the transport cuts the peer off
                self.end(End.CUT_OFF)
            return
        for line in wire.splitlines(keepends=True):
            got = msgspec.json.decode(line)
            self.written += 1
            assert got["seq"] == self.written  # numbered in write order...
            assert unstamp(line) == self.accepted[self.written - 1]  # ...which is accept order
        self.check_kept_bytes()

    def ack(self, k: int) -> None:
        if self.seen:
            self.acked = max(self.acked, min(k, self.seen))
            assert self.box.ack(min(k, self.seen))
        self.check_settled()
        self.check_kept_bytes()

    def check_kept_bytes(self) -> None:
        """The window keeps (and charges to the budget) the bytes of the
        written, unacknowledged messages, less those still in the store."""
        r = self.box.receipts
        if r is not None and self.stored is None:
            kept = range(self.acked, self.written)
            assert r.nbytes == sum(len(self.accepted[i]) for i in kept if not self.in_store[i])

    def end(self, how: End) -> None:
        self.stored = self.box.end(how)
        self.unsettled = self.box.unsettled()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(0, 400)),
        st.tuples(st.just("deliver stored"), st.integers(0, 400)),
        st.tuples(st.just("take"), st.just(0)),
        st.tuples(st.just("receive"), st.integers(0, 10)),
        st.tuples(st.just("ack"), st.integers(0, 40)),
        st.tuples(st.just("pause"), st.just(0)),
        st.tuples(st.just("resume"), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(ops=ops, how=st.sampled_from(list(End)))
def test_nothing_unacknowledged_is_lost_nothing_acknowledged_is_stored(
    ops: list[tuple[str, int]], how: End
) -> None:
    budget = Budget(0)
    box = Outbox(LIMIT, budget)
    box.start_receipts(Unacked(budget, MAX_COUNT, MAX_BYTES))
    w = World(box, budget)
    for i, (op, arg) in enumerate(ops):
        if w.stored is not None:
            break
        if op.startswith("deliver"):
            w.deliver(doc(i, arg), from_store=op == "deliver stored")
        elif op == "take":
            w.take()
        elif op == "receive":  # the client reads some of what was written
            w.seen = min(w.written, w.seen + arg)
        elif op == "ack":
            w.ack(arg)
        elif op == "pause":
            box.pause()
        elif op == "resume":
            box.resume()
    if w.stored is None:
        w.end(how)
    assert w.stored is not None
    # Exactly what was not acknowledged, in order: nothing lost, nothing acked
    # kept, nothing still in the store stored twice.
    assert w.stored == w.to_store()
    assert budget.used == 0
    assert box.deliver(doc(999)) == REFUSED
    # And the batches of what is to be stored come back unsettled, to be released once it is.
    w.check_settled()
    assert w.unsettled == w.to_settle()


@settings(max_examples=200, deadline=None)
@given(ops=ops)
def test_logout_midway_stores_exactly_the_unacknowledged(ops: list[tuple[str, int]]) -> None:
    budget = Budget(0)
    box = Outbox(LIMIT, budget)
    box.start_receipts(Unacked(budget, MAX_COUNT, MAX_BYTES))
    w = World(box, budget)
    for i, (op, arg) in enumerate(ops):
        if w.stored is not None:
            return  # cut off: the first test's case
        if op.startswith("deliver"):
            w.deliver(doc(i, arg), from_store=op == "deliver stored")
        elif op == "take":
            w.take()
        elif op == "receive":
            w.seen = min(w.written, w.seen + arg)
        elif op == "ack":
            w.ack(arg)
    if w.stored is not None:
        return
    assert box.stop_receipts() == w.to_store()
    assert box.unsettled() == w.to_settle()
    w.check_settled()
    assert budget.used == box.held_bytes


@pytest.mark.parametrize("size", [10, 2000])
def test_a_client_that_never_acknowledges_is_cut_at_the_bound(size: int) -> None:
    box = Outbox(10**9)
    box.start_receipts(Unacked(None, MAX_COUNT, MAX_BYTES))
    n = 0
    while box.deliver(doc(n, size)) != REFUSED and n < 100:
        n += 1
        if box.take() is None:
            break
    assert box.overflowed and n <= MAX_COUNT + 1
    receipts = box.receipts
    assert receipts is not None and receipts.count <= MAX_COUNT
    assert box.end(End.CUT_OFF) == [doc(i, size) for i in range(n)]
    assert not box.overflowed


def test_acknowledging_in_small_steps_through_compactions_keeps_the_count_and_bytes() -> None:
    budget = Budget(0)
    r = Unacked(budget, max_count=10_000, max_bytes=10**9)
    docs = [doc(i, i % 7) for i in range(2000)]
    for d in docs:
        r.written([d], len(d))
    for seq in range(3, 1500, 3):
        assert r.ack(seq)
        assert r.count == 2000 - seq
        assert r.nbytes == sum(map(len, docs[seq:])) == budget.used
    assert r.drain() == docs[1497:]
    assert r.count == 0 and budget.used == 0


def test_without_receipts_a_batch_is_settled_as_written() -> None:
    box = Outbox(LIMIT)
    settlement = Settlement()
    assert box.deliver(doc(1)) == FIRST
    box.keep(settlement)
    assert settlement.settled_or_then(lambda: None)
    assert box.end(End.PEER_CLOSED) == [doc(1)]
    assert box.unsettled() == []


def test_a_settlement_held_by_several_messages_settles_at_the_last() -> None:
    """A group batch: three members on one connection's window (or three
    connections), settled when the last of them is acknowledged."""
    box = Outbox(LIMIT)
    box.start_receipts(Unacked())
    settlement = Settlement()
    done: list[bool] = []
    for i in range(3):
        box.deliver(doc(i))
        box.keep(settlement)
    assert box.take() is not None
    assert not settlement.settled_or_then(lambda: done.append(True))
    assert box.ack(2) and not done
    assert box.ack(3) and done == [True]


def test_a_batch_is_not_pinned_by_a_client_slow_to_confirm() -> None:
    """A client confirming its own messages late (inside every bound) held
    other nodes' batches, with other people's messages, until their sender
    stored them whole: duplicates for everyone (found by attack). Past the
    grace what it leaves unconfirmed is stored for it, and the batch settled."""
    box = Outbox(LIMIT)
    box.start_receipts(Unacked(timeout=30))
    early, later = Settlement(), Settlement()
    for i, settlement in ((1, early), (2, None), (3, later)):
        box.deliver(doc(i))
        if settlement is not None:
            box.keep(settlement)
    box.deliver(doc(4))
    box.keep(later)  # a group's batch: two of its messages here
    assert box.take() is not None
    receipts = box.receipts
    assert receipts is not None
    assert receipts.late(0.0, 10) == ([], [])  # first seen now
    assert receipts.late(9.0, 10) == ([], [])
    assert receipts.late(10.5, 10) == ([doc(1), doc(3), doc(4)], [early, later, later])
    assert box.ack(1)  # the client's receipt comes after all: nothing twice
    assert receipts.late(30.0, 10) == ([], [])
    # The window is its own, less what was stored early (not stored twice).
    assert box.end(End.PEER_CLOSED) == [doc(2)]
    assert receipts.stored_early == 3


def test_a_copy_in_redis_is_not_stored_early_it_pins_nobody() -> None:
    box = Outbox(LIMIT)
    box.start_receipts(Unacked(timeout=30))
    copy, batch = Settlement(pins=False), Settlement()
    box.deliver(doc(1))
    box.keep(copy)
    box.deliver(doc(2))
    box.keep(batch)
    assert box.take() is not None
    receipts = box.receipts
    assert receipts is not None
    assert receipts.late(0.0, 10) == ([], [])
    assert receipts.late(10.5, 10) == ([doc(2)], [batch])
    assert receipts.late(30.0, 10) == ([], [])  # the copy waits for the receipt
    assert copy.held
    assert box.ack(2) and not copy.held
