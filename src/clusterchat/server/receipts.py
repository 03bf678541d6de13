"""Receipts: what a client that acknowledges has not yet acknowledged.

A client that opts in (``"receipts": true`` in LOGIN, modern dialect and
WebSocket only) gets every pushed message numbered, 1, 2, 3, ... in the
order written, in a ``"seq"`` field; it answers RECEIVED (63) with the
highest number it has seen. Until then the message stays here, in the
:class:`Unacked` window of its connection's
:class:`~clusterchat.server.outbox.Outbox`, which asks it instead of the
kernel's send queue what is safely past the peer. When the connection
ends, however it ends, or the user logs out, everything not acknowledged
is stored for the next login, oldest first.

The window is bounded: past ``max_count`` messages or ``max_bytes`` bytes
not acknowledged the peer is cut off (ERROR 187), and if the window has
made no progress for ``timeout`` seconds, or a message in it has waited
about twice that, it is declared dead (ERROR 186); both store the window.
Its bytes count against the node's memory budget.

Sans-I/O: the clock is whatever the caller passes to :meth:`overdue`.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from clusterchat.budget import Budget
from clusterchat.bus.base import Settlement

#: Defaults of the server options (cli.py): unacknowledged messages, their
#: bytes, and seconds without progress before a connection is declared dead.
MAX_COUNT = 2000
MAX_BYTES = 2 * 1024 * 1024
TIMEOUT = 30.0

_SEQ = b',"seq":'
_BRACE = ord("}")
#: Acknowledged messages left at the window's head before it is compacted.
_COMPACT = 256


def stamp(data: bytes, seq: int) -> bytes:
    """A pushed document (a JSON object and its newline) with its number.

    The field goes last, just before the closing brace: a JSON string never
    holds an unescaped quote, so ``,"seq":`` found from the end is ours."""
    if data[-2] == _BRACE:  # what codec builds: ``{...}\n``
        return data[:-2] + b',"seq":%d}\n' % seq
    return data.rstrip()[:-1] + b',"seq":%d}\n' % seq


def unstamp(data: bytes) -> bytes:
    """The document without its number (what is stored offline)."""
    at = data.rfind(_SEQ)
    return data if at < 0 else data[:at] + b"}\n"


class _StoredEarly(Settlement):
    """The mark of a message stored before its receipt (:meth:`Unacked.late`):
    not stored again when the connection ends; its receipt changes nothing
    (the row stays, a duplicate at the next login)."""

    __slots__ = ()
    in_store = True

    def release(self) -> None:
        pass


STORED_EARLY = _StoredEarly(pins=False)


class Unacked:
    """Messages written to the peer and not yet acknowledged, in order.

    ``sent`` is the number of the last one written; the window holds
    numbers ``sent - count + 1`` to ``sent``, unstamped: ``_window`` from
    ``_head`` on (acknowledged ones before it are dropped in bulk, not one
    at a time).
    """

    __slots__ = (
        "_aged",
        "_budget",
        "_head",
        "_in_store",
        "_marks",
        "_since",
        "_stamps",
        "_window",
        "max_bytes",
        "max_count",
        "nbytes",
        "released",
        "sent",
        "stored_early",
        "timeout",
    )

    def __init__(
        self,
        budget: Budget | None = None,
        max_count: int = MAX_COUNT,
        max_bytes: int = MAX_BYTES,
        timeout: float = TIMEOUT,
    ) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._budget = budget
        self._window: list[bytes] = []
        self._head = 0
        self.nbytes = 0
        self.sent = 0
        #: Messages acknowledged so far (for tests and metrics).
        self.released = 0
        #: Messages :meth:`late` gave to be stored before their receipt.
        self.stored_early = 0
        # When the window was first seen waiting without progress (0: not yet).
        self._since = 0.0
        # (number, when): every message up to that number was written by then;
        # once all are confirmed a new mark is set, else they have waited since.
        self._aged = (0, 0.0)
        # (number, settlement) of messages from other nodes' batches, in order:
        # the batch is settled once the client confirms that number.
        self._marks: deque[tuple[int, Settlement]] | None = None
        # (number, when): every mark up to that number was made by then.
        self._stamps: deque[tuple[int, float]] | None = None
        # Marks of messages still in the store not yet written (``_blank``).
        self._in_store = 0

    @property
    def count(self) -> int:
        return len(self._window) - self._head

    def room(self, more: int, more_bytes: int) -> bool:
        """Whether ``more`` messages of ``more_bytes`` (accepted, not yet
        written) still fit beside what is unacknowledged."""
        return (
            len(self._window) - self._head + more <= self.max_count
            and self.nbytes + more_bytes <= self.max_bytes
        )

    def written(self, batch: list[bytes], nbytes: int) -> bytes:
        """``batch`` (``nbytes`` in all) is being written: number it, keep
        it, and return the bytes to write."""
        n = self.sent
        self._window.extend(batch)
        if self._in_store:
            nbytes -= self._blank(n + 1, n + len(batch))
        self.nbytes += nbytes
        if self._budget is not None:
            self._budget.charge(nbytes)
        if len(batch) == 1:
            self.sent = n + 1
            return stamp(batch[0], n + 1)
        self.sent = n + len(batch)
        return b"".join(
            [
                data[:-2] + b',"seq":%d}\n' % i if data[-2] == _BRACE else stamp(data, i)
                for i, data in enumerate(batch, n + 1)
            ]
        )

    def _blank(self, first: int, last: int) -> int:
        """Messages ``first`` to ``last``, just written, that are still in the
        store keep no bytes here: the end skips them and their receipt only
        deletes their row. So a mailbox flowing into the window at every
        login costs the memory budget nothing (an attacker's receivers,
        reconnecting as they were cut off, kept it full that way). Returns
        the bytes not kept."""
        assert self._marks is not None
        window = self._window
        at = len(window) - (last - first + 1)  # where ``first`` is
        freed = 0
        for number, mark in self._marks:
            if number > last:
                break
            if number >= first and mark.in_store:
                i = at + number - first
                freed += len(window[i])
                window[i] = b""
                self._in_store -= 1
        return freed

    def ack(self, seq: int) -> bool:
        """The peer has everything up to ``seq``: let it go. False if
        ``seq`` was never sent (nothing changes); an old ``seq`` is a no-op."""
        if seq > self.sent:
            return False
        window, head = self._window, self._head
        n = len(window) - head - (self.sent - seq)
        if n <= 0:
            return True
        if n == len(window) - head:  # all of it: the usual case
            dropped = self.nbytes
            window.clear()
            self._head = 0
        else:
            dropped = sum(map(len, islice(window, head, head + n)))
            head += n
            if head >= _COMPACT and head * 2 >= len(window):
                del window[:head]
                head = 0
            self._head = head
        self.nbytes -= dropped
        self.released += n
        self._since = 0.0  # progress: the clock starts again
        if self._budget is not None:
            self._budget.release(dropped)
        marks = self._marks
        while marks and marks[0][0] <= seq:
            marks.popleft()[1].release()
        return True

    def keep(self, settlement: Settlement, waiting: int) -> None:
        """The message just accepted (``waiting`` accepted and not yet
        written, itself included) settles ``settlement`` when confirmed."""
        settlement.hold()
        marks = self._marks
        if marks is None:
            marks = self._marks = deque()
        marks.append((self.sent + waiting, settlement))
        if settlement.in_store:
            self._in_store += 1

    def late(self, now: float, grace: float) -> tuple[list[bytes], list[Settlement]]:
        """Messages from other nodes' batches (settlements that pin) that the
        client has left unconfirmed for more than ``grace`` seconds: to store
        now (a duplicate for this client at worst, not stored again when the
        connection ends), and their settlements to release once stored.
        Called with the report (about twice a second).
        A slow or hostile client must not pin a batch, with other people's
        messages in it, on the sending node for long (past its bounds that
        node stores the whole batch: duplicates for everyone in it)."""
        marks = self._marks
        if not marks:
            self._stamps = None
            return [], []
        stamps = self._stamps
        if stamps is None:
            stamps = self._stamps = deque()
        if not stamps or stamps[-1][0] < marks[-1][0]:
            stamps.append((marks[-1][0], now))
        while stamps and stamps[0][0] < marks[0][0]:  # all confirmed since
            stamps.popleft()
        if not stamps or now - stamps[0][1] <= grace:
            return [], []
        upto = min(stamps.popleft()[0], self.sent)  # written ones: not what waits to be
        if not any(m[1].pins for m in marks if m[0] <= upto):
            return [], []  # copies in Redis pin nobody: they wait for the receipt
        first = self.sent - (len(self._window) - self._head) + 1  # the oldest kept's number
        payloads: list[bytes] = []
        settlements: list[Settlement] = []
        rest: deque[tuple[int, Settlement]] = deque()
        for number, settlement in marks:
            if number <= upto and settlement.pins:
                payloads.append(self._window[self._head + number - first])
                settlements.append(settlement)
                rest.append((number, STORED_EARLY))  # stored now: not again at the end
            else:
                rest.append((number, settlement))
        self._marks = rest
        self.stored_early += len(payloads)
        return payloads, settlements

    def unsettled(self) -> list[Settlement]:
        """Settlements still waiting (the connection ended): the caller
        releases them once what :meth:`drain` gave is stored. Those of
        messages still in the store are dropped, unreleased."""
        marks, self._marks = self._marks, None
        return [m for _, m in marks if not m.in_store] if marks else []

    def stalled(self, now: float, after: float) -> bool:
        """Messages have waited ``after`` seconds with no receipt at all
        (as :meth:`overdue` last saw it)."""
        return bool(self._since) and now - self._since >= after

    def unread(self, now: float) -> None:
        """The node is not serving the client's requests (they queue behind
        one that awaits I/O): whatever receipts it sent wait unread, so the
        time does not count toward :meth:`overdue`."""
        if self._since:
            self._since = now
        self._aged = (self._aged[0], now)

    def overdue(self, now: float) -> bool:
        """Called now and then (about twice a second): whether the window has
        waited ``timeout`` seconds without any acknowledgement, or a message
        in it has waited twice that (a client confirming one message now and
        then must not keep the rest, and another node's copy of them, for ever)."""
        if len(self._window) == self._head:
            self._since = 0.0
            self._aged = (self.sent, now)
            return False
        if not self._since:
            self._since = now
            return False
        confirmed = self.sent - (len(self._window) - self._head)
        if confirmed >= self._aged[0]:  # all outstanding at the last mark is confirmed
            self._aged = (self.sent, now)
        elif now - self._aged[1] > 2 * self.timeout:
            return True
        return now - self._since > self.timeout

    def drain(self, waiting: list[bytes] | None = None) -> list[bytes]:
        """Everything not acknowledged, then ``waiting`` (accepted, not yet
        written), oldest first, less the messages still in the store (a
        login read them there: they stay, and are not stored twice); the
        window is emptied (numbering goes on)."""
        first = self.sent - (len(self._window) - self._head) + 1
        out = self._window[self._head :]
        if waiting:
            out += waiting
        marks = self._marks
        if marks and any(m.in_store for _, m in marks):
            stored = {n - first for n, m in marks if m.in_store}
            out = [data for i, data in enumerate(out) if i not in stored]
            self._marks = deque(mark for mark in marks if not mark[1].in_store)
        self._in_store = 0
        self._window = []
        self._head = 0
        if self._budget is not None and self.nbytes:
            self._budget.release(self.nbytes)
        self.nbytes = 0
        self._since = 0.0
        return out
