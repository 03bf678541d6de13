"""Friends a person can drop, and users they can block.

A block stops the blocked user's chats to the blocker (refused like any
chat the receiver does not take: ERROR 123, no reason given), their group
messages reaching the blocker, their friend requests, and their view of the
blocker's presence (always offline). The check runs on the *sender's* node
against a set cached in the sender's session: who blocks them. It is read
at login and kept current by control messages (``pushes.BLOCKS``) from the
blocker's node, so the chat path never asks the database.
"""

from __future__ import annotations

import math
from typing import Any

from clusterchat.protocol import codec
from clusterchat.protocol.messages import (
    AddFriend,
    Block,
    ErrCode,
    ListBlocked,
    MsgId,
    RemoveFriend,
    Unblock,
)
from clusterchat.protocol.replies import Ack, Done
from clusterchat.service import pushes
from clusterchat.service.context import Handler, Service
from clusterchat.service.history import PAGE_COST_BYTES as LIST_COST_BYTES
from clusterchat.service.limits import FailureLimiter
from clusterchat.service.session import NOBODY, Session


def done(svc: Service, s: Session, msgid: MsgId, **fields: Any) -> None:
    """The reply to a request of ours (the dialect filter keeps it from an original client)."""
    svc.reply(s, Done(msgid, fields))


class Friends:
    def __init__(self, svc: Service, readd_after: float = 0.0) -> None:
        self.svc = svc
        #: (user, user) pairs unfriended within ``readd_after`` seconds, both
        #: ways (per node, as rejoining a group): adding and removing a user
        #: in a loop pushed them an event each time, and the web client
        #: refreshed its lists for each.
        self._unfriended = FailureLimiter(1 if readd_after > 0 else 0, readd_after)

    def readds_too_soon(self, s: Session, req: AddFriend) -> bool:
        """Before ADD_FRIEND: a friendship ended moments ago (by either)
        waits; refused with ERROR 170 if so."""
        wait = self._unfriended.wait((s.uid, req.friendid))
        if not wait:
            return False
        text = (
            f"your friendship with user {req.friendid} ended moments ago; "
            "you may add them again in "
        )
        self.svc.refuse(s, req, ErrCode.TOO_FAST, f"{text}{math.ceil(wait)} s")
        return True

    def handlers(self) -> dict[type, Handler]:
        return {
            RemoveFriend: self._remove_friend,
            Block: self._block,
            Unblock: self._unblock,
            ListBlocked: self._list_blocked,
        }

    # -- the blocked-by cache ------------------------------------------------------

    async def load_blocks(self, s: Session) -> None:
        """At login, after the session is registered: changes arriving while
        this reads are kept and replayed over what it read."""
        s.block_log = []
        try:
            found = await self.svc.store.blockers_of(s.uid)
        finally:
            changes, s.block_log = s.block_log, None
        s.blocked_by = frozenset(found) or NOBODY
        for by, on in changes or ():
            s.block_changed(by, on)

    # -- handlers --------------------------------------------------------------------

    async def _remove_friend(self, s: Session, req: RemoveFriend) -> None:
        if req.friendid == s.uid:
            self.svc.refuse(s, req, ErrCode.SELF_TARGET, "you cannot unfriend yourself")
            return
        await self.svc.store.remove_friend(s.uid, req.friendid)
        self._unfriended.failed((s.uid, req.friendid))
        self._unfriended.failed((req.friendid, s.uid))
        done(self.svc, s, MsgId.REMOVE_FRIEND, friendid=req.friendid)
        event = {"msgid": MsgId.FRIEND_EVENT, "event": "unfriended", "id": s.uid, "name": s.name}
        await pushes.send(self.svc, [req.friendid], codec.encode(event))

    async def _block(self, s: Session, req: Block) -> None:
        if req.userid == s.uid:
            self.svc.refuse(s, req, ErrCode.SELF_TARGET, "you cannot block yourself")
            return
        name = await self.svc.store.block(s.uid, req.userid)
        # Told before the reply: once blocking is acknowledged, nothing more
        # from them is accepted on this node (other nodes follow within a hop).
        await pushes.control(self.svc, req.userid, pushes.BLOCKS, {"by": s.uid, "on": True})
        done(self.svc, s, MsgId.BLOCK, userid=req.userid, name=name)

    async def _unblock(self, s: Session, req: Unblock) -> None:
        if await self.svc.store.unblock(s.uid, req.userid):
            await pushes.control(self.svc, req.userid, pushes.BLOCKS, {"by": s.uid, "on": False})
        done(self.svc, s, MsgId.UNBLOCK, userid=req.userid)

    async def _list_blocked(self, s: Session, req: ListBlocked) -> None:
        rows = await self.svc.store.blocked(s.uid)
        docs = [{"id": uid, "name": name} for uid, name in rows]
        # Blocks have no quota (a harassed user may need many): a long list
        # costs the flood limit what a HISTORY page of its size does. One
        # account blocking 20,000 users, then asking at 20 a second, had the
        # node send 30 MB a second (72% of a core; others' chats p99 0.7 ->
        # 15 ms, logins 5 -> 34 ms).
        self.svc.charge(s, sum(len(name) + 24 for _, name in rows) // LIST_COST_BYTES)
        self.svc.reply(s, Ack(MsgId.BLOCKED_LIST, {"blocked": docs}))
