"""The connection core with no socket and no event loop: bytes in, and what
it asks of its transport (the Link) and of the service, recorded.

Async service work is a :class:`Gate` the test opens; the queue's drain is
the coroutine the core hands to the node, stepped here by hand."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Awaitable, Coroutine, Generator, Sequence
from dataclasses import replace
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from clusterchat.budget import Budget
from clusterchat.bus.base import Settlement
from clusterchat.config import Settings
from clusterchat.protocol.framing import FrameDecoder
from clusterchat.protocol.messages import ErrCode
from clusterchat.server.core import (
    LINGER,
    QUEUE_PAUSE,
    SETTLE_GRACE,
    SETTLE_GRACE_PRESSED,
    ConnectionCore,
)
from clusterchat.service.counts import ServiceCounts
from clusterchat.service.refusals import RefusalLog
from clusterchat.service.session import Session

MAX_FRAME = 64


class Gate:
    """Async work the test finishes when it likes."""

    def __init__(self) -> None:
        self.open = False

    def __await__(self) -> Generator[None, None, None]:
        while not self.open:
            yield None


class FakeService:
    """Records what the core asks of the service. A frame starting with
    ``wait`` awaits a new :class:`Gate`; ``boom`` raises."""

    def __init__(self) -> None:
        self.counts = ServiceCounts()
        self.refusals = RefusalLog(logging.getLogger("test_core"))
        self.served: list[tuple[bytes, bool]] = []
        self.gates: list[Gate] = []
        self.too_large: list[int] = []
        self.failed: list[bytes] = []
        self.spilled: list[tuple[list[bytes], bool]] = []
        self.disconnects = 0
        self.reply: bytes | None = None  # sent back for every request, if set

    def handle(self, s: Session, request: object, legacy: bool) -> Awaitable[None] | None:
        frame = cast(bytes, request)  # OpaqueCore hands frames on undecoded
        if frame.startswith(b"boom"):
            raise RuntimeError("a bug")
        self.served.append((frame, legacy))
        if self.reply is not None:
            s.peer.send(self.reply + frame)
        if frame.startswith(b"wait"):
            gate = Gate()
            self.gates.append(gate)
            return gate
        return None

    def frame_too_large(self, s: Session, limit: int) -> None:
        self.too_large.append(limit)

    def internal_error(self, s: Session, frame: bytes = b"") -> None:
        self.failed.append(frame)

    def spill(
        self,
        s: Session,
        payloads: list[bytes],
        cut_off: bool = True,
        settlements: Sequence[Settlement] = (),
        held: bool = False,
    ) -> None:
        self.spilled.append((payloads, cut_off))

    def disconnected(self, s: Session) -> None:
        self.disconnects += 1


class FakeHost:
    def __init__(self, output_limit: int = 1 << 20) -> None:
        self.settings = Settings(max_frame=MAX_FRAME, output_limit=output_limit)
        self.budget = Budget(0)
        self.decoder = FrameDecoder(MAX_FRAME)
        self.settle_grace = SETTLE_GRACE
        self.service = FakeService()
        self.unflushed: list[ConnectionCore] = []
        self.flush_asked = 0  # flush_soon calls: one a tick
        self.watched: list[ConnectionCore] = []
        self.tasks: list[Coroutine[Any, Any, Any]] = []

    def flush_soon(self) -> None:
        self.flush_asked += 1

    @property
    def flushes(self) -> list[ConnectionCore]:
        return self.unflushed

    def watch(self, core: ConnectionCore) -> None:
        self.watched.append(core)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.tasks.append(coro)

    def run(self) -> None:
        """Step every task until it waits on a closed gate, or ends."""
        for task in list(self.tasks):
            try:
                task.send(None)
            except StopIteration:
                self.tasks.remove(task)

    def tick(self) -> None:
        """The end of a loop iteration: the node's batched flushes."""
        cores, self.unflushed = self.unflushed, []
        for core in cores:
            core.flush()


