"""Presence and delivery between nodes over one Redis.

Presence: ``{p}user:{uid}`` names the node holding a user; ``{p}node:{id}``
is that node's heartbeat, a key with a TTL the node keeps refreshing. A user
counts as online only while their node's heartbeat lives, so a node killed
with SIGKILL frees its users within ``presence_ttl`` seconds, no clean-up
needed. ``{p}members:{id}`` lists a node's users so it can re-assert them
after Redis lost its data.

Delivery: every node subscribes to one channel, ``{p}to:{id}``. Messages for
users on other nodes are queued per destination and published in one
pipelined round trip per event-loop tick, as msgpack batches; a group
message is one item naming all its receivers on that node. PUBLISH's count
tells whether the node is there: if not, the sender stores the message
offline. A node that receives a message for a user who has left forwards it
once to wherever the user is now, or stores it offline.

PUBLISH counts a subscriber that is dying as a receiver, so a node killed
mid-stream could swallow a batch. Every batch is therefore acknowledged
(piggybacked on traffic the other way, or alone); a batch not acknowledged
within ``ack_timeout`` is stored offline by its sender. That is at-least-once:
a receiver that delivered but died before acknowledging causes a duplicate
(same ``mid``), never a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from clusterchat import errors
from clusterchat.bus.base import Inbox

log = logging.getLogger(__name__)

DELIVER, NUDGE = 0, 1
Item = tuple[int, list[int], bytes, int]  # kind, receivers, payload, hops
#: What one PUBLISH carries: sender node, batch seq (0: nothing to ack), the
#: highest seq of the receiver's batches the sender has taken, items.
Batch = tuple[str, int, int, list[Item]]

_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'node:' .. holder) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[1] .. 'events', 'p' .. ARGV[3])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[1] .. 'events', 'p' .. ARGV[3])
return 1
"""

_LOCATE = """
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder and redis.call('EXISTS', ARGV[1] .. 'node:' .. holder) == 1 then
    out[i] = holder
  else
    out[i] = false
  end
end
return out
"""


def _translate(exc: BaseException) -> errors.Unavailable:
    return errors.Unavailable(f"redis unavailable: {exc.__class__.__name__}: {exc}")


