"""`clusterchat admin` as a process against a live two-node cluster (real
MariaDB, Redis, nginx): who is where, kick on the other node, ban, reset a
password, delete a user with everything that is theirs; audit lines logged."""

from __future__ import annotations

import asyncio
import json
import sys

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import LoginErr, MsgId
from clusterchat.storage.tables import friend, groupuser, history, offlinemessage, user
from tests.cluster.conftest import Cluster
from tests.conftest import PASSWORD, unique


async def _admin(
    cluster: Cluster, db: str, *args: str, prefix: str | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "admin", "--db", db,
        "--redis", cluster.redis_url, "--redis-prefix", prefix or cluster.prefix, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _rows(db: str, uid: int) -> dict[str, int]:
    engine = create_async_engine(db)
    try:
        async with engine.connect() as conn:

            async def n(table: object, *where: object) -> int:
                q = select(func.count()).select_from(table)  # type: ignore[arg-type]
                for w in where:
                    q = q.where(w)  # type: ignore[arg-type]
                return int((await conn.execute(q)).scalar_one())

            return {
                "user": await n(user, user.c.id == uid),
                "friend": await n(friend, (friend.c.userid == uid) | (friend.c.friendid == uid)),
                "groupuser": await n(groupuser, groupuser.c.userid == uid),
                "offline": await n(offlinemessage, offlinemessage.c.userid == uid),
                "history": await n(history, (history.c.sender == uid) | (history.c.convb == uid)),
            }
    finally:
        await engine.dispose()


async def test_admin_commands_on_a_live_two_node_cluster(
    cluster: Cluster, mariadb_url: str
) -> None:
    alice = await cluster.user_on("node0")
    bob = await cluster.user_on("node1")

    code, out, _ = await _admin(cluster, mariadb_url, "users", "--online")
    assert code == 0
    lines = {int(line.split()[0]): line.split()[-1] for line in out.splitlines()[1:]}
    assert lines[alice.id] == "node0" and lines[bob.id] == "node1"
    code, out, _ = await _admin(cluster, mariadb_url, "counts")
    assert code == 0 and "nodes             2" in out
    code, out, _ = await _admin(cluster, mariadb_url, "nodes")
    assert code == 0 and "node0  1 users" in out and "node1  1 users" in out, out
    # A wrong prefix (a typo) says so, instead of printing nothing.
    code, out, _ = await _admin(cluster, mariadb_url, "nodes", prefix="typo:")
    assert code == 0 and "no live nodes under prefix 'typo:'" in out, out

    # Kick bob, who is on the other node from... whichever: each node hears it.
    code, out, err = await _admin(cluster, mariadb_url, "kick", str(bob.id))
    assert code == 0 and "session ended" in out
    assert "action=kick" in err and "operator=" in err
    notice = await bob.conn.expect(MsgId.NOTICE)
    assert "operator" in notice["text"]
    assert await bob.conn.at_eof()
    # Kicked, not banned: the password still works; the old ticket does not.
    again = await cluster.connect_to("node1")
    ticket = bob.login_ack["ticket"]
    refused = await again.request({"msgid": 1, "id": bob.id, "ticket": ticket}, MsgId.LOGIN_ACK)
    assert refused["errno"] == LoginErr.BAD_CREDENTIALS
    assert (await again.login(bob.id, PASSWORD))["errno"] == 0

    # Ban alice while online on node0: kicked, and no login anywhere.
    code, out, err = await _admin(cluster, mariadb_url, "ban", str(alice.id))
    assert code == 0 and "action=ban" in err
    notice = await alice.conn.expect(MsgId.NOTICE)
    assert "banned" in notice["text"], notice  # the client says so, and stops there
    assert await alice.conn.at_eof()
    for node in ("node0", "node1"):
        c = await cluster.connect_to(node)
        ack = await c.login(alice.id, PASSWORD)
        assert ack["errno"] == LoginErr.BANNED, ack
    code, _, _ = await _admin(cluster, mariadb_url, "unban", str(alice.id))
    assert code == 0
    c = await cluster.connect_to("node1")
    assert (await c.login(alice.id, PASSWORD))["errno"] == 0
    await c.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)

    # Reset bob's password (he is online on node1 under `again`).
    code, out, err = await _admin(
        cluster, mariadb_url, "reset-password", str(bob.id), "--password", "n3w-pass"
    )
    assert code == 0 and "action=reset-password" in err
    await again.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    assert (await again.login(bob.id, PASSWORD))["errno"] == LoginErr.BAD_CREDENTIALS
    assert (await again.login(bob.id, "n3w-pass"))["errno"] == 0

    # Delete carol, with a friend, a group and a message waiting for her.
    carol = await cluster.user_on("node0")
    await carol.conn.request({"msgid": 7, "friendid": bob.id}, MsgId.ADD_FRIEND_ACK)
    await again.expect(MsgId.FRIEND_ADDED)  # bob, logged in on `again`, is told
    made = await carol.conn.request(
        {"msgid": 8, "groupname": unique("g"), "groupdesc": "d"}, MsgId.CREATE_GROUP_ACK
    )
    gid = made["groupid"]
    await again.request({"msgid": 9, "groupid": gid}, MsgId.ADD_GROUP_ACK)
    code, out, _ = await _admin(cluster, mariadb_url, "group", str(gid))
    assert code == 0 and carol.name in out and "creator" in out and "normal" in out
    await carol.conn.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    msg = {"msgid": 6, "id": bob.id, "name": bob.name, "toid": carol.id, "msg": "waiting"}
    ack = await again.request(msg, MsgId.CHAT_ACK)
    assert ack["status"] == "stored"
    async with asyncio.timeout(10):  # history is written in batches, just after
        while (before := await _rows(mariadb_url, carol.id))["history"] < 1:  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.02)
    assert before == {"user": 1, "friend": 2, "groupuser": 1, "offline": 1, "history": 1}

    async def members_bob_sees() -> set[int]:
        await again.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
        (doc,) = (await again.login(bob.id, "n3w-pass"))["groups"]
        return {json.loads(u)["id"] for u in json.loads(doc)["users"]}

    assert await members_bob_sees() == {carol.id, bob.id}  # node1 holds the group's roster
    code, out, err = await _admin(cluster, mariadb_url, "delete", str(carol.id))
    assert code == 0 and "action=delete" in err, err
    assert "1 offline_messages" in out and "2 friendships" in out
    assert "1 history_messages" in out
    assert await _rows(mariadb_url, carol.id) == {
        "user": 0, "friend": 0, "groupuser": 0, "offline": 0, "history": 0,
    }  # fmt: skip
    late = await ChatConnection.open("127.0.0.1", cluster.port)
    assert (await late.login(carol.id, PASSWORD))["errno"] == LoginErr.BAD_CREDENTIALS
    # The delete announced her group: node1's next login replies leave her out
    # (a roster would otherwise be used for up to a minute).
    async with asyncio.timeout(10):
        while carol.id in await members_bob_sees():
            pass
    await late.close()
    code, _, err = await _admin(cluster, mariadb_url, "ban", str(carol.id))
    assert code == 1 and "no user" in err and "refused=" in err

    # Deleting someone online ends their session first, on their node.
    dave = await cluster.user_on("node1")
    code, out, err = await _admin(cluster, mariadb_url, "delete", str(dave.id))
    assert code == 0, err
    assert (await dave.conn.expect(MsgId.NOTICE))["text"] == "an operator ended this session"
    assert await dave.conn.at_eof()
    assert await _rows(mariadb_url, dave.id) == {
        "user": 0, "friend": 0, "groupuser": 0, "offline": 0, "history": 0,
    }  # fmt: skip
    assert await cluster.holder_of(dave.id) is None