class FakeLink:
    """The transport, recorded."""

    def __init__(self) -> None:
        self.address = self.limit_key = "192.0.2.1"
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False
        self.shut_linger: list[float | None] = []
        self.refused: list[bytes] = []
        self.flight = 0
        self.readdressed: list[str] = []
        self.refuse_address: bytes | None = None
        self.core: ConnectionCore | None = None
        self.fail_writes = False  # the peer's reset came first: a write fails, and closes

    def write(self, data: bytes) -> bool:
        assert not self.closing()
        if self.fail_writes:
            self.closed = True
            return False
        self.written.append(data)
        return True

    def closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        assert self.core is not None
        self.core.close()

    def shut(self, linger: float | None = None) -> None:
        self.closed = True
        self.shut_linger.append(linger)

    def refuse(self, why: bytes) -> None:
        self.refused.append(why)
        self.closed = True

    def in_flight(self) -> int:
        return self.flight

    def readdress(self, address: str) -> bytes | None:
        self.readdressed.append(address)
        return self.refuse_address


class OpaqueCore(ConnectionCore):
    """Serves frames as they are: ordering and framing do not depend on what
    a request says (decoding is tests/protocol's)."""

    __slots__ = ()
    decode = staticmethod(lambda frame: frame)


def make(
    output_limit: int = 1 << 20, host: FakeHost | None = None
) -> tuple[ConnectionCore, FakeLink, FakeHost]:
    host = host or FakeHost(output_limit)
    link = FakeLink()
    core = OpaqueCore(host, link, 0.0)
    link.core = core
    return core, link, host


def served(host: FakeHost) -> list[bytes]:
    return [frame for frame, _ in host.service.served]


# -- request ordering ------------------------------------------------------------------


def test_requests_after_one_that_waits_are_served_in_order_once_it_is_done() -> None:
    core, _, host = make()
    core.receive_data(b"a\nwait1\nb\nc\n", 1.0)
    assert served(host) == [b"a", b"wait1"]  # b and c wait their turn
    host.run()
    assert served(host) == [b"a", b"wait1"]
    core.receive_data(b"wait2\nd\n", 2.0)
    host.service.gates[0].open = True
    host.run()
    assert served(host) == [b"a", b"wait1", b"b", b"c", b"wait2"]
    host.service.gates[1].open = True
    host.run()
    assert served(host) == [b"a", b"wait1", b"b", b"c", b"wait2", b"d"]
    assert not host.tasks
    core.receive_data(b"e\n", 3.0)  # served at once again
    assert served(host)[-1] == b"e"


def test_the_dialect_is_the_terminator() -> None:
    core, _, host = make()
    core.receive_data(b"a\0b\n", 1.0)
    core.receive_frame(b"c")
    assert host.service.served == [(b"a", True), (b"b", False), (b"c", False)]


def test_a_long_queue_pauses_reading_until_it_is_drained() -> None:
    core, link, host = make()
    core.receive_data(b"wait\n", 1.0)
    core.receive_data(b"x\n" * (QUEUE_PAUSE - 1), 1.0)
    assert link.reading
    core.receive_data(b"y\n", 1.0)
    assert not link.reading
    host.service.gates[0].open = True
    host.run()
    assert link.reading
    assert served(host) == [b"wait"] + [b"x"] * (QUEUE_PAUSE - 1) + [b"y"]


def test_a_drained_queue_leaves_reading_to_a_full_socket() -> None:
    core, link, host = make()
    core.receive_data(b"wait\n" + b"x\n" * QUEUE_PAUSE, 1.0)
    core.writing_paused()
    host.service.gates[0].open = True
    host.run()
    assert not link.reading  # the socket is still full
    core.writing_resumed()
    assert link.reading


def test_a_failing_request_costs_only_itself() -> None:
    core, _, host = make()
    core.receive_data(b"boom\nafter\n", 1.0)
    assert host.service.failed == [b"boom"]
    assert served(host) == [b"after"]


# hypothesis: however the stream is cut into reads, the same requests are
# served in the same order, whichever of them wait and whenever they finish.

_frames = st.lists(
    st.sampled_from([b"a", b"bb", b"wait", b"ccc", b"wait2", b"{}"]), min_size=1, max_size=20
)


