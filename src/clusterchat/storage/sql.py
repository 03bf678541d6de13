"""The SQL store: SQLAlchemy 2 Core on its asyncio extension, pooled.

One class serves SQLite (aiosqlite, the embedded default) and MariaDB/MySQL
(asyncmy); dialect differences stay in :func:`make_engine`. Driver errors are
translated in :func:`_translated`, the one place that knows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Histogram
from sqlalchemy import Table, event, insert, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InternalError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from clusterchat import errors
from clusterchat.protocol import names
from clusterchat.storage import queries as q
from clusterchat.storage import schema
from clusterchat.storage.base import (
    GROUP_PAGE_MEMBERS,
    NO_QUOTA,
    Credentials,
    Group,
    LoginView,
    Member,
    Quota,
    Resume,
)
from clusterchat.storage.batching import Batcher, WriteBatcher
from clusterchat.storage.history import BulkConnection, HistoryQueries
from clusterchat.storage.social import SocialQueries
from clusterchat.storage.tables import (
    allgroup,
    friend,
    groupuser,
    mailbox,
    mailboxshare,
    metadata,
    offlinebody,
    offlinemessage,
    user,
)

log = logging.getLogger(__name__)

_MYSQL_NO_SUCH_DB = 1049
#: MariaDB's "Error on delete of '/tmp/#sql-temptable-…'": the server lost
#: the temporary file of its own DESCRIBE (seen on the shared test machine,
#: whose /tmp others write to); the read is harmless to try again.
_MYSQL_TEMP_FILE_GONE = 6
_SCHEMA_READ_TRIES = 3
_MYSQL_TABLE_EXISTS = 1050
#: How often a node looks again at an unstamped schema it would refuse (0.2 s apart).
_UNSTAMPED_LOOKS = 15
#: Seconds a pooled transaction (checkout and pre-ping included) may take
#: before it fails as Unavailable, or InDoubt once its COMMIT went out, and
#: its connection is terminated, not returned: a flow gone silent (a proxy or
#: NAT holding it, a database host gone without a reset) must not hold the
#: request, and so every login once the pool is exhausted, until TCP gives
#: up, if ever. Shorter than the login timeout, so the client is told.
TX_TIMEOUT = 15.0

T = TypeVar("T")


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except IntegrityError:
        raise
    except (DBAPIError, OSError, ConnectionError, TimeoutError) as exc:
        raise errors.Unavailable.of("database", exc) from exc


#: Tries of a transaction MariaDB rolled back as a deadlock's victim.
DEADLOCK_TRIES = 5


def _deadlocked(exc: errors.Unavailable) -> bool:
    """MariaDB's 1213: the transaction was rolled back whole to break a
    deadlock (gap locks of concurrent tally upserts and deletes can cross),
    so running it again is safe, and what the server's manual asks."""
    cause = exc.__cause__
    orig = getattr(cause, "orig", None)
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return not isinstance(exc, errors.InDoubt) and bool(args) and args[0] == 1213


async def _again_if_deadlocked(work: Callable[[], Awaitable[T]]) -> T:
    """``work`` (one transaction) run again, a few times, while MariaDB picks
    it as a deadlock's victim: a fan-out or a delivery is not failed for it."""
    for attempt in range(1, DEADLOCK_TRIES + 1):
        try:
            return await work()
        except errors.Unavailable as exc:
            if attempt == DEADLOCK_TRIES or not _deadlocked(exc):
                raise
            log.info("deadlock (1213), running the transaction again (%d)", attempt)
            await asyncio.sleep(0.001 * attempt)
    raise AssertionError("unreachable")


def _is_mysql(url: URL) -> bool:
    return url.get_backend_name() in ("mysql", "mariadb")


def _asyncmy_caches_statements() -> bool:
    """asyncmy 0.2.18 has ``stmt_cache_size`` (and MariaDB bulk inserts through
    it); older releases refuse the argument."""
    try:
        from asyncmy.connection import Connection
    except ImportError:
        return False
    return hasattr(Connection, "_acquire_cached_statement")


#: The asyncio driver for a URL that names none ("sqlite:///chat.db",
#: "mysql://root@host/chat", as SQLAlchemy's own docs write them): the sync
#: default would fail at the first query with a message about drivers.
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "mysql": "asyncmy", "mariadb": "asyncmy"}


def async_url(url: str | URL) -> URL:
    u = make_url(url)
    driver = _ASYNC_DRIVERS.get(u.drivername)
    return u.set(drivername=f"{u.drivername}+{driver}") if driver else u


def sqlite_file(url: str) -> Path | None:
    """An SQLite URL's file; None for other stores, memory and URI filenames."""
    u = make_url(url)
    path = u.database
    if u.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return None
    if path.startswith("file:"):  # a URI filename: leave it to SQLite
        return None
    return Path(path).absolute()


def missing_file(url: str) -> str | None:
    """An SQLite URL's file, if it does not exist: commands that only read
    (`db status`, `admin`) say so instead of creating an empty database."""
    path = sqlite_file(url)
    return None if path is None or path.exists() else make_url(url).database


