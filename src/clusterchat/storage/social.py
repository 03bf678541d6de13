"""The SQL side of friends and groups a person manages: unfriending,
blocks, and group changes decided under a lock.

A mixin of :class:`~clusterchat.storage.sql.SqlStore` (it uses the store's
transactions), kept apart so the original's queries stay as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace

from sqlalchemy import Integer, bindparam, case, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from clusterchat import errors
from clusterchat.protocol import names
from clusterchat.storage.base import Group, GroupChange, Member
from clusterchat.storage.batching import Batcher
from clusterchat.storage.tables import allgroup, blocked, friend, groupinvite, groupuser, user

_uid = bindparam("uid", type_=Integer)
_gid = bindparam("gid", type_=Integer)

BLOCKED = (
    select(user.c.id, user.c.name)
    .join(blocked, blocked.c.blockedid == user.c.id)
    .where(blocked.c.userid == _uid)
    .order_by(user.c.id)
)
BLOCKERS_MANY = select(blocked.c.blockedid, blocked.c.userid).where(
    blocked.c.blockedid.in_(bindparam("uids", expanding=True))
)
#: A group's members, oldest first: the order a creator's successor is chosen in.
ROSTER = (
    select(user.c.id, user.c.name, groupuser.c.grouprole)
    .join(user, user.c.id == groupuser.c.userid)
    .where(groupuser.c.groupid == _gid)
    .order_by(groupuser.c.joined, groupuser.c.userid)
)
GROUP_HEAD = (
    select(allgroup.c.groupname, allgroup.c.groupdesc, allgroup.c.inviteonly)
    .where(allgroup.c.id == _gid)
    .with_for_update()
)

ROLE = select(groupuser.c.grouprole).where(
    (groupuser.c.groupid == _gid) & (groupuser.c.userid == _uid)
)
GROUP_FOUND = select(allgroup.c.id).where(allgroup.c.id == _gid)

INVITE_ONLY = select(allgroup.c.inviteonly).where(allgroup.c.id == _gid)
INVITED = select(groupinvite.c.userid).where(
    (groupinvite.c.groupid == _gid) & (groupinvite.c.userid == _uid)
)
#: Open invitations a user may hold, and of those, from one inviter (who
#: may be an admin of up to 500 groups); past either INVITE is refused
#: (ERROR 173) and the invitee told nothing. Before, the list had no bound:
#: accounts made admins of many groups filled one user's invitations with
#: thousands (a 1.3 KB entry each: the web client asks for all of them every
#: 5 s). Blocking an inviter deletes their invitations to the blocker.
MAX_INVITES = 200
MAX_INVITES_FROM_ONE = 20
_by = bindparam("by", type_=Integer)
INVITES_HELD = select(
    func.count(),
    func.coalesce(func.sum(case((groupinvite.c.inviter == _by, 1), else_=0)), 0),
).where(groupinvite.c.userid == _uid)
_inviter = aliased(user)
INVITES = (
    select(
        allgroup.c.id,
        allgroup.c.groupname,
        allgroup.c.groupdesc,
        groupinvite.c.inviter,
        _inviter.c.name.label("byname"),
    )
    .join(groupinvite, groupinvite.c.groupid == allgroup.c.id)
    .outerjoin(_inviter, _inviter.c.id == groupinvite.c.inviter)
    .where(groupinvite.c.userid == _uid)
    .order_by(allgroup.c.id)
)


class SocialQueries:
    """Mixed into SqlStore, which provides ``_tx``."""

    _blockers: Batcher[frozenset[int]] | None = None

    def _tx(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError  # SqlStore's

    # -- friends and blocks ------------------------------------------------------

    async def remove_friend(self, uid: int, friendid: int) -> None:
        async with self._tx() as conn:
            res = await conn.execute(
                delete(friend).where(
                    ((friend.c.userid == uid) & (friend.c.friendid == friendid))
                    | ((friend.c.userid == friendid) & (friend.c.friendid == uid))
                )
            )
        if not res.rowcount:
            raise errors.NotFriends(friendid)

    async def block(self, uid: int, blockedid: int) -> str:
        name = None
        try:
            async with self._tx() as conn:
                query = select(user.c.name).where(user.c.id == blockedid)
                name = (await conn.execute(query)).scalar()
                if name is None:
                    raise errors.NoSuchUser(blockedid)
                have = await conn.execute(
                    select(blocked.c.userid).where(
                        (blocked.c.userid == uid) & (blocked.c.blockedid == blockedid)
                    )
                )
                if have.first() is None:
                    await conn.execute(insert(blocked).values(userid=uid, blockedid=blockedid))
                # Their invitations go too: room for others' (MAX_INVITES_FROM_ONE).
                await conn.execute(
                    delete(groupinvite).where(
                        (groupinvite.c.userid == uid) & (groupinvite.c.inviter == blockedid)
                    )
                )
        except IntegrityError:  # a concurrent block of the same user: the same result
            pass
        return str(name)

    async def unblock(self, uid: int, blockedid: int) -> bool:
        async with self._tx() as conn:
            res = await conn.execute(
                delete(blocked).where(
                    (blocked.c.userid == uid) & (blocked.c.blockedid == blockedid)
                )
            )
        return bool(res.rowcount)

    async def blocked(self, uid: int) -> list[tuple[int, str]]:
        async with self._tx() as conn:
            rows = await conn.execute(BLOCKED, {"uid": uid})
            return [(r.id, r.name) for r in rows]

    async def blockers_of(self, uid: int) -> frozenset[int]:
        """Logins arriving together (a reconnect storm) share one statement."""
        if self._blockers is None:
            self._blockers = Batcher(self._blockers_many)
        return await self._blockers.get(uid) or frozenset()

    async def _blockers_many(self, uids: list[int]) -> dict[int, frozenset[int]]:
        found: dict[int, set[int]] = {}
        async with self._tx() as conn:
            for r in await conn.execute(BLOCKERS_MANY, {"uids": uids}):
                found.setdefault(r.blockedid, set()).add(r.userid)
        return {uid: frozenset(by) for uid, by in found.items()}

    # -- groups ---------------------------------------------------------------------

    async def may_join(self, uid: int, gid: int) -> bool:
        async with self._tx() as conn:
            only = (await conn.execute(INVITE_ONLY, {"gid": gid})).scalar()
            if not only:
                return True
            return (await conn.execute(INVITED, {"gid": gid, "uid": uid})).first() is not None

    async def joined(self, uid: int, gid: int) -> None:
        await self.decline(uid, gid)

    async def decline(self, uid: int, gid: int) -> bool:
        async with self._tx() as conn:
            gone = await conn.execute(
                delete(groupinvite).where(
                    (groupinvite.c.groupid == gid) & (groupinvite.c.userid == uid)
                )
            )
            return bool(gone.rowcount)

    async def invites(self, uid: int) -> list[dict[str, object]]:
        async with self._tx() as conn:
            rows = await conn.execute(INVITES, {"uid": uid})
            return [
                {
                    "groupid": r.id,
                    "groupname": r.groupname,
                    "groupdesc": r.groupdesc,
                    "by": r.inviter,
                    "byname": r.byname or "",
                }
                for r in rows
            ]

    async def group_role(self, uid: int, gid: int) -> str | None:
        async with self._tx() as conn:
            role = (await conn.execute(ROLE, {"gid": gid, "uid": uid})).scalar()
            if role is None and (await conn.execute(GROUP_FOUND, {"gid": gid})).first() is None:
                raise errors.NoSuchGroup(gid)
        return None if role is None else str(role)

    async def change_group(
        self, gid: int, decide: Callable[[Group], GroupChange]
    ) -> tuple[Group, GroupChange]:
        change = GroupChange()
        try:
            async with self._tx() as conn:
                head = (await conn.execute(GROUP_HEAD, {"gid": gid})).first()
                if head is None:
                    raise errors.NoSuchGroup(gid)
                members = tuple(
                    Member(r.id, r.name, r.grouprole)
                    for r in await conn.execute(ROSTER, {"gid": gid})
                )
                group = Group(gid, head.groupname, head.groupdesc, members, bool(head.inviteonly))
                change = await _apply(conn, gid, decide(group))
        except IntegrityError:
            raise errors.GroupNameTaken(change.groupname) from None
        return group, change


async def _apply(conn: AsyncConnection, gid: int, change: GroupChange) -> GroupChange:
    """Apply ``change``; returns what it did (an invitation already open is
    left as it is and not in the result's ``invite``: nothing to tell)."""
    in_group = groupuser.c.groupid == gid
    if change.delete:
        await conn.execute(delete(groupinvite).where(groupinvite.c.groupid == gid))
        await conn.execute(delete(groupuser).where(in_group))
        await conn.execute(delete(allgroup).where(allgroup.c.id == gid))
        return change
    if change.remove:
        gone = groupuser.c.userid.in_(change.remove)
        await conn.execute(delete(groupuser).where(in_group & gone))
    for uid, role in change.roles:
        await conn.execute(
            update(groupuser).where(in_group & (groupuser.c.userid == uid)).values(grouprole=role)
        )
    if change.invite:
        # Inviting again changes nothing (and tells nobody again: one admin
        # re-inviting a user in a loop sent them an event per request).
        invited = groupinvite.c.userid.in_(change.invite)
        found = select(groupinvite.c.userid).where((groupinvite.c.groupid == gid) & invited)
        already = set((await conn.execute(found)).scalars().all())
        new = tuple(u for u in change.invite if u not in already)
        for u in new:
            held = (await conn.execute(INVITES_HELD, {"uid": u, "by": change.by})).one()
            n, mine = int(held[0]), int(held[1])
            if n >= MAX_INVITES:
                raise errors.OverQuota(
                    f"user {u} has {n} open invitations, the most allowed; they may join "
                    f"by one or block whoever sent the rest"
                )
            if mine >= MAX_INVITES_FROM_ONE:
                raise errors.OverQuota(
                    f"user {u} has {mine} open invitations from you, the most allowed"
                )
        if new:
            rows = [{"groupid": gid, "userid": u, "inviter": change.by} for u in new]
            await conn.execute(insert(groupinvite), rows)
        change = replace(change, invite=new)
    named = (
        ("groupname", change.groupname),
        ("groupdesc", change.groupdesc),
        ("inviteonly", change.inviteonly),
    )
    fields: dict[str, object] = {k: v for k, v in named if v is not None}
    if change.groupname is not None:  # unique by its key: the new name's, not the old
        fields["groupkey"] = names.key(change.groupname)
    if fields:
        await conn.execute(update(allgroup).where(allgroup.c.id == gid).values(**fields))
    return change
