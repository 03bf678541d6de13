"""The SQL side of message history: batched writes, pages by id, purges in chunks.

A mixin of :class:`~clusterchat.storage.sql.SqlStore` like ``social.py``.
Pages are "the newest rows of this conversation below id X": one descending
range scan of ``ix_history_conv_id``, stable however many rows are added
meanwhile (they get higher ids). Purging never scans more than a chunk: it
reads the next ``chunk`` ids in primary-key order and deletes the expired
ones among them, and goes on to the next chunk until one has none expired, so
a node never holds a long lock or a long statement (and a row stamped in the
future by a node whose clock is ahead holds up nothing but itself).

Writes are the node's share of history's cost, a few hundred rows a round.
On MariaDB/MySQL they go through :class:`BulkConnection`, the driver used
directly on a connection of its own; elsewhere through SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import BigInteger, Integer, bindparam, delete, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from clusterchat import errors
from clusterchat.storage.base import HistoryRow, Said
from clusterchat.storage.tables import allgroup, groupuser, history, user

_a = bindparam("a", type_=Integer)
_b = bindparam("b", type_=Integer)

#: Newest first, below a cursor; the sender's name as it is now.
PAGE = (
    select(
        history.c.id,
        history.c.sender,
        user.c.name,
        history.c.mid,
        history.c.ts,
        history.c.body,
    )
    .outerjoin(user, user.c.id == history.c.sender)
    .where(
        (history.c.conva == _a)
        & (history.c.convb == _b)
        & (history.c.id < bindparam("before", type_=BigInteger))
        & (history.c.ts >= bindparam("since", type_=BigInteger))
    )
    .order_by(history.c.id.desc())
    .limit(bindparam("limit"))
)
JOINED = select(groupuser.c.joined).where(
    (groupuser.c.groupid == bindparam("gid", type_=Integer))
    & (groupuser.c.userid == bindparam("uid", type_=Integer))
)
GROUP_EXISTS = select(exists().where(allgroup.c.id == bindparam("gid", type_=Integer)))
USER_EXISTS = select(exists().where(user.c.id == bindparam("uid", type_=Integer)))
#: A write in doubt is looked for among this many newest rows of each of its
#: conversations: kept, its rows are there unless that many came after them.
KEPT_SCAN = 1000
KEPT = (
    select(history.c.mid)
    .where((history.c.conva == _a) & (history.c.convb == _b))
    .order_by(history.c.id.desc())
    .limit(KEPT_SCAN)
)
OLDEST = (
    select(history.c.id, history.c.ts)
    .where(history.c.id > bindparam("after", type_=BigInteger))
    .order_by(history.c.id)
    .limit(bindparam("chunk"))
)
PURGE = delete(history).where(
    (history.c.id >= bindparam("lo", type_=BigInteger))
    & (history.c.id <= bindparam("hi", type_=BigInteger))
    & (history.c.ts < bindparam("cutoff", type_=BigInteger))
)
_INSERT_SQL = "INSERT INTO history (conva, convb, sender, mid, ts, body) VALUES ({})"
_BULK_SQL = _INSERT_SQL.format(",".join(["%s"] * 6))  # asyncmy's placeholders
#: Beyond any row id (rows are BIGINT): "before" this is "the newest".
NEWEST = 2**63 - 1
#: Seconds a BulkConnection may sit unused before it is pinged before a write.
IDLE_PING = 5.0
#: Seconds a write (with its ping or connect) may take before it counts as
#: failed in doubt: a flow that went silent (a proxy or NAT holding it, a
#: database host gone without a reset) must not hold history, and so every
#: chat of the node once the queue fills, until TCP gives up, if ever.
WRITE_TIMEOUT = 30.0


class BulkConnection:
    """History's own connection to MariaDB/MySQL, used through the driver alone.

    A round is one statement: the rows bound in binary with asyncmy's
    ``executemany`` (one COM_STMT_BULK_EXECUTE on MariaDB, a multi-row INSERT
    on MySQL), committed by autocommit. Through SQLAlchemy the same round
    also cost a pool checkout with its COM_PING, a greenlet, a separate
    COMMIT and Python work per row; on a node at its ceiling that was most of
    what history cost it (BENCHMARKS.md). A connection unused for
    ``IDLE_PING`` seconds is pinged first (the server may have dropped it);
    one that fails, or whose write is cancelled, is closed, and the next
    round opens a new one. Writes take turns (one connection, one statement
    at a time).
    """

    def __init__(self, connect: Callable[[], Awaitable[Any]], observe: Callable[[float], None]):
        self._connect = connect
        self._observe = observe
        self._conn: Any = None
        self._used = 0.0
        self._turn = asyncio.Lock()

    async def open(self) -> None:
        """Connect now, before the first round: a node already at its
        ceiling took tens of milliseconds to open it with the first round
        (each step of the handshake waits its turn in the busy loop) while
        the queue filled with the messages of those milliseconds, enough to
        be refused as full at the start of a load (BENCHMARKS.md)."""
        from asyncmy.errors import MySQLError

        failures = (MySQLError, OSError, ConnectionError, TimeoutError)
        async with self._turn:
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):  # a silent flow must not hold the start
                    await self._ready(time.perf_counter(), failures)
            except failures as exc:
                self.close()
                raise errors.Unavailable.of("database", exc) from exc
            self._used = time.perf_counter()

    async def write(self, sql: str, rows: Sequence[HistoryRow]) -> None:
        from asyncmy.errors import MySQLError

        failures = (MySQLError, OSError, ConnectionError, TimeoutError)
        async with self._turn:
            start = time.perf_counter()
            try:
                try:
                    async with asyncio.timeout(WRITE_TIMEOUT):
                        await self._ready(start, failures)
                except failures as exc:
                    self.close()
                    raise errors.Unavailable.of("database", exc) from exc
                try:
                    async with asyncio.timeout(WRITE_TIMEOUT), self._conn.cursor() as cur:
                        await cur.executemany(sql, rows)
                except failures as exc:  # autocommit: the statement may have been kept
                    self.close()
                    raise errors.InDoubt(f"history write failed: {exc.__class__.__name__}") from exc
            except BaseException:  # cancelled mid-statement: the connection is unusable
                self.close()
                raise
            finally:
                self._used = time.perf_counter()
                self._observe(self._used - start)

    async def _ready(self, now: float, failures: tuple[type[BaseException], ...]) -> None:
        if self._conn is not None and now - self._used > IDLE_PING:
            try:
                await self._conn.ping(reconnect=False)
            except failures:  # dropped while unused (wait_timeout, a restart): a new one
                self.close()
        if self._conn is None:
            self._conn = await self._connect()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class HistoryQueries:
    """Mixed into SqlStore, which provides ``_tx``."""

    #: Rows written to history (metrics, tests).
    history_rows = 0

    history_bulk: BulkConnection | None  # SqlStore's: MariaDB/MySQL only

    def _tx(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError  # SqlStore's

    async def open_history(self) -> None:
        if self.history_bulk is not None:
            await self.history_bulk.open()

    async def add_history(self, rows: Sequence[HistoryRow]) -> None:
        if not rows:
            return
        if self.history_bulk is not None:
            await self.history_bulk.write(_BULK_SQL, rows)
            self.history_rows += len(rows)
            return
        async with self._tx() as conn:
            # The driver's executemany with the tuples as they are (SQLite: one
            # prepared statement stepped per row); SQLAlchemy's own per-row
            # parameter handling would cost the chat node more than the write.
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            sql = _INSERT_SQL.format(",".join([mark] * 6))
            await conn.exec_driver_sql(sql, list(rows))
        self.history_rows += len(rows)

    async def history_kept(self, rows: Sequence[HistoryRow]) -> set[str]:
        # One range scan of ix_history_conv_id per conversation (history has
        # no index on mid: this runs only after a write in doubt).
        convs: dict[tuple[int, int], set[str]] = {}
        for conva, convb, _, mid, _, _ in rows:
            convs.setdefault((conva, convb), set()).add(mid)
        kept: set[str] = set()
        async with self._tx() as conn:
            for (conva, convb), mids in convs.items():
                found = (await conn.execute(KEPT, {"a": conva, "b": convb})).scalars()
                kept.update(mids.intersection(found))
        return kept

    async def history(
        self, conva: int, convb: int, before: int, limit: int, since: int
    ) -> list[Said]:
        page = {"a": conva, "b": convb, "before": before or NEWEST, "since": since, "limit": limit}
        async with self._tx() as conn:
            rows = (await conn.execute(PAGE, page)).all()
        return [Said(r.id, r.sender, r.name or "", r.mid, r.ts, r.body) for r in rows]

    async def user_exists(self, uid: int) -> bool:
        async with self._tx() as conn:
            return bool(await conn.scalar(USER_EXISTS, {"uid": uid}))

    async def group_joined(self, uid: int, gid: int) -> int | None:
        async with self._tx() as conn:
            joined = await conn.scalar(JOINED, {"gid": gid, "uid": uid})
            if joined is None and not await conn.scalar(GROUP_EXISTS, {"gid": gid}):
                raise errors.NoSuchGroup(gid)
        return None if joined is None else int(joined)

    async def purge_history(self, cutoff: int, chunk: int, after: int = 0) -> tuple[int, int]:
        async with self._tx() as conn:
            rows = (await conn.execute(OLDEST, {"chunk": chunk, "after": after})).all()
            if not any(r.ts < cutoff for r in rows):
                return 0, 0  # ids follow time (within the writers' delay): all newer from here
            lo, hi = rows[0].id, rows[-1].id
            res = await conn.execute(PURGE, {"lo": lo, "hi": hi, "cutoff": cutoff})
        return int(res.rowcount), hi if len(rows) == chunk else 0
