"""What the chat service needs from a store, and nothing more.

A new backend implements :class:`Store`; the service never sees SQL.
Methods raise :class:`clusterchat.errors.Unavailable` when the backend is
unreachable and a :class:`clusterchat.errors.Refused` subclass when the
request conflicts with what is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Credentials:
    name: str
    password_hash: str
    ticket_digest: str | None


@dataclass(frozen=True, slots=True)
class Resume:
    """What a ticket login needs, in one read."""

    name: str
    ticket_digest: str | None
    has_offline: bool
    #: When the ticket stops working (epoch seconds); None: it does not.
    ticket_expiry: int | None = None


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    role: str  # "creator" | "normal"


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    name: str
    desc: str
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class LoginView:
    """Everything a login reply needs, read in one go."""

    friends: list[tuple[int, str]]
    groups: list[Group]
    #: (ordering key, stored message document): the first page; if it is full,
    #: more follow through :meth:`Store.offline`.
    offline: list[tuple[int, str]]


@dataclass(frozen=True, slots=True)
class Quota:
    """How much one user may hold; 0 switches a bound off."""

    offline_messages: int = 0
    offline_bytes: int = 0
    groups_created: int = 0
    memberships: int = 0
    friends: int = 0


NO_QUOTA = Quota()


class Store(Protocol):
    url: str  # for logs, password masked

    async def create_schema(self) -> None: ...
    async def close(self) -> None: ...

    async def create_user(self, name: str, password_hash: str) -> int: ...
    async def credentials(self, uid: int) -> Credentials | None: ...

    async def set_state(self, uids: Sequence[int], online: bool) -> None: ...
    async def resume(self, uid: int) -> Resume | None: ...

    def note_state(self, uid: int, online: bool) -> None:
        """Record online/offline in the user table soon, coalesced with others."""
        ...

    async def flush_states(self) -> None:
        """Write what :meth:`note_state` has pending, now."""
        ...

    async def end_session(self, uid: int) -> None:
        """A logout: offline, and the ticket no longer works."""
        ...

    async def reset_states(self) -> None:
        """Mark every user offline: a lone node starting after a crash."""
        ...

    #: Seconds a ticket stored by open_session or rotate_ticket works.
    ticket_lifetime: float

    async def open_session(self, uid: int, ticket_digest: str | None) -> LoginView:
        """Mark online and read what the login reply carries. A new ticket
        digest replaces the stored one; None keeps it."""
        ...

    async def rotate_ticket(self, uid: int, old: str, new: str) -> bool:
        """Replace ticket digest ``old`` by ``new`` and mark online; False if
        ``old`` is no longer the stored one."""
        ...

    async def friends(self, uid: int) -> list[tuple[int, str]]: ...
    async def groups(self, uid: int) -> list[Group]: ...

    async def add_friend(self, uid: int, friendid: int, quota: Quota = NO_QUOTA) -> str:
        """Befriend both ways; returns the friend's name. OverQuota past ``quota.friends``."""
        ...

    async def create_group(self, uid: int, name: str, desc: str, quota: Quota = NO_QUOTA) -> int:
        """OverQuota past ``quota.groups_created`` or ``quota.memberships``."""
        ...

    async def join_group(
        self, uid: int, gid: int, max_members: int = 0, quota: Quota = NO_QUOTA
    ) -> None:
        """Raises NoSuchGroup, AlreadyMember, GroupFull past ``max_members`` (0: none),
        OverQuota past ``quota.memberships``."""
        ...

    async def group_members(self, gid: int) -> frozenset[int]:
        """Member ids, empty when the group does not exist."""
        ...

    async def store_offline(self, uid: int, message: str, quota: Quota = NO_QUOTA) -> None:
        """Keep a message for a user; raises NoSuchUser for an unknown id, and
        MailboxFull if it would take them past the quota's offline bounds."""
        ...

    async def store_offline_within(
        self, uids: Sequence[int], message: str, quota: Quota
    ) -> list[int]:
        """Keep a message for those of ``uids`` it leaves within the quota;
        returns the others (not stored)."""
        ...

    async def store_offline_many(self, items: Sequence[tuple[int, str]]) -> None:
        """Keep messages already acknowledged: never refused for quota."""
        ...

    #: Most offline messages one read returns.
    offline_page: int

    async def offline(self, uid: int) -> list[tuple[int, str]]:
        """The oldest page of a user's offline messages, as (id, text)."""
        ...

    async def offline_users(self, uids: Sequence[int]) -> set[int]:
        """Those of ``uids`` with stored messages."""
        ...

    async def delete_offline(self, uid: int, ids: Sequence[int]) -> None:
        """Drop these offline messages of a user (delivered)."""
        ...
