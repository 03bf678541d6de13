"""What the chat service needs from a store, and nothing more.

A new backend implements :class:`Store`; the service never sees SQL.
Methods raise :class:`clusterchat.errors.Unavailable` when the backend is
unreachable and a :class:`clusterchat.errors.Refused` subclass when the
request conflicts with what is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec


@dataclass(frozen=True, slots=True)
class Credentials:
    name: str
    password_hash: str
    ticket_digest: str | None
    banned: bool = False


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
    role: str  # "creator" | "admin" | "normal"


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    name: str
    desc: str
    members: tuple[Member, ...]  # by join time, oldest first (store.change_group)
    inviteonly: bool = False  # read by store.change_group only


#: Members a page of groups is read up to (more, by the rest of the last
#: groups read): a reply's 256 KiB of groups (LIST_GROUPS, a login) holds
#: fewer, at 70 bytes or more each.
GROUP_PAGE_MEMBERS = 4000


@dataclass(frozen=True, slots=True)
class LoginView:
    """Everything a login reply needs, read in one go."""

    friends: list[tuple[int, str]]
    #: The first page of groups (:meth:`Store.groups`), and whether more follow.
    groups: list[Group]
    #: (ordering key, stored message document): the first page; if it is full,
    #: more follow through :meth:`Store.offline`.
    offline: list[tuple[int, str]]
    more_groups: bool = False


@dataclass(frozen=True, slots=True)
class GroupChange:
    """What to do to a group, decided from what it was, applied atomically."""

    remove: tuple[int, ...] = ()
    roles: tuple[tuple[int, str], ...] = ()  # (member, new role)
    groupname: str | None = None
    groupdesc: str | None = None
    inviteonly: bool | None = None
    invite: tuple[int, ...] = ()  # users invited, by ``by``
    by: int = 0
    delete: bool = False

    def __bool__(self) -> bool:
        return bool(self.remove or self.roles or self.delete or self.invite) or (
            self.groupname is not None or self.groupdesc is not None or self.inviteonly is not None
        )


@dataclass(frozen=True, slots=True)
class Quota:
    """How much one user may hold; 0 switches a bound off."""

    offline_messages: int = 0
    offline_bytes: int = 0
    groups_created: int = 0
    memberships: int = 0
    friends: int = 0
    #: The fraction of a receiver's offline bounds one sender may fill
    #: (``--offline-share``); 0 (or 1 and more) switches the share off.
    offline_share: float = 0.0
    #: The fraction of a receiver's offline bounds group messages may fill,
    #: all writers together (``--offline-group-share``); 0 (or 1 and more):
    #: the whole of them.
    group_share: float = 0.0

    @property
    def group_messages(self) -> int:
        """Most messages a receiver may have waiting when a group message
        comes (all kinds counted); 0: no bound."""
        return _part(self.offline_messages, self.group_share) or self.offline_messages

    @property
    def group_bytes(self) -> int:
        """Most bytes a receiver may have waiting when a group message comes; 0: no bound."""
        return _part(self.offline_bytes, self.group_share) or self.offline_bytes

    @property
    def share_messages(self) -> int:
        """Most messages one sender may have waiting for one receiver; 0: no bound."""
        return _part(self.offline_messages, self.offline_share)

    @property
    def share_bytes(self) -> int:
        """Most bytes one sender may have waiting for one receiver; 0: no bound."""
        return _part(self.offline_bytes, self.offline_share)


def _part(bound: int, share: float) -> int:
    if not bound or not 0 < share < 1:
        return 0
    return max(1, int(bound * share))


NO_QUOTA = Quota()

#: One message for the history table: (conva, convb, sender, mid, ts, body);
#: the conversation is (lower user id, higher user id) for 1:1 chat and
#: (0, group id) for a group.
HistoryRow = tuple[int, int, int, str, int, str]


class Entry(msgspec.Struct, array_like=True, gc=False):
    """One message as a packed history row keeps it, encoded as the array
    ``[sender, mid, ts, body]``. The history writer makes one per message on
    the hot path and holds it for a round (25 ms, thousands at a node's
    ceiling): a tuple there was an object for the garbage collector to
    track, so every ~700 messages set off a collection that walked the
    queue (0.15-0.2 µs a delivery, BENCHMARKS.md). Its fields are an int
    and strings, never a cycle: it need not be tracked."""

    sender: int
    mid: str
    ts: int
    body: str


#: Messages to write by conversation ((conva, convb)), each one's oldest
#: first, in the order of each conversation's first message: what the
#: history writer queues, so that packing does no grouping.
Conversations = dict[tuple[int, int], list[Entry]]


@dataclass(frozen=True, slots=True)
class Said:
    """A message read back from history."""

    id: int  # row id << 10 | index in the row: the cursor for the page before it
    sender: int
    name: str  # the sender's name now (a deleted account's messages are not served)
    mid: str
    ts: int  # server time accepted, milliseconds since the epoch
    body: str


class Store(Protocol):
    url: str  # for logs, password masked

    async def create_schema(self) -> None: ...
    async def close(self) -> None: ...

    async def create_user(self, name: str, password_hash: str) -> int: ...
    async def credentials(self, uid: int) -> Credentials | None: ...
    async def set_password(self, uid: int, password_hash: str) -> None: ...

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

    async def open_session(
        self, uid: int, ticket_digest: str | None, known: Container[int] = frozenset()
    ) -> LoginView:
        """Mark online and read what the login reply carries. A new ticket
        digest replaces the stored one; None keeps it. Groups whose id is in
        ``known`` come without members (``members`` empty): the caller
        holds them, and a big group's members are most of a login's reading."""
        ...

    async def rotate_ticket(self, uid: int, old: str, new: str) -> bool:
        """Replace ticket digest ``old`` by ``new`` and mark online; False if
        ``old`` is no longer the stored one."""
        ...

    async def friends(self, uid: int) -> list[tuple[int, str]]: ...
    async def groups(self, uid: int, after: int = 0) -> tuple[list[Group], bool]:
        """A page of ``uid``'s groups with ids above ``after``, in id order,
        read until ``GROUP_PAGE_MEMBERS`` members or so, and whether more
        follow: what a user in many big groups asks for costs a page."""
        ...

    async def add_friend(self, uid: int, friendid: int, quota: Quota = NO_QUOTA) -> str:
        """Befriend both ways; returns the friend's name. OverQuota past ``quota.friends``."""
        ...

    async def create_group(self, uid: int, name: str, desc: str, quota: Quota = NO_QUOTA) -> int:
        """OverQuota past ``quota.groups_created`` or ``quota.memberships``."""
        ...

    async def join_group(
        self, uid: int, gid: int, max_members: int = 0, quota: Quota = NO_QUOTA
    ) -> str:
        """Returns the group's name. Raises NoSuchGroup, AlreadyMember, GroupFull
        past ``max_members`` (0: none), OverQuota past ``quota.memberships``."""
        ...

    async def group_members(self, gid: int) -> frozenset[int]:
        """Member ids, empty when the group does not exist."""
        ...

    async def store_offline(
        self, uid: int, message: str, quota: Quota = NO_QUOTA, sender: int = 0
    ) -> None:
        """Keep a message for a user; raises NoSuchUser for an unknown id,
        MailboxFull if it would take them past the quota's offline bounds,
        MailboxShareFull if past what one sender may leave them (``sender``
        0: not counted toward any sender's share)."""
        ...

    async def store_offline_within(
        self, uids: Sequence[int], message: str, quota: Quota, sender: int = 0
    ) -> list[int]:
        """Keep a group message for those of ``uids`` it leaves within the
        quota's part for group messages and ``sender``'s share of the quota;
        returns the others (not stored)."""
        ...

    async def store_offline_many(self, items: Sequence[tuple[int, str]]) -> None:
        """Keep messages already acknowledged: never refused for quota."""
        ...

    async def full_mailboxes(self, uids: Sequence[int], quota: Quota) -> set[int]:
        """Those of ``uids`` whose mailbox is at or past the quota's offline
        bounds, as their tallies say (read, not recounted: a tally too high
        only sends their new messages through the quota-checked store,
        which recounts)."""
        ...

    async def store_offline_missing(
        self, items: Sequence[tuple[int, str]], sender: int = 0
    ) -> None:
        """Store those of ``items`` not stored already (each text is unique:
        it holds the message's ``mid``): after a store whose commit went
        unanswered (:class:`~clusterchat.errors.InDoubt`). Raises NoSuchUser
        (after storing the rest) if a user does not exist."""
        ...

    #: Most offline messages one read returns.
    offline_page: int

    async def offline(self, uid: int, after: int = 0) -> list[tuple[int, str]]:
        """The oldest page of a user's offline messages (those with an id
        past ``after``), as (id, text) in id order."""
        ...

    async def offline_users(self, uids: Sequence[int]) -> set[int]:
        """Those of ``uids`` with stored messages."""
        ...

    async def delete_offline(self, uid: int, ids: Sequence[int]) -> None:
        """Drop these offline messages of a user (delivered)."""
        ...

    # -- history (storage/history.py) ---------------------------------------------

    async def open_history(self) -> None:
        """Open what history writes go through now, not with the first
        round; Unavailable if the database cannot be reached (the first
        round then tries again)."""
        ...

    async def write_history(self, convs: Conversations) -> None:
        """Keep these messages in one multi-row INSERT, each conversation's
        in one row (storage/history.py)."""
        ...

    async def add_history(self, rows: Sequence[HistoryRow]) -> None:
        """:meth:`write_history` of rows in any order (grouped here)."""
        ...

    async def history_kept(self, convs: Conversations) -> set[str]:
        """The mids of ``convs`` already in history: after a write whose
        answer was lost (InDoubt), what must not be written again."""
        ...

    async def history(
        self, conva: int, convb: int, before: int, limit: int, since: int, max_chars: int = 0
    ) -> list[Said]:
        """A conversation's newest ``limit`` messages with id below ``before``
        (0: the newest) and ``ts`` at least ``since``, newest first, packed
        rows unpacked. It ends at the first row older than ``since``: a
        request never scans what it does not return. Once the text passes
        ``max_chars`` (0: no bound; 100 counted for each message besides)
        with two messages or more, no more rows are read. Messages of
        deleted accounts are left out (none at all of a 1:1 conversation with
        one)."""
        ...

    async def user_name(self, uid: int) -> str | None:
        """The user's name; None if there is no such user."""
        ...

    async def group_joined(self, uid: int, gid: int) -> int | None:
        """When ``uid`` joined group ``gid`` (microseconds since the epoch),
        None if not a member; NoSuchGroup if there is no such group."""
        ...

    async def purge_history(self, cutoff: int, chunk: int, after: int = 0) -> tuple[int, int]:
        """Delete the rows older than ``cutoff`` (ms since the epoch) among the
        ``chunk`` rows with the lowest ids above ``after``. Returns how many
        went, and the ``after`` to go on from (0: nothing expired is left)."""
        ...

    # -- friends and groups a person manages (storage/social.py) -----------------

    async def remove_friend(self, uid: int, friendid: int) -> None:
        """Unfriend both ways; raises NotFriends if they were not."""
        ...

    async def block(self, uid: int, blockedid: int) -> str:
        """``uid`` blocks ``blockedid`` (idempotent); returns their name. NoSuchUser."""
        ...

    async def unblock(self, uid: int, blockedid: int) -> bool:
        """True if there was such a block."""
        ...

    async def blocked(self, uid: int) -> list[tuple[int, str]]:
        """Whom ``uid`` blocks, as (id, name)."""
        ...

    async def blockers_of(self, uid: int) -> frozenset[int]:
        """Who blocks ``uid`` (what their session caches)."""
        ...

    async def may_join(self, uid: int, gid: int) -> bool:
        """False if the group is invite-only and ``uid`` has no invitation."""
        ...

    async def joined(self, uid: int, gid: int) -> None:
        """An invitation used up by joining."""
        ...

    async def decline(self, uid: int, gid: int) -> bool:
        """``uid`` turns down its invitation to ``gid``: False if it held none."""
        ...

    async def invites(self, uid: int) -> list[dict[str, object]]:
        """Open invitations: groupid, groupname, groupdesc, by, byname."""
        ...

    async def group_role(self, uid: int, gid: int) -> str | None:
        """``uid``'s role in group ``gid`` (None: not a member), read without
        the group's lock; NoSuchGroup if there is no such group."""
        ...

    async def change_group(
        self, gid: int, decide: Callable[[Group], GroupChange]
    ) -> tuple[Group, GroupChange]:
        """Lock the group, read it (members oldest first), let ``decide`` say
        what to change (or raise Refused), apply it; returns what was read and
        done. NoSuchGroup; GroupNameTaken on a rename to a name in use."""
        ...
