"""`clusterchat admin`: an operator's commands against the store and Redis.

Changes go to the database; sessions they must end are ended by the node
that holds them, told through the cluster's ``{prefix}events`` channel
(``k<uid>``, or ``b<uid>`` for a ban, see :meth:`clusterchat.service.chat.ChatService.kicked`).
Every change and every refusal is logged on the ``clusterchat.audit`` logger
with the operator's login name.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from sqlalchemy import and_, delete, func, or_, select, update

from clusterchat.server import control
from clusterchat.service.passwords import HashCost, Passwords
from clusterchat.storage.history import forget_in_packed_groups
from clusterchat.storage.queries import DROP_BODIES, UNREF_BODY
from clusterchat.storage.sql import SqlStore, sqlite_file
from clusterchat.storage.tables import (
    allgroup,
    blocked,
    friend,
    groupinvite,
    groupuser,
    history,
    mailbox,
    mailboxshare,
    offlinemessage,
    user,
)

audit = logging.getLogger("clusterchat.audit")


class AdminError(Exception):
    """A refusal, said to the operator (exit status 1)."""


@dataclass(frozen=True, slots=True)
class UserRow:
    id: int
    name: str
    state: str
    banned: bool
    node: str | None  # where Redis says the user is logged in


class Admin:
    def __init__(self, db_url: str, redis_url: str | None, prefix: str = "clusterchat:") -> None:
        self.db_url = db_url
        self.store = SqlStore(db_url, pool_size=2)
        self.redis = aioredis.Redis.from_url(redis_url, socket_timeout=5) if redis_url else None
        self.prefix = prefix
        self.operator = getpass.getuser()

    async def __aenter__(self) -> Admin:
        st = await self.store.schema_state()
        if problem := st.problem() or (st.empty and "the database is empty"):
            raise AdminError(str(problem))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()
        if self.redis is not None:
            await self.redis.aclose()

    def _audit(self, action: str, **fields: object) -> None:
        detail = " ".join(f"{k}={v}" for k, v in fields.items())
        audit.info("audit: operator=%s action=%s %s", self.operator, action, detail)

    def _refuse(self, action: str, why: str, **fields: object) -> AdminError:
        self._audit(action, refused=repr(why), **fields)
        return AdminError(why)

    # -- reading ---------------------------------------------------------------------

    async def nodes(self) -> dict[str, list[int]]:
        """Live nodes and the users each holds (Redis); empty without Redis."""
        if self.redis is None:
            return {}
        out: dict[str, list[int]] = {}
        async for key in self.redis.scan_iter(match=f"{self.prefix}node:*"):
            node = key.decode()[len(self.prefix) + 5 :]
            members = await self.redis.smembers(f"{self.prefix}members:{node}")
            out[node] = sorted(int(m) for m in members)
        return out

    async def require_nodes(self) -> None:
        """Who is online comes from the nodes' keys under our prefix: with
        none there (a prefix not given, or mistyped), every user would look
        offline and a kick would reach no one, all with exit status 0."""
        if self.redis is not None and not await self.nodes():
            raise AdminError(
                f"no live nodes under prefix {self.prefix!r} "
                "(set --redis-prefix / CLUSTERCHAT_REDIS_PREFIX to the nodes' own)"
            )

    async def users(self, online_only: bool = False) -> list[UserRow]:
        where = {uid: node for node, uids in (await self.nodes()).items() for uid in uids}
        q = select(user.c.id, user.c.name, user.c.state, user.c.banned).order_by(user.c.id)
        if online_only and self.redis is not None:
            q = q.where(user.c.id.in_(list(where)))
        elif online_only:
            q = q.where(user.c.state == "online")
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [UserRow(r.id, r.name, r.state, bool(r.banned), where.get(r.id)) for r in rows]

    async def group(self, gid: int) -> tuple[str, str, list[tuple[int, str, str]]]:
        async with self.store.engine.connect() as conn:
            g = (await conn.execute(select(allgroup).where(allgroup.c.id == gid))).first()
            if g is None:
                raise AdminError(f"no group {gid}")
            q = (
                select(user.c.id, user.c.name, groupuser.c.grouprole)
                .join(user, user.c.id == groupuser.c.userid)
                .where(groupuser.c.groupid == gid)
                .order_by(user.c.id)
            )
            members = [(r.id, r.name, r.grouprole) for r in await conn.execute(q)]
        return g.groupname, g.groupdesc, members

    async def counts(self) -> dict[str, int]:
        async with self.store.engine.connect() as conn:

            async def count(table: object, *where: object) -> int:
                q = select(func.count()).select_from(table)  # type: ignore[arg-type]
                for w in where:
                    q = q.where(w)  # type: ignore[arg-type]
                return int((await conn.execute(q)).scalar_one())

            out = {
                "users": await count(user),
                "banned": await count(user, user.c.banned.is_(True)),
                "groups": await count(allgroup),
                "friendships": await count(friend) // 2,
                "offline_messages": await count(offlinemessage),
            }
        nodes = await self.nodes()
        if self.redis is not None:
            out["nodes"] = len(nodes)
            out["online"] = sum(len(u) for u in nodes.values())
        return out

    # -- changing --------------------------------------------------------------------

    async def _name(self, uid: int, action: str) -> str:
        async with self.store.engine.connect() as conn:
            name = (await conn.execute(select(user.c.name).where(user.c.id == uid))).scalar()
        if name is None:
            raise self._refuse(action, f"no user {uid}", uid=uid)
        return str(name)

    async def kick(self, uid: int, action: str = "kick") -> bool:
        """End the user's session wherever it is (their ticket is revoked, so
        the client cannot resume it); False if they were not online."""
        name = await self._name(uid, action)
        if self.redis is None and sqlite_file(self.db_url) is None:
            raise self._refuse(action, "kick needs --redis: sessions are ended by their node")
        async with self.store.engine.begin() as conn:
            await conn.execute(update(user).where(user.c.id == uid).values(ticket=None))
        event = "b" if action == "ban" else "k"  # the node tells the client which
        if self.redis is None:  # a node alone on this SQLite file, if one runs
            async with self.store.engine.connect() as conn:
                state = await conn.scalar(select(user.c.state).where(user.c.id == uid))
            posted = await control.post(self.db_url, [f"{event}{uid}"])
            if posted is False:
                raise self._refuse(action, f"the node did not end user {uid}'s session", uid=uid)
            if action == "kick":
                self._audit("kick", uid=uid, name=name, node="alone" if posted else None)
            return bool(posted) and state == "online"
        held = await self.redis.get(f"{self.prefix}user:{uid}")
        node = held.decode() if isinstance(held, bytes) else held
        await self.redis.publish(f"{self.prefix}events", f"{event}{uid}")
        if action == "kick":
            self._audit("kick", uid=uid, name=name, node=node)
        return node is not None

    async def wait_gone(self, uid: int, timeout: float = 10.0) -> bool:
        """Until the node holding the user has let them go."""
        if self.redis is None:
            return True
        key = f"{self.prefix}user:{uid}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.redis.exists(key):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def ban(self, uid: int, banned: bool = True) -> None:
        action = "ban" if banned else "unban"
        name = await self._name(uid, action)
        async with self.store.engine.begin() as conn:
            values: dict[str, object] = {"banned": banned}
            if banned:
                values["ticket"] = None
            await conn.execute(update(user).where(user.c.id == uid).values(**values))
        reach = self.redis is not None or sqlite_file(self.db_url) is not None
        was_online = await self.kick(uid, action) if banned and reach else None
        self._audit(action, uid=uid, name=name, kicked=was_online)

    async def reset_password(self, uid: int, password: str | None) -> str:
        """Set a new password (random if none given; returned); tickets are revoked."""
        name = await self._name(uid, "reset-password")
        password = password or secrets.token_urlsafe(12)
        passwords = Passwords(HashCost(), queue=0)
        try:
            digest = await passwords.hash(password)
        finally:
            passwords.close()
        async with self.store.engine.begin() as conn:
            q = update(user).where(user.c.id == uid).values(password=digest, ticket=None)
            await conn.execute(q)
        self._audit("reset-password", uid=uid, name=name)
        return password

    async def delete_user(self, uid: int) -> dict[str, int]:
        """The user, their friendships (both ways), memberships, blocks (both
        ways), invitations, offline messages and history (their 1:1
        conversations, and what they said in groups); groups they created
        stay. Their id is never given to another account (revision 0011).
        An online user is kicked first."""
        name = await self._name(uid, "delete")
        if self.redis is None and sqlite_file(self.db_url) is not None:
            await self.kick(uid, "delete")  # the lone node's answer: the session is gone
        elif self.redis is not None:
            await self.kick(uid, "delete")
            if not await self.wait_gone(uid):
                raise self._refuse("delete", f"user {uid} is still online; try again", uid=uid)
        gone: dict[str, int] = {}
        # Their rows: 1:1 conversations, and what they said alone in a group
        # row; what they said in packed group rows is taken out of them below.
        theirs = or_(
            and_(history.c.sender == uid, history.c.n == 1),
            and_(history.c.conva > 0, or_(history.c.conva == uid, history.c.convb == uid)),
        )
        async with self.store.engine.begin() as conn:
            q = select(groupuser.c.groupid).where(groupuser.c.userid == uid)
            groups = list((await conn.execute(q)).scalars())
            for label, stmt in (
                ("friendships", delete(friend).where(or_(friend.c.userid == uid,
                                                         friend.c.friendid == uid))),
                ("memberships", delete(groupuser).where(groupuser.c.userid == uid)),
                ("blocks", delete(blocked).where(or_(blocked.c.userid == uid,
                                                     blocked.c.blockedid == uid))),
                ("invitations", delete(groupinvite).where(groupinvite.c.userid == uid)),
                # The tally's lock before the rows', as every store takes them.
                ("mailbox", delete(mailbox).where(mailbox.c.userid == uid)),
                ("offline_messages", delete(offlinemessage).where(
                    offlinemessage.c.userid.in_((uid, -uid)))),
                ("history_messages", delete(history).where(theirs)),
                ("users", delete(user).where(user.c.id == uid)),
            ):  # fmt: skip
                if label == "mailbox":  # the tally of the rows deleted next: no count of its own
                    await conn.execute(stmt)
                    await conn.execute(delete(mailboxshare).where(mailboxshare.c.userid == uid))
                    continue
                if label == "offline_messages":  # then their shared texts' counts (bodies last)
                    shared = select(offlinemessage.c.bodyid).where(offlinemessage.c.userid == -uid)
                    bodies = Counter((await conn.execute(shared)).scalars())
                    gone[label] = (await conn.execute(stmt)).rowcount
                    if bodies:
                        await conn.execute(
                            UNREF_BODY, [{"b": b, "k": k} for b, k in sorted(bodies.items())]
                        )
                        await conn.execute(DROP_BODIES, {"bids": sorted(bodies)})
                    continue
                if label == "history_messages":  # what a packed row held counts, each
                    held = await conn.scalar(select(func.sum(history.c.n)).where(theirs))
                    await conn.execute(stmt)
                    gone[label] = int(held or 0) + await forget_in_packed_groups(conn, uid)
                    continue
                gone[label] = (await conn.execute(stmt)).rowcount
        if self.redis is not None:  # nodes drop the groups' cached members (login replies)
            for gid in groups:
                await self.redis.publish(f"{self.prefix}events", f"g{gid}")
        elif groups:
            await control.post(self.db_url, [f"g{gid}" for gid in groups])
        self._audit("delete", uid=uid, name=name, **gone)
        return gone


def print_users(rows: Sequence[UserRow]) -> None:
    print(f"{'id':>8}  {'name':<24} {'state':<8} {'banned':<6} node")
    for r in rows:
        print(f"{r.id:>8}  {r.name:<24} {r.state:<8} {'yes' if r.banned else '':<6} {r.node or ''}")
