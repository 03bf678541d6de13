"""Who may change a group, and how: pure functions from the group as it is
to the change to make, and from a change to the events its members are told.

Roles, highest first: ``creator`` (the owner; one per group), ``admin``
(appointed by the creator or another admin), ``normal``.

- anyone: leave. A creator who leaves hands the group to the oldest admin,
  else the longest member; a group left empty is deleted.
- admin or creator: remove a normal member, appoint an admin, rename and
  re-describe, make the group invite-only (or open again), invite.
- creator only: demote or remove an admin, transfer ownership (the old owner
  becomes an admin), delete the group.
- nobody: remove or demote the creator. An admin may step down by demoting
  themselves.

No I/O: the store calls these under the group's lock (``Store.change_group``).
"""

from __future__ import annotations

from typing import Any

from clusterchat import errors
from clusterchat.storage.base import Group, GroupChange, Member

CREATOR, ADMIN, NORMAL = "creator", "admin", "normal"
_RANK = {NORMAL: 0, ADMIN: 1, CREATOR: 2}


def _member(g: Group, uid: int) -> Member | None:
    return next((m for m in g.members if m.id == uid), None)


def _actor(g: Group, uid: int) -> Member:
    me = _member(g, uid)
    if me is None:
        raise errors.NotMember(g.id)
    return me


def _target(g: Group, uid: int) -> Member:
    them = _member(g, uid)
    if them is None:
        raise errors.NotInGroup(uid, g.id)
    return them


def _at_least(me: Member, role: str, doing: str) -> None:
    if _RANK.get(me.role, 0) < _RANK[role]:
        who = "the group's creator" if role == CREATOR else "the group's creator or an admin"
        raise errors.NotAllowed(f"only {who} can {doing}")


def successor(g: Group, leaving: int) -> Member | None:
    """Who owns the group after its creator leaves: the oldest admin, else
    the longest member; None if nobody is left."""
    rest = [m for m in g.members if m.id != leaving]
    return next((m for m in rest if m.role == ADMIN), rest[0] if rest else None)


def leave(g: Group, uid: int) -> GroupChange:
    me = _actor(g, uid)
    if me.role != CREATOR:
        return GroupChange(remove=(uid,))
    heir = successor(g, uid)
    if heir is None:
        return GroupChange(delete=True)
    return GroupChange(remove=(uid,), roles=((heir.id, CREATOR),))


def remove(g: Group, uid: int, target: int) -> GroupChange:
    me = _actor(g, uid)
    if target == uid:
        raise errors.SelfTarget("to take yourself out of a group, leave it")
    _at_least(me, ADMIN, "remove members")
    them = _target(g, target)
    if them.role == CREATOR:
        raise errors.NotAllowed("nobody can remove the group's creator")
    if them.role == ADMIN:
        _at_least(me, CREATOR, "remove an admin")
    return GroupChange(remove=(target,))


def set_role(g: Group, uid: int, target: int, role: str) -> GroupChange:
    me = _actor(g, uid)
    them = _target(g, target)
    if them.role == CREATOR:
        raise errors.NotAllowed("the creator's role changes only by transferring ownership")
    if role == ADMIN:
        _at_least(me, ADMIN, "appoint admins")
    elif target != uid:  # stepping down is always allowed
        _at_least(me, CREATOR, "demote an admin")
    if them.role == role:
        return GroupChange()
    return GroupChange(roles=((target, role),))


def edit(
    g: Group, uid: int, name: str | None, desc: str | None, inviteonly: bool | None = None
) -> GroupChange:
    me = _actor(g, uid)
    _at_least(me, ADMIN, "rename or re-describe the group")
    return GroupChange(
        groupname=name if name != g.name else None,
        groupdesc=desc if desc != g.desc else None,
        inviteonly=inviteonly if inviteonly != g.inviteonly else None,
    )


def invite(g: Group, uid: int, target: int) -> GroupChange:
    me = _actor(g, uid)
    _at_least(me, ADMIN, "invite")
    if _member(g, target) is not None:
        raise errors.InGroup(target, g.id)
    return GroupChange(invite=(target,), by=uid)


def transfer(g: Group, uid: int, target: int) -> GroupChange:
    me = _actor(g, uid)
    _at_least(me, CREATOR, "transfer ownership")
    if target == uid:
        raise errors.SelfTarget("you own this group already")
    _target(g, target)
    return GroupChange(roles=((target, CREATOR), (uid, ADMIN)))


def delete(g: Group, uid: int) -> GroupChange:
    me = _actor(g, uid)
    _at_least(me, CREATOR, "delete the group")
    return GroupChange(delete=True)


def events(g: Group, change: GroupChange, actor: Member) -> list[dict[str, Any]]:
    """GROUP_EVENT documents (without ``msgid``) telling members what ``change`` did."""
    names = {m.id: m.name for m in g.members}
    base = {"groupid": g.id, "by": actor.id, "byname": actor.name}
    out: list[dict[str, Any]] = []
    if change.delete:
        return [{**base, "event": "deleted", "groupname": g.name}]
    for uid in change.remove:
        kind = "left" if uid == actor.id else "removed"
        out.append({**base, "event": kind, "id": uid, "name": names.get(uid, "")})
    for uid, role in change.roles:
        out.append({**base, "event": "role", "id": uid, "name": names.get(uid, ""), "role": role})
    edits = (change.groupname, change.groupdesc, change.inviteonly)
    if any(field is not None for field in edits):
        name = g.name if change.groupname is None else change.groupname
        desc = g.desc if change.groupdesc is None else change.groupdesc
        only = g.inviteonly if change.inviteonly is None else change.inviteonly
        edited = {"event": "edited", "groupname": name, "groupdesc": desc, "inviteonly": only}
        out.append({**base, **edited})
    return out
