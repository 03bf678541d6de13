"""Storing again what dropped connections held: one bounded writer.

When a connection ends with messages it may not have read (see
``server/outbox.py``), they must reach the store before anything else can
lose them. Hundreds of connections can end at once (a group's members all
dropping after a burst); one task and one database connection per ended
connection exhausted the pool and lost the lot. Here a single writer takes
everything queued — all receivers — into one multi-row INSERT per round
(bounded in rows and bytes), retries with backoff until the store takes it,
and at shutdown writes what is left within a deadline, or says loudly what
it could not.

Rows waiting here are charged to the node's :class:`~clusterchat.budget.Budget`:
a payload once (group messages share one copy), plus a row's bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from clusterchat.budget import Budget
from clusterchat.bus.base import Settlement
from clusterchat.storage.base import Store
from clusterchat.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: One INSERT carries at most this many rows / bytes of message text.
BATCH_ROWS = 2000
BATCH_BYTES = 1024 * 1024
#: Backoff between failed writes: first, and at most (seconds).
RETRY_FIRST = 0.1
RETRY_MAX = 5.0
#: Bytes charged per queued row besides the payload itself.
ROW_COST = 64


class Restorer:
    """A queue of (receiver, payload) rows and the one task that stores them."""

    def __init__(
        self,
        store: Store,
        budget: Budget | None = None,
        stored: Callable[[Sequence[int]], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._budget = budget
        self._stored = stored
        # (receiver, payload, whether to tell the receiver's node once stored)
        self._rows: deque[tuple[int, bytes, bool]] = deque()
        # Settlements to release once ``written`` reaches the row count given
        # (other nodes' batches, kept until what ended connections held is stored).
        self._after: deque[tuple[int, Sequence[Settlement]]] = deque()
        # Queued rows per payload: a payload shared by many rows is charged once.
        self._copies: dict[bytes, int] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        #: Rows written, writes made, and writes that failed (tests, logs).
        self.written = 0
        self.rounds = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        uid: int,
        payloads: Sequence[bytes],
        settlements: Sequence[Settlement] = (),
        nudge: bool = True,
    ) -> None:
        """Queue messages for ``uid``; they are written as soon as the store
        takes them, in the order queued; then ``settlements`` are released.
        ``nudge``: then have them delivered if the user is online (not for a
        copy of what its session still holds, which would push it again)."""
        if settlements:
            if not payloads and not self._rows:
                for settlement in settlements:
                    settlement.release()
            else:  # after these rows and all before them
                self._after.append((self.written + len(self._rows) + len(payloads), settlements))
        if not payloads:
            return
        charge = 0
        copies = self._copies
        for p in payloads:
            self._rows.append((uid, p, nudge))
            n = copies.get(p, 0)
            copies[p] = n + 1
            charge += ROW_COST if n else ROW_COST + len(p)
        if self._budget is not None:
            self._budget.charge(charge)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            if not self._rows:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._batch()
            texts: dict[bytes, str] = {}
            rows = []
            for uid, p, _ in batch:
                text = texts.get(p)
                if text is None:
                    text = texts[p] = p[:-1].decode()  # stored without the newline
                rows.append((uid, text))
            try:
                await self._store.store_offline_many(rows)
            except Exception as exc:  # the store is down or refuses: keep, retry
                self.failures += 1
                log.warning(
                    "could not store %d messages again (%s); retrying in %.1f s",
                    len(rows),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            delay = RETRY_FIRST
            self.rounds += 1
            for _ in range(len(batch)):
                self._rows.popleft()
            self._release(batch)
            self.written += len(batch)
            after = self._after
            while after and after[0][0] <= self.written:
                for settlement in after.popleft()[1]:
                    settlement.release()
            if self._stored is not None:
                try:
                    await self._stored(sorted({uid for uid, _, nudge in batch if nudge}))
                except Exception:  # stored all the same; the next login finds them
                    log.exception("after storing %d messages again", len(batch))

    def _batch(self) -> list[tuple[int, bytes, bool]]:
        """The oldest rows, up to the row and byte bounds (at least one)."""
        batch: list[tuple[int, bytes, bool]] = []
        size = 0
        for row in self._rows:
            size += len(row[1])
            if batch and (len(batch) >= BATCH_ROWS or size > BATCH_BYTES):
                break
            batch.append(row)
        return batch

    def _release(self, batch: list[tuple[int, bytes, bool]]) -> None:
        release = 0
        copies = self._copies
        for _, p, _ in batch:
            n = copies[p] - 1
            if n:
                copies[p] = n
                release += ROW_COST
            else:
                del copies[p]
                release += ROW_COST + len(p)
        if self._budget is not None:
            self._budget.release(release)

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued is written, at most ``timeout``
        seconds; True if it was."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> int:
        """At shutdown: write what is left within ``timeout``, then stop.
        Returns the rows that could not be written (logged as an error)."""
        done = await self.drain(timeout) if self._rows else True
        left = len(self._rows)
        if not done and left:
            users = len({uid for uid, _, _ in self._rows})
            log.error(
                "shutting down with %d acknowledged messages for %d users NOT stored "
                "(the store did not take them within %.0f s); they are lost",
                left,
                users,
                timeout,
            )
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        return left
