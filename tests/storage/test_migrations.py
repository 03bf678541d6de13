"""Schema migrations on real databases: from the original C++ system's tables,
from the previous release's `db init` (unversioned), both with data; the
upgraded data still logs in and chats, and a node refuses a schema it needs
upgraded until `clusterchat db upgrade` ran."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from argon2 import PasswordHasher
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from clusterchat import errors
from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from clusterchat.storage import schema
from clusterchat.storage.base import Quota
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import mailbox, metadata, mysql_ddl, user
from tests.conftest import FAST_HASH, MYSQL_SERVER, PASSWORD, _mysql, unique
from tests.e2e.test_process import server_process

SCHEMAS = Path(__file__).parent / "schemas"


async def _clusterchat(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.fixture(params=["sqlite", "mariadb"])
async def blank_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    else:
        async with _blank_mariadb() as url:
            yield url


@pytest.fixture
async def blank_mariadb() -> AsyncIterator[str]:
    """The original ran on MySQL only: its databases are MySQL's."""
    async with _blank_mariadb() as url:
        yield url


@asynccontextmanager
async def _blank_mariadb() -> AsyncIterator[str]:
    name = f"cc_mig_{unique()}"
    await _mysql(f"CREATE DATABASE `{name}` CHARACTER SET latin1")
    try:
        yield f"{MYSQL_SERVER}/{name}"
    finally:
        await _mysql(f"DROP DATABASE IF EXISTS `{name}`")


def _statements(path: Path) -> list[str]:
    text = "\n".join(
        line
        for line in path.read_text().splitlines()
        if not line.startswith(("--", "CREATE DATABASE", "USE "))
    )
    return [s.strip() for s in text.split(";") if s.strip()]


async def _load(url: str, ddl: Path, passwords: list[str]) -> None:
    """Tables from ``ddl``, then three users (the first two friends, both in
    one group) and a message stored for the first, as the old code kept them."""
    # Today's DDL: names carry their key.
    keyed = "namekey" in await asyncio.to_thread(ddl.read_text)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for stmt in _statements(ddl):
                await conn.exec_driver_sql(stmt)
            for i, (name, pw) in enumerate(zip(["alice", "bob", "carol"], passwords, strict=True)):
                cols, vals = ("id, name, password", f"{i + 1}, '{name}', '{pw}'")
                if keyed:
                    cols, vals = cols + ", namekey", vals + f", '{name}'"
                await conn.exec_driver_sql(f"INSERT INTO user ({cols}) VALUES ({vals})")
            await conn.exec_driver_sql("INSERT INTO friend VALUES (1, 2), (2, 1)")
            await conn.exec_driver_sql(
                "INSERT INTO allgroup (id, groupname, groupdesc"
                + (
                    ", groupkey) VALUES (1, 'old', 'kept', 'old')"
                    if keyed
                    else ") VALUES (1, 'old', 'kept')"
                )
            )
            await conn.exec_driver_sql(
                "INSERT INTO groupuser (groupid, userid, grouprole)"
                " VALUES (1, 1, 'creator'), (1, 2, 'normal')"
            )
            stored = json.dumps(
                {"msgid": MsgId.ONE_CHAT, "id": 2, "name": "bob", "toid": 1, "msg": "while away"}
            )
            await conn.exec_driver_sql(
                f"INSERT INTO offlinemessage (userid, message) VALUES (1, '{stored}')"
            )
    finally:
        await engine.dispose()


