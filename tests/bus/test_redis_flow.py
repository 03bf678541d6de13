"""Two bus endpoints in one process over a real Redis: the receiver acknowledges
only after storing, and a full window refuses a sender with Busy, having
handed nothing on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from clusterchat import errors
from clusterchat.bus import scripts
from clusterchat.bus.base import Settlement
from clusterchat.bus.redis import RedisCluster
from tests.helpers import OwnRedis

BOB = 7
BIG = b"x" * 60_000


class Inbox:
    """The service's side of the bus, reduced to what these tests watch."""

    def __init__(self, here: bool) -> None:
        self.here = here  # False: every delivery finds the user gone
        self.offered: list[bytes] = []
        self.stored: list[tuple[list[int], bytes]] = []
        self.writes = 0  # calls to store (one write each in the service)
        self.groups: list[int] = []  # 'g' events handled (a marker after other events)
        self.gate = asyncio.Event()
        self.gate.set()

    def deliver(self, uid: int, payload: bytes, settlement: Settlement | None = None) -> bool:
        self.offered.append(payload)
        return self.here

    async def store_offline(self, uids: Sequence[int], payload: bytes) -> None:
        await self.gate.wait()
        self.writes += 1
        self.stored.append((list(uids), payload))

    async def store_offline_many(self, messages: Sequence[tuple[Sequence[int], bytes]]) -> None:
        await self.gate.wait()
        self.writes += 1
        self.stored.extend((list(uids), payload) for uids, payload in messages)

    def nudged(self, uid: int) -> None:
        return None

    def local_users(self) -> list[int]:
        return []

    async def reconnected(self) -> None:
        return None

    def displaced(self, uid: int) -> None:
        return None

    def taken_over(self, uid: int) -> None:
        pass

    def kicked(self, uid: int, banned: bool = False) -> None:
        return None

    def group_changed(self, gid: int) -> None:
        self.groups.append(gid)


@pytest.fixture
async def redis_url(tmp_path: Path) -> AsyncIterator[str]:
    r = OwnRedis(tmp_path)
    await r.start()
    try:
        yield r.url
    finally:
        await r.kill()


