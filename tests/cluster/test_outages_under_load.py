"""Outages under steady load: MariaDB, Redis, and a node behind nginx go away
for a while and come back while users keep chatting. Every acknowledged
message must arrive (live or from offline storage); the figures are printed
(`pytest -s`) and recorded in docs/RELIABILITY.md."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from tests.cluster.conftest import PRESENCE_TTL, Cluster, running_cluster
from tests.conftest import MYSQL_SERVER, PASSWORD
from tests.helpers import CuttableProxy, OwnRedis
from tests.steady import SteadyChat

# Paced load through outages: alone, not beside other tests.
pytestmark = pytest.mark.serial

PAIRS = 10
PER_SECOND = 10.0  # per sender: 100 messages a second in all, half of them stored
OUTAGE = 200  # messages answered (or not) while the part is down: about 2 s


def _report(what: str, figures: dict[str, int]) -> None:
    print(f"\n{what}: {json.dumps(figures, sort_keys=True)}")
    lost = figures["acknowledged"] - figures["arrived"]
    assert lost == 0, figures


@pytest.fixture
async def db_proxy() -> AsyncIterator[CuttableProxy]:
    p = CuttableProxy(target_port=int(MYSQL_SERVER.rsplit(":", 1)[1]))
    await p.start()
    yield p
    await p.cut()


@pytest.fixture
async def cluster_via_db_proxy(
    tmp_path: Path, mariadb_url: str, shared_redis: str, db_proxy: CuttableProxy
) -> AsyncIterator[Cluster]:
    host = MYSQL_SERVER.rsplit(":", 1)[0]
    url = f"{host}:{db_proxy.port}/{mariadb_url.rsplit('/', 1)[1]}"
    async with running_cluster(tmp_path, url, shared_redis) as c:
        yield c


async def _load(cluster: Cluster) -> SteadyChat:
    load = SteadyChat("127.0.0.1", [cluster.port], PAIRS, PER_SECOND)
    await load.start()
    await load.until_sent(100)  # steady before the outage
    return load


async def test_mariadb_outage_under_load(
    cluster_via_db_proxy: Cluster, db_proxy: CuttableProxy
) -> None:
    load = await _load(cluster_via_db_proxy)
    try:
        await db_proxy.cut()
        await load.until_sent(OUTAGE)
        during = dict(load.tally.counts)
        await db_proxy.start()
        await load.until_sent(200)
        figures = await load.finish()
    finally:
        await load.close()
    _report("MariaDB down ~2 s", figures)
    # Live chat went on; what needed the store was refused, not acknowledged.
    assert during.get("delivered", 0) > 0 and during.get("refused 150", 0) > 0
    assert set(figures) <= {
        "delivered", "stored", "refused 150", "acknowledged", "arrived", "duplicates"
    }  # fmt: skip


async def test_a_message_waiting_for_the_store_holds_up_only_its_receiver(
    cluster_via_db_proxy: Cluster, db_proxy: CuttableProxy
) -> None:
    """While MariaDB is down, node0 holds a message it must store for dave
    (he left; it retries until the store is back). Chat between online
    users on two nodes needs no store: alice's message to bob must not wait
    behind dave's."""
    import msgspec
    import redis.asyncio as aioredis

    cluster = cluster_via_db_proxy
    alice, bob = await cluster.user_on("node0"), await cluster.user_on("node1")
    dave = await cluster.user_on("node0")
    await dave.conn.request({"msgid": MsgId.LOGOUT}, MsgId.LOGOUT_ACK)
    # The route to bob is known before the outage (it needs no store either).
    await alice.conn.request({"msgid": 6, "toid": bob.id, "msg": "before"}, MsgId.CHAT_ACK)
    assert (await bob.conn.expect(MsgId.ONE_CHAT))["msg"] == "before"
    await db_proxy.cut()
    # A message for dave reaches node0, which no longer holds him: it must be stored.
    payload = codec.encode({"msgid": 6, "id": bob.id, "name": bob.name, "toid": dave.id,
                            "msg": "for dave", "mid": "x-1", "ts": 0})  # fmt: skip
    client = aioredis.Redis.from_url(cluster.redis_url)
    try:
        batch = msgspec.msgpack.encode(("test", 0, 0, [(0, [dave.id], payload, 0)]))
        assert await client.publish(f"{cluster.prefix}to:node0", batch) == 1
    finally:
        await client.aclose()
    ack = await alice.conn.request({"msgid": 6, "toid": bob.id, "msg": "during"}, MsgId.CHAT_ACK)
    assert ack["status"] == "delivered"
    assert (await bob.conn.expect(MsgId.ONE_CHAT))["msg"] == "during"
    await db_proxy.start()
    got: list[str] = []
    async with asyncio.timeout(15):
        while not got:  # stored once the store is back
            again = await cluster.connect_to("node1")
            login = await again.login(dave.id, PASSWORD)
            got = [json.loads(m)["msg"] for m in login.get("offlinemsg", ())]
            if got:
                break
            # Stored just after this login read the store: pushed to it instead.
            await again.send({"msgid": MsgId.LOGOUT})
            while (msg := await again.recv())["msgid"] != MsgId.LOGOUT_ACK:
                if msg["msgid"] == MsgId.ONE_CHAT:
                    got.append(msg["msg"])
            await asyncio.sleep(0.2)
    assert got == ["for dave"]


async def test_redis_outage_under_load(cluster_on_own_redis: Cluster, own_redis: OwnRedis) -> None:
    load = await _load(cluster_on_own_redis)
    try:
        await own_redis.kill()
        await load.until_sent(OUTAGE)
        await own_redis.start()
        await load.until_sent(200)
        figures = await load.finish()
    finally:
        await load.close()
    _report("Redis down ~2 s", figures)
    # Messages across nodes were stored instead of relayed: nothing refused.
    stored, refused = figures.get("stored", 0), [k for k in figures if k.startswith("refused")]
    assert stored > 0 and not refused, figures


async def test_node_killed_behind_nginx_under_load(cluster: Cluster) -> None:
    load = await _load(cluster)
    try:
        before = [len(p.acked) for p in load.pairs]
        await cluster.kill("node0", signal.SIGKILL)
        # Its users reconnect through nginx to node1 and log in again with
        # their tickets once node0's presence has expired.
        await load.until_sent(OUTAGE, timeout=30 + PRESENCE_TTL)
        figures = await load.finish()
        # Every sender, including those that were on node0, carried on.
        assert all(len(p.acked) > n for p, n in zip(load.pairs, before, strict=True))
    finally:
        await load.close()
    _report("node killed (kill -9) behind nginx", figures)
    assert figures.get("unanswered", 0) <= PAIRS  # at most the one in flight per sender
