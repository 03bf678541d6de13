"""Presence and delivery between nodes over one Redis.

Presence: ``{p}user:{uid}`` names the node holding a user; ``{p}node:{id}``
is that node's heartbeat, a key with a TTL the node keeps refreshing. A user
counts as online only while their node's heartbeat lives, so a node killed
with SIGKILL frees its users within ``presence_ttl`` seconds. ``{p}members:{id}``
lists a node's users so it can re-assert them after Redis lost its data; it
expires unless its node refreshes it. ``{p}nodes`` (a sorted set: node id, last
heartbeat) lets the survivors find a node that died and delete what it held
(:data:`~clusterchat.bus.scripts.REAP`), so nothing a dead node wrote stays behind.

Delivery: every node subscribes to one channel, ``{p}to:{id}``. Messages for
users on other nodes are queued per destination and published in one
pipelined round trip per event-loop tick, as msgpack batches; a group
message is one item naming all its receivers on that node. PUBLISH's count
tells whether the node is there: if not, the sender stores the message
offline. A node that receives a message for a user who has left forwards it
once to wherever the user is now, or stores it offline.

Pub/sub may lose a batch silently: Redis cuts a subscriber whose output buffer
passes ``client-output-buffer-limit pubsub``, and a dying subscriber still
counts as a receiver. The :mod:`~clusterchat.bus.window` state machines make
every loss visible: batches carry per-sender sequence numbers, the receiver
acknowledges exactly the batches it took (after storing or re-routing what it
could not deliver), reports gaps, and the sender stores whatever comes back or
times out. Bytes in flight per destination are bounded by ``window`` (kept
under the subscriber's buffer limit): past it, senders wait, then are refused
with :class:`~clusterchat.errors.Busy`. A node that resubscribed announces it,
and its senders probe it so it reports what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Callable, Container, Iterable, Sequence

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from clusterchat import errors
from clusterchat.bus import resp, scripts
from clusterchat.bus.base import Inbox, Settlement, WindowStats
from clusterchat.bus.window import Flight, ReceiveState, SendWindow, split_acks
from clusterchat.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DELIVER, NUDGE = 0, 1
Item = tuple[int, list[int], bytes, int]  # kind, receivers, payload, hops
#: What one PUBLISH carries: sender node, its epoch, batch seq (0: no items),
#: the highest seq it sent this receiver, then the answer for the receiver's own
#: batches: their epoch, acknowledged and missing seqs as ``[lo, hi, ...]`` runs.
Batch = tuple[str, str, int, int, str, list[int], list[int], list[Item]]
#: Work for the store queue: (receivers, payload, hops) per message, and what
#: to do once all of it is delivered elsewhere or stored.
Work = tuple[list[tuple[list[int], bytes, int]], Callable[[], None] | None]

DEFAULT_WINDOW = 4 * 1024 * 1024
#: Seconds a batch another node took stays kept here while its receipts are
#: out (that node settles it within its receipt timeout, 30 s by default,
#: plus storing): past it, stored (a duplicate at worst).
DEFAULT_KEEP_FOR = 120.0
#: Kept bytes per destination, as a multiple of the window: past it the
#: oldest kept batches are stored.
KEEP_WINDOWS = 8
#: The first letter of the epoch of a node that keeps taken batches.
KEEPS = "K"
#: Rows (a message for one receiver) stored in one write at most when batches
#: come back; the work gathered for it is counted in messages, a guide.
STORE_TOGETHER = 2000
#: Connections for presence and control (the hot path has its own: bus/resp.py),
#: and the seconds a call waits for one before it fails as unavailable.
POOL_SIZE = 64
POOL_WAIT = 5.0
#: Survivors clean up after a node silent for this many presence TTLs.
REAP_AFTER = 3
#: The route cached for a user whose node marked their mailbox full
#: (scripts.MARK): no node, so a message to them takes the stored path,
#: where the quota applies, before any acknowledgement. Node ids are never empty.
FULL = ""


def _translate(exc: BaseException) -> errors.Unavailable:
    return errors.Unavailable(f"redis unavailable: {exc.__class__.__name__}: {exc}")


def _field_order(field: bytes | str) -> int:
    """Copies' fields are numbers, in the order copied (anything else last)."""
    try:
        return int(field)
    except ValueError:
        return 1 << 62