async def _until(check: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - state of the bus, polled
            await asyncio.sleep(0.01)


async def test_ack_after_store_and_busy_when_the_window_is_full(redis_url: str) -> None:
    a_inbox, b_inbox = Inbox(here=True), Inbox(here=False)
    a = RedisCluster(redis_url, "a", "t:", presence_ttl=10, window=100_000)
    b = RedisCluster(redis_url, "b", "t:", presence_ttl=10)
    a.room_wait = 0.5
    await a.start(a_inbox)
    await b.start(b_inbox)
    try:
        assert await b.claim(BOB)
        b_inbox.gate.clear()  # b's store hangs: it must not acknowledge yet
        assert await a.send([BOB], BIG) == []
        await _until(lambda: b_inbox.offered)
        rx = b._receiving["a"]
        assert not rx.due() and rx._taking == {1}, "acknowledged before it was stored"
        assert a._windows["b"].held == len(BIG), "acknowledged before it was stored"

        with pytest.raises(errors.Busy):
            await a.send([BOB], BIG + b"2")
        assert a._windows["b"].held == len(BIG), "the refused message took room"

        b_inbox.gate.set()
        await _until(lambda: a._windows["b"].held == 0)
        assert b_inbox.stored == [([BOB], BIG)]
        assert b_inbox.offered == [BIG], "the refused message was handed on"
        assert await a.send([BOB], BIG) == []  # room again
        await _until(lambda: len(b_inbox.stored) == 2)
        assert a_inbox.stored == []  # nothing came back to the sender
    finally:
        await a.close()
        await b.close()


async def test_post_reported_tells_the_outcome_and_leaves_storing_to_the_caller(
    redis_url: str,
) -> None:
    a_inbox, b_inbox = Inbox(here=True), Inbox(here=True)
    a = RedisCluster(redis_url, "a", "t:", presence_ttl=10)
    b = RedisCluster(redis_url, "b", "t:", presence_ttl=10)
    await a.start(a_inbox)
    await b.start(b_inbox)
    outcomes: list[tuple[bytes, bool]] = []
    try:
        assert not a.post_reported(BOB, b"unknown", lambda ok: outcomes.append((b"?", ok)))
        assert await b.claim(BOB)
        # A lookup its claim's event crosses is not cached: a has the event first.
        await b.client.publish("t:events", "g1")
        await _until(lambda: a_inbox.groups == [1])
        assert await a.send([BOB], b"warm") == []  # the route is known now
        assert a.post_reported(BOB, b"one", lambda ok: outcomes.append((b"one", ok)))
        assert a.post_reported(BOB, b"two", lambda ok: outcomes.append((b"two", ok)))
        await _until(lambda: len(outcomes) == 2)
        assert outcomes == [(b"one", True), (b"two", True)]
        await _until(lambda: b_inbox.offered == [b"warm", b"one", b"two"])

        await b.close()  # nobody subscribes to b's channel now; a still routes BOB there
        assert a.post_reported(BOB, b"three", lambda ok: outcomes.append((b"three", ok)))
        await _until(lambda: len(outcomes) == 3)
        assert outcomes[2] == (b"three", False)
        await _until(lambda: a._windows["b"].held == 0)  # the refused batch is settled
        assert a_inbox.stored == [], "the bus stored what its caller keeps"

        # While the bus stores a posted message of its own, later ones are not
        # posted (they would overtake it): the caller falls back to send().
        a._routes[BOB] = "b"
        a_inbox.gate.clear()
        assert a.post(BOB, b"legacy")
        await _until(lambda: BOB in a._held)
        assert not a.post_reported(BOB, b"four", lambda ok: outcomes.append((b"four", ok)))
        assert not a.post(BOB, b"legacy too")  # the original client's message, the same
        a_inbox.gate.set()
        await _until(lambda: a_inbox.stored == [([BOB], b"legacy")])
        await _until(lambda: BOB not in a._held)
        a._routes[BOB] = "b"
        assert a.post_reported(BOB, b"five", lambda ok: outcomes.append((b"five", ok)))
        await _until(lambda: len(outcomes) == 4)
        assert outcomes[3] == (b"five", False)
    finally:
        await a.close()
        if not b._closing:
            await b.close()


async def test_a_burst_of_logins_and_departures_waits_for_the_pool(redis_url: str) -> None:
    """More presence calls at once than the pool has connections (a reconnect
    storm, a burst of disconnects) wait their turn: before, redis-py refused
    each one past its 100th with "Too many connections", and a user whose
    release failed stayed online in the cluster's eyes."""
    a = RedisCluster(redis_url, "a", "t:", presence_ttl=10)
    await a.start(Inbox(here=True))
    try:
        uids = range(1000, 1600)
        assert all(await asyncio.gather(*(a.claim(u) for u in uids)))
        assert await a.online(uids) == set(uids)
        await asyncio.gather(*(a.release(u) for u in uids))
        assert await a.online(uids) == set()
    finally:
        await a.close()


async def test_a_failed_release_is_retried_at_the_heartbeat(redis_url: str) -> None:
    """A release that fails (Redis paused past the socket timeout) leaves the
    user online in the cluster's eyes only until the next heartbeat, which
    releases them again, unless they logged in here again meanwhile."""
    a = RedisCluster(redis_url, "a", "t:", presence_ttl=3)
    await a.start(Inbox(here=True))
    admin = aioredis.Redis.from_url(redis_url)
    again = BOB + 1
    try:
        assert await a.claim(BOB) and await a.claim(again)
        await admin.client_pause(2500, all=False)  # writes (and scripts) wait
        await asyncio.gather(a.release(BOB), a.release(again))  # both time out
        assert await a.online([BOB, again]) == {BOB, again}
        assert await a.claim(again)  # back on this node: the retry must leave it be
        await _until(lambda: not a._unreleased)
        assert await a.online([BOB, again]) == {again}
    finally:
        await admin.aclose()
        await a.close()


class Nudged(Inbox):
    def __init__(self) -> None:
        super().__init__(here=True)
        self.nudges: list[int] = []

    def nudged(self, uid: int) -> None:
        self.nudges.append(uid)


async def test_a_nudge_that_cannot_be_routed_is_sent_again(redis_url: str) -> None:
    """Something stored for an online user is announced by a nudge; when
    Redis cannot say where the user is, the nudge is tried again at the
    heartbeat. Before, it was dropped, and the message waited for the
    user's next login although they were online."""
    inbox = Nudged()
    a = RedisCluster(redis_url, "a", "t:", presence_ttl=3)
    await a.start(inbox)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        assert await a.claim(BOB)
        await admin.client_pause(2500, all=False)  # scripts wait: LOCATE times out
        await a.nudge([BOB])
        assert inbox.nudges == []
        await _until(lambda: inbox.nudges == [BOB])
    finally:
        await admin.aclose()
        await a.close()


class Receipts(Inbox):
    """Every delivery goes to a client with receipts that has not confirmed it."""

    def __init__(self) -> None:
        super().__init__(here=True)
        self.held: list[Settlement] = []

    def deliver(self, uid: int, payload: bytes, settlement: Settlement | None = None) -> bool:
        if settlement is not None:
            settlement.hold()
            self.held.append(settlement)
        return super().deliver(uid, payload, settlement)


@contextlib.asynccontextmanager
async def sender_and_receiver(
    redis_url: str, a_inbox: Inbox, b_inbox: Inbox, ttl: float = 10, a_epoch: str = ""
) -> AsyncIterator[tuple[RedisCluster, RedisCluster]]:
    """Node a (``a_epoch``: as a node of that epoch names itself) sends to
    node b, which holds BOB."""
    a = RedisCluster(redis_url, "a", "t:", presence_ttl=ttl)
    a.epoch = a_epoch or a.epoch
    b = RedisCluster(redis_url, "b", "t:", presence_ttl=ttl)
    await a.start(a_inbox)
    await b.start(b_inbox)
    try:
        assert await b.claim(BOB)
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_a_batch_waiting_for_receipts_is_kept_by_its_sender_until_settled(
    redis_url: str,
) -> None:
    b_inbox = Receipts()
    async with sender_and_receiver(redis_url, Inbox(here=True), b_inbox) as (a, _):
        assert await a.send([BOB], b"hello\n") == []
        window = a._windows["b"]
        await _until(lambda: window.keeping() == 1)  # taken, out of the window
        assert window.held == 0 and window.kept == len(b"hello\n")
        b_inbox.held.pop().release()  # the client's RECEIVED
        await _until(lambda: window.keeping() == 0 and window.kept == 0)


async def test_the_receiver_knows_what_share_of_its_senders_limit_its_clients_pin(
    redis_url: str,
) -> None:
    """What a sender keeps for the receiving node's clients counts against
    its limit (8 windows); the receiver sees the share, and past a half
    gives its clients less time to confirm (core.SETTLE_GRACE_PRESSED)."""
    b_inbox = Receipts()
    async with sender_and_receiver(redis_url, Inbox(here=True), b_inbox) as (a, b):
        assert b.pinned() == 0.0
        for _ in range(3):
            assert await a.send([BOB], BIG) == []
        await _until(lambda: a._windows["b"].keeping() == 3)
        kept = a._windows["b"].kept
        assert kept >= 3 * len(BIG)
        assert b.pinned() == pytest.approx(b._pinned["a"] / (8 * b.window))
        assert b._pinned["a"] >= 3 * len(BIG)
        for settlement in b_inbox.held:  # the receipts come
            settlement.release()
        await _until(lambda: a._windows["b"].kept == 0)
        assert b.pinned() == 0.0


async def test_a_sender_from_before_keeping_gets_its_ack_at_taken(redis_url: str) -> None:
    """A rolling upgrade: the old sender ignores taken-acks, so it is
    acknowledged as it was (else it stored every such batch at its ack
    timeout, and its window filled meanwhile)."""
    b_inbox = Receipts()
    old = "0123abcd"  # as a node before kept batches names itself
    async with sender_and_receiver(redis_url, Inbox(here=True), b_inbox, a_epoch=old) as (a, _):
        assert await a.send([BOB], b"hello\n") == []
        window = a._windows["b"]
        await _until(lambda: window.in_flight() == 0)
        assert window.keeping() == 0 and window.held == 0 and b_inbox.held


async def test_a_dead_receivers_kept_batches_are_stored_in_order_in_few_writes(
    redis_url: str,
) -> None:
    """A node's death returns every batch it kept (a second of traffic):
    stored one write each, they held their receivers' next messages for
    seconds (a soak's senders timed out)."""
    a_inbox = Inbox(here=True)
    a_inbox.gate.set()
    async with sender_and_receiver(redis_url, a_inbox, Receipts(), ttl=1) as (a, b):
        sent = [b"m%d\n" % i for i in range(300)]
        for payload in sent:  # one batch each: each awaits its PUBLISH
            assert await a.send([BOB], payload) == []
        window = a._windows["b"]
        await _until(lambda: window.keeping() == 300)
        await b.close()  # its heartbeat key goes: as a SIGKILL's lapses
        await _until(lambda: len(a_inbox.stored) == 300)
        assert a_inbox.stored == [([BOB], p) for p in sent]
        assert a_inbox.writes <= 3


async def _die(node: RedisCluster) -> None:
    """As a SIGKILL: its loops stop and nothing is cleaned up."""
    for task in node._tasks:
        task.cancel()
    await asyncio.gather(*node._tasks, return_exceptions=True)
    node._publisher.close()
    await node.client.aclose()


@pytest.mark.parametrize("found_by", ["its next process", "a survivor"])
async def test_a_dead_nodes_copies_are_stored_by_whoever_finds_them(
    redis_url: str, found_by: str
) -> None:
    """Copies of messages delivered on a node to clients that had not
    confirmed them: released, they go; the node killed, its next process
    (same id) or the survivor that reaps it stores them, in order, once."""
    r = aioredis.Redis.from_url(redis_url)
    survivor_inbox = Inbox(here=True)
    survivor_inbox.gate.set()
    survivor = RedisCluster(redis_url, "a", "t:", presence_ttl=1)
    await survivor.start(survivor_inbox)
    b = RedisCluster(redis_url, "b", "t:", presence_ttl=1)
    await b.start(Inbox(here=True))
    try:
        copied: list[bool] = []
        confirmed, waiting = Settlement(), Settlement()
        for i, settlement in enumerate((confirmed, waiting, waiting)):
            settlement.hold()
            assert not b.copy([BOB], b"m%d\n" % i, settlement, copied.append)
        await _until(lambda: copied == [True, True, True])
        assert await r.hlen("t:keep:b") == 3
        confirmed.release()  # the client's RECEIVED
        async with asyncio.timeout(10):
            while await r.hlen("t:keep:b") != 2:  # noqa: ASYNC110 - Redis state, polled
                await asyncio.sleep(0.01)
        await _die(b)
        if found_by == "a survivor":
            inbox = survivor_inbox  # reaps b 3 TTLs after its last heartbeat
        else:
            inbox = Inbox(here=True)
            inbox.gate.set()
            b = RedisCluster(redis_url, "b", "t:", presence_ttl=1)
            await b.start(inbox)
        await _until(lambda: inbox.stored == [([BOB], b"m1\n"), ([BOB], b"m2\n")])
        async with asyncio.timeout(10):
            while await r.keys("t:keep:*"):  # noqa: ASYNC110 - Redis state, polled
                await asyncio.sleep(0.01)
    finally:
        await survivor.close()
        if found_by != "a survivor":
            await b.close()
        await r.aclose()


async def test_copies_claimed_by_a_reaper_that_died_are_stored_by_the_next(
    redis_url: str,
) -> None:
    """Node z reaped node b and claimed its copies, then died before storing
    them: whoever reaps z takes over its claims (they were orphaned for good)."""
    r = aioredis.Redis.from_url(redis_url)
    b = RedisCluster(redis_url, "b", "t:", presence_ttl=1)
    await b.start(Inbox(here=True))
    copied: list[bool] = []
    waiting = Settlement()
    waiting.hold()
    assert not b.copy([BOB], b"m\n", waiting, copied.append)
    await _until(lambda: copied == [True])
    await _die(b)
    async with asyncio.timeout(10):  # its heartbeat lapses
        while await r.exists("t:node:b"):  # noqa: ASYNC110 - Redis state, polled
            await asyncio.sleep(0.05)
    await r.zadd("t:nodes", {"b": 0})  # silent since long ago
    reap = r.register_script(scripts.REAP)
    assert await reap(keys=["t:nodes"], args=["t:", 0, "z"])  # z claims b's copies...
    assert await r.scard("t:claims:z") == 1
    await r.zadd("t:nodes", {"z": 0})  # ...and dies before storing them
    inbox = Inbox(here=True)
    inbox.gate.set()
    a = RedisCluster(redis_url, "a", "t:", presence_ttl=1)
    await a.start(inbox)
    try:
        await _until(lambda: inbox.stored == [([BOB], b"m\n")])
        async with asyncio.timeout(10):
            while await r.keys("t:keep:*") or await r.keys("t:claims:*"):  # noqa: ASYNC110 - Redis state, polled
                await asyncio.sleep(0.05)
    finally:
        await a.close()
        await r.aclose()