#: MySQL/MariaDB's "Unknown database" (ER_BAD_DB_ERROR).
UNKNOWN_DATABASE = 1049


def make_engine(url: URL, pool_size: int = 20) -> AsyncEngine:
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            return create_async_engine(url)  # one shared in-memory database (StaticPool)
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # One connection: SQLite has one writer at a time, and writers that
        # contend wait in its busy handler's sleeps (milliseconds each).
        # Serialising in the pool instead keeps every statement sub-millisecond.
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, pool_size=1, max_overflow=0, pool_timeout=60
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if _is_mysql(url):
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        # Pre-ping: a pooled connection that died in an outage the node did
        # not notice (it had no work for the store then) would otherwise fail
        # the first request after the database is back; a COM_PING costs tens
        # of microseconds, and no chat relay goes through the store. No
        # rollback on checkin: every use commits or rolls back explicitly.
        # A fixed pool: overflow connections would be opened and closed
        # again and again under load.
        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=30,
            pool_recycle=3600,
            pool_pre_ping=True,
            pool_reset_on_return=None,
        )
    return create_async_engine(url, pool_pre_ping=True)


async def _friends(conn: AsyncConnection, uid: int) -> list[tuple[int, str]]:
    rows = await conn.execute(q.FRIENDS, {"uid": uid})
    return [(r.id, r.name) for r in rows]


