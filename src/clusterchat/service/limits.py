"""Counting failures per key (an account, an address) to stop brute force.

A fixed window per key: after ``limit`` failures within ``window`` seconds
the key is refused until the window ends. Checked before the slow password
hash, so guessing costs the server nothing. Per node: a cluster multiplies
the allowance by its node count (nginx spreads a guesser over them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Callable, Hashable

from clusterchat.config import Limits as Limits  # re-exported: its home was here


def limit_key(address: str) -> str:
    """What per-address limits count ``address`` under. An IPv4 address is
    itself, and so is an IPv4-mapped IPv6 one (``::ffff:a.b.c.d``, how a
    dual-stack listener sees IPv4 clients) as its IPv4 address. Any other
    IPv6 address counts as its /64 (``2001:db8:1:2::/64``): the block one
    subscriber is given, so whoever has one address has 2^64, and per /128
    a limit would hold nobody. Anything else (not an IP address) is itself.
    Called once per connection (and per readdressing), not per request."""
    if ":" not in address:
        return address  # IPv4: the common case, no parsing
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"


class FailureLimiter:
    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit, self.window, self.clock, self.max_keys = limit, window, clock, max_keys
        self._seen: dict[Hashable, list[float]] = {}  # key -> [window start, failures]

    def wait(self, key: Hashable) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
        if self.limit <= 0:
            return 0.0
        entry = self._seen.get(key)
        if entry is None or entry[1] < self.limit:
            return 0.0
        left = entry[0] + self.window - self.clock()
        if left <= 0:
            del self._seen[key]
            return 0.0
        return left

    def failed(self, key: Hashable) -> None:
        if self.limit <= 0:
            return
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            if len(self._seen) >= self.max_keys:  # forget the oldest windows first
                for old in list(self._seen)[: self.max_keys // 10]:
                    del self._seen[old]
            self._seen[key] = [now, 1]
        else:
            entry[1] += 1

    def succeeded(self, key: Hashable) -> None:
        self._seen.pop(key, None)


class Turns:
    """One at a time per key (an (account, address) pair, an address).

    A guard checks its count before the slow password hash and counts the
    failure after it. Tries made at once would all pass the check before any
    of them was counted (64 concurrent guesses where 5 are free); taking
    turns makes check, hash and count one step per key. A key's lock is
    dropped when nobody holds or waits for it.
    """

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)