def _differences(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


async def _passwords(url: str) -> dict[str, str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            diffs = await conn.run_sync(_differences)
            assert diffs == [], f"upgraded schema differs from tables.py: {diffs}"
            rows = await conn.execute(select(user.c.name, user.c.password))
            return {r.name: r.password for r in rows}
    finally:
        await engine.dispose()


async def _refused_then_upgraded(url: str) -> None:
    code, out = await _clusterchat("server", "--port", "0", "--db", url)
    assert code == 2 and "clusterchat db upgrade" in out, out
    code, out = await _clusterchat("db", "upgrade", "--db", url)
    assert code == 0 and f"to revision {schema.head()}" in out, out
    code, out = await _clusterchat("db", "status", "--db", url)
    assert code == 0 and "a node can start on it" in out, out


async def _logs_in_and_chats(url: str, alice_pw: str, bob_pw: str) -> None:
    async with server_process("--port", "0", "--db", url) as (proc, port, _):
        alice = await ChatConnection.open("127.0.0.1", port)
        ack = await alice.login(1, alice_pw)
        assert ack["errno"] == 0 and ack["name"] == "alice"
        assert [json.loads(f)["name"] for f in ack["friends"]] == ["bob"]
        (group,) = (json.loads(g) for g in ack["groups"])
        assert (group["groupname"], group["groupdesc"], len(group["users"])) == ("old", "kept", 2)
        assert [json.loads(m)["msg"] for m in ack["offlinemsg"]] == ["while away"]
        bob = await ChatConnection.open("127.0.0.1", port)
        assert (await bob.login(2, bob_pw))["errno"] == 0
        await alice.send(
            {"msgid": MsgId.ONE_CHAT, "id": 1, "name": "alice", "toid": 2, "msg": "still here"}
        )
        assert (await bob.expect(MsgId.ONE_CHAT))["msg"] == "still here"
        reg = await ChatConnection.open("127.0.0.1", port)
        assert await reg.register(unique(), PASSWORD) > 3
        for c in (alice, bob, reg):
            await c.close()
        proc.terminate()
        assert await proc.wait() == 0


async def test_an_empty_database_is_upgraded_to_the_tables_of_this_release(blank_db: str) -> None:
    code, out = await _clusterchat("db", "upgrade", "--db", blank_db)
    assert code == 0 and "from nothing to revision" in out, out
    await _passwords(blank_db)
    code, out = await _clusterchat("db", "upgrade", "--db", blank_db)
    assert code == 0 and "already at" in out, out


async def test_the_previous_release_database_is_upgraded_with_its_data(blank_db: str) -> None:
    kind = "sqlite" if blank_db.startswith("sqlite") else "mysql"
    hasher = PasswordHasher(FAST_HASH.time_cost, FAST_HASH.memory_kib, FAST_HASH.parallelism)
    await _load(blank_db, SCHEMAS / f"release_0002_{kind}.sql", [hasher.hash(PASSWORD)] * 3)
    await _refused_then_upgraded(blank_db)
    await _passwords(blank_db)
    await _logs_in_and_chats(blank_db, PASSWORD, PASSWORD)


async def test_the_original_systems_database_is_upgraded_and_its_passwords_hashed_at_login(
    blank_mariadb: str,
) -> None:
    blank_db = blank_mariadb
    await _load(blank_db, SCHEMAS / "original_mysql.sql", ["pw-a", "pw-b", "pw-c"])
    await _refused_then_upgraded(blank_db)
    assert set((await _passwords(blank_db)).values()) == {"plain$pw-a", "plain$pw-b", "plain$pw-c"}
    await _logs_in_and_chats(blank_db, "pw-a", "pw-b")
    after = await _passwords(blank_db)
    assert after["alice"].startswith("$argon2id$") and after["bob"].startswith("$argon2id$")
    assert after["carol"] == "plain$pw-c"  # not logged in yet
    async with server_process("--port", "0", "--db", blank_db) as (_proc, port, _):
        alice = await ChatConnection.open("127.0.0.1", port)
        assert (await alice.login(1, "pw-a"))["errno"] == 0  # against the new hash
        wrong = await ChatConnection.open("127.0.0.1", port)
        assert (await wrong.login(3, "pw-x"))["errno"] == 1
        await alice.close()
        await wrong.close()


async def test_a_node_refuses_a_schema_newer_than_it_knows(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'future.db'}"
    assert (await _clusterchat("db", "upgrade", "--db", url))[0] == 0
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff'")
    finally:
        await engine.dispose()
    code, out = await _clusterchat("server", "--port", "0", "--db", url)
    assert code == 2 and "revision ffff is unknown" in out, out
    code, out = await _clusterchat("db", "status", "--db", url)
    assert code == 1 and "run a newer clusterchat" in out, out


async def test_a_database_made_by_hand_from_chat_sql_is_started_on_and_stamped(
    blank_mariadb: str, tmp_path: Path
) -> None:
    ddl = tmp_path / "chat.sql"
    ddl.write_text(mysql_ddl())
    await _load(blank_mariadb, ddl, ["x", "y", "z"])
    async with server_process("--port", "0", "--db", blank_mariadb) as (proc, _port, _):
        proc.terminate()
        assert await proc.wait() == 0
    engine = create_async_engine(blank_mariadb)
    try:
        async with engine.connect() as conn:
            st = await conn.run_sync(schema.state)
    finally:
        await engine.dispose()
    assert st.versioned and st.current


def _to_0006(conn: Connection) -> None:
    from alembic import command

    command.upgrade(schema._config(conn), "0006")


async def test_history_kept_before_packing_pages_as_one_message_a_row_after_it(
    blank_db: str,
) -> None:
    """Revision 0007 packs a round's messages of a conversation into one row
    and numbers messages ``row id << 10 | index``: rows from before it are
    index 0 of theirs, and page in order with the packed ones after them."""
    engine = create_async_engine(blank_db)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to_0006)
            for i in range(3):
                await conn.exec_driver_sql(
                    "INSERT INTO history (conva, convb, sender, mid, ts, body)"
                    f" VALUES (1, 2, 1, 'old-{i}', {10**12 + i}, 'before {i}')"
                )
    finally:
        await engine.dispose()
    code, out = await _clusterchat("db", "upgrade", "--db", blank_db)
    assert code == 0 and "from 0006 to revision" in out, out
    store = SqlStore(blank_db, pool_size=2)
    try:
        async with store.engine.begin() as conn:  # its two people (a gone account's is not served)
            people = [
                {"id": i, "name": f"p{i}", "namekey": f"p{i}", "password": "x"} for i in (1, 2)
            ]
            await conn.execute(insert(user), people)
        await store.add_history([(1, 2, 2, f"new-{i}", 10**12 + 9, f"after {i}") for i in range(3)])
        everything = await store.history(1, 2, 0, 50, 0)
        assert [m.body for m in everything] == [
            *(f"after {i}" for i in (2, 1, 0)),
            *(f"before {i}" for i in (2, 1, 0)),
        ]
        old = everything[3:]
        assert [m.id & 1023 for m in old] == [0, 0, 0]
        page = await store.history(1, 2, everything[3].id, 2, 0)  # a cursor at an old row
        assert [m.body for m in page] == ["before 1", "before 0"]
    finally:
        await store.close()


def _to_0007(conn: Connection) -> None:
    from alembic import command

    command.upgrade(schema._config(conn), "0007")


async def test_mailbox_tallies_are_filled_from_the_messages_already_stored(
    blank_db: str,
) -> None:
    """Revision 0008 tallies each user's stored offline messages: a mailbox
    filled before it counts toward the quota after it, and deliveries take
    from the tally what they delete."""
    engine = create_async_engine(blank_db)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to_0007)
            for uid, name in ((1, "a"), (2, "b")):
                await conn.exec_driver_sql(
                    "INSERT INTO user (id, name, namekey, password)"
                    f" VALUES ({uid}, '{name}', '{name}', 'x')"
                )
            for i in range(3):
                await conn.exec_driver_sql(
                    "INSERT INTO offlinemessage (userid, message, size)"
                    f" VALUES (1, 'm{i}', {10 + i})"
                )
    finally:
        await engine.dispose()
    code, out = await _clusterchat("db", "upgrade", "--db", blank_db)
    assert code == 0 and "from 0007 to revision" in out, out
    store = SqlStore(blank_db, pool_size=2)
    try:
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(mailbox).order_by(mailbox.c.userid))).all()
        assert [(r.userid, r.n, r.bytes) for r in rows] == [(1, 3, 33)]
        quota = Quota(offline_messages=3)
        with pytest.raises(errors.MailboxFull):
            await store.store_offline(1, "one too many", quota)
        await store.store_offline(2, "fits", quota)
        ids = [i for i, _ in await store.offline(1)]
        await store.delete_offline(1, ids[:2])
        await store.store_offline(1, "fits now", quota)
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(mailbox).order_by(mailbox.c.userid))).all()
        assert [(r.userid, r.n, r.bytes) for r in rows] == [(1, 2, 12 + 8), (2, 1, 4)]
    finally:
        await store.close()


