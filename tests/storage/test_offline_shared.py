"""Revision 0009 in the store, SQLite and MariaDB: a text kept for many
receivers goes to the database once (``offlinebody``) and comes back to each
of them exactly as sent, in order with their other messages; the last
delivery (or an admin delete) removes it; the in-doubt settle finds it. And
one sender may fill only a share of a receiver's mailbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from clusterchat.admin import Admin
from clusterchat.errors import MailboxFull, MailboxShareFull
from clusterchat.storage.base import Quota
from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import mailbox, mailboxshare, offlinebody, offlinemessage
from tests.conftest import unique


@pytest.fixture(params=["sqlite", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("mariadb_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(url, pool_size=4)
    await s.create_schema()
    yield s
    await s.close()


class _Sent:
    """Characters of the statements' parameters the store sends."""

    def __init__(self) -> None:
        self.chars = 0

    def __call__(self, _c: Any, _cur: Any, _stmt: str, params: Any, *_a: Any) -> None:
        for p in params if isinstance(params, list) else [params]:
            vals = p.values() if isinstance(p, dict) else p
            self.chars += sum(len(v) for v in vals if isinstance(v, str))


@pytest.fixture
def sent(store: SqlStore) -> Iterator[_Sent]:
    counter = _Sent()
    event.listen(store.engine.sync_engine, "before_cursor_execute", counter)
    yield counter
    event.remove(store.engine.sync_engine, "before_cursor_execute", counter)


async def _bodies(store: SqlStore, text: str) -> list[int]:
    async with store.engine.connect() as conn:
        q = select(offlinebody.c.refs).where(offlinebody.c.message == text)
        return list((await conn.execute(q)).scalars())


async def _mailbox(store: SqlStore, uid: int) -> list[str]:
    """Everything waiting for ``uid``, page by page, without deleting it."""
    return [m for _, m in await store.offline(uid)]


async def test_a_fan_out_sends_its_text_once_and_each_member_gets_it(
    store: SqlStore, sent: _Sent
) -> None:
    members = [await store.create_user(unique(), "x") for _ in range(50)]
    text = '{"msgid":5,"msg":"' + "é" * 8000 + f'","mid":"{unique()}"}}'
    sent.chars = 0
    assert await store.store_offline_within(members, text, Quota(5000, 10**8)) == []
    # Once, not 50 times: what goes to the database no longer grows with
    # members x text size (it was 50 x 8 KiB here).
    assert len(text) <= sent.chars < 2 * len(text), sent.chars
    assert await _bodies(store, text) == [50]
    for u in members:
        assert await _mailbox(store, u) == [text]  # byte for byte as sent
    # Each delivery takes one reference off; the last removes the text.
    for u in members[:-1]:
        await store.delete_offline(u, [i for i, _ in await store.offline(u)])
    assert await _bodies(store, text) == [1]
    last = members[-1]
    ids = [i for i, _ in await store.offline(last)]
    await store.delete_offline(last, ids)
    await store.delete_offline(last, ids)  # delivered twice: counted once
    assert await _bodies(store, text) == []
    assert await store.offline_users(members) == set()


async def test_shared_and_own_rows_come_in_the_order_stored(store: SqlStore) -> None:
    a, b = [await store.create_user(unique(), "x") for _ in range(2)]
    quota = Quota(5000, 10**8)
    await store.store_offline(a, "one", quota)
    await store.store_offline_within([a, b], "two (group)", quota)
    await store.store_offline(a, "three", quota)
    await store.store_offline_many([(a, "four (re-stored)"), (b, "x"), (a, "five (re-stored)")])
    await store.store_offline_within([b, a, b], "six (group)", quota)
    want = ["one", "two (group)", "three", "four (re-stored)", "five (re-stored)", "six (group)"]
    store.offline_page = 2  # pages merge both kinds of row by id
    got: list[str] = []
    while page := await store.offline(a):
        got += [m for _, m in page]
        await store.delete_offline(a, [i for i, _ in page])
    assert got == want
    assert await store.offline_users([a, b]) == {b}
    assert (await store.resume(b)).has_offline  # type: ignore[union-attr]
    async with store.engine.connect() as conn:
        n = await conn.scalar(select(mailbox.c.n).where(mailbox.c.userid == b))
    assert n == 4  # two (group), x, six twice: the tally counts each receiver's copies