async def _groups(
    conn: AsyncConnection, uid: int, after: int = 0, known: Container[int] = frozenset()
) -> tuple[list[Group], bool]:
    """See Store.groups: the user's groups past ``after`` (one small row
    each), then the members of those not in ``known`` (the caller holds them:
    they come with none) as plain tuples, the first group alone, then as many
    at a time (16 at most) as the members still wanted would fill at the size
    of those read so far; the page ends before the first group whose members
    it did not read. Reading every group whole took a member of 500 groups of
    1,000 five seconds of the node's event loop for each login and each
    LIST_GROUPS, even one past the last group."""
    heads = (await conn.execute(q.GROUPS, {"uid": uid, "after": after})).all()
    wanted = [gid for gid, _, _ in heads if gid not in known]
    members: dict[int, list[Member]] = {}
    loaded, start, chunk = 0, 0, 1
    while start < len(wanted):
        if loaded >= GROUP_PAGE_MEMBERS:
            first_unread = wanted[start]
            page = [h for h in heads if h[0] < first_unread]
            return [Group(gid, n, d, tuple(members.get(gid, ()))) for gid, n, d in page], True
        part = wanted[start : start + chunk]
        members.update((gid, []) for gid in part)
        for gid, mid, name, role in await conn.execute(q.MEMBERS, {"gids": part}):
            members[gid].append(Member(mid, name, role))
            loaded += 1
        start += chunk
        each = max(1, loaded // len(members))
        chunk = max(1, min(16, -(-(GROUP_PAGE_MEMBERS - loaded) // each)))
    return [Group(gid, n, d, tuple(members.get(gid, ()))) for gid, n, d in heads], False


#: Seconds a recount that found a mailbox full is trusted before the next
#: refusal recounts it: a tally wrong by drift refuses for no longer.
MAILBOX_RECHECK = 60


async def _tally(conn: AsyncConnection, deltas: dict[int, tuple[int, int]]) -> None:
    """Adds (count, bytes) to users' tallies, in the same transaction as the
    rows. In user id order, and before any offlinemessage row is touched
    (stores and deletes alike): every writer takes a user's tally lock
    before that user's rows, so fan-outs and deliveries wait for each other
    but do not deadlock (tests/storage/test_mailbox_tally.py)."""
    if not deltas:
        return
    rows = [{"userid": u, "n": n, "bytes": b} for u, (n, b) in sorted(deltas.items())]
    await _add_counts(conn, mailbox, rows)


async def _share_tally(
    conn: AsyncConnection, deltas: dict[tuple[int, int], tuple[int, int]]
) -> None:
    """Adds (count, bytes) to (receiver, sender) share rows; sender 0 (not
    known) has none. After the receivers' ``_tally``: a user's tally lock is
    the gate to everything of theirs (share rows, message rows), so the
    order among those does not matter; bodies come last, by id."""
    rows = [
        {"userid": u, "sender": snd, "n": n, "bytes": b}
        for (u, snd), (n, b) in sorted(deltas.items())
        if snd
    ]
    if rows:
        await _add_counts(conn, mailboxshare, rows)


async def _add_counts(conn: AsyncConnection, table: Table, rows: list[dict[str, int]]) -> None:
    """Add each row's ``n`` and ``bytes`` to ``table``'s row of the same
    primary key (``mailbox``: the user; ``mailboxshare``: receiver and
    sender), inserting the row where there is none: one upsert for all
    ``rows``, in their order (which the callers sort: see ``_tally``)."""
    if conn.dialect.name == "sqlite":
        ins = sqlite_insert(table)
        stmt: Any = ins.on_conflict_do_update(
            index_elements=list(table.primary_key),
            set_={"n": table.c.n + ins.excluded.n, "bytes": table.c.bytes + ins.excluded.bytes},
        )
    else:
        mins = mysql_insert(table)
        stmt = mins.on_duplicate_key_update(
            n=table.c.n + mins.inserted.n, bytes=table.c.bytes + mins.inserted.bytes
        )
    await conn.execute(stmt, rows)


#: A text kept for this many receivers or more is stored once, in
#: ``offlinebody`` (revision 0009); their rows hold its id, not the text.
SHARED_FROM = 2


async def _keep(conn: AsyncConnection, items: Sequence[tuple[int, str, int, int]]) -> None:
    """Insert offline rows, in this order: (receiver, text, size, sender).
    A text kept for SHARED_FROM receivers or more is inserted once and its
    rows name it, so a group message to 1,000 members sends its text to the
    database once, not 1,000 times (building and escaping those copies took
    the node's event loop 0.7 s for a 16 KiB text on MariaDB). The tallies
    are the caller's, before this."""
    if not items:
        return
    counts: dict[str, int] = {}
    for _, text, _, _ in items:  # one text object for a fan-out: hashed once
        counts[text] = counts.get(text, 0) + 1
    shared = [(text, n) for text, n in counts.items() if n >= SHARED_FROM]
    bodies: dict[str, int] = {}
    if len(shared) > 1 and conn.dialect.insert_executemany_returning_sort_by_parameter_order:
        # Many texts at once (a re-store of a group burst): one statement,
        # ids back in order (SQLite, MariaDB 10.5+: INSERT ... RETURNING).
        stmt = insert(offlinebody).returning(offlinebody.c.id, sort_by_parameter_order=True)
        rows = [{"message": t, "size": len(t.encode()), "refs": n} for t, n in shared]
        ids = (await conn.execute(stmt, rows)).scalars().all()
        bodies = {t: int(i) for (t, _), i in zip(shared, ids, strict=True)}
    else:
        for text, n in shared:
            size = len(text.encode())
            res = await conn.execute(insert(offlinebody).values(message=text, size=size, refs=n))
            pk = res.inserted_primary_key
            assert pk is not None
            bodies[text] = int(pk[0])
    out = [
        {"userid": -u, "message": "", "size": size, "bodyid": bodies[text], "sender": snd}
        if text in bodies
        else {"userid": u, "message": text, "size": size, "bodyid": None, "sender": snd}
        for u, text, size, snd in items
    ]
    await conn.execute(insert(offlinemessage), out)


def _deltas(
    items: Sequence[tuple[int, str, int, int]],
) -> tuple[dict[int, tuple[int, int]], dict[tuple[int, int], tuple[int, int]]]:
    """What ``items`` add to the receivers' tallies and to the senders' shares."""
    tally: dict[int, tuple[int, int]] = {}
    shares: dict[tuple[int, int], tuple[int, int]] = {}
    for u, _, size, snd in items:
        n, b = tally.get(u, (0, 0))
        tally[u] = (n + 1, b + size)
        if snd:
            n, b = shares.get((u, snd), (0, 0))
            shares[(u, snd)] = (n + 1, b + size)
    return tally, shares


def _both(uids: Sequence[int]) -> list[int]:
    """Receivers' ids and their shared rows' (minus theirs)."""
    return [*uids, *(-u for u in uids)]


async def _over_mailbox(
    conn: AsyncConnection,
    uids: Sequence[int],
    size: int,
    quota: Quota,
    bounds: tuple[int, int] | None = None,
) -> set[int]:
    """Those of ``uids`` that one more message of ``size`` bytes would take
    past the offline quota. Concurrent stores may overshoot it by as many
    messages as are stored at once: a bound, not an exact count.

    Reads each receiver's tally, not its mailbox. One the tally says is
    full is recounted exactly (and its tally set right) unless a recount
    confirmed it within MAILBOX_RECHECK seconds, so a tally left too high
    (a node on older code deleting, say) cannot refuse a user for good.
    ``bounds``: (messages, bytes) other than the quota's own."""
    bounds = bounds or (quota.offline_messages, quota.offline_bytes)
    return await _over_tallies(conn, uids, size, bounds, q.TALLIES, q.MAILBOXES, mailbox)


async def _over_share(
    conn: AsyncConnection, uids: Sequence[int], sender: int, size: int, quota: Quota
) -> set[int]:
    """Those of ``uids`` for whom ``sender`` holds as much as one sender may
    (``quota.offline_share`` of the bounds), one more message of ``size``
    considered: read from the share rows, recounted as ``_over_mailbox``."""
    if not sender:
        return set()
    bounds = (quota.share_messages, quota.share_bytes)
    return await _over_tallies(
        conn, uids, size, bounds, q.SHARES, q.SENDER_MAILBOXES, mailboxshare, sender
    )


async def _over_tallies(
    conn: AsyncConnection,
    uids: Sequence[int],
    size: int,
    bounds: tuple[int, int],
    tallies: Any,
    counts: Any,
    table: Table,
    sender: int | None = None,
) -> set[int]:
    """The quota check both bounds share: ``tallies`` read per receiver
    (of ``sender`` if given), those over ``bounds`` (messages, bytes; 0: no
    bound) recounted by ``counts`` and their row in ``table`` set right,
    unless a recount confirmed it within MAILBOX_RECHECK s."""
    most_n, most_b = bounds
    if not (most_n or most_b) or not uids:
        return set()

    def over(n: int, nbytes: int) -> bool:
        return bool((most_n and n >= most_n) or (most_b and nbytes + size > most_b))

    extra = {} if sender is None else {"sender": sender}
    now = int(time.time())
    full = set()
    recount = []
    for i in range(0, len(uids), 1000):
        for r in await conn.execute(tallies, {"uids": list(uids[i : i + 1000]), **extra}):
            if over(r.n, r.bytes):
                if now - r.checked < MAILBOX_RECHECK:
                    full.add(r.userid)
                else:
                    recount.append(r.userid)
    recount.sort()
    for i in range(0, len(recount), 500):
        chunk = recount[i : i + 500]
        exact = await _recount(conn, counts, {"uids": _both(chunk), **extra})
        for u in chunk:
            n, nbytes = exact.get(u, (0, 0))
            is_full = over(n, nbytes)
            if is_full:
                full.add(u)
            row = table.c.userid == u
            if sender is not None:
                row &= table.c.sender == sender
            await conn.execute(
                update(table).where(row).values(n=n, bytes=nbytes, checked=now if is_full else 0)
            )
    return full


async def _recount(
    conn: AsyncConnection, stmt: Any, args: dict[str, Any]
) -> dict[int, tuple[int, int]]:
    """(count, bytes) per receiver, their own rows and shared ones added up."""
    exact: dict[int, tuple[int, int]] = {}
    for r in await conn.execute(stmt, args):
        n, b = exact.get(abs(r.userid), (0, 0))
        exact[abs(r.userid)] = (n + r.n, b + int(r.bytes))
    return exact


async def _check_memberships(conn: AsyncConnection, uid: int, quota: Quota) -> None:
    if quota.memberships:
        n = (await conn.execute(q.MEMBERSHIPS, {"uid": uid})).scalar_one()
        if n >= quota.memberships:
            raise errors.OverQuota(f"you are in {n} groups, the most allowed")


async def _forget(conn: AsyncConnection, uid: int, gone: Sequence[Any]) -> None:
    """After deleting ``uid``'s rows ``gone`` (sender, size, bodyid each):
    take them off the receiver's tally and the senders' shares (a share row
    at 0 goes), then off their bodies' counts, by body id, deleting the
    bodies no row names any more. The caller holds the user's tally lock."""
    shares: dict[tuple[int, int], tuple[int, int]] = {}
    refs: dict[int, int] = {}
    for r in gone:
        if r.sender:
            n, b = shares.get((uid, r.sender), (0, 0))
            shares[(uid, r.sender)] = (n - 1, b - r.size)
        if r.bodyid is not None:
            refs[r.bodyid] = refs.get(r.bodyid, 0) + 1
    await _tally(conn, {uid: (-len(gone), -sum(int(r.size) for r in gone))})
    if shares:
        await _share_tally(conn, shares)
        await conn.execute(q.DROP_EMPTY_SHARES, {"uid": uid})
    if refs:
        await conn.execute(q.UNREF_BODY, [{"b": b, "k": k} for b, k in sorted(refs.items())])
        await conn.execute(q.DROP_BODIES, {"bids": sorted(refs)})


class _StateWriter:
    """Coalesces the ``user.state`` column's writes: a storm of logins or
    drops becomes a few ``UPDATE ... WHERE id IN (...)``, not one each.
    The column is informational (presence decides who is online), so a
    write a few milliseconds late is fine; shutdown flushes."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._pending: dict[int, bool] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, uid: int, online: bool) -> None:
        self._pending[uid] = online
        if self._task is None:
            self._task = asyncio.ensure_future(self._soon())

    async def _soon(self) -> None:
        try:
            await asyncio.sleep(0.02)
            while self._pending:  # notes made while writing go in the next round
                await self._write()
        finally:
            self._task = None

    async def flush(self) -> None:
        """Everything noted is written when this returns; nothing is still
        writing (a write left running past close would hold a connection)."""
        task = self._task
        if task is not None:
            await task
        await self._write()

    async def _write(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        for online in (True, False):
            uids = [u for u, state in pending.items() if state is online]
            try:
                await self._store.set_state(uids, online)
            except errors.Unavailable as exc:
                log.warning("could not record %d users as %s: %s", len(uids), online, exc)


class SqlStore(SocialQueries, HistoryQueries):
    def __init__(
        self, url: str | URL, pool_size: int = 20, ticket_lifetime: float = 28 * 86_400.0
    ) -> None:
        self.ticket_lifetime = ticket_lifetime
        self._url = async_url(url)
        self.url = self._url.render_as_string(hide_password=True)
        self.engine = make_engine(self._url, pool_size)
        self.latency = Histogram(
            "clusterchat_store_seconds",
            "Store transaction time",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=None,
        )
        #: History's batched INSERTs. On MariaDB/MySQL a connection of its own
        #: used through the driver alone (storage/history.py), with asyncmy's
        #: statement cache: MariaDB then takes a batch as one binary bulk
        #: statement (COM_STMT_BULK_EXECUTE), not escaped text, at about a
        #: third of the CPU on both ends; other statements keep the text
        #: protocol on the main pool.
        self.history_bulk = (
            BulkConnection(self._driver_connect, self.latency.observe)
            if _is_mysql(self._url)
            else None
        )
        self._states = _StateWriter(self)
        self._resumes: Batcher[Resume] = Batcher(self._resume_many)
        self._rotations: WriteBatcher[tuple[str, str], bool] = WriteBatcher(self._rotate_many)
        self.offline_page = q.OFFLINE_PAGE
        #: For metrics: offline rows written, and deleted after delivery.
        self.stored_rows = 0
        self.delivered_rows = 0

    # -- lifecycle ---------------------------------------------------------

    async def create_schema(self) -> None:
        """Make the schema in an empty database (a newcomer's first start needs
        no extra step); refuse a database at another revision with what to run."""
        st = await self._on_database(self._schema_state)
        if st.empty or (st.current and not st.versioned):  # empty, or made from chat.sql
            await self._create_tables()  # stamps it too
            st = await self.schema_state()
        # Tables another node is making right now (create_all, then the stamp)
        # read as an older unversioned schema: look again before refusing.
        for _ in range(_UNSTAMPED_LOOKS):
            if not st.problem() or st.stamped:
                break
            await asyncio.sleep(0.2)
            st = await self.schema_state()
        if problem := st.problem():
            raise errors.SchemaMismatch(problem)

    async def schema_state(self) -> schema.State:
        """Raises Unavailable if the database cannot be reached or does not
        answer in TX_TIMEOUT: a silent flow must fail a node's start or an
        admin command, not hang it."""
        with _translated():
            return await self._schema_state()

    async def _schema_state(self) -> schema.State:
        for attempt in range(1, _SCHEMA_READ_TRIES + 1):
            try:
                async with asyncio.timeout(TX_TIMEOUT), self.engine.connect() as conn:
                    return await conn.run_sync(schema.state)
            except TimeoutError:
                raise errors.Unavailable(f"database did not answer in {TX_TIMEOUT:g} s") from None
            except InternalError as exc:
                code = getattr(exc.orig, "args", (None,))[0]
                if code != _MYSQL_TEMP_FILE_GONE or attempt == _SCHEMA_READ_TRIES:
                    raise
                log.info("reading the schema: %s; reading it again", exc.orig)
        raise AssertionError("unreachable")

    async def upgrade_schema(self) -> tuple[str | None, str]:
        """Bring any earlier schema (or none) to this code's; returns (from, to)."""

        async def run() -> tuple[str | None, str]:
            async with self.engine.connect() as conn:
                if _is_mysql(self._url):  # one upgrader at a time
                    await conn.exec_driver_sql("SELECT GET_LOCK('clusterchat_schema', 60)")
                moved = await conn.run_sync(schema.upgrade)
                await conn.commit()
                return moved

        return await self._on_database(run)

    async def _on_database(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn``; on MySQL create the database first if it is missing."""
        try:
            return await fn()
        except OperationalError as exc:
            code = getattr(exc.orig, "args", (None,))[0]
            if not (_is_mysql(self._url) and code == _MYSQL_NO_SUCH_DB):
                raise errors.Unavailable(str(exc.orig)) from exc
        await self._create_mysql_database()
        return await fn()

    async def _create_tables(self) -> None:
        # Nodes of a cluster starting together race to create the tables: each
        # lost race is one table the other node made, so one try per table.
        attempts = len(metadata.sorted_tables) + 1
        for attempt in range(attempts):
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(metadata.create_all)
                    await conn.run_sync(schema.stamp_new)
                return
            except IntegrityError:  # another node stamped the new tables first
                return
            except OperationalError as exc:
                code = getattr(exc.orig, "args", (None,))[0]
                if code != _MYSQL_TABLE_EXISTS or attempt == attempts - 1:
                    raise

    async def _create_mysql_database(self) -> None:
        name = self._url.database
        assert name is not None
        server = create_async_engine(self._url.set(database=""))
        try:
            async with server.begin() as conn:
                quoted = server.dialect.identifier_preparer.quote_identifier(name)
                await conn.exec_driver_sql(
                    f"CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4"
                )
            log.info("created database %s", name)
        finally:
            await server.dispose()

    async def ping(self) -> None:
        """Raises unless the database answers (readiness)."""
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def close(self) -> None:
        await self._states.flush()
        await self.engine.dispose()
        if self.history_bulk is not None:
            self.history_bulk.close()

    async def _driver_connect(self) -> Any:
        """A new asyncmy connection to this store, autocommitting (history's)."""
        import asyncmy

        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        kwargs["autocommit"] = True
        if _asyncmy_caches_statements():
            kwargs["stmt_cache_size"] = 4
        return await asyncmy.connect(*args, **kwargs)

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        start = time.perf_counter()
        committing = False
        try:
            with _translated():
                async with asyncio.timeout(TX_TIMEOUT), self.engine.begin() as conn:
                    yield conn
                    committing = True
        except errors.Unavailable as exc:
            if committing:  # the COMMIT went out; its answer did not come back
                raise errors.InDoubt(f"{exc} while committing") from exc.__cause__
            raise
        finally:
            self.latency.observe(time.perf_counter() - start)

    # -- users ---------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str) -> int:
        try:
            async with self._tx() as conn:
                res = await conn.execute(
                    insert(user).values(name=name, namekey=names.key(name), password=password_hash)
                )
        except IntegrityError:
            raise errors.NameTaken(name) from None
        pk = res.inserted_primary_key
        assert pk is not None
        return int(pk[0])

    async def credentials(self, uid: int) -> Credentials | None:
        async with self._tx() as conn:
            row = (await conn.execute(q.CREDENTIALS, {"uid": uid})).first()
        return Credentials(row.name, row.password, row.ticket, bool(row.banned)) if row else None

    async def set_password(self, uid: int, password_hash: str) -> None:
        async with self._tx() as conn:
            await conn.execute(update(user).where(user.c.id == uid).values(password=password_hash))

    async def resume(self, uid: int) -> Resume | None:
        """A ticket login's one read: name, ticket digest and offline messages.
        Ticket logins arriving together share one statement."""
        return await self._resumes.get(uid)

    async def _resume_many(self, uids: list[int]) -> dict[int, Resume]:
        async with self._tx() as conn:
            rows = (await conn.execute(q.RESUME_MANY, {"uids": uids})).all()
        return {r.id: Resume(r.name, r.ticket, bool(r.waiting), r.ticketexpiry) for r in rows}

    def note_state(self, uid: int, online: bool) -> None:
        self._states.note(uid, online)

    async def flush_states(self) -> None:
        await self._states.flush()

    async def end_session(self, uid: int) -> None:
        async with self._tx() as conn:
            await conn.execute(q.LOGGED_OUT, {"uid": uid})

    async def set_state(self, uids: Sequence[int], online: bool) -> None:
        if not uids:
            return
        state = "online" if online else "offline"
        async with self._tx() as conn:
            await conn.execute(update(user).where(user.c.id.in_(uids)).values(state=state))

    async def reset_states(self) -> None:
        async with self._tx() as conn:
            await conn.execute(update(user).where(user.c.state == "online").values(state="offline"))

    # -- login ---------------------------------------------------------------

    def _expiry(self) -> int:
        return int(time.time() + self.ticket_lifetime)

    async def rotate_ticket(self, uid: int, old: str, new: str) -> bool:
        """Ticket logins arriving together share one transaction (a storm
        of reconnects was one commit per login, serialised on SQLite)."""
        return bool(await self._rotations.put(uid, (old, new)))

    async def _rotate_many(self, asked: dict[int, tuple[str, str]]) -> dict[int, bool]:
        expiry = self._expiry()
        uids = sorted(asked)  # rows locked in one order by every node
        args = [
            {"uid": u, "old": old, "ticket": new, "expiry": expiry}
            for u in uids
            for old, new in [asked[u]]
        ]
        async with self._tx() as conn:
            await conn.execute(q.ROTATE_TICKET, args)
            rows = (await conn.execute(q.TICKETS_MANY, {"uids": uids})).all()
        # A digest is 256 random bits: only this UPDATE stored the new one.
        return {r.id: r.ticket == asked[r.id][1] for r in rows}

    async def open_session(
        self, uid: int, ticket_digest: str | None, known: Container[int] = frozenset()
    ) -> LoginView:
        """Everything a login reply needs, and the user marked online, in one
        transaction. A new ticket digest replaces the old one; None keeps it."""
        async with self._tx() as conn:
            friends = await _friends(conn, uid)
            groups, more_groups = await _groups(conn, uid, known=known)
            page = {"uid": uid, "page": self.offline_page, "after": 0}
            offline = (await conn.execute(q.OFFLINE, page)).all()
            if ticket_digest is None:
                await conn.execute(q.ONLINE, {"uid": uid})
            else:
                args = {"uid": uid, "ticket": ticket_digest, "expiry": self._expiry()}
                await conn.execute(q.ONLINE_WITH_TICKET, args)
        return LoginView(friends, groups, [(r.id, r.message) for r in offline], more_groups)

    async def friends(self, uid: int) -> list[tuple[int, str]]:
        async with self._tx() as conn:
            return await _friends(conn, uid)

    async def groups(self, uid: int, after: int = 0) -> tuple[list[Group], bool]:
        async with self._tx() as conn:
            return await _groups(conn, uid, after)

    # -- friends and groups ----------------------------------------------------

    async def add_friend(self, uid: int, friendid: int, quota: Quota = NO_QUOTA) -> str:
        async with self._tx() as conn:
            name = (await conn.execute(select(user.c.name).where(user.c.id == friendid))).scalar()
            if name is None:
                raise errors.NoSuchUser(friendid)
            if quota.friends:
                for who, whose in ((uid, "you have"), (friendid, f"user {friendid} has")):
                    n = (await conn.execute(q.FRIEND_COUNT, {"who": who})).scalar_one()
                    if n >= quota.friends:
                        raise errors.OverQuota(f"{whose} {n} friends, the most allowed")
            have = set(
                (
                    await conn.execute(
                        select(friend.c.userid).where(
                            ((friend.c.userid == uid) & (friend.c.friendid == friendid))
                            | ((friend.c.userid == friendid) & (friend.c.friendid == uid))
                        )
                    )
                ).scalars()
            )
            if {uid, friendid} <= have:
                raise errors.AlreadyFriends(friendid)
            rows = [
                {"userid": a, "friendid": b}
                for a, b in ((uid, friendid), (friendid, uid))
                if a not in have
            ]
            try:
                await conn.execute(insert(friend), rows)
            except IntegrityError:  # a concurrent add of the same pair
                raise errors.AlreadyFriends(friendid) from None
        return str(name)

    async def create_group(self, uid: int, name: str, desc: str, quota: Quota = NO_QUOTA) -> int:
        try:
            async with self._tx() as conn:
                if quota.groups_created:
                    n = (await conn.execute(q.GROUPS_CREATED, {"uid": uid})).scalar_one()
                    if n >= quota.groups_created:
                        raise errors.OverQuota(f"you have created {n} groups, the most allowed")
                await _check_memberships(conn, uid, quota)
                res = await conn.execute(
                    insert(allgroup).values(
                        groupname=name, groupkey=names.key(name), groupdesc=desc
                    )
                )
                pk = res.inserted_primary_key
                assert pk is not None
                gid = int(pk[0])
                await conn.execute(
                    insert(groupuser).values(groupid=gid, userid=uid, grouprole="creator")
                )
        except IntegrityError:
            raise errors.GroupNameTaken(name) from None
        return gid

    async def join_group(
        self, uid: int, gid: int, max_members: int = 0, quota: Quota = NO_QUOTA
    ) -> str:
        try:
            async with self._tx() as conn:
                await _check_memberships(conn, uid, quota)
                # Locking the group row serialises joins, so the size check holds.
                found = (
                    await conn.execute(
                        select(allgroup.c.groupname).where(allgroup.c.id == gid).with_for_update()
                    )
                ).first()
                if found is None:
                    raise errors.NoSuchGroup(gid)
                if max_members > 0:
                    size = (await conn.execute(q.GROUP_SIZE, {"gid": gid})).scalar_one()
                    if size >= max_members:
                        raise errors.GroupFull(gid, max_members)
                await conn.execute(
                    insert(groupuser).values(groupid=gid, userid=uid, grouprole="normal")
                )
                return str(found.groupname)
        except IntegrityError:
            raise errors.AlreadyMember(gid) from None

    async def group_members(self, gid: int) -> frozenset[int]:
        async with self._tx() as conn:
            rows = await conn.execute(q.GROUP_MEMBERS, {"gid": gid})
            return frozenset(rows.scalars())

    # -- offline messages ---------------------------------------------------------

    async def store_offline(
        self, uid: int, message: str, quota: Quota = NO_QUOTA, sender: int = 0
    ) -> None:
        size = len(message.encode())

        async def once() -> int | type[errors.MailboxFull]:
            async with self._tx() as conn:
                # Refused after the commit, not by rolling back: a recount's
                # correction of the tally is kept.
                if await _over_mailbox(conn, [uid], size, quota):
                    return errors.MailboxFull
                if await _over_share(conn, [uid], sender, size, quota):
                    return errors.MailboxShareFull
                args = {"uid": uid, "message": message, "size": size, "sender": sender}
                await _tally(conn, {uid: (1, size)})  # tally first: see _tally
                await _share_tally(conn, {(uid, sender): (1, size)})
                res = await conn.execute(q.STORE_OFFLINE, args)
                if not res.rowcount:  # no such user: nothing stored, nothing tallied
                    await _tally(conn, {uid: (-1, -size)})
                    await _share_tally(conn, {(uid, sender): (-1, -size)})
                    await conn.execute(q.DROP_EMPTY_SHARES, {"uid": uid})
            return int(res.rowcount)

        stored = await _again_if_deadlocked(once)
        if not isinstance(stored, int):
            raise stored(uid)
        self.stored_rows += stored
        if stored == 0:  # after the commit, as before: a lost answer is in doubt
            raise errors.NoSuchUser(uid)

    async def store_offline_within(
        self, uids: Sequence[int], message: str, quota: Quota, sender: int = 0
    ) -> list[int]:
        size = len(message.encode())

        # Group messages fill only their part of a mailbox: the rest stays for
        # 1:1 messages, however many members post.
        bounds = (quota.group_messages, quota.group_bytes)

        async def once() -> tuple[set[int], int]:
            async with self._tx() as conn:
                full = await _over_mailbox(conn, uids, size, quota, bounds)
                room = [u for u in uids if u not in full]
                full |= await _over_share(conn, room, sender, size, quota)
                items = [(u, message, size, sender) for u in sorted(uids) if u not in full]
                if items:
                    tally, shares = _deltas(items)
                    await _tally(conn, tally)
                    await _share_tally(conn, shares)
                    await _keep(conn, items)
            return full, len(items)

        full, stored = await _again_if_deadlocked(once)
        self.stored_rows += stored
        return [u for u in uids if u in full]

    async def store_offline_many(self, items: Sequence[tuple[int, str]]) -> None:
        if not items:
            return
        # Stable: keeps each user's order. Same text objects share one size.
        sizes: dict[str, int] = {}
        rows = [
            (u, m, sizes.get(m) or sizes.setdefault(m, len(m.encode())), 0)
            for u, m in sorted(items, key=lambda it: it[0])
        ]
        tally, _ = _deltas(rows)

        async def once() -> None:
            async with self._tx() as conn:
                await _tally(conn, tally)
                await _keep(conn, rows)

        await _again_if_deadlocked(once)
        self.stored_rows += len(items)

    async def full_mailboxes(self, uids: Sequence[int], quota: Quota) -> set[int]:
        most_n, most_b = quota.offline_messages, quota.offline_bytes
        if not (most_n or most_b) or not uids:
            return set()
        async with self._tx() as conn:
            rows = (await conn.execute(q.TALLIES, {"uids": list(uids)})).all()
        return {
            int(r.userid)
            for r in rows
            if (most_n and r.n >= most_n) or (most_b and r.bytes >= most_b)
        }

    async def store_offline_missing(
        self, items: Sequence[tuple[int, str]], sender: int = 0
    ) -> None:
        by_text: dict[str, list[int]] = {}
        for uid, message in items:
            by_text.setdefault(message, []).append(uid)
        sizes = {message: len(message.encode()) for message in by_text}

        async def once() -> list[int]:
            unknown: list[int] = []
            missing: set[tuple[int, str]] = set()
            async with self._tx() as conn:
                # The tallies' locks before any row's (the reads below see
                # the users' rows): see _tally.
                await _tally(conn, {uid: (0, 0) for uid, _ in items})
                for message, uids in by_text.items():  # the text sent once per 1,000 users
                    want = sorted(set(uids))
                    for i in range(0, len(want), 1000):
                        chunk = want[i : i + 1000]
                        args: dict[str, Any] = {"uids": chunk, "message": message}
                        have = set((await conn.execute(q.HAVE_INLINE, args)).scalars())
                        args["uids"] = [-u for u in chunk]
                        have.update(-u for u in (await conn.execute(q.HAVE_SHARED, args)).scalars())
                        lacking = [u for u in chunk if u not in have]
                        if not lacking:
                            continue
                        found = await conn.execute(q.USERS_EXISTING, {"uids": lacking})
                        known = set(found.scalars())
                        unknown += [u for u in lacking if u not in known]
                        missing.update((u, message) for u in lacking if u in known)
                keep: list[
                    tuple[int, str, int, int]
                ] = []  # in the items' order for each user (a stable sort by user)
                for uid, message in sorted(items, key=lambda it: it[0]):
                    if (uid, message) in missing:
                        missing.discard((uid, message))  # once each
                        keep.append((uid, message, sizes[message], sender))
                tally, shares = _deltas(keep)
                await _tally(conn, tally)
                await _share_tally(conn, shares)
                await _keep(conn, keep)
            return unknown

        if unknown := await _again_if_deadlocked(once):
            raise errors.NoSuchUser(unknown[0])

    async def offline(self, uid: int, after: int = 0) -> list[tuple[int, str]]:
        async with self._tx() as conn:
            page = {"uid": uid, "page": self.offline_page, "after": after}
            rows = (await conn.execute(q.OFFLINE, page)).all()
        return [(r.id, r.message) for r in rows]

    async def offline_users(self, uids: Sequence[int]) -> set[int]:
        found: set[int] = set()
        async with self._tx() as conn:
            for i in range(0, len(uids), 500):
                chunk = _both(uids[i : i + 500])
                q = select(offlinemessage.c.userid).where(offlinemessage.c.userid.in_(chunk))
                found.update(abs(u) for u in (await conn.execute(q.distinct())).scalars())
        return found

    async def delete_offline(self, uid: int, ids: Sequence[int]) -> None:
        args = {"uid": uid, "ids": list(ids)}

        async def once() -> int:
            async with self._tx() as conn:
                await _tally(conn, {uid: (0, 0)})  # the tally's lock first: see _tally
                gone = (await conn.execute(q.DELETING, args)).all()
                res = await conn.execute(q.DELETE_OFFLINE, args)
                if gone:
                    await _forget(conn, uid, gone)
            return int(res.rowcount)

        self.delivered_rows += await _again_if_deadlocked(once)