def _to_0008(conn: Connection) -> None:
    from alembic import command

    command.upgrade(schema._config(conn), "0008")


async def test_offline_rows_from_before_0009_are_read_and_counted_toward_no_sender(
    blank_db: str,
) -> None:
    """Revision 0009 keeps rows already stored as they are (their text, sender
    0): they are delivered in order with shared ones kept after it, count
    toward the receiver's quota and toward no sender's share."""
    engine = create_async_engine(blank_db)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to_0008)
            for uid, name in ((1, "a"), (2, "b"), (3, "c")):
                await conn.exec_driver_sql(
                    "INSERT INTO user (id, name, namekey, password)"
                    f" VALUES ({uid}, '{name}', '{name}', 'x')"
                )
            for i in range(2):
                await conn.exec_driver_sql(
                    f"INSERT INTO offlinemessage (userid, message, size) VALUES (1, 'old{i}', 4)"
                )
            await conn.exec_driver_sql("INSERT INTO mailbox (userid, n, bytes) VALUES (1, 2, 8)")
    finally:
        await engine.dispose()
    code, out = await _clusterchat("db", "upgrade", "--db", blank_db)
    assert code == 0 and "from 0008 to revision" in out, out
    store = SqlStore(blank_db, pool_size=2)
    try:
        quota = Quota(offline_messages=4, offline_share=0.5)  # 2 from any one sender
        await store.store_offline_within([1, 2], "new group", quota, sender=3)
        await store.store_offline(1, "new 1:1", quota, sender=3)
        with pytest.raises(errors.MailboxFull):  # 4 waiting: the old rows count
            await store.store_offline(1, "one too many", quota, sender=2)
        assert [m for _, m in await store.offline(1)] == ["old0", "old1", "new group", "new 1:1"]
    finally:
        await store.close()


