"""Message history: kept off the hot path, paged back on request, purged when old.

Every 1:1 and group message a node accepts is queued here by that node (the
sender's), once, whichever node the receivers are on, in a list of its
conversation's. One writer task per
node takes everything queued into one multi-row INSERT per round (a round
lingers a couple of milliseconds, and starts at most every ``PACE`` while
the queue is short, so a busy node writes hundreds of messages a statement
and at most 40 statements a second), each conversation's messages of the
round packed into one row by the store (``storage/history.py``), retrying
with backoff like the re-store writer (``service/restore.py``) until the
store takes them, and writes what is left at shutdown within a deadline.

The queue is bounded in rows and bytes. Past the bound ``full`` is set and
new chats wait before they are delivered, until the queue is down to half
its bound (their senders' connections are not read meanwhile: TCP slows
them); a modern client's chat that waits longer than the service's
``history_patience`` is refused with ERROR 151 BUSY (no effect). A message
is never dropped from history silently and memory never grows without bound. Chats
already past that check when the queue fills may still be queued (one per
connection at most), so the bound may be overshot by that much.

Expired rows are purged by a background task in small chunks by id (see
``storage/history.py``), so no statement is long and the node never waits
on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from clusterchat import errors
from clusterchat.config import HISTORY_DAYS, HISTORY_QUEUE
from clusterchat.protocol.messages import ErrCode, History, MsgId
from clusterchat.protocol.replies import Ack
from clusterchat.service.context import Handler, Service
from clusterchat.service.restore import RETRY_FIRST, RETRY_MAX
from clusterchat.service.session import Session
from clusterchat.storage.base import Conversations, Entry, Store
from clusterchat.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Default retention and queue rows (their reasons: config.py).
DEFAULT_DAYS = HISTORY_DAYS
QUEUE_ROWS = HISTORY_QUEUE
QUEUE_BYTES = 32 * 1024 * 1024
#: Bytes a queued message holds besides its text: the tuple, its mid, the list slot.
ROW_COST = 200
#: Rows and bytes of message text one INSERT carries at most.
BATCH_ROWS = 5000
BATCH_BYTES = 4 * 1024 * 1024
#: Seconds a round waits for more rows after the first (one INSERT per few ms).
LINGER = 0.002
#: Seconds from one round's start to the next's while the queue is short of a
#: batch (and not full): at most 40 rounds a second. Each round costs both
#: ends a statement, a commit with its log flush and a few wake-ups; at a
#: node's ceiling rounds back to back (one every few ms) spent that on 200
#: rounds a second, and 100 a second (0.01) still cost mariadbd 1.7-2.3 µs
#: of CPU a message where 40 cost 1.0-1.3 (BENCHMARKS.md, "History on vs off").
PACE = 0.025
#: Purge: rows per DELETE, pause between chunks, and the longest sleep between rounds.
PURGE_CHUNK = 1000
PURGE_PAUSE = 0.02
PURGE_EVERY = 60.0
#: Characters of messages one HISTORY reply carries at most (at least one
#: message): even with every character escaped six-fold in JSON the reply stays
#: under the 1 MiB frames our clients read; past it the page is shorter, ``more`` set.
PAGE_BYTES = 128 * 1024
#: Characters of a HISTORY reply that cost one more token of the flood limit
#: (a full page, 128 KiB, costs 9 in all): a page is read, decoded and encoded
#: again, where a chat of that size is only relayed. Before, 20 accounts each
#: paging 120 KB at the limit (213 pages a second) took others' stores from
#: 8 to 119 ms and logins from 16 to 305 ms.
PAGE_COST_BYTES = 16 * 1024
#: Seconds a HISTORY request waits for this node's queued rows to be written
#: (a sender sees its own messages at once), before reading anyway.
READ_YOUR_WRITES = 1.0


class HistoryWriter:
    """The bounded queue of history rows and the one task that writes them."""

    def __init__(
        self,
        store: Store,
        max_rows: int = QUEUE_ROWS,
        max_bytes: int = QUEUE_BYTES,
        linger: float = LINGER,
        pace: float = PACE,
    ) -> None:
        self._store = store
        self.max_rows = max(1, max_rows)
        self.max_bytes = max(1, max_bytes)
        self.linger = linger
        self.pace = pace
        #: Queued messages by conversation, and the batch being written
        #: (retried until it is); how many messages each holds, and bytes.
        self._convs: defaultdict[tuple[int, int], list[Entry]] = defaultdict(list)
        self._rows = 0
        self._bytes = 0
        self._flight: Conversations = {}
        self._flight_rows = 0
        self._flight_bytes = 0
        #: What the queue may still take beside the batch in flight.
        self._cap_rows = self.max_rows
        self._cap_bytes = self.max_bytes
        #: The hot path's one check: new chats are refused while True.
        self.full = False
        #: Called when the queue has room again after being full.
        self.on_room: Callable[[], None] | None = None
        self._idle = True  # the writer waits for rows (or has not started)
        #: A reader waits for queued rows: the next round goes without its pace.
        self._hurry = False
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Rows written, rounds written, failed writes, chats refused or slowed.
        self.written = 0
        self.rounds = 0
        self.failures = 0
        self.refused = 0

    def __len__(self) -> int:
        return self._rows + self._flight_rows

    @property
    def queued(self) -> int:
        """Rows ever queued: a mark for :meth:`caught_up`."""
        return self.written + self._flight_rows + self._rows

    async def open(self) -> None:
        """At the node's start: the store's history connection opened
        before the first message (storage/history.py, ``BulkConnection.open``)."""
        try:
            await self._store.open_history()
        except errors.Unavailable as exc:
            log.warning("history store not reachable yet (%s); the first write will retry", exc)

    def add(self, a: int, b: int, sender: int, mid: str, ts: int, body: str) -> None:
        """Queue one message of the conversation of ``a`` and ``b``, in either
        order: of two users (kept as the lower id, the higher) or of a group
        (0 and its id). The hot path: an append to the conversation's list
        and two comparisons; the chat service calls it directly."""
        self._convs[(a, b) if a < b else (b, a)].append(Entry(sender, mid, ts, body))
        self._rows += 1
        self._bytes += len(body) + ROW_COST
        if not self.full and (self._rows >= self._cap_rows or self._bytes >= self._cap_bytes):
            self.full = True
            self._wake.set()  # a round waiting for its pace goes now
        if self._idle:
            self._idle = False
            if self._task is None:
                self._task = asyncio.ensure_future(self._run())
            self._wake.set()

    async def _run(self) -> None:
        delay = RETRY_FIRST
        # The batch's last write failed with its answer lost: some or all of
        # it may be kept, and history has no unique key to refuse it twice.
        doubt = False
        loop = asyncio.get_running_loop()
        started = -self.pace  # when the last round started
        while True:
            if not self._flight:
                if not self._convs:
                    self._idle = True
                    self._wake.clear()
                    await self._wake.wait()
                    if self.linger:  # let the rows of the next few ms join this one
                        await asyncio.sleep(self.linger)
                    continue
                wait = started + self.pace - loop.time()
                if wait > 0 and not (self.full or self._hurry) and self._rows < BATCH_ROWS:
                    self._wake.clear()  # rows join this round meanwhile, unless it fills
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
                    continue
                started = loop.time()
                self._take()
            batch = self._flight
            try:
                if doubt:
                    kept = await self._store.history_kept(batch)
                    doubt = False
                    if kept:
                        batch = self._flight = _without(batch, kept)
                        left = sum(map(len, batch.values()))
                        self.written += self._flight_rows - left
                        self._flight_rows = left
                if batch:
                    await self._store.write_history(batch)
            except Exception as exc:  # down, or refusing: keep them, retry
                doubt = doubt or isinstance(exc, errors.InDoubt)
                self.failures += 1
                log.warning(
                    "could not write %d messages to history (%s); retrying in %.1f s",
                    self._flight_rows,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            delay = RETRY_FIRST
            self.rounds += 1
            self.written += self._flight_rows
            self._flight, self._flight_rows, self._flight_bytes = {}, 0, 0
            self._cap_rows, self._cap_bytes = self.max_rows, self.max_bytes
            progress, self._progress = self._progress, asyncio.Event()
            progress.set()
            # Room again at half the bound, not at the first row written: a
            # store just catching up does not flap between refusing and not.
            rows_ok = self._rows <= self.max_rows // 2
            if self.full and rows_ok and self._bytes <= self.max_bytes // 2:
                self.full = False
                if self.on_room is not None:
                    self.on_room()

    def _take(self) -> None:
        """Move queued messages, up to a batch's bounds, in flight: whole
        conversations in the order of their first message, the last one
        taken perhaps in part (its oldest messages; the rest stay first in
        the queue)."""
        convs = self._convs
        self._hurry = False
        if self._rows <= BATCH_ROWS and self._bytes <= BATCH_BYTES:
            # all of them, no copy
            self._flight, self._flight_rows, self._flight_bytes = convs, self._rows, self._bytes
            self._convs, self._rows, self._bytes = defaultdict(list), 0, 0
        else:
            batch: Conversations = {}
            whole: list[tuple[int, int]] = []
            n, size = 0, 0
            for key, msgs in convs.items():
                i = 0
                for m in msgs:
                    cost = len(m.body) + ROW_COST
                    if n and (n >= BATCH_ROWS or size + cost > BATCH_BYTES):
                        break
                    n += 1
                    size += cost
                    i += 1
                if i == len(msgs):
                    batch[key] = msgs
                    whole.append(key)
                    continue
                if i:
                    batch[key] = msgs[:i]
                    del msgs[:i]
                break
            for key in whole:
                del convs[key]
            self._flight, self._flight_rows, self._flight_bytes = batch, n, size
            self._rows -= n
            self._bytes -= size
        self._cap_rows = self.max_rows - self._flight_rows
        self._cap_bytes = self.max_bytes - self._flight_bytes

    def pending(self, a: int, b: int) -> bool:
        """Whether messages of the conversation of ``a`` and ``b`` (in
        either order) are queued or being written."""
        key = (a, b) if a < b else (b, a)
        return key in self._convs or key in self._flight

    def hurry(self) -> None:
        """A reader waits for what is queued: the next round goes now, not
        at its pace (one round more, at most, a request)."""
        if self._rows:
            self._hurry = True
            self._wake.set()

    async def caught_up(self, mark: int, timeout: float) -> bool:
        """Wait until the first ``mark`` rows ever queued are written, at most
        ``timeout`` seconds; True if they are."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.written < mark:
                    await self._progress.wait()
        return self.written >= mark

    async def drain(self, timeout: float) -> bool:
        return await self.caught_up(self.queued, timeout)

    async def close(self, timeout: float) -> int:
        """At shutdown: write what is left within ``timeout``, then stop.
        Returns the rows that could not be written (logged as an error)."""
        if len(self):
            self.hurry()  # a round waiting for its pace goes now
            await self.drain(timeout)
        left = len(self)
        if left:
            log.error(
                "shutting down with %d messages NOT written to history (the store did "
                "not take them within %.0f s); they were delivered but are not in history",
                left,
                timeout,
            )
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        return left


