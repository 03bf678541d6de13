"""Group members as login replies show them, encoded once per group.

A login reply carries each of the user's groups with every member's
document (JSON text inside JSON text, as the original sent it). For a
member of a 1,000-member group, reading those rows and encoding those
documents was most of a login's CPU, the same work for every member of
the group. A :class:`Roster` is that work done once: each member's entry
pre-encoded but for its online state, which is looked up per login.

Rosters are dropped whenever the node hears that a group changed (its own
changes and other nodes' announcements, ``ChatService.group_changed``), and
expire after :data:`LIFETIME` whatever happens: a change the node was not
told of (an operator's, an announcement lost while Redis was away) shows
for that long at most. A roster read while the group changed is not kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass

from clusterchat.protocol import codec
from clusterchat.storage.base import Group

#: Seconds a roster is used before it is read again.
LIFETIME = 60.0
#: Members held in all rosters at most (each about 100 bytes); past it the
#: cache starts again empty.
MAX_MEMBERS = 200_000


@dataclass(frozen=True, slots=True)
class Roster:
    """A group's members (by user id, as the store orders them), encoded."""

    ids: tuple[int, ...]
    members: frozenset[int]
    #: Each member's entry but for its ending (codec.member_entry); all but the
    #: first start with the comma that separates them.
    entries: tuple[str, ...]
    #: Roughly what the members add to a login reply, for its size bound.
    size: int
    made: float

    @classmethod
    def of(cls, group: Group, now: float) -> Roster:
        entries = tuple(
            ("," if i else "") + codec.member_entry(m.id, m.name, m.role)
            for i, m in enumerate(group.members)
        )
        ids = tuple(m.id for m in group.members)
        size = sum(70 + len(m.name) for m in group.members)
        return cls(ids, frozenset(ids), entries, size, now)

    def doc(self, gid: int, name: str, desc: str, online: Container[int]) -> str:
        """The group's document for a login reply (codec.group_doc's text)."""
        on, off = codec.MEMBER_ONLINE, codec.MEMBER_OFFLINE
        parts: list[str] = []
        add = parts.append
        for uid, entry in zip(self.ids, self.entries, strict=True):
            add(entry)
            add(on if uid in online else off)
        return codec.group_doc_of_entries(gid, name, desc, "".join(parts))


class Held:
    """The groups whose rosters a login uses rather than read (the store
    asks ``gid in held`` once per group, as it reads), and those rosters,
    held: a change heard after the store asked does not take one away
    before the reply is built. Asks nothing of the rosters the user's
    groups are not (a node may hold thousands)."""

    def __init__(self, rosters: Rosters) -> None:
        self._rosters = rosters
        self.held: dict[int, Roster] = {}

    def __contains__(self, gid: object) -> bool:
        if not isinstance(gid, int):
            return False
        r = self._rosters.get(gid)
        if r is not None:
            self.held[gid] = r
        return r is not None


class Rosters:
    """The node's rosters by group id, with what invalidates them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._rosters: dict[int, Roster] = {}
        self._members = 0
        #: Bumped by every change heard; a read that began before the last
        #: change of its group is not kept (it may predate the change).
        self._epoch = 0
        self._changed: dict[int, int] = {}
        #: Reads begun before this are kept for nothing (changes before it
        #: are forgotten, or everything was dropped).
        self._floor = 0

    def fresh(self) -> Held:
        """For one login's read: which groups' members need no reading."""
        return Held(self)

    def get(self, gid: int) -> Roster | None:
        """Group ``gid``'s roster, if it is within its lifetime."""
        r = self._rosters.get(gid)
        return r if r is not None and r.made >= self.clock() - LIFETIME else None

    def reading(self) -> int:
        """Call before reading groups from the store; pass to :meth:`keep`."""
        return self._epoch

    def keep(self, groups: Iterable[Group], since: int) -> dict[int, Roster]:
        """Rosters of groups just read (with their members), kept unless the
        group changed since the read began; all returned, for this login."""
        now = self.clock()
        made = {}
        for g in groups:
            r = made[g.id] = Roster.of(g, now)
            if since < self._floor or self._changed.get(g.id, -1) > since:
                continue  # heard of a change while reading: maybe older
            if self._members + len(r.ids) > MAX_MEMBERS:
                self.clear()
            old = self._rosters.get(g.id)
            self._members += len(r.ids) - (len(old.ids) if old else 0)
            self._rosters[g.id] = r
        return made

    def changed(self, gid: int) -> None:
        """Group ``gid``'s members, their roles, or the group itself changed."""
        self._epoch += 1
        self._changed[gid] = self._epoch
        if len(self._changed) > 10_000:  # bounded: reads in flight keep nothing
            self._changed.clear()
            self._floor = self._epoch
        old = self._rosters.pop(gid, None)
        if old is not None:
            self._members -= len(old.ids)

    def clear(self) -> None:
        """Forget every roster (the node may have missed changes)."""
        self._epoch += 1
        self._floor = self._epoch
        self._changed.clear()
        self._rosters.clear()
        self._members = 0