def _to_0009(conn: Connection) -> None:
    from alembic import command

    command.upgrade(schema._config(conn), "0009")


async def test_offline_ids_are_not_reused_after_0010_and_rows_are_kept(blank_db: str) -> None:
    """On SQLite before 0010 the newest row's id came back once it was
    deleted; a late delete of a confirmed row (by id) could take a newer
    message. The upgrade keeps every row."""
    engine = create_async_engine(blank_db)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to_0009)
            await conn.exec_driver_sql(
                "INSERT INTO user (id, name, namekey, password) VALUES (1, 'a', 'a', 'x')"
            )
            for i in range(3):
                await conn.exec_driver_sql(
                    f"INSERT INTO offlinemessage (userid, message, size) VALUES (1, 'm{i}', 2)"
                )
    finally:
        await engine.dispose()
    code, out = await _clusterchat("db", "upgrade", "--db", blank_db)
    assert code == 0 and "from 0009 to revision" in out, out
    store = SqlStore(blank_db, pool_size=2)
    try:
        rows = await store.offline(1)
        assert [m for _, m in rows] == ["m0", "m1", "m2"]
        newest = rows[-1][0]
        await store.delete_offline(1, [newest])
        await store.store_offline(1, "after", Quota(), sender=0)
        again = await store.offline(1)
        assert [m for _, m in again] == ["m0", "m1", "after"]
        assert again[-1][0] > newest  # a new id, never the deleted one's
    finally:
        await store.close()


def _to_0010(conn: Connection) -> None:
    from alembic import command

    command.upgrade(schema._config(conn), "0010")


async def test_account_and_group_ids_are_not_reused_after_0011(blank_db: str) -> None:
    """On SQLite before 0011 a deleted newest account's id went to the next
    one who registered (and a deleted newest group's to the next group):
    what was on its way to the old account reached a stranger. The upgrade
    keeps every account and group."""
    engine = create_async_engine(blank_db)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to_0010)
            for i in (1, 2):
                await conn.exec_driver_sql(
                    "INSERT INTO user (id, name, namekey, password)"
                    f" VALUES ({i}, 'u{i}', 'u{i}', 'x')"
                )
                await conn.exec_driver_sql(
                    f"INSERT INTO allgroup (id, groupname, groupkey) VALUES ({i}, 'g{i}', 'g{i}')"
                )
    finally:
        await engine.dispose()
    code, out = await _clusterchat("db", "upgrade", "--db", blank_db)
    assert code == 0 and "from 0010 to revision" in out, out
    engine = create_async_engine(blank_db)
    try:
        async with engine.begin() as conn:
            kept = await conn.exec_driver_sql("SELECT name FROM user ORDER BY id")
            assert [r[0] for r in kept] == ["u1", "u2"]
            await conn.exec_driver_sql("DELETE FROM user WHERE id = 2")
            await conn.exec_driver_sql("DELETE FROM allgroup WHERE id = 2")
    finally:
        await engine.dispose()
    store = SqlStore(blank_db, pool_size=2)
    try:
        assert await store.create_user("newcomer", "x") == 3  # not 2, the deleted one's
        assert await store.create_group(1, "newgroup", "") == 3
    finally:
        await store.close()