def _without(convs: Conversations, mids: set[str]) -> Conversations:
    """``convs`` but the messages whose mid is in ``mids``."""
    out: Conversations = {}
    for key, msgs in convs.items():
        left = [m for m in msgs if m.mid not in mids]
        if left:
            out[key] = left
    return out


class Purger:
    """Deletes history older than the retention, a chunk at a time."""

    def __init__(self, store: Store, retention: float, chunk: int = PURGE_CHUNK) -> None:
        self._store = store
        self.retention = retention  # seconds
        self.chunk = chunk
        #: A tiny retention (tests) is purged often; a real one every minute.
        self.every = min(PURGE_EVERY, max(0.05, retention / 20))
        self.purged = 0
        self.rounds = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)  # not at start: nodes starting have other work
            try:
                await self.once()
            except errors.Unavailable as exc:
                log.warning("could not purge expired history: %s", exc)
            except Exception:
                log.exception("purging expired history failed")

    async def once(self) -> int:
        """Purge everything expired now, chunk by chunk; returns how many rows."""
        total, after = 0, 0
        cutoff = int((time.time() - self.retention) * 1000)
        while True:
            n, after = await self._store.purge_history(cutoff, self.chunk, after)
            total += n
            self.purged += n
            if not after:
                self.rounds += 1
                return total
            await asyncio.sleep(PURGE_PAUSE)  # let the node (and other nodes) in between


