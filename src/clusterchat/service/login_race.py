"""The login / offline-delivery race of one connection, as a state machine.

A message for a user goes one of two ways: written live to their connection,
or stored in the offline table for their next login. A login reads that
table, so anything stored after the read and before the user is visible as
online would wait for the *next* login, and anything written live before the
login reply would overtake the offline messages the reply carries. This
class is the one place that knows which phase a connection is in and what
the service must do about a store, a delivery or the connection going away:

    ANONYMOUS --login_started--> AUTHENTICATING --refused--> ANONYMOUS
                                      |  (stores noticed: read again later)
                                   claimed
                                      v
                                  REPLYING   deliveries are held
                                      |
                                 reply_sent (held released after the reply)
                                      v
    ONLINE <--next_read: nothing to read-- FLUSHING  reading the offline table
       |                                     ^  (page_written: full page, read on;
       +----------- stored: flush -----------+   read_failed: again, later)

    any phase --ended (disconnected, logged out, displaced, failed)--> CLOSED
    or ANONYMOUS, handing back whatever was held (to be stored, never dropped).

It does no I/O: the service (:mod:`clusterchat.service.chat`) drives it and
does what each call returns. ``tests/service/test_login_race.py`` runs it
through every interleaving of small scenarios and random longer histories.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable
from typing import Generic, TypeVar

from clusterchat.bus.base import Settlement

#: What is held: encoded messages in the service, names in the tests.
P = TypeVar("P")


class Phase(enum.Enum):
    ANONYMOUS = "anonymous"  # not logged in (never, or logged out)
    AUTHENTICATING = "authenticating"  # secret checked, user claimed; not yet registered
    REPLYING = "replying"  # registered; live deliveries held until the reply is written
    FLUSHING = "flushing"  # reply written; one offline delivery running
    ONLINE = "online"  # nothing known to be waiting in the store
    CLOSED = "closed"  # the connection is gone (terminal)


class Delivered:
    """With receipts: the stored rows one login delivered and has not yet seen deleted: its reads
    skip them. A row whose delete has committed is forgotten only when the
    next read starts: one already under way may still return it."""

    __slots__ = ("_gone", "_rows")

    def __init__(self) -> None:
        self._rows: set[int] = set()
        self._gone: list[int] = []

    def add(self, row: int) -> None:
        self._rows.add(row)

    def deleted(self, rows: Iterable[int]) -> None:
        self._gone.extend(rows)

    def reading(self) -> Container[int]:
        """A read starts: the rows it must skip."""
        if self._gone:
            self._rows.difference_update(self._gone)
            self._gone.clear()
        return self._rows


class LoginRace(Generic[P]):
    """Where one connection is in logging in and catching up on its offline messages.

    ``held`` is not None exactly while REPLYING: deliveries go there, not to
    the peer (the hot path appends to it directly). ``recheck`` says the
    offline table must be read (again) before the user can be left ONLINE.
    """

    __slots__ = ("full", "held", "phase", "recheck", "settlements", "unconfirmed")

    def __init__(self) -> None:
        self.phase = Phase.ANONYMOUS
        self.held: list[P] | None = None
        self.recheck = False
        #: (index in ``held``, settlement) of held messages from other nodes'
        #: batches for a client with receipts: the batch is settled only once
        #: the message is confirmed or stored, wherever it goes from here.
        self.settlements: list[tuple[int, Settlement]] | None = None
        #: With receipts: ids of stored rows this login delivered and has not
        #: yet deleted (the client has not confirmed them, or the delete is
        #: under way); its reads skip them (service/stored_rows.py).
        self.unconfirmed: Delivered | None = None
        #: The user's mailbox is at its quota (``ChatService._mailbox_full``):
        #: new messages from this node take the stored path, where the quota
        #: applies, not the live one. A slot here, not a set of users on the
        #: service, because the hot path reads it: two slot loads (a sixth
        #: slot keeps this object in its 80-byte allocator block).
        self.full = False

    def hold(self, settlement: Settlement) -> None:
        """The message about to be held settles ``settlement`` (held till
        :meth:`take_settlements`'s caller lets it go)."""
        assert self.held is not None
        settlement.hold()
        if self.settlements is None:
            self.settlements = []
        self.settlements.append((len(self.held), settlement))

    def take_settlements(self) -> list[tuple[int, Settlement]]:
        """After :meth:`reply_sent` or :meth:`ended`: what held messages hold;
        release each once its message is delivered with it, or stored."""
        out, self.settlements = self.settlements or [], None
        return out

    def __repr__(self) -> str:
        held = len(self.held) if self.held is not None else None
        return f"<LoginRace {self.phase.name} held={held} recheck={self.recheck}>"

    # -- logging in ------------------------------------------------------------------

    @property
    def replied(self) -> bool:
        """The login reply was written (FLUSHING or ONLINE): the login is
        complete, and may be ended from outside without racing it."""
        return self.phase is Phase.FLUSHING or self.phase is Phase.ONLINE

    def login_started(self) -> bool:
        """A login request is being served; False if this connection cannot
        log in now (already logged in, or gone). Stores noticed from now on
        are remembered: the reads that follow may miss them."""
        if self.phase is not Phase.ANONYMOUS:
            return False
        self.phase = Phase.AUTHENTICATING
        self.recheck = False
        return True

    def refused(self) -> None:
        """The login was refused (or the connection went before the claim)."""
        if self.phase is Phase.AUTHENTICATING:
            self.phase = Phase.ANONYMOUS
            self.recheck = False

    def claimed(self) -> bool:
        """The user is ours cluster-wide. True: register the session; from
        now on deliveries are held. False: the connection went meanwhile:
        release the claim."""
        if self.phase is not Phase.AUTHENTICATING:
            return False
        self.phase = Phase.REPLYING
        self.held = []
        return True

    def reply_read(self, complete: bool) -> None:
        """The login reply's offline messages were read. ``complete``: they
        are all there is, as far as this read can tell (a full page, a reply
        cut to fit, a ticket login that only looked, or a cluster where
        another node may be storing: not complete)."""
        if not complete:
            self.recheck = True

    def reply_sent(self) -> list[P]:
        """The reply is being written: what was held, to write right after
        it, in order. An offline delivery starts (a store noticed since the
        login began is read now)."""
        held, self.held = self.held or [], None
        if self.phase is Phase.REPLYING:
            self.phase = Phase.FLUSHING
        return held

    # -- offline delivery ------------------------------------------------------------

    def stored(self) -> bool:
        """Something was stored for this user (here, or by another node that
        nudged us). True: start an offline delivery now; otherwise the one
        running or the login in progress reads the table again."""
        if self.phase in (Phase.ANONYMOUS, Phase.CLOSED):
            return False
        self.recheck = True
        if self.phase is Phase.ONLINE:
            self.phase = Phase.FLUSHING
            return True
        return False

    def next_read(self) -> bool:
        """Asked by the running offline delivery: read the table (again)?
        False ends it (ONLINE, or the connection is gone)."""
        if self.phase is not Phase.FLUSHING:
            return False
        if self.recheck:
            self.recheck = False
            return True
        self.phase = Phase.ONLINE
        return False

    def page_written(self, full: bool) -> None:
        """A page of offline messages was written and deleted; a full page
        means there may be more."""
        if full and self.phase is Phase.FLUSHING:
            self.recheck = True

    def read_failed(self) -> bool:
        """The store failed while the offline delivery read or deleted.
        True: it goes on after a pause (the table is read again); False:
        the session has ended meanwhile, stop."""
        if self.phase is not Phase.FLUSHING:
            return False
        self.recheck = True
        return True

    def flush_stopped(self) -> None:
        """The offline delivery stopped early (the peer refused a message, or
        the store failed). What it did not delete stays stored; a later store
        or nudge starts another."""
        if self.phase is Phase.FLUSHING:
            self.phase = Phase.ONLINE

    # -- ways out --------------------------------------------------------------------

    def ended(self, closed: bool) -> list[P]:
        """The session ends: logged out (``closed`` False: the connection may
        log in again), dropped, displaced or failed mid-login. Returns what
        was held, which the service must store: nothing held is dropped."""
        held, self.held = self.held or [], None
        self.recheck = False
        if closed:
            self.phase = Phase.CLOSED
        elif self.phase is not Phase.CLOSED:
            self.phase = Phase.ANONYMOUS
        return held

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED
