import asyncio

from clusterchat.storage.batching import Batcher, WriteBatcher


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


async def test_writes_in_one_tick_share_one_write_and_a_repeated_key_waits_its_turn() -> None:
    """A key written twice in a tick goes to a second write: each write sees
    a key once, so it can tell which of the two took effect."""
    calls: list[dict[int, str]] = []

    async def write(args: dict[int, str]) -> dict[int, bool]:
        calls.append(args)
        return {k: v != "refused" for k, v in args.items()}

    w: WriteBatcher[str, bool] = WriteBatcher(write)
    got = await asyncio.gather(w.put(1, "a"), w.put(2, "refused"), w.put(1, "b"))
    assert list(got) == [True, False, True]
    assert calls == [{1: "a", 2: "refused"}, {1: "b"}]


async def test_a_failed_write_fails_every_waiter() -> None:
    async def write(args: dict[int, str]) -> dict[int, bool]:
        raise ConnectionError("down")

    w: WriteBatcher[str, bool] = WriteBatcher(write)
    results = await asyncio.gather(w.put(1, "a"), w.put(2, "b"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