class HistoryRequests:
    """Serves HISTORY (60) with HISTORY_PAGE (61) or an ERROR 180-184
    (an original client is refused it as an unknown msgid: protocol/dialect.py).
    ``writer``: None when history is off; ``retention``: seconds kept."""

    def __init__(self, svc: Service, writer: HistoryWriter | None, retention: float) -> None:
        self.svc = svc
        self.writer = writer
        self.retention = retention

    def handlers(self) -> dict[type, Handler]:
        return {History: self._history}

    def _history(self, s: Session, req: History) -> Awaitable[None] | None:
        svc = self.svc
        if self.writer is None:
            svc.refuse(s, req, ErrCode.HISTORY_OFF, "this server keeps no history")
            return None
        if (req.userid is None) == (req.groupid is None):
            svc.refuse(s, req, ErrCode.HISTORY_TARGET, "give exactly one of userid and groupid")
            return None
        return self._page(s, req, self.writer)

    async def _page(self, s: Session, req: History, writer: HistoryWriter) -> None:
        svc = self.svc
        since = int((time.time() - self.retention) * 1000)
        if req.groupid is not None:
            joined = await svc.store.group_joined(s.uid, req.groupid)
            if joined is None:
                svc.refuse(
                    s,
                    req,
                    ErrCode.HISTORY_NOT_MEMBER,
                    f"you are not a member of group {req.groupid}; its history is for members",
                )
                return
            a, b, key, ident = 0, req.groupid, "groupid", req.groupid
            since = max(since, joined // 1000)  # from when they joined
        else:
            assert req.userid is not None
            a, b = sorted((s.uid, req.userid))
            key, ident = "userid", req.userid
        if writer.pending(a, b):  # one's own messages too: wait for them, not the pace
            mark = writer.queued
            writer.hurry()
            await writer.caught_up(mark, READ_YOUR_WRITES)
        # The store stops reading past the page's bytes (one message more
        # than fit: cut there, the page says ``more``).
        rows = await svc.store.history(a, b, req.before, req.limit + 1, since, PAGE_BYTES)
        head: dict[str, Any] = {key: ident}
        if req.userid is not None:
            # The partner's name for the page's heading, even when only the
            # asker spoke in it (clients showed "user 5" instead of a name).
            name = next((r.name for r in rows if r.sender == req.userid), None)
            if name is None:
                name = await svc.store.user_name(req.userid)
            if name is None:
                raise errors.NoSuchUser(req.userid)
            head["name"] = name
        more = len(rows) > req.limit
        docs: list[dict[str, Any]] = []
        size = 0
        for r in rows[: req.limit]:
            size += len(r.body) + len(r.name) + 100
            if docs and size > PAGE_BYTES:  # a shorter page: clients read 1 MiB frames
                more = True
                break
            docs.append(
                {
                    "id": r.id,
                    "from": r.sender,
                    "name": r.name,
                    "mid": r.mid,
                    "ts": r.ts,
                    "msg": r.body,
                }
            )
        svc.charge(s, size // PAGE_COST_BYTES)
        svc.reply(s, Ack(MsgId.HISTORY_PAGE, {**head, "messages": docs, "more": more}))
