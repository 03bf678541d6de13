"""Offline messages a client with receipts was given stay stored until it confirms them.

Deleting a login's offline rows once written to the connection would lose
them if this node died before the client's receipt: a double fault (they
were stored because the user was away, or because of an earlier fault),
but an acknowledged message lost all the same. So each goes out with a
:class:`StoredRow` mark in the connection's receipt window: the client's
receipt deletes its row (in batches, one writer per user); a connection
that ends first leaves the row where it is, and it is not stored again
(``Unacked.drain`` skips it), so the next login reads it once more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from clusterchat import errors
from clusterchat.bus.base import Settlement
from clusterchat.service.login_race import Delivered
from clusterchat.service.refusals import Sampled

log = logging.getLogger(__name__)

#: Seconds between tries of a delete the store refused, doubling to the last.
RETRY_FIRST, RETRY_MOST = 0.1, 2.0


class StoredRow(Settlement):
    """The mark of one message delivered from the store: released by the
    client's receipt, never by storing (the row is still there)."""

    __slots__ = ()
    in_store = True

    def __init__(self, confirmed: Callable[[], None]) -> None:
        super().__init__(pins=False)
        self._done = confirmed


class ConfirmedRows:
    """Deletes the rows clients confirmed, per user one delete at a time,
    each taking all confirmed since the last."""

    def __init__(
        self,
        delete: Callable[[int, Sequence[int]], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self._delete = delete
        self._spawn = spawn
        self._due: dict[int, list[tuple[int, Delivered]]] = {}
        self._running: dict[int, asyncio.Task[None]] = {}
        self._outages = Sampled(log)

    def mark(self, uid: int, row: int, delivered: Delivered) -> StoredRow:
        """The mark of row ``row`` of ``uid``'s, delivered by the login whose
        reads skip ``delivered``: it stays there until deleted."""
        delivered.add(row)
        return StoredRow(lambda: self._confirmed(uid, row, delivered))

    def _confirmed(self, uid: int, row: int, delivered: Delivered) -> None:
        self._due.setdefault(uid, []).append((row, delivered))
        if uid not in self._running:
            self._running[uid] = self._spawn(self._deleting(uid))

    async def _deleting(self, uid: int) -> None:
        delay = RETRY_FIRST
        try:
            while due := self._due.pop(uid, None):
                try:
                    await self._delete(uid, [row for row, _ in due])
                except errors.Unavailable as exc:
                    self._due[uid] = due + self._due.get(uid, [])
                    self._outages.warning(f"deleting confirmed messages failed, retrying: {exc}")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MOST)
                    continue
                delay = RETRY_FIRST
                for row, delivered in due:
                    delivered.deleted((row,))
        finally:
            del self._running[uid]

    async def deleted(self, uid: int, timeout: float) -> None:
        """Wait (at most ``timeout``) for the deletes of what ``uid``'s
        client confirmed: its next login must not get them again."""
        task = self._running.get(uid)
        if task is not None:
            await asyncio.wait([task], timeout=timeout)
