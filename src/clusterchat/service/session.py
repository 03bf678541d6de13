"""A connection as the chat service sees it: a peer to write to, and who it is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence, Set
from typing import Protocol, TypeAlias

from clusterchat.bus.base import Settlement
from clusterchat.service.login_race import LoginRace

#: ``blocked_by`` of the many sessions nobody blocks: one shared empty set,
#: not an empty ``set()`` (216 bytes) per connection.
NOBODY: frozenset[int] = frozenset()

#: ``log_state`` of a session never refused: no line logged, none unlogged.
NOT_REFUSED: tuple[float, int] = (0.0, 0)

#: ``anonymous_since`` of a session logged in with a ticket (any logged-in
#: session has no login deadline; 0.0 marks one logged in with the password):
#: kept in that slot, not a new one on every connection.
RESUMED = -1.0

#: What the service's entry point returns for a request: None when it is
#: done, else the rest of it, which the transport awaits before it serves
#: the connection's next request (so each connection's requests take effect
#: in the order sent).
Work: TypeAlias = Awaitable[None] | None


class Peer(Protocol):
    """What a transport offers the service."""

    @property
    def address(self) -> str:
        """The client's address, for the log and for trust."""
        ...

    @property
    def limit_key(self) -> str:
        """What per-address limits count the client under: its address, or
        an IPv6 address's /64 (service/limits.py ``limit_key``)."""
        ...

    def send(self, data: bytes) -> bool:
        """Queue a reply for the peer; False if the connection is closing."""
        ...

    def reply_later(self) -> Callable[[bytes | None], None]:
        """A reply known later: replies sent meanwhile wait behind it. Call
        what this returns once, with the reply's bytes (None: nothing)."""
        ...

    def closing(self) -> bool:
        """Nothing more can be written: the connection is closing or gone
        (a write that failed, for one: a reply queued by :meth:`send`
        leaves at the end of the loop iteration)."""
        ...

    def deliver(self, data: bytes, settlement: Settlement | None = None) -> bool:
        """Queue a chat message for the peer; False if it cannot take it (the
        caller stores it offline). A peer that stops reading is cut off and
        what it had not been sent comes back through ``ChatService.spill``.
        ``settlement``: the message came from another node's batch (see
        :class:`~clusterchat.bus.base.Settlement`); held until the client
        confirms it, if it has receipts."""
        ...

    def close(self) -> None: ...

    def start_receipts(self, carried: list[bytes], marks: Sequence[Settlement] = ()) -> bool:
        """Number what is delivered from now on and keep it until the client
        acknowledges it (RECEIVED); False if this transport cannot.
        ``carried``: the offline messages the login reply carries, numbered
        1 to n before any push; ``marks``: the settlement of each of them
        (their rows, left in the store until the receipt)."""
        ...

    def received(self, seq: int) -> bool | None:
        """The client acknowledged every number up to ``seq``: True if that
        released messages, None if it released none (an old number, or one
        already acknowledged), False if no such number was sent."""
        ...

    async def receipt_room(self, nbytes: int) -> bool:
        """Wait until one more message of ``nbytes`` fits the unacknowledged
        window (the client acknowledges); False if the connection ended."""
        ...

    def stop_receipts(self) -> tuple[list[bytes], list[Settlement]]:
        """Receipts end (logout): what was delivered and not acknowledged,
        oldest first, for storing; and the settlements to release once it is."""
        ...


class NoReceipts:
    """The receipt half of :class:`Peer` for a transport that numbers
    nothing (the service's fakes in tests and fuzz targets): receipts are
    refused at login, so the rest is never asked for."""

    def start_receipts(self, carried: list[bytes], marks: Sequence[Settlement] = ()) -> bool:
        return False

    def received(self, seq: int) -> bool | None:
        return False

    async def receipt_room(self, nbytes: int) -> bool:
        return True

    def stop_receipts(self) -> tuple[list[bytes], list[Settlement]]:
        return [], []

    def reply_later(self) -> Callable[[bytes | None], None]:
        raise NotImplementedError("only a receiver with receipts makes a reply wait")


class Session:
    """Login state of one connection.

    ``legacy`` is fixed by the first request's terminator: a NUL means the
    original C++ client, which must only ever see the original's reply types.
    ``race`` is where the connection is in logging in and catching up on
    its offline messages (:mod:`clusterchat.service.login_race`): while a
    login is being completed it holds deliveries, so that live messages
    cannot overtake the offline ones the login reply carries.
    """

    __slots__ = (
        "anonymous_since",
        "block_log",
        "blocked_by",
        "legacy",
        "log_state",
        "name",
        "peer",
        "race",
        "receipts",
        "stamp",
        "tokens",
        "uid",
    )

    def __init__(self, peer: Peer, now: float = 0.0) -> None:
        self.peer = peer
        self.uid = 0
        #: When the connection opened, or its user logged out: the login
        #: deadline runs from here, whatever the peer sends meanwhile.
        self.anonymous_since = now
        self.name = ""
        self.legacy: bool | None = None
        self.race: LoginRace[bytes] = LoginRace()
        #: The client acknowledges pushes (asked for at login; server/receipts.py).
        self.receipts = False
        # Flood limit (a token bucket): requests it may still make, and when
        # the bucket was last topped up. Filled at login.
        self.tokens = 0.0
        self.stamp = 0.0
        # Users who block this one (service/friends.py): read at login, kept
        # current from their nodes; changes met while reading go to the log.
        # Replaced, never changed in place (it may be the shared NOBODY).
        self.blocked_by: Set[int] = NOBODY
        self.block_log: list[tuple[int, bool]] | None = None
        # Rate-limited refusal log (service.refusals): when the next line may
        # go out, and how many refusals were not logged since the last one.
        # One slot, not two: 12 slots fit the allocator's 128-byte blocks, 13
        # take 144 on every connection.
        self.log_state: tuple[float, int] = NOT_REFUSED

    @property
    def logged_in(self) -> bool:
        return self.uid != 0

    @property
    def resumed(self) -> bool:
        """Logged in with a ticket, not the password, and that login is
        complete: a password login takes the account over
        (ChatService._take_over). One still completing is not ended under
        it (the password login is told errno 2, and retries)."""
        return self.anonymous_since == RESUMED and self.race.replied

    @property
    def closed(self) -> bool:
        return self.race.closed

    def block_changed(self, by: int, on: bool) -> None:
        """User ``by`` blocked (``on``) or unblocked this one (service/friends.py)."""
        if self.block_log is not None:
            self.block_log.append((by, on))
        if on:
            self.blocked_by = self.blocked_by | {by}
        elif by in self.blocked_by:
            self.blocked_by = self.blocked_by - {by} or NOBODY

    def deliver(self, payload: bytes, settlement: Settlement | None = None) -> bool:
        held = self.race.held
        if held is not None:  # a login being answered: held until its reply is written
            if settlement is not None:  # (whether it asked for receipts may not be known yet)
                self.race.hold(settlement)
            held.append(payload)
            return True
        return self.peer.deliver(payload, settlement)
