"""Groups a person can leave and, by role, manage (rules in group_rules.py).

Each change is decided and applied in one transaction under the group's
lock, then every node drops its cached member list (``announce_group``), the
actor gets DONE, and the other members (and anyone removed) online with a
modern client get a GROUP_EVENT each. A removed or departed member neither
receives nor may post once the change is acknowledged on their node.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from clusterchat import errors
from clusterchat.protocol import codec, names
from clusterchat.protocol.messages import (
    AddGroup,
    DeleteGroup,
    EditGroup,
    ErrCode,
    Invite,
    LeaveGroup,
    ListInvites,
    MsgId,
    RemoveMember,
    SetRole,
    TransferGroup,
)
from clusterchat.protocol.replies import Ack
from clusterchat.service import group_rules as rules
from clusterchat.service import pushes
from clusterchat.service.context import Handler, Service
from clusterchat.service.friends import done
from clusterchat.service.limits import FailureLimiter
from clusterchat.service.session import Session
from clusterchat.storage.base import Group, GroupChange, Member


class Groups:
    def __init__(self, svc: Service, rejoin_after: float = 0.0) -> None:
        self.svc = svc
        #: (user, group) pairs that left within ``rejoin_after`` seconds
        #: (per node: the loop it stops costs a reconnection to go around).
        self._left = FailureLimiter(1 if rejoin_after > 0 else 0, rejoin_after)

    def handlers(self) -> dict[type, Handler]:
        return {
            LeaveGroup: self._leave,
            RemoveMember: self._remove,
            SetRole: self._set_role,
            EditGroup: self._edit,
            TransferGroup: self._transfer,
            DeleteGroup: self._delete,
            Invite: self._invite,
            ListInvites: self._list_invites,
        }

    async def _leave(self, s: Session, req: LeaveGroup) -> None:
        try:
            await self._change(s, MsgId.LEAVE_GROUP, req.groupid, lambda g: rules.leave(g, s.uid))
        except errors.NotMember:
            # Not in it: leaving a group one is invited to declines the
            # invitation (the inviter is not told; no rejoin wait, as
            # nothing was joined).
            if not await self.svc.store.decline(s.uid, req.groupid):
                raise
            done(self.svc, s, MsgId.LEAVE_GROUP, groupid=req.groupid)
            return
        self._left.failed((s.uid, req.groupid))

    async def _remove(self, s: Session, req: RemoveMember) -> None:
        await self._change(
            s, MsgId.REMOVE_MEMBER, req.groupid, lambda g: rules.remove(g, s.uid, req.userid)
        )

    async def _set_role(self, s: Session, req: SetRole) -> None:
        await self._change(
            s,
            MsgId.SET_ROLE,
            req.groupid,
            lambda g: rules.set_role(g, s.uid, req.userid, req.role),
        )

    async def _edit(self, s: Session, req: EditGroup) -> None:
        name = req.groupname
        if name is not None:  # the rule CREATE_GROUP applies (protocol/names.py)
            try:
                name = names.normalise(name, "group name")
            except names.BadName as exc:
                self.svc.refuse(s, req, ErrCode.INVALID_FIELD, f"field 'groupname': {exc}")
                return
        await self._change(
            s,
            MsgId.EDIT_GROUP,
            req.groupid,
            lambda g: rules.edit(g, s.uid, name, req.groupdesc, req.inviteonly),
        )

    async def _transfer(self, s: Session, req: TransferGroup) -> None:
        await self._change(
            s, MsgId.TRANSFER_GROUP, req.groupid, lambda g: rules.transfer(g, s.uid, req.userid)
        )

    async def _invite(self, s: Session, req: Invite) -> None:
        if req.userid in s.blocked_by:  # as for a friend request
            raise errors.RefusedByUser(req.userid)
        decide = lambda g: rules.invite(g, s.uid, req.userid)  # noqa: E731
        await self._refuse_early(s, req.groupid, decide)
        group, change = await self.svc.store.change_group(req.groupid, decide)
        done(self.svc, s, MsgId.INVITE, groupid=req.groupid, userid=req.userid)
        if not change.invite:
            return  # already invited: told then, not again
        event = {
            "msgid": MsgId.GROUP_EVENT,
            "event": "invited",
            "groupid": group.id,
            "groupname": group.name,
            "groupdesc": group.desc,
            "id": req.userid,
            "by": s.uid,
            "byname": s.name,
        }
        await pushes.send(self.svc, [req.userid], codec.encode(event))

    async def _list_invites(self, s: Session, req: ListInvites) -> None:
        invites = await self.svc.store.invites(s.uid)
        self.svc.reply(s, Ack(MsgId.INVITE_LIST, {"invites": invites}))

    def rejoins_too_soon(self, s: Session, req: AddGroup) -> bool:
        """Before ADD_GROUP: one who left the group moments ago waits
        (``Limits.rejoin_after``); refused with ERROR 170 if so."""
        wait = self._left.wait((s.uid, req.groupid))
        if not wait:
            return False
        text = f"you left group {req.groupid} moments ago; you may join it again in "
        self.svc.refuse(s, req, ErrCode.TOO_FAST, f"{text}{math.ceil(wait)} s")
        return True

    async def may_join(self, s: Session, gid: int) -> None:
        """Before ADD_GROUP: an invite-only group needs an invitation."""
        if not await self.svc.store.may_join(s.uid, gid):
            raise errors.InviteOnly(gid)

    async def _delete(self, s: Session, req: DeleteGroup) -> None:
        await self._change(s, MsgId.DELETE_GROUP, req.groupid, lambda g: rules.delete(g, s.uid))

    async def _refuse_early(
        self, s: Session, gid: int, decide: Callable[[Group], GroupChange]
    ) -> None:
        """Raise the refusals the actor's own role decides (not a member, not
        allowed, oneself as the target) from one indexed read, before the
        group's lock: ``decide`` is run on the group as the actor alone, and
        a rule refuses there only on what it would see in the whole group
        (any other member is missing: NotInGroup, not trusted). Before, a
        non-member's LEAVE_GROUP or a normal member's EDIT_GROUP read the
        whole roster under the lock to be refused: 20 such accounts on a
        1,000-member group tripled others' store and login times."""
        role = await self.svc.store.group_role(s.uid, gid)
        alone = () if role is None else (Member(s.uid, s.name, role),)
        try:
            decide(Group(gid, "", "", alone, False))
        except (errors.NotMember, errors.NotAllowed, errors.SelfTarget, errors.InGroup):
            raise
        except errors.Refused:
            pass  # decided by members the actor alone does not show

    async def _change(
        self, s: Session, msgid: MsgId, gid: int, decide: Callable[[Group], GroupChange]
    ) -> None:
        uid = s.uid
        await self._refuse_early(s, gid, decide)
        group, change = await self.svc.store.change_group(gid, decide)
        if change.remove or change.delete or change.roles:  # what login replies show
            self.svc.group_changed(gid)
            await self.svc.bus.announce_group(gid)
        done(self.svc, s, msgid, groupid=gid)
        if not change:
            return
        actor = next((m for m in group.members if m.id == uid), Member(uid, s.name, ""))
        told = [m.id for m in group.members if m.id != uid]
        for event in rules.events(group, change, actor):
            await pushes.send(self.svc, told, codec.encode({"msgid": MsgId.GROUP_EVENT, **event}))
