"""The seam between the chat service and other nodes.

A lone node uses :mod:`clusterchat.bus.local`; a cluster node plugs in
:mod:`clusterchat.bus.redis` without the service changing. Presence answers
"is this user logged in anywhere?"; the bus carries ready-encoded messages to
the nodes holding users, and the service is its :class:`Inbox` for messages
arriving from other nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol


class Presence(Protocol):
    async def claim(self, uid: int, full: bool = False) -> bool:
        """Mark a user online cluster-wide; False if already online somewhere.
        ``full``: their mailbox is at its quota (see :meth:`mark_full`),
        marked in the same step."""
        ...

    async def mark_full(self, uid: int, full: bool) -> None:
        """A user claimed here has a mailbox at its quota (or no longer):
        say so to other nodes, whose messages to them then take the stored
        path, where the quota applies, instead of being delivered live
        (and acknowledged) before this node could refuse them."""
        ...

    async def release(self, uid: int) -> None: ...

    async def online(self, uids: Iterable[int]) -> set[int]:
        """The subset of ``uids`` logged in anywhere."""
        ...

    def registered(self, uid: int, sessions: Container[int]) -> None:
        """The claimed user's session is in the service's table of sessions
        (``sessions``) from now on (a lone node's presence reads it there)."""

    def unregistered(self, uid: int) -> None:
        """The user's session left the table; the user stays claimed until
        :meth:`release`."""


class Settlement:
    r"""A batch from another node whose messages wait for clients' receipts.

    The sending node keeps its copy of the batch until this node says the
    batch is *settled*: every message in it that went to a client with
    receipts was confirmed by that client, or stored once its connection
    ended. Until then this node's memory is the only other copy, and a
    SIGKILL would take it. Each such message :meth:`hold`\s it once and
    :meth:`release`\s it once (receipt, or stored); plain connections never
    hold it (written is settled for them)."""

    __slots__ = ("_done", "_open", "pins")

    #: The message is still in the store (a login read it there, see
    #: ``service.stored_rows``): if its connection ends before the receipt
    #: it is left there, not stored again, and its release means only that
    #: the client confirmed it.
    in_store: ClassVar[bool] = False

    def __init__(self, pins: bool = True) -> None:
        self._open = 0
        self._done: Callable[[], None] | None = None
        #: Whether it holds up others: a batch, with other people's messages
        #: in it, kept on its sender's node (a copy in Redis holds up nobody).
        self.pins = pins

    def hold(self) -> None:
        self._open += 1

    def release(self) -> None:
        self._open -= 1
        if not self._open and self._done is not None:
            done, self._done = self._done, None
            done()

    @property
    def held(self) -> bool:
        """Some message still holds it."""
        return self._open > 0

    def settled_or_then(self, done: Callable[[], None]) -> bool:
        """True if nothing holds it now; else ``done`` is called when the last lets go."""
        if not self._open:
            return True
        self._done = done
        return False


class Inbox(Protocol):
    """What a bus calls on the service for traffic from other nodes."""

    def deliver(self, uid: int, payload: bytes, settlement: Settlement | None = None) -> bool:
        """Write to a local user; False if the user is not (or no longer) here.
        ``settlement``: held until the user's receipt for it, if they have receipts."""
        ...

    async def store_offline(self, uids: Sequence[int], payload: bytes) -> None:
        """Keep a message no node could deliver."""
        ...

    async def store_offline_many(self, messages: Sequence[tuple[Sequence[int], bytes]]) -> None:
        """Keep messages no node could deliver, each for its receivers, in
        order, in as few writes as the store allows."""
        ...

    def nudged(self, uid: int) -> None:
        """Messages were stored for a local user after their login read them."""
        ...

    def local_users(self) -> list[int]:
        """Users logged in here, to re-assert presence after a bus outage."""
        ...

    async def reconnected(self) -> None:
        """The bus was cut off: messages may have been stored for local users."""
        ...

    def displaced(self, uid: int) -> None:
        """While this node was cut off, the user logged in on another one:
        that session is the user's now; end the one here."""
        ...

    def kicked(self, uid: int, banned: bool = False) -> None:
        """An operator ended the user's session, if it is here (``banned``:
        and banned the account)."""
        ...

    def taken_over(self, uid: int) -> None:
        """A login with the user's password, on another node, wants the
        account: end the user's session here if it came by ticket (and
        release the user), else do nothing."""
        ...

    def group_changed(self, gid: int) -> None:
        """Another node changed a group's members or roles: drop what is cached."""
        ...


@dataclass(frozen=True, slots=True)
class WindowStats:
    """The inter-node windows of one node, summed over the nodes it sends to."""

    batches: int  # batches published with messages, ever
    unacked: int  # batches sent and not yet acknowledged
    held: int  # bytes handed on and not yet acknowledged or stored
    kept: int = 0  # bytes other nodes took and whose receipts are still out
    copies: int = 0  # same-node deliveries copied into Redis, receipts still out


class Bus(Protocol):
    #: Other nodes exist, and may store messages for users logging in here.
    shared: bool

    async def start(self, inbox: Inbox) -> None: ...

    async def send(self, uids: Sequence[int], payload: bytes) -> list[int]:
        """Hand one message to the nodes holding ``uids``; returns the uids no node took."""
        ...

    def post(self, uid: int, payload: bytes) -> bool:
        """Queue a message for a user known to be on another node, without
        waiting; False if that is not known (then use :meth:`send`). If no
        node takes it, the bus stores it offline, in order."""
        ...

    def post_reported(self, uid: int, payload: bytes, published: Callable[[bool], None]) -> bool:
        """Queue a message like :meth:`post`, for a caller that answers its
        client once the message is handed on: ``published(True)`` once it is
        (what :meth:`send` returning no uids means), ``published(False)`` if
        no node took it, and then the caller stores it (the bus does not).
        False, with nothing queued, where :meth:`post` would say False, or
        while earlier messages are being stored (:meth:`send` waits for them)."""
        ...

    def copy(
        self,
        uids: list[int],
        payload: bytes,
        settlement: Settlement,
        copied: Callable[[bool], None],
    ) -> bool:
        """A message delivered here to clients with receipts (``uids``), who
        have not confirmed it: keep a copy outside this node until
        ``settlement`` is released, so that a SIGKILL of this node does not
        take the only one (another node stores it for them). True if no
        copy is needed (nothing holds the settlement, or no other node could
        take it: a lone node); else False, and ``copied(ok)`` is called once
        the copy is kept (``ok``) or could not be (``not ok``: then there is
        no copy; the caller acknowledges all the same)."""
        ...

    async def nudge(self, uids: Sequence[int]) -> None:
        """Tell whichever nodes hold ``uids`` to deliver their stored messages."""
        ...

    async def announce_group(self, gid: int) -> None:
        """Tell the other nodes a group's members changed."""
        ...

    async def take_over(self, uid: int) -> None:
        """Ask the node holding ``uid`` to end its session if it came by
        ticket (:meth:`Inbox.taken_over`); the caller then claims the user."""
        ...

    def window_stats(self) -> WindowStats | None:
        """What is in flight to other nodes; None without other nodes."""
        ...

    def pinned(self) -> float:
        """Of what other nodes keep until this node's clients confirm it, the
        largest share of one sender's limit for that (0 without other
        nodes); past it the sender stores whole batches."""
        ...

    async def close(self) -> None: ...
