"""The outbox, with no socket and no loop: every accepted message is, when
the connection ends, either safely past the peer or returned for storing,
in order, and never both lost.

The hypothesis test drives an :class:`Outbox` with a model of the rest of
the world: a transport that pauses past its high-water mark, a kernel send
buffer, and a peer whose program reads (or stops reading) and whose kernel
acknowledges at most ``rcv`` bytes it has not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from clusterchat.budget import EVICT_LEAST, EVICT_SHARE, Budget, to_evict
from clusterchat.server.outbox import (
    FIRST,
    OVER,
    QUEUED,
    RECEIVE_MARGIN,
    REFUSED,
    End,
    Outbox,
)

SND = 150_000  # the model kernel's send buffer
HIGH = 64 * 1024  # the transport pauses past this many buffered bytes
LIMIT = 200_000  # --output-limit


@dataclass
class World:
    box: Outbox
    rcv: int  # bytes the peer's kernel may acknowledge beyond what it read
    accepted: list[bytes] = field(default_factory=list)
    written: list[bytes] = field(default_factory=list)
    written_bytes: int = 0
    read: int = 0  # bytes the peer's program has read
    reading: bool = True  # the peer's program reads as it arrives
    cut: bool = False
    last_in_flight: int = 0
    since: int = 0  # messages written since the last report
    # A probe after a big write found bytes in flight (since the last report).
    probed_behind: bool = False
    # Unread at a report that found nothing in flight, and older than the
    # last recent_max messages: the outbox may let go of them (documented).
    excused: set[int] = field(default_factory=set)

    @property
    def acked(self) -> int:
        return min(self.written_bytes, self.read + self.rcv)

    @property
    def in_flight(self) -> int:
        return self.written_bytes - self.acked

    def transport(self) -> None:
        """Pause and resume as a transport does around its buffer."""
        buffered = max(0, self.in_flight - SND)
        if buffered > HIGH and not self.box.paused and not self.box.ended:
            self.box.pause()
        elif buffered <= HIGH // 4 and self.box.paused:
            self.box.resume()

    def deliver(self, data: bytes) -> None:
        verdict = self.box.deliver(data)
        assert verdict in (QUEUED, FIRST, OVER, REFUSED)
        if verdict != REFUSED:
            self.accepted.append(data)
        if verdict == OVER:
            self.cut = True
            self.stored = self.box.end(End.CUT_OFF)

    def take(self) -> None:
        data = self.box.take()
        if data is None:
            return
        n = 0
        while n < len(data):  # which accepted messages this write carries
            msg = self.accepted[len(self.written)]
            assert data[n : n + len(msg)] == msg
            self.written.append(msg)
            self.written_bytes += len(msg)
            n += len(msg)
            self.since += 1
        assert n == len(data)
        if self.box.unmeasured > RECEIVE_MARGIN:  # as the connection core does
            self.box.probed(self.in_flight)
            self.probed_behind = self.probed_behind or bool(self.in_flight)

    def peer_reads(self, nbytes: int) -> None:
        if self.reading:
            self.read = min(self.written_bytes, self.read + nbytes)

    def unread(self) -> list[bytes]:
        out, offset = [], 0
        for m in self.written:
            offset += len(m)
            if offset > self.read:
                out.append(m)
        return out

    def report(self) -> None:
        if self.reading:  # a program that reads has read what its kernel took
            self.read = self.acked
        self.last_in_flight = self.in_flight
        if not self.in_flight:  # quiet since the last report: all let go of
            self.excused.update(id(m) for m in self.unread()[: -8 if self.since else None])
        self.box.measured(self.in_flight)
        self.since = 0
        self.probed_behind = False


ops = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(1, 30_000)),
        st.tuples(st.just("take"), st.just(0)),
        st.tuples(st.just("read"), st.integers(0, 120_000)),
        st.tuples(st.just("stall"), st.just(0)),
        st.tuples(st.just("report"), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=1000, deadline=None)
@given(ops, st.sampled_from(list(End)), st.integers(0, RECEIVE_MARGIN))
def test_every_accepted_message_is_safe_or_returned(
    steps: list[tuple[str, int]], how: End, rcv: int
) -> None:
    budget = Budget(0)
    w = World(Outbox(LIMIT, budget, recent_max=8), rcv)
    count = 0
    for op, arg in steps:
        if w.cut:
            break
        if op == "deliver":
            count += 1
            w.deliver(f"{count:06d}|".encode().ljust(arg, b"x"))
        elif op == "take":
            w.take()
        elif op == "read":
            w.peer_reads(arg)
        elif op == "stall":
            w.reading = False
        else:
            w.report()
        w.transport()
        assert w.box.held_bytes <= LIMIT + 30_000
        assert budget.used == w.box.held_bytes
    paused = w.box.paused
    if w.cut:
        how = End.CUT_OFF
        stored = w.stored
        assert w.box.end(End.PEER_CLOSED) == []  # what it owed was returned once
    elif how is End.PEER_FINISHED:
        # A FIN, not a RST: its program had read all its kernel had taken;
        # the rest was still on its way (it will be answered with RST).
        w.read = max(w.read, w.acked)
        w.rcv = 0
        stored = w.box.end(how, w.written_bytes - w.read)
    else:
        if how is End.CLOSED_BY_US:
            w.report()  # the transport looks before it closes
        stored = w.box.end(how)
    assert budget.used == 0

    # In order, each once, nothing that was not accepted.
    assert len(set(stored)) == len(stored)
    it = iter(w.accepted)
    assert all(any(m is a for a in it) for m in stored), "stored out of order"
    # Every accepted message is either let go of as safe, or returned.
    assert w.box.settled + len(stored) == len(w.accepted)
    # What was never written is always returned.
    unwritten = w.accepted[len(w.written) :]
    assert stored[len(stored) - len(unwritten) :] == unwritten
    assert w.box.deliver(b"late") == REFUSED

    # What the peer had not read when the connection ended is returned...
    kept = {id(m) for m in stored}
    if how is End.PEER_FINISHED:  # exactly what had not reached its kernel
        assert [id(m) for m in stored] == [id(m) for m in w.unread() + unwritten]
        return
    missed = [m for m in w.unread() if id(m) not in kept and id(m) not in w.excused]
    if how is End.CLOSED_BY_US and not paused and not w.last_in_flight:
        return  # we close: a peer keeping up reads the rest, then our FIN
    window_part = stored[: len(stored) - len(unwritten)]
    assert [id(m) for m in window_part] == [
        id(m) for m in w.written[len(w.written) - len(window_part) :]
    ]
    if how is End.PEER_CLOSED and not paused and not w.last_in_flight and not w.probed_behind:
        # ...but a peer that kept up gets at most the last recent_max again
        # (kept up as far as the node could see: a probe after more than a
        # receive buffer was written found nothing in flight).
        assert not missed or len(window_part) == 8
        return
    assert not missed


def test_a_burst_unacknowledged_at_a_probe_is_all_returned_on_a_reset() -> None:
    """Megabytes written between two reports to a peer that reads nothing:
    the probe after the write finds them in flight, so a reset before the
    next report returns them all, not the last recent_max."""
    box = Outbox(10_000_000)
    msgs = [bytes(1000) + b"%d\n" % i for i in range(1000)]
    for m in msgs:
        box.deliver(m)
    box.take()
    assert box.unmeasured > RECEIVE_MARGIN
    box.probed(900_000)
    assert box.unmeasured == 0 and box.settled == 0  # a probe settles nothing
    assert box.end(End.PEER_CLOSED) == msgs


def test_one_write_per_tick_in_order() -> None:
    box = Outbox(1000)
    assert box.deliver(b"a\n") == FIRST
    assert box.deliver(b"b\n") == QUEUED
    assert box.take() == b"a\nb\n"
    assert box.take() is None
    assert box.deliver(b"c\n") == FIRST


def test_a_paused_peer_is_cut_off_past_the_limit_and_everything_returned() -> None:
    budget = Budget(0)
    box = Outbox(10, budget)
    box.deliver(b"written\n")
    box.take()
    box.pause()
    assert box.deliver(b"12345\n") == QUEUED
    assert budget.used == 6
    assert box.deliver(b"67890\n") == OVER
    assert box.end(End.CUT_OFF) == [b"written\n", b"12345\n", b"67890\n"]
    assert budget.used == 0
    assert box.deliver(b"x\n") == REFUSED


def test_resume_writes_what_was_held_first() -> None:
    box = Outbox(100)
    box.pause()
    box.deliver(b"1\n")
    assert box.take() is None
    assert box.resume() is True
    box.deliver(b"2\n")
    assert box.take() == b"1\n2\n"


def test_resume_asks_for_a_write_of_what_was_pending_when_it_paused() -> None:
    """Accepted, then the transport paused before the tick's write, which
    took nothing: resuming must ask for that write, held messages or not (a
    message delivered later only joins it, and would wait with it)."""
    box = Outbox(100)
    assert box.deliver(b"1\n") == FIRST
    box.pause()
    assert box.take() is None
    assert box.resume() is True
    assert box.deliver(b"2\n") == QUEUED
    assert box.take() == b"1\n2\n"


def test_reports_settle_what_is_past_the_peer() -> None:
    box = Outbox(100)
    for i in range(5):
        box.deliver(b"%d\n" % i)
    box.take()
    box.measured(0)  # acknowledged, but may still be in the peer's buffer
    assert box.window_bytes == 10
    box.measured(1)  # ...and are: each kept
    assert box.window_bytes == 10
    for i in range(70):
        box.deliver(b"%d\n" % i)
        box.take()
    box.measured(0)
    assert len(box.end(End.CLOSED_BY_US)) == 0
    assert box.settled == 75
    box = Outbox(100)
    box.deliver(b"old\n")
    box.take()
    box.measured(0)
    box.deliver(b"new\n")
    box.take()
    assert box.end(End.PEER_CLOSED) == [b"old\n", b"new\n"]


def test_a_peer_behind_gets_its_in_flight_tail_back_when_we_close() -> None:
    box = Outbox(10_000_000)
    msgs = [bytes(100_000) + b"%d\n" % i for i in range(10)]
    for m in msgs:
        box.deliver(m)
    box.take()
    box.measured(400_000)  # 4 messages unacknowledged: those + the margin kept
    box.measured(400_000)
    assert box.end(End.CLOSED_BY_US) == msgs[-7:]


def test_the_window_is_bounded() -> None:
    box = Outbox(100, window_max=1000)
    for _ in range(50):
        box.deliver(bytes(99) + b"\n")
        box.take()
    assert box.window_bytes <= 1100
    assert box.settled + len(box.end(End.PEER_CLOSED)) == 50


def test_what_was_written_since_the_last_report_waits_for_the_next() -> None:
    """A reader's program lags its kernel: what the kernel acknowledged just
    before a report may not be read yet, so it is kept one report longer."""
    box = Outbox(100)
    for i in range(100):
        box.deliver(b"%d\n" % i)
        box.take()
    box.measured(0)
    assert box.settled == 0  # all written since the previous report
    box.deliver(b"one more\n")
    box.take()
    box.measured(0)
    assert box.settled == 101 - 64  # then the last recent_max, or 256 KiB
    box.measured(0)
    assert box.idle  # and after a quiet period, nothing


def test_eviction_takes_the_biggest_holders_until_half_the_budget_is_left() -> None:
    mib = 1024 * 1024
    # Four receivers of an attacker hold 48 of a 64 MiB budget, innocents 6,
    # each on an address of its own.
    holdings = [[(12 * mib, k)] for k in range(4)] + [[(1 * mib, 10 + k)] for k in range(6)]
    assert to_evict(holdings, 64 * mib) == [3, 2]  # 54 -> 30 MiB held: at most 32
    assert to_evict(holdings, 1024 * mib) == []  # what connections hold is not the trouble
    # Nobody worth cutting off: small holders stay (the store's backlog fills it).
    assert to_evict([[(EVICT_LEAST - 1, k)] for k in range(100)], 1 * mib) == []


def test_small_holders_on_one_address_add_up_but_are_cut_only_as_far_as_needed() -> None:
    mib = 1024 * 1024
    # 100 small holders behind one address (an attacker's accounts, or an
    # office's NAT) hold 1.5 MiB of a 1 MiB budget: counted together they
    # are worth cutting, but only the biggest, down to half the budget.
    sizes = [EVICT_LEAST // 2 + k * 100 for k in range(100)]
    one_address = [list(zip(sizes, range(100), strict=True))]
    cut = to_evict(one_address, 1 * mib)
    assert cut == sorted(cut, reverse=True)  # the biggest first
    left = sum(sizes) - sum(sizes[k] for k in cut)
    assert left <= mib // 2 < left + sizes[cut[-1]]  # no more than it takes
    assert 0 < len(cut) < 100  # the rest of that address stays connected


holders = st.lists(
    st.lists(st.integers(min_value=1, max_value=4 * EVICT_LEAST), min_size=1, max_size=8),
    max_size=12,
)


@given(holders, st.integers(min_value=1, max_value=64 * EVICT_LEAST))
def test_eviction_frees_what_it_must_and_no_more(sizes: list[list[int]], limit: int) -> None:
    addresses = [[(n, (a, c)) for c, n in enumerate(conns)] for a, conns in enumerate(sizes)]
    held = {key: n for conns in addresses for n, key in conns}
    cut = to_evict(addresses, limit)
    most = int(limit * EVICT_SHARE)
    left = sum(held.values()) - sum(held[k] for k in cut)
    assert len(set(cut)) == len(cut)
    if not cut:  # nothing over, or nothing worth a cut
        worth = [sum(conns) for conns in sizes if sum(conns) >= EVICT_LEAST]
        assert left <= most or not worth
        return
    assert left + held[cut[-1]] > most  # the last cut was needed
    # Within an address, those cut hold at least as much as those kept.
    for a, conns in enumerate(sizes):
        kept = [n for c, n in enumerate(conns) if (a, c) not in cut]
        gone = [n for c, n in enumerate(conns) if (a, c) in cut]
        assert not kept or not gone or min(gone) >= max(kept)
    # Done once at most half is held, or when no whole address is left
    # worth a cut.
    untouched = [sum(conns) for a, conns in enumerate(sizes) if all(k[0] != a for k in cut)]
    assert left <= most or all(total < EVICT_LEAST for total in untouched)