async def test_code_before_0009_does_not_see_shared_rows(store: SqlStore) -> None:
    """What a node still on 0008 code reads for a user (its OFFLINE query:
    ``userid = id``) during a rolling upgrade: its own rows only, never a
    shared row with an empty text. It leaves them for an upgraded node."""
    a, b = [await store.create_user(unique(), "x") for _ in range(2)]
    await store.store_offline(a, "own", Quota())
    await store.store_offline_within([a, b], "shared", Quota())
    async with store.engine.connect() as conn:
        old_read = select(offlinemessage.c.message).where(offlinemessage.c.userid == a)
        assert list((await conn.execute(old_read)).scalars()) == ["own"]
    assert await _mailbox(store, a) == ["own", "shared"]


async def test_settling_in_doubt_finds_shared_rows_and_shares_what_it_adds(
    store: SqlStore, sent: _Sent
) -> None:
    members = [await store.create_user(unique(), "x") for _ in range(20)]
    text = unique() + "g" * 5000
    await store.store_offline_within(
        members[:10], text, Quota()
    )  # the commit that "went unanswered"
    sent.chars = 0
    await store.store_offline_missing([(u, text) for u in members])
    assert sent.chars < 4 * len(text)  # not once per member
    for u in members:
        assert await _mailbox(store, u) == [text]
    assert sorted(await _bodies(store, text)) == [10, 10]
    await store.store_offline_missing([(u, text) for u in members])  # nothing more
    assert sorted(await _bodies(store, text)) == [10, 10]


async def test_admin_delete_removes_the_users_references(url: str, store: SqlStore) -> None:
    a, b = [await store.create_user(unique(), "x") for _ in range(2)]
    quota = Quota(5000, 10**8, offline_share=0.5)
    one, two = unique(), unique()
    await store.store_offline_within([a, b], one, quota, sender=b)
    await store.store_offline_within([a, b], two, quota, sender=b)
    async with Admin(url, None) as admin:
        gone = await admin.delete_user(a)
    assert gone["offline_messages"] == 2
    assert await _bodies(store, one) == [1]
    async with store.engine.connect() as conn:
        left = await conn.scalar(select(func.count()).where(mailboxshare.c.userid == a))
    assert left == 0
    await store.delete_offline(b, [i for i, _ in await store.offline(b)])
    assert await _bodies(store, one) == await _bodies(store, two) == []


# -- the per-sender share ------------------------------------------------------


async def test_one_sender_fills_only_a_share_of_a_mailbox(store: SqlStore) -> None:
    victim, stranger, friend = [await store.create_user(unique(), "x") for _ in range(3)]
    quota = Quota(offline_messages=8, offline_bytes=10**6, offline_share=0.25)  # 2 each
    await store.store_offline(victim, "s1", quota, sender=stranger)
    await store.store_offline(victim, "s2", quota, sender=stranger)
    with pytest.raises(MailboxShareFull):
        await store.store_offline(victim, "s3", quota, sender=stranger)
    # Others still can, up to the whole mailbox's bound.
    await store.store_offline(victim, "f1", quota, sender=friend)
    # A group message counts toward its writer's share.
    assert await store.store_offline_within([victim, friend], "g", quota, sender=stranger) == [
        victim
    ]
    assert await store.store_offline_within([victim, stranger], "g2", quota, sender=friend) == []
    assert await _mailbox(store, victim) == ["s1", "s2", "f1", "g2"]
    # Delivered: the stranger's share is free again, and its row is gone.
    await store.delete_offline(victim, [i for i, _ in await store.offline(victim)])
    async with store.engine.connect() as conn:
        rows = await conn.scalar(select(func.count()).where(mailboxshare.c.userid == victim))
    assert rows == 0
    await store.store_offline(victim, "s4", quota, sender=stranger)