@given(
    frames=_frames,
    cuts=st.lists(st.integers(0, 200), max_size=10),
    rnd=st.randoms(use_true_random=False),
)
@settings(max_examples=300, deadline=None)
def test_any_split_of_the_stream_serves_the_same_frames_in_order(
    frames: list[bytes], cuts: list[int], rnd: random.Random
) -> None:
    stream = b"".join(f + b"\n" for f in frames)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    core, _, host = make()
    try:
        for start, end in itertools.pairwise(points):
            core.receive_data(stream[start:end], 1.0)
            for gate in host.service.gates:  # some of the waits end now
                if rnd.random() < 0.5:
                    gate.open = True
            host.run()
        while host.tasks:  # finish whatever still waits
            for gate in host.service.gates:
                gate.open = True
            host.run()
    finally:  # hypothesis may stop an example half-way (its random draws ran out)
        for task in host.tasks:
            task.close()
    assert served(host) == frames
    assert core.partial_since == 0.0  # nothing half-received


def test_cores_share_the_hosts_decoder_until_a_frame_comes_in_parts() -> None:
    """An idle connection holds no decoder of its own (issue 14: memory per
    idle connection); one whose frame arrives in parts keeps its bytes apart."""
    a, _, host = make()
    b, _, _ = make(host=host)
    a.receive_data(b"a1\n", 1.0)
    b.receive_data(b"b1\n", 1.0)
    assert a.decoder is b.decoder is host.decoder
    a.receive_data(b"a2-", 2.0)
    b.receive_data(b"b2-", 2.0)
    assert a.decoder is not host.decoder and b.decoder is not host.decoder
    assert not host.decoder.pending
    b.receive_data(b"end\n", 3.0)
    a.receive_data(b"end\n", 3.0)
    assert served(host) == [b"a1", b"b1", b"b2-end", b"a2-end"]
    assert a.partial_since == b.partial_since == 0.0


# -- frames over the limit --------------------------------------------------------------


def test_a_frame_over_the_limit_closes_after_the_ones_before_it() -> None:
    core, link, host = make()
    host.service.reply = b"re:"
    core.receive_data(b"a\n" + b"x" * (MAX_FRAME + 1), 1.0)
    assert served(host) == [b"a"]
    assert host.service.too_large == [MAX_FRAME]
    assert link.closed and core.ended
    assert link.written == [b"re:a"]


def test_a_frame_over_the_limit_behind_a_waiting_one_is_refused_in_its_turn() -> None:
    core, link, host = make()
    core.receive_data(b"wait\nb\n" + b"x" * (MAX_FRAME + 1), 1.0)
    assert not host.service.too_large and not link.closed
    host.service.gates[0].open = True
    host.run()
    assert served(host) == [b"wait", b"b"]
    assert host.service.too_large == [MAX_FRAME]
    assert link.closed


def test_a_half_received_request_is_timed_from_its_first_byte() -> None:
    core, _, _ = make()
    core.receive_data(b'{"msgid"', 5.0)
    assert core.partial_since == 5.0
    core.receive_data(b":1", 6.0)
    assert core.partial_since == 5.0  # still the same request
    core.receive_data(b"}\n{", 7.0)
    assert core.partial_since == 7.0  # the next one began
    core.receive_data(b"}\n", 8.0)
    assert core.partial_since == 0.0
    assert core.last_seen == 8.0


# -- writes: replies, chat messages, one write per tick ------------------------------------


def test_a_reply_leaves_at_the_end_of_the_tick_with_the_partners_message() -> None:
    """At window 1 a CHAT_ACK and the message the partner sent meanwhile
    share a write (one system call, not two)."""
    core, link, host = make()
    assert core.send(b"r1")
    assert link.written == []
    assert host.flushes == [core]  # the reply asks for the tick's flush
    assert core.deliver(b"m1")
    assert host.flushes == [core]  # the message joins that flush: not asked twice
    host.tick()
    assert link.written == [b"r1m1"]
    host.tick()
    assert link.written == [b"r1m1"]  # nothing twice


