import asyncio

from clusterchat.storage.batching import Batcher


async def test_concurrent_reads_share_one_fetch_and_each_gets_its_own() -> None:
    calls: list[list[int]] = []

    async def fetch(keys: list[int]) -> dict[int, str]:
        calls.append(keys)
        return {k: f"v{k}" for k in keys if k != 3}

    b: Batcher[str] = Batcher(fetch)
    got = await asyncio.gather(*(b.get(k) for k in (1, 2, 3, 2)))
    assert got == ["v1", "v2", None, "v2"]
    assert calls == [[1, 2, 3]]


async def test_a_failed_fetch_fails_every_waiter() -> None:
    async def fetch(keys: list[int]) -> dict[int, str]:
        raise ConnectionError("down")

    b: Batcher[str] = Batcher(fetch)
    results = await asyncio.gather(b.get(1), b.get(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