class RedisCluster:
    """Both the :class:`~clusterchat.bus.base.Presence` and the :class:`~clusterchat.bus.base.Bus`
    of a cluster node."""

    shared = True

    def __init__(
        self,
        url: str,
        node_id: str,
        prefix: str = "clusterchat:",
        presence_ttl: float = 10.0,
    ) -> None:
        self.node_id = node_id
        self.prefix = prefix
        self.presence_ttl = presence_ttl
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=2,
            socket_connect_timeout=2,
            health_check_interval=5,
            retry=Retry(NoBackoff(), 0),
        )
        self._claim = self.client.register_script(_CLAIM)
        self._release = self.client.register_script(_RELEASE)
        self._locate = self.client.register_script(_LOCATE)
        self._members_key = f"{prefix}members:{node_id}"
        self._events = f"{prefix}events".encode()
        self._inbox: Inbox | None = None
        self._routes: dict[int, str] = {}
        self._outbox: dict[str, list[Item]] = {}
        self._posted: dict[str, list[Item]] = {}  # queued by post(): nobody awaits them
        self._sent: dict[str, asyncio.Future[bool]] = {}
        self._wake = asyncio.Event()
        self._misdelivered: asyncio.Queue[tuple[list[int], bytes, int]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = asyncio.Event()
        self._was_connected = False
        self._closing = False
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Batch)
        self.ack_timeout = max(1.0, presence_ttl / 2)
        self._next_seq: dict[str, int] = {}
        self._unacked: dict[str, dict[int, tuple[float, list[Item]]]] = {}
        self._ack_due: dict[str, int] = {}

    def _user_key(self, uid: int) -> str:
        return f"{self.prefix}user:{uid}"

    def _channel(self, node: str) -> str:
        return f"{self.prefix}to:{node}"

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, inbox: Inbox) -> None:
        self._inbox = inbox
        try:
            await self._heartbeat_once()
        except (RedisError, OSError) as exc:
            raise _translate(exc) from exc
        loops = (
            self._listen(),
            self._heartbeat(),
            self._flusher(),
            self._redeliver(),
            self._sweep(),
        )
        for work in loops:
            self._tasks.append(asyncio.ensure_future(work))
        async with asyncio.timeout(10):
            await self.connected.wait()

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(RedisError, OSError):
            await self.client.delete(f"{self.prefix}node:{self.node_id}", self._members_key)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()

    async def _heartbeat_once(self) -> None:
        await self.client.set(
            f"{self.prefix}node:{self.node_id}", 1, px=int(self.presence_ttl * 1000)
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.presence_ttl / 3)
            try:
                await self._heartbeat_once()
            except (RedisError, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)

    # -- presence ------------------------------------------------------------------------

    async def claim(self, uid: int) -> bool:
        try:
            got = await self._claim(
                keys=[self._user_key(uid), self._members_key],
                args=[self.prefix, self.node_id, uid],
            )
        except (RedisError, OSError) as exc:
            raise _translate(exc) from exc
        return bool(got)

    async def release(self, uid: int) -> None:
        try:
            await self._release(
                keys=[self._user_key(uid), self._members_key],
                args=[self.prefix, self.node_id, uid],
            )
        except (RedisError, OSError) as exc:
            # The node's member set is reconciled when Redis is back.
            log.warning("could not release user %d: %s", uid, exc)

    async def online(self, uids: Iterable[int]) -> set[int]:
        ids = list(uids)
        if not ids:
            return set()
        where = await self._where(ids)
        return {uid for uid, node in zip(ids, where, strict=True) if node is not None}

    async def _where(self, uids: list[int]) -> list[str | None]:
        try:
            found = await self._locate(keys=[self._user_key(u) for u in uids], args=[self.prefix])
        except (RedisError, OSError) as exc:
            raise _translate(exc) from exc
        return [n.decode() if n else None for n in found]

    # -- sending -------------------------------------------------------------------------

    def post(self, uid: int, payload: bytes) -> bool:
        node = self._routes.get(uid)
        if node is None or node == self.node_id:
            return False
        item: Item = (DELIVER, [uid], payload, 0)
        self._enqueue(node, item)
        self._posted.setdefault(node, []).append(item)
        return True

    async def send(self, uids: Sequence[int], payload: bytes) -> list[int]:
        # Messages being rerouted or stored (a failed publish of posted ones)
        # go first, or this one could overtake them. Usually nothing waits.
        await self._misdelivered.join()
        return await self._send(uids, payload, 0)

    async def _send(self, uids: Sequence[int], payload: bytes, hops: int) -> list[int]:
        routes = self._routes
        by_node: dict[str, list[int]] = {}
        unknown = [uid for uid in uids if uid not in routes]
        if unknown:
            try:
                where = await self._where(unknown)
            except errors.Unavailable:
                where = [None] * len(unknown)
            for uid, node in zip(unknown, where, strict=True):
                if node is not None:
                    routes[uid] = node
        undelivered: list[int] = []
        for uid in uids:
            node = routes.get(uid)
            if node is None or node == self.node_id:
                undelivered.append(uid)  # offline, or said to be here but is not
            else:
                by_node.setdefault(node, []).append(uid)
        if not by_node:
            return undelivered
        sent = [self._enqueue(node, (DELIVER, ids, payload, hops)) for node, ids in by_node.items()]
        for (node, ids), ok in zip(by_node.items(), await asyncio.gather(*sent), strict=True):
            if not ok:
                undelivered.extend(ids)
                self._forget_node(node)
        return undelivered

    async def nudge(self, uids: Sequence[int]) -> None:
        try:
            where = await self._where(list(uids))
        except errors.Unavailable:
            return  # stored anyway; delivered at the next login
        for uid, node in zip(uids, where, strict=True):
            if node == self.node_id and self._inbox is not None:
                self._inbox.nudged(uid)
            elif node is not None:
                self._enqueue(node, (NUDGE, [uid], b"", 0))

    def _enqueue(self, node: str, item: Item) -> asyncio.Future[bool]:
        self._outbox.setdefault(node, []).append(item)
        fut = self._sent.get(node)
        if fut is None:
            fut = self._sent[node] = asyncio.get_running_loop().create_future()
        self._wake.set()
        return fut

    def _forget_node(self, node: str) -> None:
        for uid in [u for u, n in self._routes.items() if n == node]:
            del self._routes[uid]

    async def _flusher(self) -> None:
        """One pipelined PUBLISH per destination node per tick, in order."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            outbox, self._outbox = self._outbox, {}
            sent, self._sent = self._sent, {}
            posted, self._posted = self._posted, {}
            acks, self._ack_due = self._ack_due, {}
            nodes = list(outbox.keys() | acks.keys())
            seqs = []
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for node in nodes:
                        items = outbox.get(node, [])
                        seq = 0
                        if items:
                            seq = self._next_seq[node] = self._next_seq.get(node, 0) + 1
                        seqs.append(seq)
                        batch: Batch = (self.node_id, seq, acks.get(node, 0), items)
                        pipe.publish(self._channel(node), self._encoder.encode(batch))
                    counts = await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("publish of %d batches failed: %s", len(nodes), exc)
                counts = [0] * len(nodes)
                for node, seq in acks.items():  # owed still
                    self._ack_due[node] = max(seq, self._ack_due.get(node, 0))
            deadline = loop.time() + self.ack_timeout
            for node, seq, count in zip(nodes, seqs, counts, strict=True):
                if count and seq:
                    self._unacked.setdefault(node, {})[seq] = (deadline, outbox[node])
                elif not count:
                    self._forget_node(node)
                    for _kind, uids, payload, _hops in posted.get(node, ()):
                        self._misdelivered.put_nowait((uids, payload, 1))  # store, in order
                fut = sent.get(node)
                if fut is not None and not fut.done():
                    fut.set_result(bool(count))

    async def _sweep(self) -> None:
        """Batches a node took but never acknowledged (it died): store them."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ack_timeout / 2)
            now = loop.time()
            for node, pending in list(self._unacked.items()):
                expired = [seq for seq, (deadline, _) in pending.items() if deadline <= now]
                for seq in expired:
                    _, items = pending.pop(seq)
                    log.warning("node %s did not acknowledge batch %d; storing it", node, seq)
                    for kind, uids, payload, _hops in items:
                        if kind == DELIVER:
                            self._misdelivered.put_nowait((uids, payload, 1))
                if not pending:
                    del self._unacked[node]

    # -- receiving -----------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = 0.05
        while not self._closing:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel(self.node_id), f"{self.prefix}events")
                await self._resync()
                if self._was_connected:
                    self._spawn_reconnected()
                self._was_connected = True
                self.connected.set()
                backoff = 0.05
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self._on_message(msg["channel"], msg["data"])
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("lost Redis: %s; reconnecting", exc)
                self.connected.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _spawn_reconnected(self) -> None:
        assert self._inbox is not None
        task = asyncio.ensure_future(self._inbox.reconnected())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _resync(self) -> None:
        """After (re)connecting: Redis may have lost everything, and events were missed."""
        assert self._inbox is not None
        self._routes.clear()
        await self._heartbeat_once()
        local = set(self._inbox.local_users())
        listed = {int(u) for u in await self.client.smembers(self._members_key)}
        for uid in listed - local:
            await self._release(
                keys=[self._user_key(uid), self._members_key],
                args=[self.prefix, self.node_id, uid],
            )
        for uid in local:
            if not await self.claim(uid):
                log.warning("user %d logged in elsewhere while we were cut off", uid)
                self._inbox.displaced(uid)
        log.info("connected to Redis as node %s (%d local users)", self.node_id, len(local))

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel == self._events:
            event, ident = data[:1], int(data[1:])
            if event == b"p":
                self._routes.pop(ident, None)
            elif event == b"g" and self._inbox is not None:
                self._inbox.group_changed(ident)
            elif event == b"k" and self._inbox is not None:  # clusterchat.admin
                self._inbox.kicked(ident)
            return
        inbox = self._inbox
        assert inbox is not None
        source, seq, acked, items = self._decoder.decode(data)
        if acked:
            pending = self._unacked.get(source)
            if pending:
                for done in [s for s in pending if s <= acked]:
                    del pending[done]
        if seq:
            self._ack_due[source] = max(seq, self._ack_due.get(source, 0))
            self._wake.set()
        for kind, uids, payload, hops in items:
            if kind == NUDGE:
                for uid in uids:
                    inbox.nudged(uid)
                continue
            missed = [uid for uid in uids if not inbox.deliver(uid, payload)]
            if missed:
                self._misdelivered.put_nowait((missed, payload, hops))

    async def _redeliver(self) -> None:
        """Messages for users who left this node: follow them once, else store. In order."""
        assert self._inbox is not None
        while True:
            uids, payload, hops = await self._misdelivered.get()
            try:
                await self._reroute(uids, payload, hops)
            finally:
                self._misdelivered.task_done()

    async def _reroute(self, uids: list[int], payload: bytes, hops: int) -> None:
        assert self._inbox is not None
        for uid in uids:
            self._routes.pop(uid, None)
        left = await self._send(uids, payload, hops + 1) if hops == 0 else uids
        delay = 0.05
        while left:
            try:
                await self._inbox.store_offline(left, payload)
                return
            except errors.Unavailable as exc:
                log.warning("storing %d redirected messages failed, retrying: %s", len(left), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def announce_group(self, gid: int) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.publish(f"{self.prefix}events", f"g{gid}")