def test_a_reply_joins_the_messages_due_this_tick_in_one_write() -> None:
    core, link, host = make()
    assert core.deliver(b"m1")
    assert host.flushes == [core]  # the first message asks for the tick's flush
    assert core.deliver(b"m2")
    assert host.flushes == [core]
    assert core.send(b"r1")
    assert link.written == []
    host.tick()
    assert link.written == [b"m1m2r1"]
    assert host.watched == [core]  # what was written is remembered, for now


def test_a_flush_is_asked_again_in_the_next_tick() -> None:
    core, link, host = make()
    assert core.send(b"r1")
    host.tick()
    assert core.deliver(b"m1")
    assert host.flushes == [core]
    host.tick()
    assert link.written == [b"r1", b"m1"]
    assert host.flush_asked == 2  # once in each tick


def test_cores_written_to_in_one_tick_share_the_hosts_one_flush() -> None:
    """At window 1 the sender's CHAT_ACK and the receiver's message: two
    cores, one flush asked of the node, both written at its end."""
    a, link_a, host = make()
    b, link_b, _ = make(host=host)
    assert b.deliver(b"m1")
    assert a.send(b"ack1")
    assert b.deliver(b"m2")
    assert host.flushes == [b, a]
    assert host.flush_asked == 1
    host.tick()
    assert (link_a.written, link_b.written) == ([b"ack1"], [b"m1m2"])
    assert host.flushes == []
    assert a.send(b"ack2")
    assert host.flush_asked == 2  # the next tick's


def test_replies_to_requests_read_together_leave_in_one_write_in_order() -> None:
    core, link, host = make()
    host.service.reply = b"re:"
    core.receive_data(b"a\nb\nc\n", 1.0)
    assert link.written == [b"re:are:bre:c"]
    core.receive_data(b"d\n", 1.0)  # alone in its read: at the end of the tick
    assert link.written == [b"re:are:bre:c"]
    host.tick()
    assert link.written == [b"re:are:bre:c", b"re:d"]


def test_replies_to_messages_read_together_leave_in_one_write_in_order() -> None:
    """A WebSocket hands the core whole messages, as many as one read held:
    answered together too, in the modern dialect."""
    core, link, host = make()
    host.service.reply = b"re:"
    core.receive_frames([b"a", b"b", b"c"])
    assert link.written == [b"re:are:bre:c"]
    assert host.service.served == [(b"a", False), (b"b", False), (b"c", False)]
    core.receive_frames([b"d"])  # alone in its read: at the end of the tick
    assert link.written == [b"re:are:bre:c"]
    host.tick()
    assert link.written == [b"re:are:bre:c", b"re:d"]


def test_an_idle_outbox_is_given_back_after_the_reports() -> None:
    core, _, host = make()
    core.deliver(b"m1")
    host.tick()
    assert core.outbox is not None
    while core.report(1.0):
        pass
    assert core.outbox is None


# -- pause and resume ----------------------------------------------------------------------


def test_a_full_socket_holds_messages_and_stops_reading() -> None:
    core, link, host = make()
    core.writing_paused()
    assert not link.reading
    core.deliver(b"m1")
    host.tick()
    assert link.written == []  # held
    core.writing_resumed()
    assert link.reading
    host.tick()
    assert link.written == [b"m1"]


def test_a_peer_that_does_not_read_is_cut_off_and_its_messages_stored() -> None:
    core, link, host = make(output_limit=10)
    core.writing_paused()
    core.deliver(b"0123456")
    assert not link.closed
    core.deliver(b"789abcd")  # past the output limit
    assert link.closed and link.shut_linger == [LINGER]
    assert host.service.spilled == [([b"0123456", b"789abcd"], True)]
    assert not core.deliver(b"later")  # the caller stores it


# -- the end: what is stored -----------------------------------------------------------------


def test_messages_not_written_when_the_peer_resets_are_stored() -> None:
    core, link, host = make()
    core.deliver(b"m1")
    link.closed = True
    core.connection_lost()
    assert host.service.spilled == [([b"m1"], False)]
    assert host.service.disconnects == 1
    assert core.ended and not core.deliver(b"m2")