async def test_the_share_is_also_a_share_of_the_bytes(store: SqlStore) -> None:
    victim, stranger = [await store.create_user(unique(), "x") for _ in range(2)]
    quota = Quota(offline_messages=1000, offline_bytes=4000, offline_share=0.25)  # 1000 bytes
    await store.store_offline(victim, "x" * 900, quota, sender=stranger)
    with pytest.raises(MailboxShareFull):
        await store.store_offline(victim, "x" * 200, quota, sender=stranger)
    await store.store_offline(victim, "x" * 100, quota, sender=stranger)
    with pytest.raises(MailboxFull):  # the whole mailbox's bound as before
        await store.store_offline(victim, "x" * 3500, quota, sender=0)


async def test_a_share_left_too_high_is_recounted_before_refusing(store: SqlStore) -> None:
    victim, stranger = [await store.create_user(unique(), "x") for _ in range(2)]
    quota = Quota(offline_messages=8, offline_share=0.25)
    await store.store_offline(victim, "s1", quota, sender=stranger)
    async with store.engine.begin() as conn:  # as drift would leave it
        await conn.execute(
            update(mailboxshare).where(mailboxshare.c.userid == victim).values(n=100)
        )
    await store.store_offline(victim, "s2", quota, sender=stranger)
    with pytest.raises(MailboxShareFull):
        await store.store_offline(victim, "s3", quota, sender=stranger)
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(select(mailboxshare).where(mailboxshare.c.userid == victim))
        ).one()
    assert (row.n, row.bytes) == (2, 4) and row.checked > time.time() - 60


async def test_deliveries_and_fan_outs_at_once_keep_bodies_and_shares_exact(
    store: SqlStore,
) -> None:
    uids = [await store.create_user(unique(), "x") for _ in range(20)]
    quota = Quota(offline_messages=5000, offline_share=0.5)
    tag = unique()

    async def fan_out(k: int) -> None:
        order = uids[k % 20 :] + uids[: k % 20]
        await store.store_offline_within(order, f"{tag}-{k}", quota, sender=uids[k % 3])

    async def deliver(u: int) -> None:
        await store.delete_offline(u, [i for i, _ in await store.offline(u)])

    await asyncio.gather(*(fan_out(k) for k in range(10)), *(deliver(u) for u in uids))
    async with store.engine.connect() as conn:
        mine = select(offlinebody.c.id, offlinebody.c.refs).where(
            offlinebody.c.message.like(f"{tag}-%")
        )
        refs = dict((await conn.execute(mine)).all())
        named: dict[int, int] = dict(
            (
                await conn.execute(
                    select(offlinemessage.c.bodyid, func.count())
                    .where(offlinemessage.c.bodyid.in_(list(refs)))
                    .group_by(offlinemessage.c.bodyid)
                )
            ).all()
        )
        shares = {
            (r.userid, r.sender): r.n
            for r in await conn.execute(select(mailboxshare).where(mailboxshare.c.userid.in_(uids)))
        }
        counted: dict[tuple[int, int], int] = {}
        q = select(offlinemessage.c.userid, offlinemessage.c.sender).where(
            offlinemessage.c.userid.in_([-u for u in uids])
        )
        for userid, snd in await conn.execute(q):
            counted[(-userid, snd)] = counted.get((-userid, snd), 0) + 1
    assert refs == named  # every body's count is its rows', none left at 0
    assert shares == counted


async def test_settling_keeps_each_users_order(store: SqlStore) -> None:
    u, v = [await store.create_user(unique(), "x") for _ in range(2)]
    one, two = unique(), unique()
    await store.store_offline_missing([(v, two), (u, one), (u, two)])
    assert await _mailbox(store, u) == [one, two]
    assert await _mailbox(store, v) == [two]


async def test_a_re_store_of_a_group_burst_shares_each_text_in_order(store: SqlStore) -> None:
    """Messages held for several members and stored again together (a node
    re-storing a burst, service/restore.py): each text once, each member's
    order kept."""
    members = [await store.create_user(unique(), "x") for _ in range(3)]
    texts = [unique() for _ in range(5)]
    await store.store_offline_many([(u, t) for t in texts for u in members])
    for u in members:
        assert await _mailbox(store, u) == texts
    for t in texts:
        assert await _bodies(store, t) == [3]