def pubsub_limit(config: dict[str, str]) -> int:
    """The byte count past which Redis cuts a subscriber (the soft limit if
    set, else the hard one; 0: no limit), from ``CONFIG GET client-output-buffer-limit``."""
    words = config.get("client-output-buffer-limit", "").split()
    for i in range(0, len(words) - 3, 4):
        if words[i] == "pubsub":
            hard, soft = int(words[i + 1]), int(words[i + 2])
            return soft or hard
    return 0


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
        window: int = DEFAULT_WINDOW,
        keep_for: float = DEFAULT_KEEP_FOR,
    ) -> None:
        self.node_id = node_id
        #: New per process. Its first letter says this node keeps batches a
        #: receiver took until they are settled (``K``, not a hex digit): a
        #: receiver sends taken-acks only to such senders, and plain acks at
        #: taken to a node from before, which ignores taken-acks.
        self.epoch = KEEPS + secrets.token_hex(4)
        self.prefix = prefix
        self.presence_ttl = presence_ttl
        # Presence calls wait for one of the pool's connections rather than
        # fail: 500 users leaving at once (a burst of disconnects) must not
        # leave 400 of them online in the cluster's eyes.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=POOL_WAIT,
            socket_timeout=2,
            socket_connect_timeout=2,
            health_check_interval=5,
            retry=Retry(NoBackoff(), 0),
        )
        self.client: aioredis.Redis = aioredis.Redis.from_pool(pool)
        #: The hot path's own connections (bus/resp.py): PUBLISH out, the subscription in.
        self._url = url
        self._publisher = resp.Publisher(url, timeout=2)
        self._claim = self.client.register_script(scripts.CLAIM)
        self._release = self.client.register_script(scripts.RELEASE)
        self._mark = self.client.register_script(scripts.MARK)
        self._locate = self.client.register_script(scripts.LOCATE)
        self._beat = self.client.register_script(scripts.HEARTBEAT)
        self._reap = self.client.register_script(scripts.REAP)
        self._members_key = f"{prefix}members:{node_id}"
        self._nodes_key = f"{prefix}nodes"
        # Outlives the reaping grace, so survivors still find whose presence to delete.
        self._members_ttl = int(2 * REAP_AFTER * presence_ttl * 1000)
        self._events = f"{prefix}events".encode()
        self._inbox: Inbox | None = None
        self._routes: dict[int, str] = {}
        #: Users whose route is being looked up (LOCATE under way; how many
        #: lookups), and those of them whose presence changed meanwhile (a
        #: 'p' event, or a resync): their answer routes the message it was
        #: read for, but is not cached. A stale node route costs a
        #: misdelivery that corrects it; a stale FULL one sends nothing to a
        #: node, so nothing would correct it while the user stays.
        self._looking: dict[int, int] = {}
        self._moved: set[int] = set()
        self._outbox: dict[str, list[Item]] = {}
        self._queued: dict[str, int] = {}  # bytes admitted into _outbox, per node
        self._posted: dict[str, list[Item]] = {}  # queued by post(): nobody awaits them
        #: Queued by post_reported(): told the outcome of their batch's PUBLISH.
        self._reported: dict[str, list[Callable[[bool], None]]] = {}
        #: Receivers of work put in _misdelivered and not yet done (re-routed
        #: or stored), with how many items each: a later message for one of
        #: them waits for those, or it could overtake them. Nobody else waits.
        self._held: dict[int, int] = {}
        self._unheld: asyncio.Future[None] | None = None  # done when one is let go
        self._sent: dict[str, asyncio.Future[bool]] = {}
        self._wake = asyncio.Event()
        self._misdelivered: asyncio.Queue[Work] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = asyncio.Event()
        self._was_connected = False
        #: Users whose release failed and who have not logged in here since:
        #: the heartbeat releases them again (under the lock, which a claim of
        #: one of them waits for, so a retry never undoes a newer login).
        self._unreleased: set[int] = set()
        self._retrying = asyncio.Lock()
        #: Users whose nudge could not be routed (Redis unreachable): nudged
        #: again at the heartbeat, or what was stored for them would wait for
        #: their next login although they are online.
        self._unnudged: set[int] = set()
        #: Local users whose mailbox is full, as the service last said
        #: (mark_full): marked in Redis with their claim, and again after
        #: a resync; those whose mark is being written, and those whose
        #: write failed (written again at the heartbeat).
        self._marked: set[int] = set()
        self._marking: set[int] = set()
        self._unmarked: set[int] = set()
        self._closing = False
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Batch)
        self._legacy_decoder = msgspec.msgpack.Decoder(tuple[str, int, int, list[Item]])
        self.ack_timeout = max(1.0, presence_ttl / 2)
        #: Bytes in flight per destination; a sender past it waits this long, then is refused.
        self.window = window
        self.room_wait = 2 * self.ack_timeout
        self.keep_for = keep_for
        self._windows: dict[str, SendWindow[list[Item]]] = {}
        self._receiving: dict[str, ReceiveState] = {}
        #: Bytes of each sender's batches it keeps until our clients confirm them.
        self._pinned: dict[str, int] = {}
        self._answer: set[str] = set()  # sources owed acks or gap reports
        self._probe: set[str] = set()  # destinations to send an empty batch (they resubscribed)
        self._freed: dict[str, asyncio.Future[None]] = {}
        #: Nodes holding batches of ours whose heartbeat was found missing, since when.
        self._silent: dict[str, float] = {}
        self._publishing_now = False  # the flusher awaits Redis's answers
        #: Copies of local deliveries awaiting receipts (see copy()): a hash
        #: field per message, written and deleted with the next PUBLISH round.
        self._keep_key = f"{prefix}keep:{node_id}"
        # Copies' field numbers: from the clock, so a process that could not
        # claim its predecessor's hash never reuses (overwrites) a field of it.
        self._copies = time.time_ns() // 1000
        #: Copies whose settlement is still held: at a graceful stop, none
        #: means whatever the hash still holds is stale and may go.
        self._unsettled_copies = 0
        self._to_copy: list[bytes] = []
        self._copied: list[Callable[[bool], None]] = []
        self._to_uncopy: list[bytes] = []
        self._copy_decoder = msgspec.msgpack.Decoder(tuple[list[int], bytes])
        #: Copies this node claimed and is to store (dead nodes', its predecessor's).
        self._claims_key = f"{prefix}claims:{node_id}"
        self._storing: set[str] = set()  # claims being stored now
        self._claim_keep = self.client.register_script(scripts.CLAIM_KEEP)

    def _user_key(self, uid: int) -> str:
        return f"{self.prefix}user:{uid}"

    def _full_key(self, uid: int) -> str:
        return f"{self.prefix}full:{uid}"

    def _channel(self, node: str) -> bytes:
        return f"{self.prefix}to:{node}".encode()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, inbox: Inbox) -> None:
        self._inbox = inbox
        try:
            await self._heartbeat_once()
            await self._fit_window()
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
        # Our id's previous process, killed, may have left copies to store.
        claimed = f"{self._keep_key}:reaped-by:{self.node_id}:{self.epoch}"
        with contextlib.suppress(RedisError, OSError):
            await self._claim_keep(keys=[self._keep_key, claimed, self._claims_key])
            await self._take_claims()

    async def _fit_window(self) -> None:
        """Stay under the subscriber buffer limit of the Redis we are given
        (read, never set: the Redis may be shared)."""
        try:
            config = await self.client.config_get("client-output-buffer-limit")
        except RedisError as exc:  # CONFIG may be disabled or forbidden
            log.info(
                "cannot read Redis's pub/sub buffer limit (%s); window %d bytes", exc, self.window
            )
            return
        limit = pubsub_limit({str(k): str(v) for k, v in config.items()})
        if limit and self.window > limit // 2:
            log.warning(
                "bus window %d bytes exceeds half of Redis's pub/sub buffer limit (%d); using %d",
                self.window, limit, limit // 2,
            )  # fmt: skip
            self.window = limit // 2

    def pinned(self) -> float:
        most = max(self._pinned.values(), default=0)
        return most / (KEEP_WINDOWS * self.window) if most else 0.0

    def window_stats(self) -> WindowStats:
        windows = list(self._windows.values())
        return WindowStats(
            batches=sum(w.last for w in windows),
            unacked=sum(w.in_flight() for w in windows),
            held=sum(w.held for w in windows),
            kept=sum(w.kept for w in windows),
            copies=self._unsettled_copies,
        )

    async def close(self) -> None:
        self._closing = True
        # What stopping settled (receipt windows stored) goes out before we
        # vanish; else the senders store those batches again (duplicates).
        for _ in range(20):
            if not (self._answer or self._wake.is_set() or self._publishing_now):
                break
            await asyncio.sleep(0.05)
        with contextlib.suppress(RedisError, OSError):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.delete(f"{self.prefix}node:{self.node_id}", self._members_key)
                pipe.zrem(self._nodes_key, self.node_id)
                if not self._unsettled_copies:  # what is left is stale (an HDEL lost)
                    pipe.delete(self._keep_key)
                await pipe.execute()
        await cancel_and_wait(list(self._tasks))
        self._publisher.close()
        await self.client.aclose()

    async def _heartbeat_once(self) -> bool:
        """Refresh our heartbeat; False if it had lapsed."""
        ttl = int(self.presence_ttl * 1000)
        alive = await self._beat(
            keys=[f"{self.prefix}node:{self.node_id}", self._nodes_key, self._members_key],
            args=[ttl, self.node_id, self._members_ttl],
        )
        return bool(alive)

    async def _heartbeat(self) -> None:
        grace = int(REAP_AFTER * self.presence_ttl * 1000)
        while not self._closing:
            await asyncio.sleep(self.presence_ttl / 3)
            try:
                if not await self._heartbeat_once() and self.connected.is_set():
                    log.warning("heartbeat had lapsed; re-asserting local users")
                    await self._resync()
                elif self._unreleased:
                    await self._release_again()
                if self._unnudged:
                    uids, self._unnudged = list(self._unnudged), set()
                    await self.nudge(uids)
                if self._unmarked:
                    uids, self._unmarked = list(self._unmarked), set()
                    for uid in uids:
                        await self.mark_full(uid, uid in self._marked)
                reaped = await self._reap(
                    keys=[self._nodes_key], args=[self.prefix, grace, self.node_id]
                )
                if reaped:
                    log.info("cleaned up after %d nodes that died", len(reaped))
                await self._take_claims()  # theirs, and any of ours not yet stored
            except (RedisError, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)

    # -- presence ------------------------------------------------------------------------

    async def claim(self, uid: int, full: bool = False) -> bool:
        if uid in self._unreleased:  # not while a retry may release it
            async with self._retrying:
                self._unreleased.discard(uid)
                return await self._claim_once(uid, full)
        return await self._claim_once(uid, full)

    async def _claim_once(self, uid: int, full: bool) -> bool:
        try:
            got = await self._claim(
                keys=[self._user_key(uid), self._members_key, self._full_key(uid)],
                args=[self.prefix, self.node_id, uid, self._members_ttl, int(full)],
            )
        except (RedisError, OSError) as exc:
            raise _translate(exc) from exc
        if got:
            if full:
                self._marked.add(uid)
            else:
                self._marked.discard(uid)
        return bool(got)

    async def mark_full(self, uid: int, full: bool) -> None:
        """Mark (or clear) in Redis, next to the claim of ``uid`` (a user
        here), that their mailbox is full: other nodes then send them
        messages down the stored path. Writes for one user go one at a
        time, the last one with the latest state; a failed one is retried
        at the heartbeat."""
        if full:
            self._marked.add(uid)
        else:
            self._marked.discard(uid)
        if uid in self._marking:  # the write under way writes the latest state after
            return
        self._marking.add(uid)
        try:
            while True:
                want = uid in self._marked
                await self._mark(
                    keys=[self._user_key(uid), self._full_key(uid)],
                    args=[self.prefix, self.node_id, uid, int(want)],
                )
                if (uid in self._marked) == want:
                    return
        except (RedisError, OSError) as exc:
            if not self._unmarked:  # one line per heartbeat, not one per user
                log.warning("could not mark user %d's mailbox (retried): %s", uid, exc)
            self._unmarked.add(uid)
        finally:
            self._marking.discard(uid)

    async def release(self, uid: int) -> None:
        try:
            await self._release_key(uid)
        except (RedisError, OSError) as exc:
            if not self._unreleased:  # one line per heartbeat, not one per user
                log.warning("could not release user %d (retried at the heartbeat): %s", uid, exc)
            self._unreleased.add(uid)

    async def _release_key(self, uid: int) -> None:
        """Delete the user's presence (and full mark) if it is still ours
        (scripts.RELEASE)."""
        self._marked.discard(uid)
        await self._release(
            keys=[self._user_key(uid), self._members_key, self._full_key(uid)],
            args=[self.prefix, self.node_id, uid],
        )

    async def _release_again(self) -> None:
        """Release the users whose release failed, or they would stay online
        in the cluster's eyes (until this node stops)."""
        async with self._retrying:
            uids = list(self._unreleased)
            for uid in uids:
                await self._release_key(uid)
                self._unreleased.discard(uid)
        log.info("released %d users whose release had failed", len(uids))

    def registered(self, uid: int, sessions: Container[int]) -> None:
        pass  # Redis holds the claim until release

    def unregistered(self, uid: int) -> None:
        pass

    async def online(self, uids: Iterable[int]) -> set[int]:
        ids = list(uids)
        if not ids:
            return set()
        where = await self._where(ids)
        return {uid for uid, node in zip(ids, where, strict=True) if node is not None}

    async def _where(self, uids: list[int]) -> list[str | None]:
        return [node for node, _ in await self._located(uids)]

    async def _located(self, uids: list[int]) -> list[tuple[str | None, bool]]:
        """For each user: the node holding them (None: offline), and whether
        that node marked their mailbox full."""
        keys = [self._user_key(u) for u in uids] + [self._full_key(u) for u in uids]
        try:
            found = await self._locate(keys=keys, args=[self.prefix])
        except (RedisError, OSError) as exc:
            raise _translate(exc) from exc
        return [
            (n.decode() if n else None, bool(full))
            for n, full in zip(found[::2], found[1::2], strict=True)
        ]

    # -- sending -------------------------------------------------------------------------

    def post(self, uid: int, payload: bytes) -> bool:
        if uid in self._held:  # stores of earlier messages go first: send() waits for them
            return False
        node = self._route(uid, len(payload))
        if node is None:
            return False
        item: Item = (DELIVER, [uid], payload, 0)
        self._enqueue(node, item, len(payload))
        self._posted.setdefault(node, []).append(item)
        return True

    def post_reported(self, uid: int, payload: bytes, published: Callable[[bool], None]) -> bool:
        if uid in self._held:  # stores of earlier messages go first: send() waits for them
            return False
        node = self._route(uid, len(payload))
        if node is None:
            return False
        self._enqueue(node, (DELIVER, [uid], payload, 0), len(payload))
        self._reported.setdefault(node, []).append(published)
        return True

    def _route(self, uid: int, size: int) -> str | None:
        """The node a message posted for ``uid`` goes to, its room taken;
        None if that node is not known or its window is full."""
        node = self._routes.get(uid)
        if not node or node == self.node_id:  # None, FULL (see _send), or here
            return None
        return node if self._admit(node, size) else None

    async def send(self, uids: Sequence[int], payload: bytes) -> list[int]:
        # Messages for these receivers being rerouted or stored (a failed
        # publish of posted ones) go first, or this one could overtake them.
        # Usually nothing waits; others' stores (the database may be down)
        # hold up nobody else.
        if self._held:
            await self._after_held(uids)
        return await self._send(uids, payload, 0)

    async def _after_held(self, uids: Sequence[int]) -> None:
        """Wait until no earlier message for ``uids`` is being re-routed or
        stored; :class:`errors.Busy` (nothing sent) past ``room_wait``."""
        held = self._held
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.room_wait
        while any(uid in held for uid in uids):
            left = deadline - loop.time()
            if left <= 0:
                raise errors.Busy("earlier messages for a receiver are still being stored; retry")
            unheld = self._unheld
            if unheld is None:
                unheld = self._unheld = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(unheld), left)

    async def _send(self, uids: Sequence[int], payload: bytes, hops: int) -> list[int]:
        """Hand a message on; a first hop waits for room (then :class:`errors.Busy`,
        with no effect), a re-route does not wait and returns what found none."""
        routes = self._routes
        by_node: dict[str, list[int]] = {}
        unknown = [uid for uid in uids if uid not in routes]
        found: dict[int, str] = {}
        if unknown:
            looking = self._looking
            for uid in unknown:
                looking[uid] = looking.get(uid, 0) + 1
            try:
                where = await self._located(unknown)
            except errors.Unavailable:
                where = [(None, False)] * len(unknown)
            finally:
                stale = self._moved.intersection(unknown) if self._moved else set()
                for uid in unknown:
                    if looking[uid] > 1:
                        looking[uid] -= 1
                    else:
                        del looking[uid]
                        self._moved.discard(uid)
            for uid, (node, full) in zip(unknown, where, strict=True):
                if node is not None:
                    found[uid] = FULL if full else node
                    if uid not in stale:  # else a presence event came before the answer
                        routes[uid] = found[uid]
        undelivered: list[int] = []
        for uid in uids:
            node = found.get(uid) if uid in found else routes.get(uid)
            # Offline, or said to be here but is not, or online with a full
            # mailbox: the caller stores it, within the quota (ERROR 171/174
            # before any acknowledgement); a re-routed message, already
            # acknowledged, is stored whatever the quota.
            if not node or node == self.node_id:
                undelivered.append(uid)
            else:
                by_node.setdefault(node, []).append(uid)
        size = len(payload)
        admitted: list[str] = []
        try:
            for node in list(by_node):
                if hops == 0:
                    await self._make_room(node, size)
                elif not self._admit(node, size):
                    undelivered.extend(by_node.pop(node))
                    continue
                admitted.append(node)
        except BaseException:
            for node in admitted:  # refused as a whole: nothing was handed on
                self._window(node).cancel(size)
                self._released(node)
            raise
        if not by_node:
            return undelivered
        sent = []
        for node, ids in by_node.items():
            self._enqueue(node, (DELIVER, ids, payload, hops), size)
            sent.append(self._publishing(node))
        # One node is the usual case (a 1:1 message): no gather to make and wait on.
        oks = [await sent[0]] if len(sent) == 1 else await asyncio.gather(*sent)
        for (node, ids), ok in zip(by_node.items(), oks, strict=True):
            if not ok:
                undelivered.extend(ids)
                self._forget_node(node)
        return undelivered

    def copy(
        self,
        uids: list[int],
        payload: bytes,
        settlement: Settlement,
        copied: Callable[[bool], None],
    ) -> bool:
        if not settlement.held:
            return True
        self._copies += 1
        self._unsettled_copies += 1
        field = b"%d" % self._copies
        value = self._encoder.encode((uids, payload))
        self._to_copy.append(resp.command(b"HSET", self._keep_key.encode(), field, value))
        self._copied.append(copied)
        settlement.settled_or_then(functools.partial(self._uncopy, field))
        self._wake.set()
        return False

    def _uncopy(self, field: bytes) -> None:
        """Confirmed (or stored): the copy goes with the next round."""
        self._unsettled_copies -= 1
        self._to_uncopy.append(field)
        self._wake.set()

    async def _take_copies(self, name: str) -> None:
        """Store, in order, the copies a dead node (or our id's previous
        process) kept of messages its clients had not confirmed; then drop them."""
        entries = await self.client.hgetall(name)
        work: list[tuple[list[int], bytes, int]] = []
        for field in sorted(entries, key=_field_order):
            value = entries[field]
            try:
                if isinstance(value, str):  # the client decodes nothing: never, but typed so
                    raise msgspec.DecodeError("text, not bytes")
                uids, payload = self._copy_decoder.decode(value)
            except msgspec.DecodeError as exc:  # a ValidationError is one too
                log.warning("skipped a copy in no known format in %s: %s", name, exc)
                continue
            work.append((uids, payload, 1))  # hops 1: stored, not routed
        if work:
            log.warning(
                "storing %d messages a node that died had delivered and not seen confirmed",
                len(work),
            )

        def stored() -> None:
            task = asyncio.ensure_future(self._forget_copies(name))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

        self._misdeliver((work, stored))

    async def _take_claims(self) -> None:
        """Store the copies this node claimed (a dead node's, or its own
        predecessor's) and has not stored yet: listed in Redis until stored,
        so a failure here, or this node's own death, only delays them."""
        for raw in await self.client.smembers(self._claims_key):
            name = raw.decode() if isinstance(raw, bytes) else raw
            if name in self._storing:
                continue
            self._storing.add(name)
            try:
                await self._take_copies(name)
            except Exception:
                self._storing.discard(name)  # tried again at the next heartbeat
                log.exception("could not store the copies in %s (tried again)", name)

    async def _forget_copies(self, name: str) -> None:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(name)
                pipe.srem(self._claims_key, name)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("could not delete %s (stored; it may be stored again): %s", name, exc)
        self._storing.discard(name)

    async def nudge(self, uids: Sequence[int]) -> None:
        try:
            where = await self._where(list(uids))
        except errors.Unavailable:
            self._unnudged.update(uids)  # stored anyway: tried again at the heartbeat
            return
        for uid, node in zip(uids, where, strict=True):
            if node == self.node_id and self._inbox is not None:
                self._inbox.nudged(uid)
            elif node is not None:
                self._enqueue(node, (NUDGE, [uid], b"", 0), 0)

    def _window(self, node: str) -> SendWindow[list[Item]]:
        window = self._windows.get(node)
        if window is None:
            window = self._windows[node] = SendWindow(
                self.window, self.ack_timeout, self.keep_for, KEEP_WINDOWS * self.window
            )
        return window

    def _admit(self, node: str, size: int) -> bool:
        return self._window(node).admit(size)

    async def _make_room(self, node: str, size: int) -> None:
        """Wait until the window to ``node`` takes ``size`` more bytes."""
        window = self._window(node)
        if window.admit(size):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.room_wait
        while not window.admit(size):
            left = deadline - loop.time()
            if left <= 0:
                raise errors.Busy(f"node {node} is not keeping up; retry shortly")
            freed = self._freed.get(node)
            if freed is None:
                freed = self._freed[node] = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(freed), left)

    def _released(self, node: str) -> None:
        freed = self._freed.pop(node, None)
        if freed is not None and not freed.done():
            freed.set_result(None)

    def _enqueue(self, node: str, item: Item, size: int) -> None:
        self._outbox.setdefault(node, []).append(item)
        self._queued[node] = self._queued.get(node, 0) + size
        self._wake.set()

    def _publishing(self, node: str) -> asyncio.Future[bool]:
        """Whether the next PUBLISH to ``node`` reaches it (the batch being queued)."""
        fut = self._sent.get(node)
        if fut is None:
            fut = self._sent[node] = asyncio.get_running_loop().create_future()
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
            queued, self._queued = self._queued, {}
            sent, self._sent = self._sent, {}
            posted, self._posted = self._posted, {}
            reported, self._reported = self._reported, {}
            answer, self._answer = self._answer, set()
            probe, self._probe = self._probe, set()
            more, self._to_copy = self._to_copy, []
            copied, self._copied = self._copied, []
            fields: list[bytes] = []
            if self._to_uncopy:
                fields, self._to_uncopy = self._to_uncopy, []
                more.append(resp.command(b"HDEL", self._keep_key.encode(), *fields))
            nodes = list(outbox.keys() | answer | probe)
            if not nodes and not more:
                continue
            now = loop.time()
            seqs, frames = [], []
            for node in nodes:
                items = outbox.get(node, [])
                window = self._window(node)
                seq = window.dispatch(items, queued.get(node, 0), now) if items else 0
                rx = self._receiving.get(node)
                epoch, acks, nacks = rx.drain() if rx is not None else ("", [], [])
                batch: Batch = (
                    self.node_id,
                    self.epoch,
                    seq,
                    window.last,
                    epoch,
                    acks,
                    nacks,
                    items,
                )
                seqs.append(seq)
                frames.append(self._encoder.encode(batch))
            self._publishing_now = True
            try:
                channels = [self._channel(node) for node in nodes]
                counts = await self._publisher.publish(
                    list(zip(channels, frames, strict=True)), more
                )
            except (RedisError, OSError) as exc:
                log.warning("publish of %d batches failed: %s", len(nodes), exc)
                counts = [0] * (len(nodes) + len(more))
                self._to_uncopy[:0] = fields  # deleted with a later round (twice is harmless)
            finally:
                self._publishing_now = False
            if copied:
                self._report_copies(copied, counts[len(nodes) : len(nodes) + len(copied)])
            for node, seq, count in zip(nodes, seqs, counts[: len(nodes)], strict=True):
                if not count:
                    self._forget_node(node)
                    if seq:
                        self._refused(node, seq, posted.get(node, []))
                fut = sent.get(node)
                if fut is not None and not fut.done():
                    fut.set_result(bool(count))
                for published in reported.get(node, ()):
                    try:
                        published(bool(count))
                    except Exception:  # the caller's bug must not stop the flusher
                        log.exception("a published() callback failed")

    def _report_copies(self, copied: list[Callable[[bool], None]], answers: list[int]) -> None:
        failed = 0
        for done, answer in zip(copied, answers, strict=True):
            failed += answer != 1
            try:
                done(answer == 1)
            except Exception:  # the caller's bug must not stop the flusher
                log.exception("a copied() callback failed")
        if failed:
            log.warning("could not keep %d copies in Redis (acknowledged without)", failed)

    def _refused(self, node: str, seq: int, posted: list[Item]) -> None:
        """Nobody took a batch: awaited senders store theirs; posted items are ours to store."""
        window = self._window(node)
        window.refused(seq)
        work = [(uids, payload, 1) for kind, uids, payload, _ in posted if kind == DELIVER]
        self._misdeliver((work, functools.partial(self._stored, node, seq)))

    def _misdeliver(self, work: Work) -> None:
        held = self._held
        for uids, _, _ in work[0]:
            for uid in uids:
                held[uid] = held.get(uid, 0) + 1
        self._misdelivered.put_nowait(work)

    def _unhold(self, work: Work) -> None:
        held = self._held
        for uids, _, _ in work[0]:
            for uid in uids:
                if held[uid] > 1:
                    held[uid] -= 1
                else:
                    del held[uid]
        unheld, self._unheld = self._unheld, None
        if unheld is not None and not unheld.done():
            unheld.set_result(None)

    def _returned(self, node: str, flights: list[Flight[list[Item]]], why: str) -> None:
        """Batches another node did not take: store every message in them."""
        if flights:
            seqs = ", ".join(str(f.seq) for f in flights[:10])
            log.warning("node %s %s %d batches (%s); storing them", node, why, len(flights), seqs)
        for flight in flights:
            work = [
                (uids, payload, 1) for kind, uids, payload, _ in flight.items if kind == DELIVER
            ]
            self._misdeliver((work, functools.partial(self._stored, node, flight.seq)))

    def _stored(self, node: str, seq: int) -> None:
        self._window(node).stored(seq)
        self._released(node)

    async def _sweep(self) -> None:
        """Batches a node took but never acknowledged (it died, or is stuck): store them."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ack_timeout / 4)
            now = loop.time()
            # Windows are kept (a few hundred bytes each): a seq must never restart
            # within our epoch, or a receiver would take new batches for old ones.
            try:
                for node, window in list(self._windows.items()):
                    self._returned(node, window.expire(now), "did not acknowledge")
                keeping = [node for node, w in self._windows.items() if w.keeping()]
                for node in [n for n in self._silent if n not in keeping]:
                    del self._silent[node]  # keeps nothing of ours now: start afresh
                if keeping:
                    await self._check_keepers(keeping)
            except Exception:  # a bug here must not end the sweeping for good
                log.exception("sweeping the delivery windows failed")

    async def _check_keepers(self, nodes: list[str]) -> None:
        """Nodes holding batches of ours until receipts come: one whose
        heartbeat lapsed died with them, so we store them."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.exists(f"{self.prefix}node:{node}")
                alive = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("could not check the nodes holding our batches: %s", exc)
            return
        now = asyncio.get_running_loop().time()
        for node, up in zip(nodes, alive, strict=True):
            if up:
                self._silent.pop(node, None)
            elif now - self._silent.setdefault(node, now) >= self.presence_ttl / 2:
                # Still gone half a TTL later: not a Redis that restarted empty
                # (its nodes beat again within a third of a TTL), but dead.
                del self._silent[node]
                self._returned(node, self._window(node).lost_kept(), "died holding")

    # -- receiving -----------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = 0.05
        while not self._closing:
            sub = resp.Subscription(
                self._url, [self._channel(self.node_id), self._events], self._on_message, 2.0
            )
            try:
                await sub.open()
                await self._resync()
                # Senders probe us so we report the batches this subscription missed.
                await self.client.publish(self._events, f"r{self.node_id}")
                if self._was_connected:
                    self._spawn_reconnected()
                self._was_connected = True
                self.connected.set()
                backoff = 0.05
                await sub.watch(every=5.0)  # messages go to _on_message meanwhile
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("lost Redis: %s; reconnecting", exc)
                self.connected.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                sub.close()

    def _spawn_reconnected(self) -> None:
        assert self._inbox is not None
        task = asyncio.ensure_future(self._inbox.reconnected())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _resync(self) -> None:
        """After (re)connecting: Redis may have lost everything, and events were missed."""
        assert self._inbox is not None
        self._routes.clear()
        self._moved.update(self._looking)  # events were missed
        await self._heartbeat_once()
        local = set(self._inbox.local_users())
        listed = {int(u) for u in await self.client.smembers(self._members_key)}
        for uid in listed - local:
            await self._release_key(uid)
        for uid in local:
            if not await self.claim(uid, uid in self._marked):
                log.warning("user %d logged in elsewhere while we were cut off", uid)
                self._inbox.displaced(uid)
        log.info("connected to Redis as node %s (%d local users)", self.node_id, len(local))

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel == self._events:
            event, ident = data[:1], data[1:]
            if event == b"p":
                uid = int(ident)
                self._routes.pop(uid, None)
                if uid in self._looking:
                    self._moved.add(uid)
            elif event == b"g" and self._inbox is not None:
                self._inbox.group_changed(int(ident))
            elif event in (b"k", b"b") and self._inbox is not None:  # clusterchat.admin: kick, ban
                self._inbox.kicked(int(ident), banned=event == b"b")
            elif event == b"t" and self._inbox is not None:  # a password login elsewhere
                self._inbox.taken_over(int(ident))
            elif event == b"r":
                node = ident.decode()
                if node != self.node_id and node in self._windows:
                    self._probe.add(node)
                    self._wake.set()
            return
        inbox = self._inbox
        assert inbox is not None
        try:
            source, epoch, seq, last, ack_epoch, acks, nacks, items = self._decoder.decode(data)
        except msgspec.ValidationError:
            self._take_unsequenced(data)
            return
        window = self._windows.get(source)
        if window is not None:
            if epoch != window.peer:  # it restarted: what its old self kept is ours to store
                self._returned(source, window.heard(epoch), "restarted holding")
            if ack_epoch == self.epoch and (acks or nacks):
                done, took = split_acks(acks)
                window.acked(done)
                if took:
                    now = asyncio.get_running_loop().time()
                    self._returned(source, window.taken(took, now), "kept too much of")
                self._returned(source, window.missing(nacks), "never saw")
                self._released(source)
        rx = self._receiving.get(source)
        if rx is None:
            rx = self._receiving[source] = ReceiveState()
        fresh = rx.arrived(epoch, seq, last)
        if rx.due():  # gaps to report
            self._answer.add(source)
            self._wake.set()
        if not fresh:
            return
        work: list[tuple[list[int], bytes, int]] = []
        settlement = Settlement()  # held by deliveries to clients with receipts
        deliver = inbox.deliver
        for kind, uids, payload, hops in items:
            if kind == NUDGE:
                for uid in uids:
                    inbox.nudged(uid)
                continue
            missed = [uid for uid in uids if not deliver(uid, payload, settlement)]
            if missed:
                work.append((missed, payload, hops))

        def answer() -> None:
            self._answer.add(source)
            self._wake.set()

        def settled() -> None:
            self._pinned[source] -= len(data)
            rx.settled(epoch, seq)
            answer()

        def taken() -> None:
            if epoch[:1] != KEEPS:  # a node from before keeps nothing: acked as taken
                rx.taken(epoch, seq)
            else:
                done = settlement.settled_or_then(settled)
                if not done:  # the sender keeps it: it counts against its limit
                    self._pinned[source] = self._pinned.get(source, 0) + len(data)
                rx.taken(epoch, seq, done)
            answer()

        if work:  # acknowledged once re-routed or stored
            self._misdeliver((work, taken))
        else:
            taken()

    def _take_unsequenced(self, data: bytes) -> None:
        """A batch in the format of nodes before sequenced delivery (a rolling
        upgrade): deliver it, store what finds nobody, acknowledge nothing."""
        assert self._inbox is not None
        try:
            _source, _seq, _acked, items = self._legacy_decoder.decode(data)
        except msgspec.ValidationError as exc:
            log.warning("dropped a batch in no known format: %s", exc)
            return
        work = []
        for kind, uids, payload, hops in items:
            if kind == DELIVER:
                missed = [uid for uid in uids if not self._inbox.deliver(uid, payload)]
                if missed:
                    work.append((missed, payload, hops))
        if work:
            self._misdeliver((work, None))

    async def _redeliver(self) -> None:
        """Messages for users who left this node, and batches others did not take:
        follow them once, else store. In order. What is only to be stored
        (batches that came back, a dead node's copies), queued together, is
        stored together: a node's death returns hundreds of batches at once,
        and one write each held their receivers' next messages for seconds."""
        assert self._inbox is not None
        queue = self._misdelivered
        while True:
            works = [await queue.get()]
            while not queue.empty() and sum(len(w[0]) for w in works) < STORE_TOGETHER:
                works.append(queue.get_nowait())
            try:
                i = 0
                while i < len(works):
                    j = i
                    while j < len(works) and all(hops for _, _, hops in works[j][0]):
                        j += 1
                    try:
                        if j > i:  # works[i:j] are stores only: written together
                            await self._store_all([it for w in works[i:j] for it in w[0]])
                            for _, done in works[i:j]:
                                if done is not None:
                                    done()
                            i = j
                            continue
                        items, done = works[i]
                        for uids, payload, hops in items:
                            await self._reroute(uids, payload, hops)
                        if done is not None:
                            done()
                    except Exception:  # a bug must not end redelivery for good
                        log.exception("redelivering %d messages failed", len(works[i][0]))
                        i = max(i + 1, j)
                        continue
                    i += 1
            finally:
                for work in works:
                    self._unhold(work)
                    queue.task_done()

    async def _store_all(self, items: list[tuple[list[int], bytes, int]]) -> None:
        """Store messages for their receivers, in order, retrying until the store takes them."""
        assert self._inbox is not None
        messages = [(uids, payload) for uids, payload, _ in items if uids]
        for uids, _ in messages:
            for uid in uids:
                self._routes.pop(uid, None)
        while messages:  # at most STORE_TOGETHER rows (one per receiver) a write
            rows = n = 0
            while n < len(messages) and (not n or rows + len(messages[n][0]) <= STORE_TOGETHER):
                rows += len(messages[n][0])
                n += 1
            part, messages = messages[:n], messages[n:]
            delay = 0.05
            while True:
                try:
                    await self._inbox.store_offline_many(part)
                    break
                except errors.Unavailable as exc:
                    log.warning("storing %d returned messages failed, retrying: %s", len(part), exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)

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

    async def take_over(self, uid: int) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.publish(f"{self.prefix}events", f"t{uid}")
