"""The chat logic: who may do what, and where each message goes.

``handle`` is called once per request, decoded by the transport
(``codec.read_request``: a typed request or the refusal it earns). Requests
that need no I/O (chat to a user on this node, with group membership
cached) are served synchronously and return None; the rest return an
awaitable (``Work``) that the transport runs before it serves the
connection's next request, so every connection's requests take effect in
the order sent.

Handlers reply with typed values (protocol/replies.py) through ``reply``,
which applies the dialect filter (protocol/dialect.py): what the original
client may see is decided there, not in each handler.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from clusterchat import errors, logs
from clusterchat.budget import Budget
from clusterchat.bus.base import Bus, Presence, Settlement
from clusterchat.bus.counters import Tallies
from clusterchat.protocol import codec, dialect, names
from clusterchat.protocol.codec import BadRequest
from clusterchat.protocol.framing import DEFAULT_MAX_FRAME
from clusterchat.protocol.messages import (
    ANONYMOUS_OK,
    AddFriend,
    AddGroup,
    ChatStatus,
    CreateGroup,
    ErrCode,
    GroupChat,
    ListFriends,
    ListGroups,
    Login,
    LoginErr,
    Logout,
    MsgId,
    OneChat,
    Ping,
    Received,
    RegErr,
    Register,
    Request,
)
from clusterchat.protocol.replies import (
    BANNED,
    DISPLACED,
    KICKED,
    LOGOUT_ACK,
    Ack,
    ChatAck,
    Error,
    Fixed,
    LoginOk,
    LoginRefused,
    RegOk,
    RegRefused,
    Reply,
    Unreadable,
)
from clusterchat.service import in_doubt, pushes, tickets
from clusterchat.service.backoff import Backoff
from clusterchat.service.context import Handler
from clusterchat.service.counts import ServiceCounts
from clusterchat.service.friends import Friends
from clusterchat.service.groups import Groups
from clusterchat.service.history import (
    PAGE_COST_BYTES,
    QUEUE_ROWS,
    HistoryRequests,
    HistoryWriter,
    Purger,
)
from clusterchat.service.limits import FailureLimiter, Limits, Turns
from clusterchat.service.login_race import Delivered, LoginRace
from clusterchat.service.passwords import Passwords, is_plain
from clusterchat.service.refusals import RefusalLog, Sampled
from clusterchat.service.restore import Restorer
from clusterchat.service.rosters import Roster, Rosters
from clusterchat.service.session import RESUMED, Peer, Session, Work
from clusterchat.service.stored_rows import ConfirmedRows
from clusterchat.storage.base import Group, LoginView, Quota, Resume, Store
from clusterchat.tasks import cancel_and_wait

log = logging.getLogger(__name__)


#: Offline messages carried in a login reply at most (the original client
#: reads 1024 bytes at a time; ours reads frames up to 1 MiB).
LOGIN_OFFLINE_BYTES = 256 * 1024
#: Friends, and bytes of groups, a login reply carries at most; past them the
#: reply says ``"more": ["friends", "groups"]`` and LIST_FRIENDS/LIST_GROUPS
#: give the rest, so the reply stays bounded whatever a user has.
LOGIN_FRIENDS = 200
LOGIN_GROUPS_BYTES = 256 * 1024
#: Group members the fan-out cache holds at most (memory: a member costs
#: its slot and int, some 40-60 bytes; a group's entry counts as
#: _GROUP_COST members more), oldest cached groups dropped first. Bounded
#: by members, not groups: 10,000 groups of 1,000 were 10 million.
MAX_CACHED_MEMBERS = 1_000_000
_GROUP_COST = 4
#: Client addresses with a flood bucket for requests before login, at most.
_MAX_METERED_ADDRESSES = 100_000
_JSON = ord("{")
_BUSY = "server busy: too many logins at once; retry in a few seconds"
_BUSY_ADDRESS = "server busy: too many logins at once from your address; retry in a few seconds"
_REG_BUSY = "server busy: too many registrations at once; retry in a few seconds"
_ONLINE_ELSEWHERE = (
    "this account is logged in elsewhere (another window or device): log out there first, "
    "or wait a few seconds if that connection has just dropped"
)
#: Never refused for flooding, nor do they take a token: leaving, and
#: receipts (which free memory, and come with the messages they acknowledge,
#: not at the client's pace; one that acknowledges nothing takes a token:
#: _received). PING is metered: answered as fast as
#: they come, pings took the node's loop from everyone else; a refused ping
#: still shows the connection alive (any bytes do).
_UNMETERED: frozenset[type] = frozenset({Logout, Received})
#: Requests that make the node hold bytes for others: refused while the
#: memory budget is full.
_BUDGETED: frozenset[type] = frozenset({OneChat, GroupChat})
_BUSY_TEXT = "server busy: too much held for slow readers; retry in a moment"
_HISTORY_BUSY_TEXT = "server busy: history is written slower than chats arrive; retry in a moment"
#: Seconds a modern client's chat waits for room in a full history queue
#: before it is refused as busy: a store that pauses (a checkpoint, a
#: failover) slows senders; only one that stays behind refuses them.
HISTORY_PATIENCE = 5.0
#: Seconds a password login waits for another node to end the user's ticket
#: session (ChatService._take_over) before it answers errno 2.
TAKEOVER_WAIT = 1.0
#: Seconds the re-store queue may take to reach the store at shutdown.
RESTORE_DEADLINE = 10.0

_REFUSALS: dict[type[errors.Refused], tuple[ErrCode, str]] = {
    errors.NoSuchUser: (ErrCode.NO_SUCH_USER, "no user has id {}"),
    errors.NoSuchGroup: (ErrCode.NO_SUCH_GROUP, "no group has id {}"),
    errors.AlreadyFriends: (ErrCode.ALREADY_FRIENDS, "you are already friends with {}"),
    errors.AlreadyMember: (ErrCode.ALREADY_MEMBER, "you are already a member of group {}"),
    errors.GroupNameTaken: (ErrCode.GROUP_NAME_TAKEN, "a group named {!r} already exists"),
    errors.GroupFull: (ErrCode.GROUP_FULL, "group {} is full ({} members)"),
    errors.NotFriends: (ErrCode.NOT_FRIENDS, "user {} is not your friend"),
    errors.RefusedByUser: (ErrCode.REFUSED_BY_USER, "user {} does not accept this from you"),
    errors.SelfTarget: (ErrCode.SELF_TARGET, "{}"),
    errors.NotMember: (ErrCode.NOT_GROUP_MEMBER, "you are not a member of group {}"),
    errors.NotInGroup: (ErrCode.TARGET_NOT_MEMBER, "user {} is not a member of group {}"),
    errors.NotAllowed: (ErrCode.NOT_ALLOWED, "{}"),
    errors.InGroup: (ErrCode.TARGET_ALREADY_MEMBER, "user {} is already in group {}"),
    errors.InviteOnly: (ErrCode.INVITE_ONLY, "group {} takes members by invitation only"),
    errors.MailboxFull: (
        ErrCode.MAILBOX_FULL,
        "user {} has as many messages waiting as they may; this one was not sent",
    ),
    errors.MailboxShareFull: (
        ErrCode.MAILBOX_SHARE_FULL,
        "you have as many messages waiting for user {} as one sender may leave them; "
        "this one was not sent (others still can)",
    ),
    errors.OverQuota: (ErrCode.QUOTA, "{}"),
}


class ChatService:
    def __init__(
        self,
        store: Store,
        passwords: Passwords,
        presence: Presence,
        bus: Bus,
        node_id: str | None = None,
        limits: Limits | None = None,
        budget: Budget | None = None,
        shared_counters: tuple[str, str] | None = None,
        history_days: float = 0.0,
        history_queue: int = QUEUE_ROWS,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        """``shared_counters``: (Redis URL, key prefix) to count failed logins
        and registrations cluster-wide; None counts on this node.
        ``history_days``: how long messages are kept for HISTORY (0: none are).
        ``max_frame`` is told to modern clients at login, so they refuse longer lines."""
        self.max_frame = max_frame
        self.limits = limits or Limits()
        self.budget = budget or Budget(0)
        self.budget.on_room = self._room_again
        self._room = asyncio.Event()
        self._rate = max(0.0, self.limits.message_rate)
        self._burst = float(max(1, self.limits.message_burst))
        #: Flood buckets of requests before login, per client address:
        #: address -> [tokens, when last topped up] (see _address_wait).
        self._address_burst = float(max(0, self.limits.address_burst))
        self._anonymous: dict[str, list[float]] = {}
        #: Addresses not metered so (the node's trusted proxies: their own
        #: connections are tools and benchmarks; what they proxy is readdressed).
        self.exempt_address: Callable[[str], bool] = _nobody
        lim = self.limits
        delays = (lim.login_delay, lim.login_delay_max, lim.login_window)
        counts = (
            Backoff(lim.login_failures, *delays),  # per (account, address)
            Backoff(lim.login_failures_per_address, *delays),
            FailureLimiter(lim.registrations_per_address, lim.registration_window),
        )
        if shared_counters:
            url, prefix = shared_counters
            self._tallies = Tallies.shared(url, prefix, *counts)
        else:
            self._tallies = Tallies.local(*counts)
        self._by_account = self._tallies.by_pair
        self._by_address = self._tallies.by_address
        self._registrations = self._tallies.registrations
        #: Password logins per (account, address), registrations per address:
        #: one at a time, so concurrent tries cannot pass a check made before
        #: the others were counted.
        self._turns = Turns()
        #: Password logins in flight per client address (``Passwords.share``).
        self._checking: dict[str, int] = {}
        self._registrations_limit = lim.registrations_per_address
        self.store = store
        self.passwords = passwords
        self.counts = ServiceCounts()
        self.presence = presence
        self.bus = bus
        self.node_id = node_id or os.urandom(3).hex()
        self.sessions: dict[int, Session] = {}
        self.refusals = RefusalLog(log)
        self.outages = Sampled(log)
        #: Deletes the stored rows clients with receipts confirmed.
        self._rows = ConfirmedRows(self._delete_offline, self._spawn)
        self.quota = Quota(
            lim.max_offline_messages,
            lim.max_offline_bytes,
            lim.max_groups_created,
            lim.max_memberships,
            lim.max_friends,
            lim.offline_share,
            lim.offline_group_share,
        )
        #: Group members for the fan-out (``_cache_members``), and what they
        #: count against ``max_cached_members``.
        self._members: dict[int, frozenset[int]] = {}
        self._members_held = 0
        self.max_cached_members = MAX_CACHED_MEMBERS
        #: Group members as login replies show them (service/rosters.py).
        self._rosters = Rosters()
        #: Per user, the groups whose member lists LIST_GROUPS sent them and
        #: when (most recent user last): a list sent again within
        #: LIST_WINDOW costs its size (see _list_groups).
        self._listed: dict[int, dict[int, float]] = {}
        self._mids = itertools.count(1)
        #: The CHAT_ACK of a chat delivered here, but for the mid's number and ts.
        self._delivered_ack = codec.delivered_ack_template(self.node_id)
        self._pong = Fixed.of({"msgid": MsgId.PONG, "node": self.node_id})
        self._background: set[asyncio.Task[Any]] = set()
        self.restorer = Restorer(store, self.budget, self._after_store)
        #: Seconds history is kept; the writer is None when it is off.
        self.history_retention = max(0.0, history_days) * 86_400.0
        self.history: HistoryWriter | None = None
        self._purger: Purger | None = None
        self._purging: asyncio.Task[None] | None = None
        if self.history_retention:
            self.history = HistoryWriter(store, history_queue)
            self.history.on_room = self._room_again
            self._purger = Purger(store, self.history_retention)
        self.settle_timeout = in_doubt.SETTLE_TIMEOUT  # a store in doubt, before closing
        self.history_patience = HISTORY_PATIENCE
        self._logging_in: dict[int, list[LoginRace[bytes]]] = {}  # not yet registered
        #: Sessions whose last CHAT_ACK waits for its message's copy (Bus.copy), and that wait.
        self._copying: dict[Session, asyncio.Future[None]] = {}
        self._handlers: dict[type, Handler] = {
            Login: self._login,
            Logout: self._logout,
            Register: self._register,
            OneChat: self._one_chat,
            AddFriend: self._add_friend,
            CreateGroup: self._create_group,
            AddGroup: self._add_group,
            GroupChat: self._group_chat,
            Ping: self._ping,
            ListFriends: self._list_friends,
            ListGroups: self._list_groups,
            Received: self._received,
        }
        self.friends = Friends(self, self.limits.rejoin_after)
        self.groups = Groups(self, self.limits.rejoin_after)
        self._handlers.update(self.friends.handlers())
        self._handlers.update(self.groups.handlers())
        history = HistoryRequests(self, self.history, self.history_retention)
        self._handlers.update(history.handlers())
        #: The same for the original client (protocol/dialect.py): requests
        #: of ours it cannot read the answer to are not served, or refused.
        self._original_handlers = dict(self._handlers)
        for kind in dialect.UNANSWERED:
            self._original_handlers[kind] = _unanswered
        for kind in dialect.UNKNOWN:
            self._original_handlers[kind] = self._unknown

    async def start(self) -> None:
        await self.bus.start(self)
        if self.history is not None:
            await self.history.open()
        if self._purger is not None:
            self._purging = asyncio.ensure_future(self._purger.run())

    # -- entry points from the transport ----------------------------------------

    def handle(self, s: Session, req: Request | BadRequest, legacy: bool) -> Work:
        """Serve one request of ``s`` (``legacy``: it came NUL-terminated; the
        first request fixes the session's dialect)."""
        if s.legacy is None:
            s.legacy = legacy
        kind = type(req)
        if kind is not BadRequest:
            counted = self.counts.requests
            counted[kind] = counted.get(kind, 0) + 1
        # Before login too, and unreadable lines as well: neither PINGs nor
        # garbage are cheaper than chats to answer. Before login the address
        # pays as well (over all its connections), and nothing is free: a
        # LOGOUT or RECEIVED there is only an ERROR 110.
        if self._rate:
            now = time.monotonic()
            tokens = s.tokens + (now - s.stamp) * self._rate
            if tokens > self._burst:
                tokens = self._burst
            s.stamp = now
            if s.uid:
                if tokens >= 1.0 and kind not in _UNMETERED:
                    s.tokens = tokens - 1.0
                else:
                    s.tokens = tokens
                    if kind not in _UNMETERED:
                        return self._too_fast(s, req, (1.0 - tokens) / self._rate)
            else:  # the connection's bucket, then its address's
                wait = (1.0 - tokens) / self._rate if tokens < 1.0 else 0.0
                by_address = 0.0
                if not wait or s.legacy:  # a refusal costs the address nothing
                    by_address = self._address_wait(s.peer, now, bool(s.legacy))
                if not wait and not by_address:
                    s.tokens = tokens - 1.0
                else:
                    s.tokens = tokens
                    return self._too_fast(s, req, max(wait, by_address), by_address > wait)
        if isinstance(req, BadRequest):
            self._refuse_bad(s, req)
            return None
        if not s.uid and not isinstance(req, ANONYMOUS_OK):
            self._refuse(s, req, ErrCode.NOT_LOGGED_IN, "log in first")
            return None
        if (
            self.budget.full or (self.history is not None and self.history.full)
        ) and kind in _BUDGETED:
            return self._busy(s, req)
        result = (self._original_handlers if s.legacy else self._handlers)[kind](s, req)
        if result is None or isinstance(result, asyncio.Future):
            return result  # a future answers its own failures (_one_chat_posted)
        return self._guarded(s, req, result)

    def _serve(self, s: Session, req: Request) -> Work:
        return (self._original_handlers if s.legacy else self._handlers)[type(req)](s, req)

    def _unknown(self, s: Session, req: Request) -> None:
        """A request of ours the original client may not make: refused as any
        message id it did not have."""
        msgid = int(req.__struct_config__.tag)  # type: ignore[arg-type]
        self._refuse_bad(s, BadRequest(ErrCode.UNKNOWN_MSGID, f"unknown msgid {msgid}", msgid))

    def _busy(self, s: Session, req: Request) -> Work:
        """The memory budget or the history queue is full. While the budget
        is full a modern client is told to retry and nothing is delivered;
        while history is, its chat waits (and the connection's later requests
        behind it: TCP slows the sender) up to ``history_patience``, then is
        refused so. The original client, which has no such reply, waits until
        there is room."""
        modern = dialect.shown(s.legacy, MsgId.ERROR)
        if self.budget.full:
            self.budget.refused += 1
            if modern:
                self._refuse(s, req, ErrCode.BUSY, _BUSY_TEXT)
                return None
        else:
            assert self.history is not None
            self.history.refused += 1
        return self._when_room(s, req, self.history_patience if modern else None)

    async def _when_room(self, s: Session, req: Request, patience: float | None) -> None:
        deadline = None if patience is None else asyncio.get_running_loop().time() + patience
        while self.budget.full or (self.history is not None and self.history.full):
            self._room.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._room.wait()
            except TimeoutError:
                if not s.closed and s.uid:
                    text = _BUSY_TEXT if self.budget.full else _HISTORY_BUSY_TEXT
                    self._refuse(s, req, ErrCode.BUSY, text)
                return
        if s.closed or not s.uid:
            return
        work = self._serve(s, req)
        if work is not None:
            await self._guarded(s, req, work)

    def _room_again(self) -> None:
        self._room.set()

    def _address_wait(self, peer: Peer, now: float, debt: bool = False) -> float:
        """Take a token from the bucket of requests before login of
        ``peer``'s address (its limit key: an IPv6 address's /64);
        0 if there was one, else the seconds until there is. ``debt``: a
        request that will wait its turn (the original client's) takes its
        token now, so the address's other waiting requests queue behind it.
        Addresses that are trusted proxies (or tools on them) are not metered
        so."""
        burst = self._address_burst
        if not burst or self.exempt_address(peer.address):
            return 0.0
        address = peer.limit_key
        bucket = self._anonymous.get(address)
        if bucket is None:
            if len(self._anonymous) >= _MAX_METERED_ADDRESSES:
                self._forget_full_buckets(now)
            self._anonymous[address] = bucket = [burst, now]
        tokens = bucket[0] + (now - bucket[1]) * self._rate
        if tokens > burst:
            tokens = burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens - 1.0 if debt else tokens
        return (1.0 - tokens) / self._rate

    def _forget_full_buckets(self, now: float) -> None:
        """Bound the per-address buckets: drop those full again (as good as
        none), else the oldest tenth."""
        burst, rate = self._address_burst, self._rate
        full = [a for a, (n, at) in self._anonymous.items() if n + (now - at) * rate >= burst]
        for a in full or list(self._anonymous)[: _MAX_METERED_ADDRESSES // 10]:
            del self._anonymous[a]

    def _too_fast(
        self, s: Session, req: Request | BadRequest, wait: float, by_address: bool = False
    ) -> Work:
        """Over the flood limit. A modern client is told and may retry; the
        original client has no such reply, so its request waits for its turn
        (and, its queue full, the connection stops being read: TCP slows it).
        Unreadable lines past the limit are no honest client's: refusing each
        would cost what answering it did, so the connection is closed. A
        refusal costs a token too, for the same reason: the connection goes
        into debt (the wait it is told grows), and one that sends a burst's
        worth past the limit regardless is closed (one connection sending
        PINGs as fast as it could held a core, and the loop 4 s late for
        everyone, on refusals alone). ``by_address``: before login, its
        address (over all its connections) is what was out of tokens."""
        if dialect.shown(s.legacy, MsgId.ERROR):
            if by_address:
                limit = (
                    f"at most {self._rate:g} a second from your address before login "
                    f"(bursts of {self._address_burst:g}, over all its connections)"
                )
            else:
                limit = f"at most {self._rate:g} a second (bursts of {self._burst:g})"
            if isinstance(req, BadRequest):
                self.counts.refused("error", ErrCode.TOO_FAST)
                text = f"too many unreadable requests ({req.errmsg}): {limit}; closing"
                self.refusals.note(s, f"closing: {text}")
                self.reply(s, Error(ErrCode.TOO_FAST, text, req.msgid))
                s.peer.close()
            elif not self.spent(s, topped_up=True):
                text = f"too many requests past the limit ({limit}), regardless; closing"
                self.refusals.note(s, f"closing: {text}")
                self._refuse(s, req, ErrCode.TOO_FAST, text)
                s.peer.close()
            else:
                wait = max(wait, (1.0 - s.tokens) / self._rate)
                self._refuse(
                    s, req, ErrCode.TOO_FAST, f"too many requests: {limit}; retry in {wait:.2f} s"
                )
            return None
        return self._throttled(s, req, wait)

    def charge(self, s: Session, tokens: float) -> None:
        """See context.Service. Into at most half a burst of debt: a client
        that then waits as its next ERROR 170 says is never closed for it."""
        if self._rate and tokens > 0:
            s.tokens = max(s.tokens - tokens, min(s.tokens, -self._burst / 2))

    def spent(self, s: Session, topped_up: bool = False) -> bool:
        """Take a token for something that costs the node and is not served
        (a refused request, or a WebSocket ping, pong or fragment: frames
        that are no request), into debt if need be; False once the debt is
        a whole burst: the peer ignores the limit and is to be closed."""
        if not self._rate:
            return True
        if not topped_up:  # else ``s.tokens`` was, just now (handle)
            now = time.monotonic()
            tokens = s.tokens + (now - s.stamp) * self._rate
            s.tokens, s.stamp = min(tokens, self._burst), now
        s.tokens -= 1.0
        return s.tokens > -self._burst

    async def _throttled(self, s: Session, req: Request | BadRequest, wait: float) -> None:
        await asyncio.sleep(wait)
        bad = isinstance(req, BadRequest)
        if s.closed or (not bad and not s.uid and not isinstance(req, ANONYMOUS_OK)):
            return
        s.tokens, s.stamp = 0.0, time.monotonic()  # the token that came in, spent
        if isinstance(req, BadRequest):
            self._refuse_bad(s, req)
            return
        work = self._serve(s, req)
        if work is not None:
            await self._guarded(s, req, work)

    def frame_too_large(self, s: Session, limit: int) -> None:
        msg = f"request exceeds the {limit}-byte frame limit; closing the connection"
        self.refusals.note(s, msg)
        self.reply(s, Error(ErrCode.FRAME_TOO_LARGE, msg))

    def internal_error(self, s: Session, frame: bytes = b"") -> None:
        """A bug must cost one request, never the node, nor the log's disk:
        the traceback is logged at most once per connection per interval."""
        self.refusals.note(s, f"request failed: {frame[:200]!r}", exc_info=True)
        self.reply(s, Error(ErrCode.INTERNAL, "internal error"))

    def spill(
        self,
        s: Session,
        payloads: list[bytes],
        cut_off: bool = True,
        settlements: Sequence[Settlement] = (),
        held: bool = False,
    ) -> None:
        """Messages accepted for a peer that may not have got them (it stopped
        reading and was cut off, or its connection closed under them): keep
        them, then release ``settlements``. Chat only: events and notices
        are never kept. ``held``: the session still holds them (a copy, for
        its next login: not delivered to it now)."""
        payloads = [p for p in payloads if pushes.is_chat(p)]
        if s.uid and payloads:
            log.log(
                logging.WARNING if cut_off else logging.DEBUG,
                "storing %d messages user %d may not have read",
                len(payloads),
                s.uid,
            )
        self.restorer.add(s.uid, payloads if s.uid else [], settlements, nudge=not held)

    def disconnected(self, s: Session) -> None:
        held = s.race.ended(closed=True)
        self.refusals.closed(s)
        if s.logged_in:
            self._spawn(self._leave(s, held=held))

    async def shutdown(self) -> None:
        """Mark every local user offline in one statement, then release them."""
        uids = list(self.sessions)
        self.sessions.clear()
        for uid in uids:
            self.presence.unregistered(uid)
        if self._purging is not None:
            await cancel_and_wait([self._purging])
            self._purging = None
        if self._background:  # one deadline for all of them, then give up on the rest
            _, stuck = await asyncio.wait(list(self._background), timeout=5)
            for t in stuck:
                t.cancel()
        await self.restorer.close(RESTORE_DEADLINE)
        if self.history is not None:
            await self.history.close(RESTORE_DEADLINE)
        await self.store.flush_states()
        if uids:
            try:
                await self.store.set_state(uids, online=False)
            except errors.Unavailable:
                log.warning("could not mark %d users offline: store unavailable", len(uids))
            for uid in uids:
                await self.presence.release(uid)
        await self.bus.close()
        await self._tallies.close()
        self.passwords.close()

    # -- refusals ------------------------------------------------------------------

    def reply(self, s: Session, reply: Reply) -> Reply | None:
        """Send ``reply`` as the session's dialect shows it (the one place the
        dialect filter applies); returns what was sent, None if nothing."""
        if s.legacy:
            if type(reply) in dialect.NEVER:  # the usual case (CHAT_ACK), without a call
                return None
            shown = dialect.for_original(reply)
            if shown is None:
                return None
            reply = shown
        s.peer.send(reply.wire())
        return reply

    def _refuse_bad(self, s: Session, exc: BadRequest) -> None:
        self.refusals.note(s, f"refused a bad request: {exc.errmsg}")
        refusal = Unreadable(exc.code, exc.errmsg, exc.msgid)
        # Counted as what the client was told (the original client is told
        # a bad LOGIN or REG in their own reply), else as what it was not.
        told = self.reply(s, refusal)
        counted = told if isinstance(told, (LoginRefused, RegRefused)) else refusal
        self.counts.refused(counted.kind, counted.errno)

    def _login_refused(self, s: Session, errno: int, errmsg: str) -> None:
        self.counts.refused("login", errno)
        self.reply(s, LoginRefused(errno, errmsg))

    def _reg_refused(self, s: Session, errno: int, errmsg: str) -> None:
        self.counts.refused("register", errno)
        self.reply(s, RegRefused(errno, errmsg))

    def _refuse(self, s: Session, req: Request, code: ErrCode, errmsg: str) -> None:
        self.counts.refused("error", code)
        msgid = int(req.__struct_config__.tag)  # type: ignore[arg-type]
        if self.reply(s, Error(code, errmsg, msgid)) is None:
            self.refusals.note(s, f"refused legacy msgid {msgid}: {errmsg}")

    refuse = _refuse

    async def _guarded(self, s: Session, req: Request, work: Awaitable[None]) -> None:
        """Turn a handler's failure into a reply; nothing a client sends escapes."""
        try:
            await work
        except errors.Refused as exc:
            code, text = _REFUSALS[type(exc)]
            self._refuse(s, req, code, text.format(*exc.args))
        except errors.Busy as exc:
            self._refuse(s, req, ErrCode.BUSY, f"server busy, not sent: {exc}")
        except errors.InDoubt as exc:
            # Neither refused nor done, as far as we know: no answer at all,
            # which is what a client already takes to mean "may have got through".
            log.warning("closing uid %s's connection: %s", s.uid, exc)
            s.peer.close()
        except errors.Unavailable as exc:
            self.outages.warning(f"request refused: {exc}")
            self._refuse(s, req, ErrCode.UNAVAILABLE, "service temporarily unavailable, retry")
        except Exception:
            self.refusals.note(s, f"handler failed for {req!r}", exc_info=True)
            self._refuse(s, req, ErrCode.INTERNAL, "internal error")

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = logs.start_task(coro)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, errors.Unavailable):
            self.outages.warning(f"background work failed: {exc}")
        elif exc is not None:
            log.error("background work failed", exc_info=exc)

    # -- register, login, logout ---------------------------------------------------------

    async def _register(self, s: Session, req: Register) -> None:
        try:
            name = names.normalise(req.name)
        except names.BadName as exc:
            self._reg_refused(s, RegErr.FAILED, str(exc))
            return
        async with self._turns(("register", s.peer.limit_key)):  # see limits.Turns
            digest = await self._metered_hash(s, req.password)
        if digest is None:
            return
        try:
            uid = await self.store.create_user(name, digest)
        except errors.NameTaken:
            self._reg_refused(s, RegErr.FAILED, f"the name {name!r} is taken")
            return
        except errors.InDoubt:
            raise  # the account may exist: not a refusal (_guarded closes, unanswered)
        except errors.Unavailable:
            self._reg_refused(s, RegErr.UNAVAILABLE, "service unavailable, retry")
            return
        self.reply(s, RegOk(uid))

    async def _metered_hash(self, s: Session, password: str) -> str | None:
        """The new account's password hash, counted against the address's
        registrations; None if refused (the reply is sent)."""
        wait = await self._registrations.wait(s.peer.limit_key)
        if wait:
            text = (
                f"too many registrations from your address (at most "
                f"{self._registrations_limit}); try again in {int(wait) + 1} s"
            )
            self._reg_refused(s, RegErr.TOO_MANY, text)
            return None
        try:
            digest = await self.passwords.hash(password)
        except errors.Busy:
            self._reg_refused(s, RegErr.UNAVAILABLE, _REG_BUSY)
            return None
        await self._registrations.hit(s.peer.limit_key)  # counted once it cost a hash
        return digest

    async def _login(self, s: Session, req: Login) -> None:
        copying = self._copying.get(s)
        if copying is not None:  # a CHAT_ACK from before a LOGOUT waits for its copy:
            await copying  # this login's reply, and the pushes after it, go after that
        refusal = self._precheck_login(s, req)
        if refusal is not None:
            self._login_refused(s, *refusal)
            return
        race = s.race
        if not race.login_started():
            return  # the connection is gone
        # Stores for this user are noticed from now on: the reads below may
        # miss them, and the session they would look for is not yet registered.
        watching = self._logging_in.setdefault(req.id, [])
        watching.append(race)
        try:
            resumed = await self._admit(s, req)
        finally:
            watching.remove(race)
            if not watching and self._logging_in.get(req.id) is watching:
                del self._logging_in[req.id]
        if resumed is None:
            race.refused()
            return
        uid, ticket_login = req.id, resumed.found is not None
        ours = dialect.issues_extras(s.legacy)  # a ticket, receipts
        receipts = req.receipts and ours
        ticket: str | None
        digest: str | None
        rosters: dict[int, Roster]
        try:
            await self.friends.load_blocks(s)
            if resumed.found is not None:
                # A ticket login (a reconnect): offline messages only; the
                # client has its lists. Look again if something may have been
                # stored between the read and the registration.
                view, more, rosters = LoginView([], [], []), [], {}
                race.reply_read(complete=not (resumed.found.has_offline or self.bus.shared))
                # The ticket used is replaced: a stolen copy dies with this use.
                ticket, digest = tickets.issue()
                old = resumed.found.ticket_digest
                if old is None or not await self.store.rotate_ticket(uid, old, str(digest)):
                    raise _TicketRaced
                self.store.note_state(uid, online=True)
            else:
                ticket, digest = tickets.issue() if ours else (None, None)
                known = self._rosters.fresh()
                since = self._rosters.reading()
                view = await self.store.open_session(uid, digest, known)
                rosters = known.held
                read = [g for g in view.groups if g.id not in rosters]
                rosters.update(self._rosters.keep(read, since))
                # The reply carries what fits; the rest follows it, page by page
                # (with receipts, a page at most: it all waits for acknowledgement).
                fits = _fitting(view.offline, LOGIN_OFFLINE_BYTES)
                if receipts:
                    fits = fits[: min(self.store.offline_page, self.limits.receipt_window) // 2]
                race.reply_read(
                    complete=len(fits) == len(view.offline) and len(fits) < self.store.offline_page
                )
                friends = view.friends[:LOGIN_FRIENDS]
                groups = _groups_fitting(view.groups, rosters)
                more = [k for k, n, m in (("friends", friends, view.friends),
                        ("groups", groups, view.groups)) if len(n) < len(m)]  # fmt: skip
                if view.more_groups and "groups" not in more:
                    more.append("groups")
                view = LoginView(friends, groups, fits)
            if receipts:  # before anything is delivered to this session
                carried = [codec.encode_text(m) for _, m in view.offline]
                # Their rows stay stored until the client confirms them.
                unconfirmed = Delivered()
                rows = [self._rows.mark(uid, row, unconfirmed) for row, _ in view.offline]
                s.receipts = s.peer.start_receipts(carried, rows)
                if s.receipts:  # else none will be confirmed: delivered as without
                    race.unconfirmed = unconfirmed
            reply = await self._login_reply(
                s, view, rosters, ticket, ticket_login, more, s.receipts
            )
            # As ChatService.reply shows it; written below, after the race's turn.
            shown = dialect.for_original(reply) if s.legacy else reply
            assert shown is not None  # every dialect has its login reply
            wire = shown.wire()
        except BaseException as exc:
            unsettled: list[Settlement] = []
            if s.receipts:  # the reply's offline messages are still in the store
                s.receipts = False
                unsettled = s.peer.stop_receipts()[1]  # none: deliveries were held
            held = self._forget(s, closed=race.closed)
            unsettled += [st for _, st in race.take_settlements()]
            if not isinstance(exc, _TicketRaced):
                self._spawn(self.store_offline_each(uid, held, unsettled))
            await self.presence.release(uid)
            if isinstance(exc, _TicketRaced):
                await self.store_offline_each(uid, held, unsettled)  # accepted for them: kept
                self.reply(s, LoginRefused(LoginErr.BAD_CREDENTIALS, "wrong id or ticket"))
                return
            raise
        held = race.reply_sent()
        kept = race.take_settlements()
        sent = s.peer.send(wire)
        if kept:  # from other nodes' batches: settled by the receipt, from here on
            marks = dict(kept)
            for i, payload in enumerate(held):
                sent = s.peer.deliver(payload, marks.get(i)) and sent
        else:
            for payload in held:
                sent = s.peer.deliver(payload) and sent
        unsettled = [st for _, st in kept]
        if not sent:  # gone before it got them: keep everything for next time
            await self.store_offline_each(uid, held, unsettled)
            if self.sessions.get(uid) is s:
                await self._leave(s)
            return
        for settlement in unsettled:  # the deliveries hold them now, where they must
            settlement.release()
        if s.receipts:  # it waits for receipts, which come as requests after this one
            self._spawn(self._flush_offline(s, race))
            return
        written = view.offline
        if written:
            # The reply leaves with this loop iteration's write, scheduled
            # before this wakes up. Its messages are deleted only if that
            # write found the connection standing (a peer that reset just
            # before gets them again at its next login).
            await asyncio.sleep(0)
            if s.peer.closing():
                written = []
        await self._flush_offline(s, race, written=written)

    async def _admit(self, s: Session, req: Login) -> Admitted | None:
        """Check the secret, claim the user and register the session. Returns
        None if refused (the reply is sent), else what the login read."""
        address = s.peer.limit_key
        if req.ticket is None:
            checking = self._checking.get(address, 0)
            if checking >= self.passwords.share:
                self._login_refused(s, LoginErr.UNAVAILABLE, _BUSY_ADDRESS)
                return None
            self._checking[address] = checking + 1
            try:
                # Guesses at one account from one address take turns, so
                # each sees the failures counted before it (limits.Turns).
                async with self._turns((req.id, address)):
                    who = await self._check_secret(s, req)
            finally:
                if self._checking[address] > 1:
                    self._checking[address] -= 1
                else:
                    del self._checking[address]
        else:
            who = await self._check_secret(s, req)
        if who is None:
            return None
        name, resumed = who
        # Read before the claim, so that other nodes see the user's mailbox
        # marked full with the claim (Presence.claim): none of their messages
        # is delivered live to a full mailbox either (see _mailbox_full). A
        # ticket login's read said whether anything waits: if not, it is not
        # full (a store since is noticed: race.recheck), and a reconnect
        # storm costs no read more.
        full: bool | None = False
        read = resumed is None or resumed.has_offline
        if read:
            full = await self._mailbox_full(req.id)
        if not await self._claim(s, req.id, password=req.ticket is None, full=bool(full)):
            return None
        if self._rate:  # what the last session left of the flood bucket
            kept = await self._tallies.take_bucket(req.id)
            if kept is not None:
                tokens = kept[0] + (time.time() - kept[1]) * self._rate
                s.tokens, s.stamp = min(tokens, self._burst), time.monotonic()
            else:  # a full bucket, whatever the requests before login spent
                s.tokens, s.stamp = 0.0, 0.0
        s.uid, s.name = req.id, name  # the race holds deliveries from here on
        # No login deadline now (nor a float kept for it); how it logged in.
        s.anonymous_since = 0.0 if resumed is None else RESUMED
        self.sessions[req.id] = s
        if full:
            s.race.full = True
        elif s.race.recheck or (read and self.bus.shared and self._quota_on):
            # A store noticed since the read may have filled it; so may one
            # from another node between the read and the claim, unnoticed (its
            # nudge found the user offline): read again, now that later
            # stores are noticed, and mark it if so. (A lone node notices
            # every store: they are its own.)
            self._spawn(self._recheck_mailbox(req.id))
        self.presence.registered(req.id, self.sessions)
        return Admitted(resumed)

    async def _check_secret(self, s: Session, req: Login) -> tuple[str, Resume | None] | None:
        """The brute-force guard around :meth:`_authenticate`: the user's name
        (and, for a ticket login, what it read), or None if refused (the
        reply is sent)."""
        address = s.peer.limit_key  # an IPv6 address's /64: its owner has them all
        pair = (req.id, address)
        # A valid ticket always works: it cannot be guessed, and checking it
        # costs a digest, not a hash. Failed ones count against the address.
        wait = (
            max(await self._by_account.wait(pair), await self._by_address.wait(address))
            if req.ticket is None
            else 0.0
        )
        if wait:
            text = f"too many failed logins; try again in {int(wait) + 1} s"
            self._login_refused(s, LoginErr.TOO_MANY_FAILURES, text)
            return None
        if req.ticket is None and self.passwords.busy:  # before reading the store
            self._login_refused(s, LoginErr.UNAVAILABLE, _BUSY)
            return None
        try:
            who = await self._authenticate(s, req)
        except errors.Busy:
            self._login_refused(s, LoginErr.UNAVAILABLE, _BUSY)
            return None
        except errors.Banned:
            self._login_refused(s, LoginErr.BANNED, "this account is banned")
            return None
        except errors.Unavailable:
            self._login_refused(s, LoginErr.UNAVAILABLE, "service unavailable, retry")
            return None
        if who is None:
            if req.ticket is None:
                await self._by_account.hit(pair)
            await self._by_address.hit(address)
            self._login_refused(s, LoginErr.BAD_CREDENTIALS, "wrong id or password")
            return None
        await self._by_account.clear(pair)
        return who

    def _precheck_login(self, s: Session, req: Login) -> tuple[int, str] | None:
        if s.logged_in:
            return LoginErr.ALREADY_LOGGED_IN_HERE, "already logged in here; log out first"
        if req.password is None and req.ticket is None:
            return LoginErr.BAD_CREDENTIALS, "give a password"
        return None

    async def _authenticate(self, s: Session, req: Login) -> tuple[str, Resume | None] | None:
        """The user's name (and, for a ticket login, what it read), or None."""
        if req.ticket is not None:
            found = await self.store.resume(req.id)
            if found is None or not tickets.matches(req.ticket, found.ticket_digest):
                return None
            if found.ticket_expiry is None or found.ticket_expiry < time.time():
                return None  # expired: the password is needed again
            return found.name, found
        assert req.password is not None
        creds = await self.store.credentials(req.id)
        stored = creds.password_hash if creds else None
        if not await self.passwords.verify(stored, req.password, s.peer.limit_key):
            return None
        assert creds is not None
        if creds.banned:
            raise errors.Banned(req.id)
        if is_plain(creds.password_hash):
            await self._rehash(req.id, req.password)
        return creds.name, None

    async def _rehash(self, uid: int, password: str) -> None:
        """A password the original stored in plaintext becomes a hash (next time if busy)."""
        try:
            await self.store.set_password(uid, await self.passwords.hash(password))
            log.info("user %d: plaintext password replaced by an argon2id hash", uid)
        except errors.Unavailable as exc:
            log.warning("user %d: plaintext password kept until next login: %s", uid, exc)

    async def _claim(
        self, s: Session, uid: int, password: bool = False, full: bool = False
    ) -> bool:
        """Mark the user online here and cluster-wide, unless they already
        are; a ``password`` login takes over a session that came by ticket.
        ``full``: their mailbox is at its quota (Presence.claim)."""
        if s.logged_in or not (
            (uid not in self.sessions and await self.presence.claim(uid, full))
            or (password and await self._take_over(uid, full))
        ):
            self._login_refused(s, LoginErr.ALREADY_ONLINE, _ONLINE_ELSEWHERE)
            return False
        if uid in self.sessions or s.logged_in:  # lost a race while claiming
            await self.presence.release(uid)
            self._login_refused(s, LoginErr.ALREADY_ONLINE, _ONLINE_ELSEWHERE)
            return False
        if not s.race.claimed():  # the connection dropped while we checked the password
            await self.presence.release(uid)
            return False
        return True

    async def _take_over(self, uid: int, full: bool = False) -> bool:
        """A login with the password, for a user online: end their session
        if it came by ticket (a thief's copy of a ticket must not keep the
        owner out), here or on another node, and claim the user; revoke the
        tickets outstanding. A session that came with the password is kept
        (a second login gets errno 2, as in the original). True if claimed."""
        held = self.sessions.get(uid)
        if held is not None:
            if not held.resumed:
                return False
            self._end_displaced(held)
            # What it confirmed of its stored messages must be gone before this
            # login reads them (as after a logout or a drop).
            await self._rows.deleted(uid, RESTORE_DEADLINE)
            await self.presence.release(uid)
            claimed = await self.presence.claim(uid, full)
        elif self.bus.shared:
            await self.bus.take_over(uid)  # ends it, if its node holds it by ticket
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TAKEOVER_WAIT
            while not (claimed := await self.presence.claim(uid, full)):
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(0.05)
        else:
            return False  # claimed by a login in progress here
        if claimed:
            log.warning("audit: user %d's ticket session ended by a password login", uid)
            try:
                await self.store.end_session(uid)  # its ticket, and any other copy
            except BaseException:
                await self.presence.release(uid)
                raise
        return claimed

    def _end_displaced(self, s: Session) -> None:
        """End a ticket session for a password login: as a displaced one
        (told so, its unacknowledged messages kept), the user not released."""
        uid = s.uid
        race = s.race
        unacked, settlements = self._stop_receipts(s)
        held = [*unacked, *self._forget(s, closed=True)]
        settlements += [st for _, st in race.take_settlements()]
        if held or settlements:
            self._spawn(self.store_offline_each(uid, held, settlements))
        self.reply(s, DISPLACED)
        s.peer.close()

    def taken_over(self, uid: int) -> None:
        s = self.sessions.get(uid)
        if s is None or not s.resumed:
            return
        self._end_displaced(s)
        self._spawn(self._release_displaced(uid))

    async def _release_displaced(self, uid: int) -> None:
        """Release a user whose session a login on another node displaced,
        once the rows it confirmed are deleted: that login reads them next.
        Not for longer than that login waits for the claim (a store that slow
        costs a duplicate, not the login)."""
        await self._rows.deleted(uid, TAKEOVER_WAIT / 2)
        await self.presence.release(uid)

    async def _login_reply(
        self,
        s: Session,
        view: LoginView,
        rosters: Mapping[int, Roster],
        ticket: str | None,
        resumed: bool,
        more: list[str] | None = None,
        receipts: bool = False,
    ) -> LoginOk:
        """``rosters``: the members of each of ``view.groups``, encoded."""
        ids = {f for f, _ in view.friends}
        for g in view.groups:
            ids.update(rosters[g.id].members)
        online = await self.presence.online(ids) if ids else set()
        online -= s.blocked_by  # those who block you look offline
        friends = [codec.friend_doc(f, n, f in online) for f, n in view.friends]
        groups = [rosters[g.id].doc(g.id, g.name, g.desc, online) for g in view.groups]
        for g in view.groups:
            self._cache_members(g.id, rosters[g.id].members)
        offline = [m for _, m in view.offline]
        return LoginOk(
            s.uid, s.name, friends, groups, offline, ticket, resumed, more, self.max_frame, receipts
        )

    async def _flush_offline(
        self,
        s: Session,
        race: LoginRace[bytes],
        written: Sequence[tuple[int, str]] = (),
        delay: float = 0.0,
        uid: int = 0,
    ) -> None:
        """Deliver messages stored for a logged-in user, e.g. by a node that
        did not yet know of the login; first delete the rows already
        ``written`` (the login reply's). Runs when the race says so (after
        the login reply, or on a store noticed while ONLINE): one at a time.
        If the store fails it goes on later, in the background.

        With receipts a row is deleted only when the client confirms it
        (service/stored_rows.py), so the reads page on by id past those
        delivered, and skip them; a pass starts again from the oldest when a
        store was noticed meanwhile (MariaDB may commit a lower id later)."""
        uid = uid or s.uid
        if delay:
            await asyncio.sleep(delay)
        after = 0
        try:
            while True:
                try:
                    if written:
                        await self._delete_offline(uid, [i for i, _ in written])
                        written = ()
                    if not race.next_read():
                        return
                    unconfirmed = race.unconfirmed
                    skip = unconfirmed.reading() if unconfirmed is not None else ()
                    rows = await self.store.offline(uid, after)
                except errors.Unavailable as exc:
                    if race.read_failed():
                        why = f"offline delivery to user {uid} failed, retrying: {exc}"
                        self.outages.warning(why)
                        later = min(max(delay * 2, 0.1), 2.0)
                        self._spawn(self._flush_offline(s, race, written, later, uid))
                    return
                if not rows or s.race is not race:
                    after = 0
                    continue
                full = len(rows) >= self.store.offline_page
                if unconfirmed is None:
                    if not await self._deliver_page(s, race, rows):
                        race.flush_stopped()  # closing: the rows stay stored
                        return
                    written = rows
                else:
                    new = [row for row in rows if row[0] not in skip]
                    if not await self._deliver_page(s, race, new, unconfirmed):
                        race.flush_stopped()  # closing: the rows stay stored
                        return
                    after = rows[-1][0] if full and not race.recheck else 0
                race.page_written(full)
        except BaseException:
            race.flush_stopped()
            raise

    async def _deliver_page(
        self,
        s: Session,
        race: LoginRace[bytes],
        rows: Sequence[tuple[int, str]],
        unconfirmed: Delivered | None = None,
    ) -> bool:
        """Offline messages to a logged-in session; False if it is closing
        (the rows stay stored). With receipts, each waits for room in the
        unacknowledged window (a full mailbox must not overflow it, and be
        cut off at every login), and its row stays until it is confirmed."""
        if unconfirmed is None:
            return all([s.peer.deliver(codec.encode_text(m)) for _, m in rows])
        for row, m in rows:
            payload = codec.encode_text(m)
            if not await s.peer.receipt_room(len(payload)):
                return False
            if s.race is not race or not s.receipts:  # logged out meanwhile
                return False
            if not s.peer.deliver(payload, self._rows.mark(s.uid, row, unconfirmed)):
                return False
        return True

    def _logout(self, s: Session, req: Logout) -> Awaitable[None]:
        return self._leave(s, logout=True)

    async def _leave(self, s: Session, logout: bool = False, held: Sequence[bytes] = ()) -> None:
        """Log out (the ticket is revoked) or drop (it stays, for reconnecting)."""
        uid = s.uid
        race = s.race
        unacked, settlements = self._stop_receipts(s)
        held = [*unacked, *held, *self._forget(s, closed=not logout)]
        settlements += [st for _, st in race.take_settlements()]
        try:
            await self.store_offline_each(uid, held, settlements)
            # What it confirmed of its stored messages must be gone before
            # its next login reads them.
            await self._rows.deleted(uid, RESTORE_DEADLINE)
            if logout:
                await self.store.end_session(uid)
            else:
                self.store.note_state(uid, online=False)
        finally:
            await self._keep_bucket(uid, s)
            # Acknowledge only once the whole cluster sees the user offline.
            await self.presence.release(uid)
            if logout:
                self.reply(s, LOGOUT_ACK)

    async def _keep_bucket(self, uid: int, s: Session) -> None:
        """A flood bucket not full is kept for the user's next login: leaving
        and coming back does not refill it."""
        if not self._rate or not s.stamp:
            return
        tokens = s.tokens + (time.monotonic() - s.stamp) * self._rate
        if tokens < self._burst:
            refill = (self._burst - tokens) / self._rate
            await self._tallies.keep_bucket(uid, tokens, time.time(), refill + 1)

    def _stop_receipts(self, s: Session) -> tuple[list[bytes], list[Settlement]]:
        """Chat messages written to the session and not acknowledged (its
        receipts end with it), and those not yet written: to be stored; and
        the settlements to release once they are."""
        if not s.receipts:
            return [], []
        s.receipts = False
        unacked, settlements = s.peer.stop_receipts()
        return [p for p in unacked if pushes.is_chat(p)], settlements

    def _received(self, s: Session, req: Received) -> None:
        """RECEIVED: the client has every pushed message up to ``seq``. Never
        refused by the flood limit, but one that releases nothing (a number
        already acknowledged) or a wrong one (a reply) costs a token: a
        client sending them regardless is closed. Before, one pipelining
        wrong RECEIVEDs got 430,000 ERROR 188s in 4 s, and one repeating a
        valid number 1.1 million in 4 s: the node's loop 2-4 s late."""
        if not s.receipts:
            msg = "receipts are off on this connection; ask for them in LOGIN"
        else:
            released = s.peer.received(req.seq)
            if released:
                return
            if released is None:  # harmless, and useless
                if not self.spent(s):
                    text = "too many RECEIVEDs that acknowledge nothing new; closing"
                    self.refusals.note(s, f"closing: {text}")
                    self._refuse(s, req, ErrCode.TOO_FAST, text)
                    s.peer.close()
                return
            msg = f"no message numbered {req.seq} was sent on this connection"
        code = ErrCode.RECEIPTS_OFF if not s.receipts else ErrCode.RECEIPT_AHEAD
        self.refusals.note(s, msg)
        if self.spent(s):
            self._refuse(s, req, code, msg)
        else:
            text = f"too many wrong RECEIVEDs ({msg}), past the flood limit; closing"
            self._refuse(s, req, ErrCode.TOO_FAST, text)
            s.peer.close()

    def _forget(self, s: Session, closed: bool) -> list[bytes]:
        """Unregister the session; returns what its race held, to be stored."""
        if self.sessions.get(s.uid) is s:
            del self.sessions[s.uid]
            self.presence.unregistered(s.uid)  # claimed until released
        s.uid, s.name = 0, ""
        s.anonymous_since = time.monotonic()  # a new login deadline
        held = s.race.ended(closed)
        if not closed:  # a new login on this connection starts a new race
            s.race = LoginRace[bytes]()
        return held

    def _ping(self, s: Session, req: Ping) -> None:
        self.reply(s, self._pong)

    # -- friends and groups -----------------------------------------------------------

    async def _add_friend(self, s: Session, req: AddFriend) -> None:
        if req.friendid == s.uid:
            self._refuse(s, req, ErrCode.FRIEND_SELF, "you cannot befriend yourself")
            return
        if req.friendid in s.blocked_by:
            raise errors.RefusedByUser(req.friendid)
        if self.friends.readds_too_soon(s, req):
            return
        name = await self.store.add_friend(s.uid, req.friendid, self.quota)
        if dialect.shown(s.legacy, MsgId.ADD_FRIEND_ACK):  # else no presence to look up
            online = bool(await self.presence.online({req.friendid} - s.blocked_by))
            friend = {"id": req.friendid, "name": name, "state": _state(online)}
            self.reply(s, Ack(MsgId.ADD_FRIEND_ACK, {"friend": friend}))
        # The new friend learns it now (modern clients; never stored offline:
        # their login reply and FRIEND_LIST show it).
        adder = {"id": s.uid, "name": s.name, "state": _state(True)}
        added = codec.encode({"msgid": MsgId.FRIEND_ADDED, "friend": adder})
        await pushes.send(self, [req.friendid], added)

    def _create_group(self, s: Session, req: CreateGroup) -> Work:
        try:
            name = names.normalise(req.groupname, "group name")
        except names.BadName as exc:
            self._refuse(s, req, ErrCode.INVALID_FIELD, f"field 'groupname': {exc}")
            return None
        return self._create_named_group(s, req, name)

    async def _create_named_group(self, s: Session, req: CreateGroup, name: str) -> None:
        gid = await self.store.create_group(s.uid, name, req.groupdesc, self.quota)
        self._cache_members(gid, frozenset((s.uid,)))
        fields = {"groupid": gid, "groupname": name, "groupdesc": req.groupdesc}
        self.reply(s, Ack(MsgId.CREATE_GROUP_ACK, fields))

    async def _add_group(self, s: Session, req: AddGroup) -> None:
        if self.groups.rejoins_too_soon(s, req):
            return
        await self.groups.may_join(s, req.groupid)
        name = await self.store.join_group(
            s.uid, req.groupid, self.limits.max_group_size, self.quota
        )
        await self.store.joined(s.uid, req.groupid)
        self.group_changed(req.groupid)
        await self.bus.announce_group(req.groupid)
        self.reply(s, Ack(MsgId.ADD_GROUP_ACK, {"groupid": req.groupid, "groupname": name}))

    async def _list_friends(self, s: Session, req: ListFriends) -> None:
        friends = await self.store.friends(s.uid)
        online = await self.presence.online(f for f, _ in friends) - s.blocked_by
        docs = [{"id": f, "name": n, "state": _state(f in online)} for f, n in friends]
        self.reply(s, Ack(MsgId.FRIEND_LIST, {"friends": docs}))

    async def _list_groups(self, s: Session, req: ListGroups) -> None:
        every, beyond = await self.store.groups(s.uid, req.after)
        groups = _groups_fitting(every)  # a page; the client asks for the next
        # A list the user had within LIST_WINDOW costs the flood limit what
        # a HISTORY page of its size does (BLOCKED_LIST too). Five accounts
        # in three groups of 1,000 asking at their limit got 35 pages
        # (218 KB) a second: the node's CPU 10.1 s of 15, others' chats p99
        # 6 -> 91 ms, logins p50 9 -> 388 ms. Reading each list once costs
        # only the request: an honest member of 500 groups of 1,000 paid
        # ~2,000 tokens (100 s of the limit) to read them at all.
        self.charge(s, self._relisted(s.uid, groups) // PAGE_COST_BYTES)
        online = await self.presence.online({m.id for g in groups for m in g.members})
        online -= s.blocked_by
        docs = [
            {
                "id": g.id,
                "groupname": g.name,
                "groupdesc": g.desc,
                "users": [
                    {"id": m.id, "name": m.name, "state": _state(m.id in online), "role": m.role}
                    for m in g.members
                ],
            }
            for g in groups
        ]
        if len(groups) < len(every) or beyond:
            self.reply(s, Ack(MsgId.GROUP_LIST, {"groups": docs, "more": True}))
        else:
            self.reply(s, Ack(MsgId.GROUP_LIST, {"groups": docs}))

    def _relisted(self, uid: int, groups: list[Group]) -> int:
        """The bytes of ``groups``' documents that ``uid`` was sent within
        LIST_WINDOW; the others are noted as sent now. Per node: a user
        asking each node of a cluster gets each list once per node."""
        now = time.monotonic()
        sent = self._listed.pop(uid, None) or {}
        self._listed[uid] = sent  # most recent last
        if len(self._listed) > LISTED_USERS:
            del self._listed[next(iter(self._listed))]
        if len(sent) > LISTED_GROUPS:
            for gid in [g for g, t in sent.items() if now - t >= LIST_WINDOW]:
                del sent[gid]
        size = 0
        for g in groups:
            t = sent.get(g.id)
            if t is not None and now - t < LIST_WINDOW:
                size += _group_size(g)
            else:
                sent[g.id] = now
        return size

    def _cache_members(self, gid: int, members: frozenset[int]) -> None:
        """Keep a group's members for the fan-out, within
        ``max_cached_members``: the groups cached longest ago make room (a
        group bigger than the whole bound is read each time)."""
        self._uncache_members(gid)
        cost = len(members) + _GROUP_COST
        if cost > self.max_cached_members:
            return
        cached = self._members
        while cached and self._members_held + cost > self.max_cached_members:
            self._uncache_members(next(iter(cached)))
        cached[gid] = members
        self._members_held += cost

    def _uncache_members(self, gid: int) -> None:
        gone = self._members.pop(gid, None)
        if gone is not None:
            self._members_held -= len(gone) + _GROUP_COST

    # -- chat: the hot path ---------------------------------------------------------------

    def _one_chat(self, s: Session, req: OneChat) -> Work:
        toid = req.toid
        if toid in s.blocked_by:
            self._refuse(
                s, req, ErrCode.REFUSED_BY_USER, f"user {toid} does not accept this from you"
            )
            return None
        ts = time.time_ns() // 1_000_000
        n = next(self._mids)
        mid = f"{self.node_id}-{n}"
        payload = codec.one_chat(s.uid, s.name, toid, req.msg, req.time, ts, mid)
        target = self.sessions.get(toid)
        if target is not None:
            race = target.race
            if race.full:  # stored, or refused (ERROR 171/174): see _mailbox_full
                return self._one_chat_stored(s, toid, payload, mid, ts, req.msg)
            held = race.held is not None  # a login being answered: Session.deliver holds it
            # Receipts, or a login being answered (receipts or not, not yet known).
            if (target.receipts or held) and self.bus.shared:
                work = self._one_chat_copied(s, req, target, payload, mid, n, ts)
                if work is not False:
                    return work
            # Else straight to the connection (Session.deliver's usual case,
            # without its call: one Python call is ~2% of a relayed chat).
            elif target.deliver(payload) if held else target.peer.deliver(payload):
                self.counts.relayed_local += 1
                if self.history is not None:
                    self.history.add(s.uid, toid, s.uid, mid, ts, req.msg)
                if not s.legacy:  # the original is shown no CHAT_ACK (see reply)
                    s.peer.send(self._delivered_ack % (n, ts))
                return None
        # On another node: the original client expects no reply (it is shown
        # no CHAT_ACK), so do not wait for Redis (the bus stores the message
        # if no node takes it).
        if s.legacy and target is None and self.bus.post(req.toid, payload):
            self.counts.relayed_to_nodes += 1
            if self.history is not None:
                self.history.add(s.uid, req.toid, s.uid, mid, ts, req.msg)
            return None
        if target is None and not s.legacy:
            posted = self._one_chat_posted(s, req, payload, mid, ts)
            if posted is not None:
                return posted
        return self._one_chat_away(s, req.toid, payload, mid, ts, req.msg)

    def _one_chat_copied(
        self, s: Session, req: OneChat, target: Session, payload: bytes, mid: str, n: int, ts: int
    ) -> Work | Literal[False]:
        """To a receiver here with receipts, in a cluster: what it has not
        confirmed is copied out of this node (Bus.copy) before the sender is
        told, so that this node's SIGKILL does not take the only copy.
        False if the receiver could not take it after all."""
        settlement = Settlement(pins=False)
        if not target.deliver(payload, settlement):
            return False
        self.counts.relayed_local += 1
        if self.history is not None:
            self.history.add(s.uid, req.toid, s.uid, mid, ts, req.msg)
        copying = self._copy([req.toid], payload, settlement)
        if s.legacy:  # the original is shown no CHAT_ACK (see reply)
            return None
        ack = self._delivered_ack % (n, ts)
        if copying is None:
            s.peer.send(ack)
        else:
            self._reply_when_copied(s, copying, ack)
        return None

    def _one_chat_posted(
        self, s: Session, req: OneChat, payload: bytes, mid: str, ts: int
    ) -> asyncio.Future[None] | None:
        """Ours, to a user on another node: queued for the bus's next PUBLISH
        with no task or coroutine of its own; the CHAT_ACK is sent when that
        PUBLISH is answered (:meth:`_published`). The connection serves its
        next request once the returned future is done, so no later reply
        overtakes the acknowledgement. None if the bus cannot post it now
        (route unknown, window full): :meth:`_one_chat_away` then waits."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        published = functools.partial(self._published, s, s.uid, req, payload, mid, ts, done)
        return done if self.bus.post_reported(req.toid, payload, published) else None

    def _published(
        self,
        s: Session,
        uid: int,
        req: OneChat,
        payload: bytes,
        mid: str,
        ts: int,
        done: asyncio.Future[None],
        ok: bool,
    ) -> None:
        """The bus's answer for a posted message: delivered (Redis took it for
        the receiver's node), or nobody took it and it is stored before the
        acknowledgement, exactly as :meth:`_one_chat_away` does."""
        if not ok:
            self._spawn(self._store_posted(s, req, payload, mid, ts, done))
            return
        self.counts.relayed_to_nodes += 1
        if self.history is not None:
            self.history.add(uid, req.toid, uid, mid, ts, req.msg)
        self.reply(s, ChatAck(mid, ts, ChatStatus.DELIVERED))
        if not done.done():  # cancelled if the connection's task was
            done.set_result(None)

    async def _store_posted(
        self,
        s: Session,
        req: OneChat,
        payload: bytes,
        mid: str,
        ts: int,
        done: asyncio.Future[None],
    ) -> None:
        stored = self._one_chat_stored(s, req.toid, payload, mid, ts, req.msg)
        try:
            await self._guarded(s, req, stored)
        finally:
            if not done.done():
                done.set_result(None)

    async def _one_chat_away(
        self, s: Session, toid: int, payload: bytes, mid: str, ts: int, msg: str
    ) -> None:
        if await self._send_away(s, [toid], payload):  # no node took it
            await self._one_chat_stored(s, toid, payload, mid, ts, msg)
            return
        self.counts.relayed_to_nodes += 1
        if self.history is not None:
            self.history.add(s.uid, toid, s.uid, mid, ts, msg)
        self.reply(s, ChatAck(mid, ts, ChatStatus.DELIVERED))

    async def _one_chat_stored(
        self, s: Session, toid: int, payload: bytes, mid: str, ts: int, msg: str
    ) -> None:
        """No node took a 1:1 message: store it for the receiver's next login,
        then acknowledge (a refusal from the store reaches the client instead)."""
        text = _text(payload)
        if self._too_long_to_store(s, OneChat, len(text)):
            return
        try:
            await self.store.store_offline(toid, text, self.quota, s.uid)
        except errors.InDoubt:  # kept or not? find out before answering
            await in_doubt.settle(self.store, [(toid, text)], self.settle_timeout, s.uid)
        await self._after_store([toid])
        if self.history is not None:
            self.history.add(s.uid, toid, s.uid, mid, ts, msg)
        self.reply(s, ChatAck(mid, ts, ChatStatus.STORED))

    def _too_long_to_store(self, s: Session, req: Request | type, size: int) -> bool:
        """Refuse a message too long to keep for an offline receiver."""
        most = self.limits.max_stored_message
        if not most or size <= most:
            return False
        msgid = int(req.__struct_config__.tag)  # type: ignore[union-attr, arg-type]
        text = f"messages kept for offline receivers are at most {most} bytes; not sent"
        if self.reply(s, Error(ErrCode.TOO_LONG_TO_STORE, text, msgid)) is None:
            self.refusals.note(s, f"refused legacy msgid {msgid}: {text}")
        return True

    def _group_chat(self, s: Session, req: GroupChat) -> Work:
        # Kept for whoever is away, so always within the stored-message bound
        # (checked before anyone gets it: a refused message has no effect).
        if len(req.msg) > self.limits.max_stored_message // 4 and self._too_long_to_store(
            s, req, len(codec.group_chat(s.uid, s.name, req.groupid, req.msg, req.time, 0, ""))
        ):
            return None
        members = self._members.get(req.groupid)
        if members is None:
            return self._group_chat_load(s, req)
        return self._fan_out(s, req, members)

    async def _group_chat_load(self, s: Session, req: GroupChat) -> None:
        members = await self.store.group_members(req.groupid)
        if members:
            self._cache_members(req.groupid, members)
        work = self._fan_out(s, req, members)
        if work is not None:
            await work

    def _fan_out(self, s: Session, req: GroupChat, members: frozenset[int]) -> Work:
        if s.uid not in members:
            if members:
                self._refuse(s, req, ErrCode.NOT_GROUP_MEMBER, "you are not in this group")
            else:
                self._refuse(s, req, ErrCode.NO_SUCH_GROUP, f"no group has id {req.groupid}")
            return None
        ts = time.time_ns() // 1_000_000
        mid = f"{self.node_id}-{next(self._mids)}"
        payload = codec.group_chat(s.uid, s.name, req.groupid, req.msg, req.time, ts, mid)
        away: list[int] = []
        sessions = self.sessions
        if s.blocked_by:  # who blocks the sender gets none of their messages
            members = members - s.blocked_by
        copy = self.bus.shared  # members with receipts: see _one_chat
        settlement: Settlement | None = None
        kept: list[int] = []
        for uid in members:
            if uid != s.uid:
                target = sessions.get(uid)
                if target is None or target.race.full:  # full: see _one_chat
                    away.append(uid)
                elif not (copy and (target.receipts or target.race.held is not None)):
                    if not target.deliver(payload):
                        away.append(uid)
                else:
                    if settlement is None:
                        settlement = Settlement(pins=False)
                    if target.deliver(payload, settlement):
                        kept.append(uid)
                    else:
                        away.append(uid)
        self.counts.relayed_local += len(members) - 1 - len(away)
        copying = None if settlement is None else self._copy(kept, payload, settlement)
        if not away:
            if self.history is not None:
                self.history.add(0, req.groupid, s.uid, mid, ts, req.msg)
            if copying is None or s.legacy:  # the original is shown no CHAT_ACK
                self.reply(s, ChatAck(mid, ts, ChatStatus.SENT))
                return None
            self._reply_when_copied(s, copying, ChatAck(mid, ts, ChatStatus.SENT).wire())
            return None
        reached = len(members) - 1 - len(away)  # written to members here
        return self._fan_out_away(s, req, away, payload, mid, ts, reached, copying)

    def _copy(
        self, uids: list[int], payload: bytes, settlement: Settlement
    ) -> asyncio.Future[None] | None:
        """Have the bus copy a message delivered here to clients with
        receipts (``uids``) out of this node; a future done once it is (or
        could not be), None if there is nothing to wait for."""
        copied: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(ok: bool) -> None:
            if not copied.done():
                copied.set_result(None)

        return None if self.bus.copy(uids, payload, settlement, done) else copied

    def _reply_when_copied(self, s: Session, copying: asyncio.Future[None], ack: bytes) -> None:
        """The CHAT_ACK keeps its place among the session's replies and
        leaves once the copy is made; the sender's next requests go on."""
        fill = s.peer.reply_later()
        copying.add_done_callback(lambda _: fill(ack))
        copies = self._copying
        copies[s] = copying  # the latest: copies complete in order

        def forget(_: object) -> None:
            if copies.get(s) is copying:
                del copies[s]

        copying.add_done_callback(forget)

    async def _fan_out_away(
        self,
        s: Session,
        req: GroupChat,
        away: list[int],
        payload: bytes,
        mid: str,
        ts: int,
        reached: int,
        copying: asyncio.Future[None] | None = None,
    ) -> None:
        try:
            left = await self._send_away(s, away, payload)
        except errors.Busy:
            if not reached:
                raise  # nobody has it: refused (ERROR 151), and it had no effect
            left = list(away)  # members here have it: keep it for the rest, no half refusal
        self.counts.relayed_to_nodes += len(away) - len(left)
        reached += len(away) - len(left)
        full: list[int] = []
        if left:
            try:
                # Counted toward the share of the member who wrote it, as
                # their 1:1 messages are: a share cannot be got round by
                # posting to a group, and one member's flood does not refuse
                # the group's others.
                full = await self.store.store_offline_within(
                    left, _text(payload), self.quota, s.uid
                )
            except errors.InDoubt:  # kept or not? find out before answering
                text = _text(payload)
                items = [(u, text) for u in left]
                await in_doubt.settle(self.store, items, self.settle_timeout, s.uid)
            except errors.Unavailable as exc:
                if not reached:
                    raise  # nobody has it: refused, and it had no effect
                # Some members have it: say exactly who does not (a refusal would lie).
                log.warning("group chat %s reached %d members, not %s: %s", mid, reached, left, exc)
                if self.history is not None:
                    self.history.add(0, req.groupid, s.uid, mid, ts, req.msg)
                if copying is not None:
                    await copying
                self.reply(s, ChatAck(mid, ts, ChatStatus.PARTIAL, missed=left))
                return
            await self._after_store([u for u in left if u not in full])
        if self.history is not None:
            self.history.add(0, req.groupid, s.uid, mid, ts, req.msg)
        if copying is not None:
            await copying
        # Members whose mailbox is full do not get it: say who.
        self.reply(s, ChatAck(mid, ts, ChatStatus.SENT, full=full or None))

    async def _send_away(self, s: Session, uids: list[int], payload: bytes) -> list[int]:
        """Hand a message to other nodes. Past the bus window ours are told
        ``ERROR 151``; the original client has no such reply, so it waits."""
        while True:
            try:
                return await self.bus.send(uids, payload)
            except errors.Busy:
                if dialect.shown(s.legacy, MsgId.ERROR):
                    raise

    # -- the bus's inbox: traffic from other nodes ---------------------------------------

    def deliver(self, uid: int, payload: bytes, settlement: Settlement | None = None) -> bool:
        target = self.sessions.get(uid)
        if target is None:
            return False
        if payload[0] != _JSON:  # an event or control message (service/pushes.py)
            return pushes.arrived(self, target, payload)
        if target.deliver(payload, settlement):
            self.counts.relayed_from_nodes += 1
            return True
        return False

    def nudged(self, uid: int) -> None:
        self._noticed_store(uid)

    def _noticed_store(self, uid: int) -> bool:
        """Something was stored for ``uid``: tell its login race. False if
        the user has no session here (a login in progress is told too)."""
        s = self.sessions.get(uid)
        if s is None:
            for race in self._logging_in.get(uid, ()):
                race.stored()
            return False
        if s.race.stored():
            self._spawn(self._flush_offline(s, s.race))
        if not s.race.full and self._quota_on:
            self._spawn(self._recheck_mailbox(uid))
        return True

    def local_users(self) -> list[int]:
        return list(self.sessions)

    async def reconnected(self) -> None:
        self._rosters.clear()  # group changes announced meanwhile were missed
        try:
            waiting = await self.store.offline_users(list(self.sessions))
        except errors.Unavailable as exc:
            log.warning("could not check stored messages after reconnecting: %s", exc)
            return
        for uid in waiting:
            self.nudged(uid)

    def group_changed(self, gid: int) -> None:
        self._uncache_members(gid)
        self._rosters.changed(gid)

    def kicked(self, uid: int, banned: bool = False) -> None:
        """An operator ended the user's session (`clusterchat admin kick`, `ban`,
        `delete`); the connection closes as a drop would, nothing is lost."""
        s = self.sessions.get(uid)
        if s is None:
            return
        log.warning("audit: user %d %s by an operator", uid, "banned" if banned else "kicked")
        self.reply(s, BANNED if banned else KICKED)
        s.peer.close()

    def displaced(self, uid: int) -> None:
        s = self.sessions.get(uid)
        if s is None:
            return
        self._end_displaced(s)  # presence is the other node's now: nothing to release

    # -- offline storage ------------------------------------------------------------------

    async def store_offline(self, uids: Sequence[int], payload: bytes) -> None:
        if uids and payload[0] == _JSON:  # never events or control messages
            text = _text(payload)
            items = [(u, text) for u in uids]
            try:
                await self.store.store_offline_many(items)
            except errors.InDoubt:  # kept or not? find out before answering
                await in_doubt.settle(self.store, items, self.settle_timeout)
            await self._after_store(uids)

    async def store_offline_many(self, messages: Sequence[tuple[Sequence[int], bytes]]) -> None:
        kept = [(uids, p) for uids, p in messages if uids and p and p[0] == _JSON]
        items = [(u, text) for uids, p in kept for text in (_text(p),) for u in uids]
        if not items:
            return
        try:  # one write: the bus bounds what it hands over at once
            await self.store.store_offline_many(items)
        except errors.InDoubt:  # kept or not? find out before answering
            await in_doubt.settle(self.store, items, self.settle_timeout)
        await self._after_store(sorted({u for uids, _ in kept for u in uids}))

    async def store_offline_each(
        self, uid: int, payloads: list[bytes], settlements: Sequence[Settlement] = ()
    ) -> None:
        """Keep messages a session held but never wrote: queued for the
        re-store writer, which retries until the store takes them, then
        releases ``settlements``. Chat only: events and notices are never kept."""
        self.restorer.add(uid, [p for p in payloads if pushes.is_chat(p)], settlements)

    @property
    def _quota_on(self) -> bool:
        """Whether a mailbox can be full (a message or byte quota is set)."""
        return bool(self.quota.offline_messages or self.quota.offline_bytes)

    async def _mailbox_full(self, uid: int) -> bool | None:
        """Whether ``uid``'s mailbox is at or past its quota, as its tally
        says; None if the store cannot say.

        Read at login (before the session is registered), after a store
        for the user is noticed, and after their delivered (or confirmed)
        rows are deleted while full; kept in the session's ``race.full``.
        While it is set, new messages from this node to the user are not
        delivered live but take the path a message to an offline user
        takes, where the quota applies (stored, or ERROR 171/174 before
        any acknowledgement). What a cut-off leaves is stored whatever the
        quota (it was acknowledged), so a receiver that never confirms
        would otherwise grow its mailbox by a receipt window at every
        reconnection. Senders on other nodes, whose CHAT_ACK leaves when
        Redis takes the batch, see it too: the mark is set in Redis with the
        user's claim and by :meth:`_recheck_mailbox` (Presence.mark_full),
        and their nodes send new messages down the stored path."""
        try:
            return bool(await self.store.full_mailboxes([uid], self.quota))
        except errors.Unavailable as exc:
            self.outages.warning(f"could not read user {uid}'s mailbox tally: {exc}")
            return None

    async def _recheck_mailbox(self, uid: int) -> None:
        """Something was stored for, or deleted from, the mailbox of ``uid``
        (a user here): read whether it is full now, and mark its session so."""
        full = await self._mailbox_full(uid)
        s = self.sessions.get(uid)
        if s is not None and full is not None and s.race.full != full:  # None: left as it was
            s.race.full = full
            await self.presence.mark_full(uid, full)  # for senders on other nodes

    async def _delete_offline(self, uid: int, ids: Sequence[int]) -> None:
        """Delete rows delivered (or confirmed); a user kept out of live
        delivery by a full mailbox is let back in once below its quota."""
        await self.store.delete_offline(uid, ids)
        s = self.sessions.get(uid)
        if s is not None and s.race.full:
            await self._recheck_mailbox(uid)

    async def _after_store(self, uids: Sequence[int]) -> None:
        """Close the race with a login that read its offline messages just
        before these were stored: have them delivered now, not next login."""
        away = [uid for uid in uids if not self._noticed_store(uid)]
        if away:
            await self.bus.nudge(away)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A login that passed: for a ticket login, what it read."""

    found: Resume | None


def _fitting(rows: list[tuple[int, str]], budget: int) -> list[tuple[int, str]]:
    """The leading rows whose text fits in ``budget`` (at least one)."""
    total = 0
    for i, (_, text) in enumerate(rows):
        total += len(text) + 4
        if total > budget and i:
            return rows[:i]
    return rows


class _TicketRaced(Exception):
    """The ticket was replaced between its check and its use (used twice at once)."""


#: Seconds within which a group's member list sent again costs its size.
LIST_WINDOW = 300.0
#: Users whose lists sent are remembered (each about as many entries as
#: groups they are in); past it the longest quiet is forgotten.
LISTED_USERS = 20_000
#: Entries of one user's before the expired ones are dropped.
LISTED_GROUPS = 1_000


def _group_size(g: Group) -> int:
    """About the bytes of a group's document, its members' from ``members``."""
    return 80 + len(g.name) + len(g.desc) + sum(70 + len(m.name) for m in g.members)


def _groups_fitting(
    groups: list[Group], rosters: Mapping[int, Roster] | None = None
) -> list[Group]:
    """The leading groups whose documents fit in LOGIN_GROUPS_BYTES (roughly);
    their members' share from ``rosters`` if given, else from ``members``."""
    total = 0
    for i, g in enumerate(groups):
        if rosters is not None:
            total += 80 + len(g.name) + len(g.desc) + rosters[g.id].size
        else:
            total += _group_size(g)
        if total > LOGIN_GROUPS_BYTES and i:
            return groups[:i]
    return groups


def _nobody(address: str) -> bool:
    return False


def _unanswered(s: Session, req: Request) -> None:
    """A request whose only effect is a reply the session's client cannot read."""


def _text(payload: bytes) -> str:
    return payload[:-1].decode()  # stored without the frame's newline


def _state(online: bool) -> str:
    return "online" if online else "offline"
