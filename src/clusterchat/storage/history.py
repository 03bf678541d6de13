"""The SQL side of message history: batched, packed writes, pages by id, purges in chunks.

A mixin of :class:`~clusterchat.storage.sql.SqlStore` like ``social.py``.
A round's messages are packed: each conversation's messages of the round
become one row (``n`` of them, at most ``PACK_MAX``), since what a row costs
MariaDB hardly depends on its width (BENCHMARKS.md); a conversation with one
message in the round keeps the plain one-message row. The writer queues them
grouped by conversation already (``Conversations``), so packing a row is one
encoder call. A message's id is
``row id << 10 | its index in the row``, so ids grow within a conversation
and rows written before packing (revision 0007) are index 0 of theirs.
Pages are "the newest messages of this conversation below id X": descending
range scans of ``ix_history_conv_id`` from row ``(X - 1) >> 10``, stable
however many rows are added meanwhile (they get higher ids); the senders'
names now are read in one more query. Purging never scans more than a chunk: it
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
import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from sqlalchemy import BigInteger, Integer, bindparam, case, delete, exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from clusterchat import errors
from clusterchat.storage.base import Conversations, Entry, HistoryRow, Said
from clusterchat.storage.tables import allgroup, groupuser, history, user

_a = bindparam("a", type_=Integer)
_b = bindparam("b", type_=Integer)

#: Newest rows first, from a row id down. No condition on ``ts``: the index
#: does not hold it, so the database would read every older row of the
#: conversation looking for one (a new member of a group with a long past:
#: 1.3 s a request at 300,000 rows on MariaDB); the caller stops at the first
#: row older than it wants instead.
PAGE = (
    select(
        history.c.id,
        history.c.sender,
        history.c.mid,
        history.c.ts,
        history.c.body,
        history.c.n,
    )
    .where(
        (history.c.conva == _a)
        & (history.c.convb == _b)
        & (history.c.id <= bindparam("top", type_=BigInteger))
    )
    .order_by(history.c.id.desc())
    .limit(bindparam("limit"))
)
#: The senders' names as they are now.
NAMES = select(user.c.id, user.c.name).where(
    user.c.id.in_(bindparam("ids", expanding=True, type_=Integer))
)
JOINED = select(groupuser.c.joined).where(
    (groupuser.c.groupid == bindparam("gid", type_=Integer))
    & (groupuser.c.userid == bindparam("uid", type_=Integer))
)
GROUP_EXISTS = select(exists().where(allgroup.c.id == bindparam("gid", type_=Integer)))
USER_NAME = select(user.c.name).where(user.c.id == bindparam("uid", type_=Integer))
#: A write in doubt is looked for among this many newest rows of each of its
#: conversations: kept, its rows are there unless that many came after them.
KEPT_SCAN = 1000
KEPT = (
    select(history.c.mid, history.c.n, case((history.c.n > 1, history.c.body)).label("body"))
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
#: A round's statement, with the driver's placeholders.
_INSERT_SQL = "INSERT INTO history (conva, convb, sender, mid, ts, body, n) VALUES ({})"
_BULK_SQL = _INSERT_SQL.format(",".join(["%s"] * 7))  # asyncmy's
#: Bits of a message id that number it within its row, and so the most
#: messages one row packs.
INDEX_BITS = 10
PACK_MAX = 1 << INDEX_BITS
#: Characters of text past which a packed row takes no more messages (a
#: page query reads up to ``PAGE_ROWS`` rows: this bounds what it holds).
PACK_TEXT = 64 * 1024
#: Characters of text one statement carries at most (``statements``): at 6
#: bytes a character still under half of MariaDB's default 16 MiB packet.
STATEMENT_TEXT = 1024 * 1024
#: Beyond any row id (rows are BIGINT): "before" this is "the newest".
NEWEST = 2**63 - 1
#: Rows one page query reads at most (a page of unpacked rows takes a few).
PAGE_ROWS = 16
_pack = msgspec.json.Encoder().encode
_unpack = msgspec.json.Decoder(list[tuple[int, str, int, str]]).decode
_text = operator.itemgetter(5)  # of a row
_entry_text = operator.attrgetter("body")
#: What a packed row holds in place of a message taken out of it (its
#: sender's account deleted): no user has id 0. The row's other messages
#: keep their index, so their ids; pages skip it.
TOMBSTONE = (0, "", 0, "")
#: A row as written: a HistoryRow and ``n``.
Packed = tuple[int, int, int, str, int, str, int]


def by_conversation(rows: Sequence[HistoryRow]) -> Conversations:
    """Rows in any order, grouped as the writer queues them."""
    convs: Conversations = {}
    for a, b, sender, mid, ts, body in rows:
        convs.setdefault((a, b), []).append(Entry(sender, mid, ts, body))
    return convs


def pack(convs: Conversations) -> list[Packed]:
    """One row per conversation, in the order of each one's first message:
    its messages in order, ``n`` of them, as ``[sender, mid, ts, text]``
    arrays in ``body`` (``sender``, ``mid`` and ``ts`` are the newest's);
    a conversation with one message keeps the plain row (``n`` = 1). Past
    ``PACK_MAX`` messages or ``PACK_TEXT`` characters it goes on in the next
    row."""
    out: list[Packed] = []
    for (a, b), msgs in convs.items():
        if len(msgs) == 1:
            m = msgs[0]
            out.append((a, b, m.sender, m.mid, m.ts, m.body, 1))
            continue
        if len(msgs) <= PACK_MAX:
            # Encoded first: its bytes bound its characters of text, so a
            # short one needs no count of them (the common case).
            body = _pack(msgs)
            if len(body) <= PACK_TEXT or sum(map(len, map(_entry_text, msgs))) <= PACK_TEXT:
                last = msgs[-1]
                out.append((a, b, last.sender, last.mid, last.ts, body.decode(), len(msgs)))
                continue
        start, size = 0, 0
        for i, m in enumerate(msgs):
            if i > start and (i - start == PACK_MAX or size + len(m.body) > PACK_TEXT):
                out.append(_packed(a, b, msgs[start:i]))
                start, size = i, 0
            size += len(m.body)
        out.append(_packed(a, b, msgs[start:]))
    return out


def statements(rows: list[Packed]) -> list[Sequence[Packed]]:
    """The rows cut into statements of at most ``STATEMENT_TEXT`` characters
    of text: MariaDB's bulk command is one packet, refused past the server's
    ``max_allowed_packet`` (16 MiB by default) however the rows are split
    into packets, and a character of a packed body may take 6 bytes (a
    control character in JSON) or 4 (UTF-8)."""
    if sum(map(len, map(_text, rows))) <= STATEMENT_TEXT:
        return [rows]
    out: list[Sequence[Packed]] = []
    start, size = 0, 0
    for i, r in enumerate(rows):
        if i > start and size + len(_text(r)) > STATEMENT_TEXT:
            out.append(rows[start:i])
            start, size = i, 0
        size += len(_text(r))
    out.append(rows[start:])
    return out


def _packed(a: int, b: int, msgs: list[Entry]) -> Packed:
    last = msgs[-1]
    sender, mid, ts, body = last.sender, last.mid, last.ts, last.body
    if len(msgs) > 1:
        body = _pack(msgs).decode()  # [[sender, mid, ts, body], ...]
    return a, b, sender, mid, ts, body, len(msgs)


def _messages(n: int, sender: int, mid: str, ts: int, body: str) -> list[tuple[int, str, int, str]]:
    """A row's messages, oldest first."""
    return _unpack(body) if n > 1 else [(sender, mid, ts, body)]


#: Seconds a BulkConnection may sit unused before it is pinged before a write.
IDLE_PING = 5.0
#: Seconds a write (with its ping or connect) may take before it counts as
#: failed in doubt: a flow that went silent (a proxy or NAT holding it, a
#: database host gone without a reset) must not hold history, and so every
#: chat of the node once the queue fills, until TCP gives up, if ever.
WRITE_TIMEOUT = 30.0


async def forget_in_packed_groups(conn: AsyncConnection, uid: int) -> int:
    """Take what ``uid`` said out of packed group rows (an account deleted:
    its id may be given again on SQLite); returns how many messages. Plain
    rows and 1:1 conversations are deleted by the caller with one statement.
    ``body LIKE '%[uid,"%'`` finds every packed row holding one of theirs (a
    message's text may match it too: those rows are unpacked and left as
    they were). A row keeps its id and its other messages their index, so
    their ids: each of the user's entries becomes a :data:`TOMBSTONE`, which
    pages skip (a client paging back from a cursor in the row neither skips
    nor repeats a message). A row of tombstones only is deleted."""
    gone = 0
    mark = f'[{uid},"'
    found = await conn.execute(
        select(history.c.id, history.c.body).where(
            (history.c.conva == 0) & (history.c.n > 1) & history.c.body.contains(mark)
        )
    )
    for rid, body in found.all():
        msgs = _unpack(body)
        kept = [m if m[0] != uid else TOMBSTONE for m in msgs]
        gone += sum(m[0] == uid for m in msgs)
        live = [m for m in kept if m[0] != TOMBSTONE[0]]
        if not live:
            await conn.execute(delete(history).where(history.c.id == rid))
        elif kept != msgs:
            sender, mid, ts, _ = live[-1]  # the row's columns are its newest message's
            values = {"sender": sender, "mid": mid, "ts": ts, "body": _pack(kept).decode()}
            await conn.execute(update(history).where(history.c.id == rid).values(values))
    return gone


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

    async def write(self, sql: str, rows: Sequence[Packed]) -> None:
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

    #: Messages written to history, and the rows they were packed in (metrics, tests).
    history_rows = 0
    history_packed = 0

    history_bulk: BulkConnection | None  # SqlStore's: MariaDB/MySQL only

    def _tx(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError  # SqlStore's

    async def open_history(self) -> None:
        if self.history_bulk is not None:
            await self.history_bulk.open()

    async def add_history(self, rows: Sequence[HistoryRow]) -> None:
        await self.write_history(by_conversation(rows))

    async def write_history(self, convs: Conversations) -> None:
        if not convs:
            return
        packed = pack(convs)
        if self.history_bulk is not None:
            parts = statements(packed)
            for i, part in enumerate(parts):
                try:
                    await self.history_bulk.write(_BULK_SQL, part)
                except errors.Unavailable as exc:
                    if i == 0:
                        raise
                    # Earlier statements were kept (autocommit): the writer
                    # must look for them before it writes the batch again.
                    raise errors.InDoubt(f"history write failed after {i} statements") from exc
        else:
            async with self._tx() as conn:
                # The driver's executemany with the tuples as they are (SQLite: one
                # prepared statement stepped per row); SQLAlchemy's own per-row
                # parameter handling would cost the chat node more than the write.
                mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
                sql = _INSERT_SQL.format(",".join([mark] * 7))
                await conn.exec_driver_sql(sql, packed)
        self.history_rows += sum(map(len, convs.values()))
        self.history_packed += len(packed)

    async def history_kept(self, convs: Conversations) -> set[str]:
        # One range scan of ix_history_conv_id per conversation (history has
        # no index on mid: this runs only after a write in doubt).
        kept: set[str] = set()
        async with self._tx() as conn:
            for (conva, convb), msgs in convs.items():
                mids = {m.mid for m in msgs}
                for r in await conn.execute(KEPT, {"a": conva, "b": convb}):
                    if r.n > 1:
                        kept.update(mids.intersection(m[1] for m in _unpack(r.body)))
                    elif r.mid in mids:
                        kept.add(r.mid)
        return kept

    async def history(
        self, conva: int, convb: int, before: int, limit: int, since: int, max_chars: int = 0
    ) -> list[Said]:
        """Rows newest first, unpacked, until ``limit`` messages: each row
        read holds at least one (its newest is at ``ts`` and below the
        cursor), so no query asks for more rows than messages still wanted.
        The first row older than ``since`` ends the conversation: ids follow
        time (as purging assumes), so what is below it is older still, but for
        messages within the nodes' clock difference of ``since``; no request
        reads more rows than it returns messages, plus one (and those of
        deleted accounts' messages, below). Past ``max_chars``
        of text (and 100 a message) with two messages or more, it reads no
        more rows: a caller that cuts its page there need not read 200
        messages of 64 KiB to send 128 KiB.

        A deleted account's messages are not served, as ``clusterchat admin
        delete`` deleted them: a 1:1 conversation with it is empty, and in a
        group what it said is skipped. Those are the messages written after
        the delete (a node's queue, or a session the node was not told to
        end), found by their sender having no account: the senders' names,
        read with each batch of rows that brings new ones, tell."""
        out: list[tuple[int, int, str, int, str]] = []
        top = (before - 1) >> INDEX_BITS if before else NEWEST
        chars = 0
        names: dict[int, str] = {}
        async with self._tx() as conn:
            if conva:  # 1:1: both accounts, for the check and the names
                ends = {conva, convb}
                names.update(
                    {uid: name for uid, name in await conn.execute(NAMES, {"ids": list(ends)})}
                )
                if len(names) < len(ends):
                    return []
            looked = {0, *names}  # 0: a message taken out of a packed row
            while len(out) < limit and top >= 0:
                want = min(limit - len(out), PAGE_ROWS)
                page = {"a": conva, "b": convb, "top": top, "limit": want}
                rows = (await conn.execute(PAGE, page)).all()
                ended = len(rows) < want
                unpacked: list[tuple[int, list[tuple[int, str, int, str]]]] = []
                for r in rows:
                    if r.ts < since:
                        ended = True
                        break
                    unpacked.append(
                        (r.id << INDEX_BITS, _messages(r.n, r.sender, r.mid, r.ts, r.body))
                    )
                fresh = {m[0] for _, msgs in unpacked for m in msgs if m[0] not in looked}
                if fresh:  # a group's senders not yet seen
                    looked |= fresh
                    found = await conn.execute(NAMES, {"ids": list(fresh)})
                    names.update({uid: name for uid, name in found})
                for base, msgs in unpacked:
                    if max_chars and chars > max_chars and len(out) > 1:
                        ended = True
                        break
                    for i in range(len(msgs) - 1, -1, -1):
                        sender, mid, ts, body = msgs[i]
                        if (not before or base | i < before) and ts >= since and sender in names:
                            out.append((base | i, sender, mid, ts, body))
                            chars += len(body) + 100
                if ended:
                    break
                top = rows[-1].id - 1
            del out[limit:]
        return [Said(i, s, names[s], m, t, b) for i, s, m, t, b in out]

    async def user_name(self, uid: int) -> str | None:
        async with self._tx() as conn:
            name = await conn.scalar(USER_NAME, {"uid": uid})
        return None if name is None else str(name)

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
