"""Counters for the abuse limits, per node or shared through Redis.

Brute-force delays and registration meters must hold across the cluster:
counted per node, N nodes behind nginx allow N times as much. With a Redis
URL each count is one Redis key (INCR and a TTL, one round trip per check
or hit, and only on the login and registration paths, never on chat). If
Redis cannot be reached the node counts locally meanwhile: a guard that
fails open cluster-wide still holds per node.

The flood limit is counted where it is cheap: a user has one session in
the whole cluster (duplicate logins are refused), so the token bucket lives
with that session, in memory, one clock read per request. Only when the
session ends is what is left of the bucket kept (here, or in Redis for a
few seconds) for the user's next login, wherever it is: reconnecting does
not refill it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# INCR, and the window starts at the first hit (a fixed window, like FailureLimiter).
_METER = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class Tally(Protocol):
    """Hits per key and how long a key must wait before its next try."""

    async def wait(self, key: Hashable) -> float: ...
    async def hit(self, key: Hashable) -> None: ...
    async def clear(self, key: Hashable) -> None: ...


class Counter(Protocol):
    """The service's pure counters (Backoff, FailureLimiter)."""

    def wait(self, key: Hashable) -> float: ...
    def failed(self, key: Hashable) -> None: ...
    def succeeded(self, key: Hashable) -> None: ...


class Backoff(Counter, Protocol):
    """service.backoff.Backoff as the Redis count needs it."""

    free: int  # failures free of delay (0: off)
    forget: float  # seconds after the last failure that a count is forgotten

    def delay(self, failures: int) -> float: ...


class Meter(Counter, Protocol):
    """service.limits.FailureLimiter as the Redis count needs it."""

    limit: int  # hits per window (0: off)
    window: float


class LocalTally:
    """A :class:`Tally` counted in this process (no Redis, or Redis away)."""

    def __init__(self, counter: Counter) -> None:
        self.limits = counter

    async def wait(self, key: Hashable) -> float:
        return self.limits.wait(key)

    async def hit(self, key: Hashable) -> None:
        self.limits.failed(key)

    async def clear(self, key: Hashable) -> None:
        self.limits.succeeded(key)


def _name(key: Hashable) -> str:
    return "/".join(map(str, key)) if isinstance(key, tuple) else str(key)


async def _count(client: aioredis.Redis, key: str) -> tuple[bytes | None, int]:
    """A counter's value and its TTL in milliseconds (negative: none), in one round trip."""
    async with client.pipeline(transaction=False) as p:
        p.get(key)
        p.pttl(key)
        count, pttl = await p.execute()
    return count, int(pttl)


class RedisBackoff:
    """:class:`Backoff` in Redis: the count is the key's value, and the time
    since the last failure is what its TTL (reset at each failure) has used."""

    def __init__(self, client: aioredis.Redis, prefix: str, backoff: Backoff) -> None:
        self.client, self.prefix, self.limits = client, prefix, backoff
        self.local = LocalTally(backoff)

    async def wait(self, key: Hashable) -> float:
        if self.limits.free <= 0:
            return 0.0
        try:
            count, pttl = await _count(self.client, self.prefix + _name(key))
        except (RedisError, OSError) as exc:
            log.debug("shared counter unavailable, counting here: %s", exc)
            return await self.local.wait(key)
        if count is None or pttl < 0:
            return await self.local.wait(key)
        since = self.limits.forget - pttl / 1000
        local = await self.local.wait(key)
        return float(max(0.0, self.limits.delay(int(count)) - since, local))

    async def hit(self, key: Hashable) -> None:
        if self.limits.free <= 0:
            return
        try:
            async with self.client.pipeline(transaction=False) as p:
                p.incr(self.prefix + _name(key))
                p.pexpire(self.prefix + _name(key), int(self.limits.forget * 1000))
                await p.execute()
        except (RedisError, OSError):
            await self.local.hit(key)

    async def clear(self, key: Hashable) -> None:
        await self.local.clear(key)
        with contextlib.suppress(RedisError, OSError):
            await self.client.delete(self.prefix + _name(key))


class RedisMeter:
    """:class:`FailureLimiter` in Redis: a count per key for a fixed window."""

    def __init__(self, client: aioredis.Redis, prefix: str, meter: Meter) -> None:
        self.client, self.prefix, self.limits = client, prefix, meter
        self.local = LocalTally(meter)
        self._incr = client.register_script(_METER)

    async def wait(self, key: Hashable) -> float:
        if self.limits.limit <= 0:
            return 0.0
        try:
            count, pttl = await _count(self.client, self.prefix + _name(key))
        except (RedisError, OSError):
            return await self.local.wait(key)
        if count is None or int(count) < self.limits.limit or pttl < 0:
            return await self.local.wait(key)
        return float(pttl) / 1000

    async def hit(self, key: Hashable) -> None:
        if self.limits.limit <= 0:
            return
        try:
            await self._incr(keys=[self.prefix + _name(key)], args=[int(self.limits.window * 1000)])
        except (RedisError, OSError):
            await self.local.hit(key)

    async def clear(self, key: Hashable) -> None:
        await self.local.clear(key)


class Tallies:
    """The three shared counts the service keeps, and users' flood buckets
    between sessions (tokens left, wall-clock time)."""

    def __init__(self, by_pair: Tally, by_address: Tally, registrations: Tally) -> None:
        self.by_pair, self.by_address, self.registrations = by_pair, by_address, registrations
        self.client: aioredis.Redis | None = None
        self.prefix = ""
        self._buckets: dict[int, tuple[float, float]] = {}

    async def keep_bucket(self, uid: int, tokens: float, at: float, ttl: float) -> None:
        if len(self._buckets) >= 100_000:
            for old in list(self._buckets)[:10_000]:
                del self._buckets[old]
        self._buckets[uid] = (tokens, at)
        if self.client is not None:
            with contextlib.suppress(RedisError, OSError):
                key = f"{self.prefix}bucket:{uid}"
                await self.client.set(key, f"{tokens}:{at}", px=max(1, int(ttl * 1000)))

    async def take_bucket(self, uid: int) -> tuple[float, float] | None:
        found = self._buckets.pop(uid, None)
        if self.client is not None:
            with contextlib.suppress(RedisError, OSError, ValueError):
                raw = await self.client.getdel(f"{self.prefix}bucket:{uid}")
                if raw:
                    text = raw.decode() if isinstance(raw, bytes) else str(raw)
                    tokens, _, at = text.partition(":")
                    found = (float(tokens), float(at))
        return found

    @classmethod
    def local(cls, by_pair: Backoff, by_address: Backoff, registrations: Meter) -> Tallies:
        return cls(LocalTally(by_pair), LocalTally(by_address), LocalTally(registrations))

    @classmethod
    def shared(
        cls,
        url: str,
        prefix: str,
        by_pair: Backoff,
        by_address: Backoff,
        registrations: Meter,
    ) -> Tallies:
        client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        p = f"{prefix}limit:"
        made = cls(
            RedisBackoff(client, p + "pair:", by_pair),
            RedisBackoff(client, p + "addr:", by_address),
            RedisMeter(client, p + "reg:", registrations),
        )
        made.client, made.prefix = client, p
        return made

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
