"""The bus's own Redis connections (bus/resp.py) against a real Redis: each
batch's answers in order, a password, and a Redis that goes away and comes
back (the pending batch fails, the next one reconnects)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from clusterchat.bus import resp
from tests.helpers import OwnRedis, StallingProxy


async def _subscribed(url: str, channels: list[bytes]) -> tuple[resp.Subscription, list[bytes]]:
    got: list[bytes] = []
    sub = resp.Subscription(url, channels, lambda _ch, data: got.append(data), 2.0)
    await sub.open()
    return sub, got


async def _until(check: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - polled state
            await asyncio.sleep(0.01)


async def test_batches_are_answered_in_order_and_messages_arrive_in_order(
    own_redis: OwnRedis,
) -> None:
    sub, got = await _subscribed(own_redis.url, [b"t:a", b"t:b"])
    pub = resp.Publisher(own_redis.url, 2.0)
    try:
        first = pub.publish([(b"t:a", b"1"), (b"t:nobody", b"x"), (b"t:b", b"2")])
        second = pub.publish([(b"t:a", b"3" * 100_000)])
        assert list(await asyncio.gather(first, second)) == [[1, 0, 1], [1]]
        await _until(lambda: len(got) == 3)
        assert got == [b"1", b"2", b"3" * 100_000]
    finally:
        pub.close()
        sub.close()


async def test_a_password_is_sent_first(tmp_path: Path) -> None:
    r = OwnRedis(tmp_path, "--requirepass", "sesame")
    await r.start()
    url = r.url.replace("redis://", "redis://:sesame@")
    try:
        sub, got = await _subscribed(url, [b"t:a"])
        pub = resp.Publisher(url, 2.0)
        assert await pub.publish([(b"t:a", b"hi")]) == [1]
        await _until(lambda: got == [b"hi"])
        pub.close()
        sub.close()
        with pytest.raises(RedisError):  # a wrong password is no subscription
            await resp.Subscription(r.url, [b"t:a"], lambda _c, _d: None, 2.0).open()
    finally:
        await r.kill()


async def test_redis_gone_fails_the_batch_and_the_watch_then_both_come_back(
    own_redis: OwnRedis,
) -> None:
    sub, got = await _subscribed(own_redis.url, [b"t:a"])
    pub = resp.Publisher(own_redis.url, 2.0)
    watching = asyncio.ensure_future(sub.watch(every=5.0))
    try:
        assert await pub.publish([(b"t:a", b"before")]) == [1]
        await own_redis.kill()
        with pytest.raises(RedisError):
            async with asyncio.timeout(5):
                await watching
        with pytest.raises((RedisError, OSError)):
            await pub.publish([(b"t:a", b"during")])
        await own_redis.start()
        sub, got = await _subscribed(own_redis.url, [b"t:a"])
        assert await pub.publish([(b"t:a", b"after")]) == [1]
        await _until(lambda: got == [b"after"])
    finally:
        watching.cancel()
        pub.close()
        sub.close()


@pytest.mark.serial  # times the publish timeout to 0.2 s
async def test_a_silent_redis_fails_the_batch_within_the_timeout_then_publishing_resumes(
    own_redis: OwnRedis,
) -> None:
    """One watchdog timer, not a timeout per batch: the batch still fails
    within 1.25 times the timeout, and the next one reconnects."""
    proxy = StallingProxy(own_redis.port)
    await proxy.start()
    pub = resp.Publisher(f"redis://127.0.0.1:{proxy.port}/0", 0.4)
    loop = asyncio.get_running_loop()
    try:
        assert await pub.publish([(b"t:a", b"before")]) == [0]
        proxy.stall_existing()
        began = loop.time()
        with pytest.raises(RedisTimeoutError):
            await pub.publish([(b"t:a", b"stalled")])
        assert 0.4 <= loop.time() - began <= 0.4 * 1.25 + 0.2
        assert await pub.publish([(b"t:a", b"after")]) == [0]  # a new connection flows
    finally:
        pub.close()
        await proxy.close()
