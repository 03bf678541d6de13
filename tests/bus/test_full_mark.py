"""The full-mailbox mark next to a user's presence in Redis (scripts.CLAIM,
MARK, RELEASE, LOCATE), and the route a sender's node takes from it: a user
whose node marked their mailbox full is online, but messages to them take
the stored path (where the quota applies) instead of the bus."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterchat.bus import scripts
from clusterchat.bus.redis import RedisCluster
from tests.bus.test_redis_flow import Inbox, _until
from tests.helpers import SHARED_REDIS, OwnRedis, ScriptGate, redis_prefix

NODES = ("a", "b", "c")
UIDS = (1, 2)


class Scripts:
    """The presence scripts over one Redis, under a prefix of their own."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r, self.p = client, prefix
        self.claim_s = client.register_script(scripts.CLAIM)
        self.release_s = client.register_script(scripts.RELEASE)
        self.mark_s = client.register_script(scripts.MARK)
        self.locate_s = client.register_script(scripts.LOCATE)

    def keys(self, uid: int) -> tuple[str, str]:
        return f"{self.p}user:{uid}", f"{self.p}full:{uid}"

    def claim(self, node: str, uid: int, full: bool) -> bool:
        user, mark = self.keys(uid)
        members = f"{self.p}members:{node}"
        return bool(
            self.claim_s(keys=[user, members, mark], args=[self.p, node, uid, 60_000, int(full)])
        )

    def release(self, node: str, uid: int) -> None:
        user, mark = self.keys(uid)
        self.release_s(keys=[user, f"{self.p}members:{node}", mark], args=[self.p, node, uid])

    def mark(self, node: str, uid: int, full: bool) -> bool:
        return bool(self.mark_s(keys=list(self.keys(uid)), args=[self.p, node, uid, int(full)]))

    def locate(self, uids: list[int]) -> list[tuple[str | None, bool]]:
        keys = [self.keys(u)[0] for u in uids] + [self.keys(u)[1] for u in uids]
        out = self.locate_s(keys=keys, args=[self.p])
        return [
            (n.decode() if n else None, bool(f)) for n, f in zip(out[::2], out[1::2], strict=True)
        ]


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(SHARED_REDIS)
    yield r
    r.close()