def test_messages_due_when_the_peer_resets_in_the_same_tick_are_all_stored() -> None:
    """The reset is read after the messages were accepted, before the
    tick's write: none was written, so all are stored, not only the few a
    peer that kept up may have had unread."""
    core, link, host = make()
    burst = [b"m%d" % i for i in range(200)]
    for m in burst:
        core.deliver(m)
    link.closed = True  # the transport saw the reset; connection_lost comes next
    host.tick()
    core.connection_lost()
    assert host.service.spilled == [(burst, False)]


def test_messages_a_reply_took_before_the_peer_reset_are_all_stored() -> None:
    core, link, host = make()
    core.deliver(b"old")
    host.tick()
    burst = [b"m%d" % i for i in range(200)]
    for m in burst:
        core.deliver(m)
    core.send(b"r1")  # takes the burst, to go before it
    core.deliver(b"after")
    link.closed = True
    host.tick()
    core.connection_lost()
    ((spilled, _),) = host.service.spilled
    assert spilled[-201:] == [*burst, b"after"]


def test_messages_of_a_write_that_failed_are_all_stored() -> None:
    """The peer's reset reached the kernel before the tick's write, which
    fails (the transport then closes): what it carried never left."""
    core, link, host = make()
    core.deliver(b"old")
    host.tick()
    burst = [b"m%d" % i for i in range(200)]
    for m in burst[:100]:
        core.deliver(m)
    core.send(b"r1")  # takes the first hundred
    for m in burst[100:]:
        core.deliver(m)
    link.fail_writes = True
    host.tick()
    assert link.closed
    core.connection_lost()
    ((spilled, _),) = host.service.spilled
    assert spilled[-200:] == burst


def test_our_close_after_the_peer_reset_in_the_tick_stores_what_was_not_written() -> None:
    core, link, host = make()
    burst = [b"m%d" % i for i in range(200)]
    for m in burst[:100]:
        core.deliver(m)
    core.send(b"r1")
    for m in burst[100:]:
        core.deliver(m)
    link.closed = True
    core.close()  # a logout or kick handled before the connection's loss
    ((spilled, _),) = host.service.spilled
    assert spilled == burst


def test_after_a_fin_only_what_its_kernel_had_not_acknowledged_is_stored() -> None:
    core, link, host = make()
    core.deliver(b"m1")
    host.tick()
    core.report(1.0)
    core.deliver(b"m2")
    host.tick()
    link.flight = 2  # m2 not acknowledged
    core.receive_eof()
    assert host.service.spilled == [([b"m2"], False)]


def test_a_peer_that_read_everything_before_its_fin_has_nothing_stored() -> None:
    core, _, host = make()
    core.deliver(b"m1")
    host.tick()
    core.receive_eof()
    assert host.service.spilled == []


def test_our_close_writes_what_is_due_first() -> None:
    core, link, host = make()
    core.deliver(b"m1")
    core.send(b"r1")
    core.close()
    assert link.written == [b"m1r1"]
    assert link.closed and link.shut_linger == [None]
    assert host.service.spilled == []  # a peer keeping up: nothing owed


def test_a_connection_that_never_had_an_outbox_ends_owing_nothing() -> None:
    core, link, host = make()
    core.close()
    assert core.ended and link.closed
    assert not core.deliver(b"m1")
    assert host.service.spilled == []


# -- PROXY lines from a trusted proxy ----------------------------------------------------------


def test_a_proxy_line_in_pieces_names_the_client() -> None:
    core, link, host = make()
    core.expect_proxy()
    core.receive_data(b"PROXY TCP4 203.0.113.7 19", 1.0)
    assert link.readdressed == [] and served(host) == []
    core.receive_data(b"2.0.2.1 5000 7000\r\nhello\n", 1.0)
    assert link.readdressed == ["203.0.113.7"]
    assert served(host) == [b"hello"]
    core.receive_data(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 1.0)  # only the first counts
    assert link.readdressed == ["203.0.113.7"]


def test_a_trusted_address_may_send_no_proxy_line() -> None:
    core, link, host = make()
    core.expect_proxy()
    core.receive_data(b"hello\n", 1.0)
    assert link.readdressed == [] and served(host) == [b"hello"]


