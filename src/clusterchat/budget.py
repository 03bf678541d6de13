"""The node's memory budget: bytes held for other people, counted in one place.

Slow readers' outboxes, re-stores waiting for the store and (if the bus
adopts it) batches in flight to other nodes all charge the same
:class:`Budget`. Past its limit the service refuses new chats ("busy,
retry") instead of accepting what it could only hold without bound.
Pure accounting: no loop, no I/O; waiters are told through a callback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

#: With no --memory-budget: this share of the machine's memory...
DEFAULT_SHARE = 0.25
#: ...but never less than this, nor more than MAX_DEFAULT.
MIN_DEFAULT = 64 * 1024 * 1024
MAX_DEFAULT = 4 * 1024 * 1024 * 1024

K = TypeVar("K")


def machine_memory() -> int:
    """Physical memory in bytes (0 if the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def default_budget(memory: int | None = None) -> int:
    """A quarter of the machine's memory, within [64 MiB, 4 GiB]."""
    total = machine_memory() if memory is None else memory
    if total <= 0:
        return 512 * 1024 * 1024
    return int(min(MAX_DEFAULT, max(MIN_DEFAULT, total * DEFAULT_SHARE)))


class Budget:
    """Bytes charged against a limit; ``full`` is the one check on the hot path.

    Charges may overshoot the limit (what was already accepted must be
    held somewhere); callers that would add new work check ``full``
    first. ``on_room`` is called when usage drops back under the limit
    after being over it (the node wakes slowed senders with it).
    """

    __slots__ = ("full", "limit", "on_room", "peak", "refused", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit if limit > 0 else 0  # 0: no limit
        self.used = 0
        self.peak = 0
        self.full = False
        #: Requests refused (or slowed) because the budget was full.
        self.refused = 0
        self.on_room: Callable[[], None] | None = None

    def charge(self, nbytes: int) -> None:
        used = self.used = self.used + nbytes
        if used > self.peak:
            self.peak = used
        if self.limit and used > self.limit:
            self.full = True

    def release(self, nbytes: int) -> None:
        used = self.used = self.used - nbytes
        if self.full and used <= self.limit:
            self.full = False
            if self.on_room is not None:
                self.on_room()


#: Past the limit, connections are cut off (what they hold stored) while
#: what connections hold is more than this share of the limit...
EVICT_SHARE = 0.5
#: ...but never one holding less than this: a cut must free something...
EVICT_LEAST = 16 * 1024
#: ...nor one that made progress (a receipt, a read) in these seconds: a
#: burst fills everyone's windows for a moment, and clients confirming as
#: they should must not be cut off for it (the soak's burst: 50 of them were,
#: 12,297 duplicates).
EVICT_STALL = 2.0


def to_evict(addresses: Sequence[Sequence[tuple[int, K]]], limit: int) -> list[K]:
    """Which connections to cut off while the budget is over its limit,
    given, for each address, (bytes held by a stalled peer, key) of each of
    its connections: the addresses holding the most first, and within one
    its connections holding the most first, until what the rest hold is at
    most EVICT_SHARE of the limit. Without this, receivers that never
    confirm (an attacker's own accounts) could hold the whole budget, and
    every sender on the node was refused. Counted by address, so many
    connections each holding less than EVICT_LEAST add up (an attacker's
    accounts on one address); cut one by one, so the others behind the same
    address (a NAT, an office, a proxy that hides addresses) stay connected
    once enough is freed. What is left over the limit is then the store's
    backlog, which drains at the store's pace."""
    held = sum(n for conns in addresses for n, _ in conns)
    most = int(limit * EVICT_SHARE)
    totals = sorted(((sum(n for n, _ in conns), conns) for conns in addresses), key=_first)
    out: list[K] = []
    for total, conns in reversed(totals):
        if held <= most or total < EVICT_LEAST:
            break
        for nbytes, key in sorted(conns, key=_first, reverse=True):
            if held <= most:
                break
            out.append(key)
            held -= nbytes
    return out


def _first(pair: tuple[int, object]) -> int:
    return pair[0]