OPS = st.lists(
    st.tuples(
        st.sampled_from(["claim", "release", "mark", "die", "live"]),
        st.sampled_from(NODES),
        st.sampled_from(UIDS),
        st.booleans(),
    ),
    max_size=30,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_locate_says_full_only_for_the_live_holders_own_mark(
    client: redis.Redis, ops: list[tuple[str, str, int, bool]]
) -> None:
    """Against a model: the holder is whoever claimed last while the one
    before was dead or gone; its mark is what it last claimed or marked;
    a mark set by a node that no longer holds the user never shows."""
    p = redis_prefix("ccmark")
    s = Scripts(client, p)
    alive = set(NODES)
    holder: dict[int, str] = {}
    full: dict[int, bool] = {}
    for node in NODES:
        client.set(f"{p}node:{node}", 1)
    try:
        for op, node, uid, flag in ops:
            if op == "claim":
                free = uid not in holder or holder[uid] == node or holder[uid] not in alive
                assert s.claim(node, uid, flag) == free
                if free:
                    holder[uid], full[uid] = node, flag
            elif op == "release":
                s.release(node, uid)
                if holder.get(uid) == node:
                    del holder[uid]
            elif op == "mark":
                ours = holder.get(uid) == node
                assert s.mark(node, uid, flag) == ours
                if ours:
                    full[uid] = flag
            elif op == "die":
                client.delete(f"{p}node:{node}")
                alive.discard(node)
            else:
                client.set(f"{p}node:{node}", 1)
                alive.add(node)
            expected = []
            for u in UIDS:
                h = holder.get(u)
                expected.append((h, full[u]) if h is not None and h in alive else (None, False))
            assert s.locate(list(UIDS)) == expected, (op, node, uid, flag)
    finally:
        stale = list(client.scan_iter(match=f"{p}*"))
        if stale:
            client.delete(*stale)


BOB = 7


async def test_a_sender_routes_a_full_receiver_to_the_store_until_the_mark_goes(
    own_redis: OwnRedis,
) -> None:
    """Node b marks BOB full with his claim: node a sees him online, but
    send() hands nothing on (the caller stores within the quota) and post()
    declines; cleared, a's cached route is dropped and the bus delivers
    again; released, the mark is gone from Redis."""
    a_inbox, b_inbox = Inbox(here=True), Inbox(here=True)
    a = RedisCluster(own_redis.url, "a", "t:", presence_ttl=10)
    b = RedisCluster(own_redis.url, "b", "t:", presence_ttl=10)
    await a.start(a_inbox)
    await b.start(b_inbox)
    try:
        assert await b.claim(BOB, full=True)
        assert await a.online([BOB]) == {BOB}
        assert await a.send([BOB], b"while full") == [BOB]
        assert not a.post(BOB, b"posted while full")
        assert not a.post_reported(BOB, b"reported while full", lambda ok: None)
        assert b_inbox.offered == []

        await b.mark_full(BOB, False)
        await _until(lambda: BOB not in a._routes)  # the event dropped the cached route
        assert await a.send([BOB], b"under the quota") == []
        await _until(lambda: b_inbox.offered == [b"under the quota"])

        await b.mark_full(BOB, True)
        await _until(lambda: BOB not in a._routes)
        assert await a.send([BOB], b"full again") == [BOB]
        assert not a.post(BOB, b"posted full again")

        await b.release(BOB)
        assert await b.client.exists(f"t:full:{BOB}", f"t:user:{BOB}") == 0
        assert await a.online([BOB]) == set()
    finally:
        await a.close()
        await b.close()


async def test_a_mark_survives_a_resync(own_redis: OwnRedis) -> None:
    """After Redis lost its data a node claims its users again, with their marks."""

    class Here(Inbox):
        def local_users(self) -> list[int]:
            return [BOB]

    b = RedisCluster(own_redis.url, "b", "t:", presence_ttl=10)
    await b.start(Here(here=True))
    try:
        assert await b.claim(BOB, full=True)
        await b.client.flushall()  # our own redis-server
        await b._resync()
        assert await b._located([BOB]) == [("b", True)]
    finally:
        await b.close()


async def test_a_route_looked_up_as_an_unmark_passes_is_not_cached_full(
    own_redis: OwnRedis,
) -> None:
    """Node a's LOCATE runs while BOB is marked full; node b clears the mark
    and its presence event reaches a before LOCATE's answer does. The event
    dropped nothing (nothing was cached yet); the answer must not then be
    cached as FULL, or every later message from a to BOB takes the stored
    path for as long as BOB stays logged in (no misdelivery corrects a
    route that sends nothing to a node)."""
    sha = hashlib.sha1(scripts.LOCATE.encode()).hexdigest().encode()
    gate = ScriptGate(own_redis.port, sha, hold="reply")
    await gate.start()
    a_inbox, b_inbox = Inbox(here=True), Inbox(here=True)
    a = RedisCluster(gate.url, "a", "t:", presence_ttl=10)
    b = RedisCluster(own_redis.url, "b", "t:", presence_ttl=10)
    await a.start(a_inbox)
    await b.start(b_inbox)
    try:
        await b.client.script_load(scripts.LOCATE)  # EVALSHA finds it: one round trip
        assert await b.claim(BOB, full=True)
        gate.armed = True
        sending = asyncio.ensure_future(a.send([BOB], b"while full"))
        async with asyncio.timeout(10):
            await gate.held.wait()  # LOCATE ran (BOB full); a has not read its answer
        await b.mark_full(BOB, False)
        await b.client.publish("t:events", "g99")  # after the 'p' event, in order
        await _until(lambda: a_inbox.groups == [99])  # a has handled the 'p' event
        gate.open()
        assert await sending == [BOB]  # full when LOCATE ran: stored, within the quota
        assert await b._located([BOB]) == [("b", False)]
        assert await a.send([BOB], b"under the quota") == []
        await _until(lambda: b_inbox.offered == [b"under the quota"])
    finally:
        await a.close()
        await b.close()
        await gate.close()
