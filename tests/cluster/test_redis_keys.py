"""Nothing a node writes to Redis outlives it (issue 12, item 3): a node killed
with SIGKILL used to leave ``{prefix}members:<id>`` forever."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.cluster.conftest import PRESENCE_TTL, Cluster


async def _keys(client: aioredis.Redis, prefix: str) -> dict[str, int]:
    """Every key under the prefix and its TTL in ms (-1: none)."""
    names = [k.decode() async for k in client.scan_iter(match=f"{prefix}*")]
    return {k: await client.pttl(k) for k in names}


async def test_survivors_clean_what_a_killed_node_left(cluster: Cluster) -> None:
    alice = await cluster.user_on("node0")
    bob = await cluster.user_on("node1")
    p = cluster.prefix
    client = aioredis.Redis.from_url(cluster.redis_url)
    try:
        keys = await _keys(client, p)
        assert keys[f"{p}members:node1"] > 0, "a member set without expiry"
        assert keys[f"{p}node:node1"] > 0
        await cluster.kill("node1")
        for _ in range(int(10 * PRESENCE_TTL / 0.2)):  # the survivor reaps it
            keys = await _keys(client, p)
            if f"{p}members:node1" not in keys and f"{p}user:{bob.id}" not in keys:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"left behind: {keys}")
        assert await client.zrange(f"{p}nodes", 0, -1) == [b"node0"]
        # What the survivor holds expires by itself, or is cleaned by the next survivor.
        assert keys[f"{p}members:node0"] > 0 and keys[f"{p}node:node0"] > 0
        assert await client.get(f"{p}user:{alice.id}") == b"node0"
        assert set(keys) == {
            f"{p}nodes", f"{p}node:node0", f"{p}members:node0", f"{p}user:{alice.id}"
        }, keys  # fmt: skip
    finally:
        await client.aclose()
