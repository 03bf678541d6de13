"""Settling a chat's store whose commit went unanswered.

A refused request must have had no effect. When the store's connection drops
after the COMMIT of an offline message went out, the server cannot tell
whether the message was kept: answering ``ERROR 150`` would be a lie if it
was (the receiver gets a message its sender was told had failed: seen under
load as "acknowledged 406, arrived 407"). So the server finds out: it stores
the message again *unless it is already there* (its text carries a unique
``mid``), retrying while the store is unreachable, and then acknowledges it
as stored. If the store stays away past ``timeout`` the outcome is still
unknown; :class:`~clusterchat.errors.InDoubt` goes up and the connection is
closed without a reply, which is what an unanswered request already means
to a client: it may or may not have got through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from clusterchat import errors
from clusterchat.storage.base import Store

log = logging.getLogger(__name__)

#: How long a sender's reply may wait for the store to come back.
SETTLE_TIMEOUT = 5.0


async def settle(
    store: Store,
    items: Sequence[tuple[int, str]],
    timeout: float = SETTLE_TIMEOUT,
    sender: int = 0,
) -> None:
    """Make sure ``items`` are stored, once each (counted toward ``sender``'s
    share, 0: none); raises InDoubt past ``timeout``, NoSuchUser for an
    unknown receiver (nothing was stored for it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.02
    while True:
        try:
            await store.store_offline_missing(items, sender)
            log.info("settled a store in doubt (%d messages)", len(items))
            return
        except errors.Unavailable as exc:
            if loop.time() + delay > deadline:
                raise errors.InDoubt(f"store in doubt for {timeout:g} s: {exc}") from exc
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