def test_a_bad_proxy_line_closes() -> None:
    core, link, host = make()
    core.expect_proxy()
    core.receive_data(b"PROXY TCP4 nonsense\r\nhello\n", 1.0)
    assert link.closed and served(host) == []


def test_a_client_over_its_limit_behind_a_proxy_is_refused_and_ignored() -> None:
    core, link, host = make()
    link.refuse_address = b"too many\n"
    core.expect_proxy()
    core.receive_data(b"PROXY TCP4 203.0.113.7 192.0.2.1 5000 7000\r\nhello\n", 1.0)
    assert link.refused == [b"too many\n"]
    core.receive_data(b"more\n", 2.0)
    assert served(host) == []


def test_a_reply_made_later_keeps_its_place_without_holding_up_requests() -> None:
    """A CHAT_ACK waiting for its message's copy (a receiver with receipts,
    in a cluster): replies to later requests wait behind it, in order, while
    those requests are served at once."""
    core, link, host = make()
    first = core.reply_later()
    assert core.send(b"r2")
    second = core.reply_later()
    assert core.send(b"r4")
    host.tick()
    assert link.written == []  # nothing may overtake the first
    second(b"r3")
    host.tick()
    assert link.written == []
    first(b"r1")
    host.tick()
    assert link.written == [b"r1r2r3r4"]
    nothing = core.reply_later()
    assert core.send(b"r6")
    nothing(None)  # the original client is shown no CHAT_ACK: the rest goes on
    host.tick()
    assert link.written == [b"r1r2r3r4", b"r6"]
    assert core.send(b"r7")  # and no longer waits
    host.tick()
    assert link.written[-1] == b"r7"


def test_closing_writes_the_replies_behind_a_reply_still_unknown() -> None:
    """A CHAT_ACK waits for its copy when the server says goodbye (displaced,
    kicked, shutting down): the goodbye and the replies before it still go
    (found by review: they were dropped with the connection)."""
    core, link, host = make()
    assert core.send(b"r1")
    ack = core.reply_later()
    assert core.send(b"bye")
    core.close()
    assert b"".join(link.written) == b"r1bye"
    ack(b"late")  # the copy comes after all: nothing more
    host.tick()
    assert b"".join(link.written) == b"r1bye"


def test_a_client_always_late_to_confirm_is_cut_off() -> None:
    """Each message from another node it leaves unconfirmed past the grace
    is stored for it at once, a row outside its mailbox's quota: a client
    that is late every time, while confirming enough never to time out,
    is declared dead once more than its window's worth were stored early."""
    core, link, host = make()
    lim = host.settings.limits
    host.settings = replace(host.settings, limits=replace(lim, receipt_window=3))
    assert core.start_receipts([])
    now = 0.0
    for i in range(1, 5):
        assert not link.closed
        core.deliver(b'{"n":%d}\n' % i, Settlement())
        host.tick()  # written: number i
        core.report(now)
        now += SETTLE_GRACE + 0.5
        core.report(now)  # late: stored for it now
        assert len(host.service.spilled) == i
        if not link.closed:
            assert core.received(i)  # its receipt comes after all
    assert link.closed
    assert b'"errno":%d' % ErrCode.RECEIPT_TIMEOUT in link.written[-1]
    # Nothing it had not confirmed is left unstored, and nothing stored twice.
    assert [p for p, _ in host.service.spilled] == [[b'{"n":%d}\n' % i] for i in range(1, 5)]


def test_clients_get_less_time_to_confirm_while_a_sender_keeps_much_for_them() -> None:
    """The node lowers the grace (it sees a sender near its limit of kept
    batches): a message from another node unconfirmed for over a second is
    stored for its client, and its batch settled."""
    core, _link, host = make()
    assert core.start_receipts([])
    settlement = Settlement()
    core.deliver(b'{"n":1}\n', settlement)
    host.tick()
    core.report(0.0)
    core.report(1.5)
    assert host.service.spilled == []  # the usual 10 s grace
    host.settle_grace = SETTLE_GRACE_PRESSED
    core.report(3.0)
    assert host.service.spilled == [([b'{"n":1}\n'], False)]
