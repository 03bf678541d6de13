"""A server node: wires store, presence, bus and service to a TCP listener.

Shutdown runs in uvicorn's order: stop accepting, close every connection,
let the service mark its users offline, then close the store.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from time import monotonic as _monotonic
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from clusterchat import logs
from clusterchat.budget import Budget, to_evict
from clusterchat.config import Settings, connection_limit
from clusterchat.protocol import codec
from clusterchat.protocol.framing import FrameDecoder
from clusterchat.protocol.messages import ErrCode, MsgId
from clusterchat.protocol.trusted import TrustedProxies
from clusterchat.server import control
from clusterchat.server.backends import Backends, open_backends
from clusterchat.server.connection import Connection
from clusterchat.server.core import SETTLE_GRACE, SETTLE_GRACE_PRESSED, ConnectionCore
from clusterchat.server.http import HttpServer
from clusterchat.server.load import LoopLag
from clusterchat.server.metrics import Ops
from clusterchat.server.sockets import tune_listener
from clusterchat.server.tls import TlsHandshakes
from clusterchat.service.chat import ChatService
from clusterchat.service.limits import limit_key
from clusterchat.service.passwords import Passwords
from clusterchat.storage.base import Store
from clusterchat.storage.sql import sqlite_file

log = logging.getLogger(__name__)

_SERVER_FULL = codec.error(ErrCode.SERVER_FULL, "this server is full; try again or another one")
_OVERLOADED = codec.error(
    ErrCode.SERVER_FULL, "this server is overloaded; try again shortly or another one"
)
_ADDRESS_FULL = codec.error(ErrCode.SERVER_FULL, "too many connections from your address")
_LOGIN_TIMEOUT = codec.error(ErrCode.TIMEOUT, "no login in time; closing the connection")
_FRAME_TIMEOUT = codec.error(
    ErrCode.TIMEOUT, "a request took too long to arrive; closing the connection"
)
_MAKING_ROOM = codec.error(
    ErrCode.SERVER_FULL, "this server is full and you have not logged in; closing"
)
_IDLE_TIMEOUT = codec.error(ErrCode.TIMEOUT, "silent for too long; closing the connection")
#: Seconds between in-flight reports to connections' outboxes.
REPORT_EVERY = 0.5
#: Past this share of a sender's limit kept for our clients, they get less
#: time to confirm (core.SETTLE_GRACE_PRESSED).
PINNED_PRESSED = 0.5
_GOODBYE = codec.encode(
    {
        "msgid": MsgId.NOTICE,
        "text": "this server is shutting down; reconnect to carry on",
        # For clients that reconnect by themselves (the web page) and say so
        # in their own words instead of the text.
        "event": "shutdown",
    }
)


def _not_started() -> None:
    raise RuntimeError("the node is not started")


class Node:
    def __init__(
        self, settings: Settings, store: Store | None = None, backends: Backends | None = None
    ) -> None:
        """``backends``: what the settings' URLs name (cli.py builds them);
        without, the node builds them itself (with ``store``, if given)."""
        self.settings = settings
        self.node_id = settings.node_id or new_node_id()
        backends = backends or open_backends(settings, self.node_id, store)
        self.store: Store = backends.store
        #: Bytes held for other people on this node (see budget.py).
        self.budget = Budget(settings.memory_budget)
        self.settle_grace = SETTLE_GRACE
        #: Connections cut off because they held the most of a full budget.
        self.evictions = 0
        self.service = ChatService(
            self.store,
            Passwords(settings.hash_cost, settings.login_queue, settings.register_queue),
            backends.presence,
            backends.bus,
            self.node_id,
            settings.limits,
            self.budget,
            (settings.redis_url, settings.redis_prefix) if settings.redis_url else None,
            settings.history_days,
            settings.history_queue,
            max_frame=settings.max_frame,
        )
        self.lag = LoopLag(settings.shed_lag)
        self.decoder = FrameDecoder(settings.max_frame)  # see CoreHost.decoder
        self.connections: set[Connection] = set()
        self.unflushed: list[ConnectionCore] = []  # see CoreHost.unflushed
        #: Flushes the cores in ``unflushed`` once this loop iteration's
        #: reads are all handled (CoreHost.flush_soon); set by start().
        self.flush_soon: Callable[[], object] = _not_started
        # Connections whose outbox remembers written messages: asked twice a
        # second how much is still in flight (see outbox.py).
        self._watched: list[ConnectionCore] = []
        self._reporter: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop  # set by start(), before any connection
        #: One string per client address and per limit key (an IPv6
        #: address's /64; an IPv4 address is its own key), while connected.
        self._addresses: dict[str, str] = {}
        #: Connections per address and per limit key (one entry where they
        #: are one string); the per-address cap reads the key's.
        self._per_address: dict[str, int] = {}
        self._trusted = TrustedProxies(settings.trusted_proxies)
        self.service.exempt_address = self.trusts
        self._drained = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self._handshakes: TlsHandshakes | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = settings.port
        self.max_connections = connection_limit(settings.max_connections)
        self.clock = _monotonic
        self._sweeper: asyncio.Task[None] | None = None
        #: The web client and WebSocket chat; listens if settings.http_port is set.
        self.http = HttpServer(self)
        self.ops = Ops(self)
        self.http.routes.update(self.ops.routes())
        self.draining = False
        self._connection_ids = 0

    def new_connection_id(self) -> int:
        self._connection_ids += 1
        return self._connection_ids

    def admit(self, conn: Connection, address: str, sheds: bool = True) -> bytes | None:
        """None to accept a new connection from ``address`` (then counted,
        and ``conn.address`` and ``conn.limit_key`` set), else the refusal to
        send it. ``sheds`` False: taken even while shedding load (the HTTP
        port, whose static files are served then; it asks :meth:`shed` per
        request)."""
        conn.address = address  # for a refusal's log line; interned once admitted
        if len(self.connections) >= self.max_connections and not self._make_room():
            return _SERVER_FULL
        if sheds and (refusal := self.shed()) is not None:
            return refusal
        key = limit_key(address)
        limit = self.settings.max_connections_per_address
        if limit and address not in self._trusted and self._per_address.get(key, 0) >= limit:
            return _ADDRESS_FULL
        conn.address, conn.limit_key = self._hold(address, key)
        return None

    def shed(self) -> bytes | None:
        """The refusal for work that is not cheap while the event loop is
        late (a new session), counted; None if the node keeps up."""
        if self.lag.overloaded:
            self.lag.shed += 1
            return _OVERLOADED
        return None

    @property
    def trusted_proxies(self) -> TrustedProxies:
        return self._trusted

    def trusts(self, address: str) -> bool:
        """A proxy whose PROXY lines are believed (and which is not capped)."""
        return address in self._trusted

    def readdress(self, conn: Connection, address: str) -> bytes | None:
        """A trusted proxy named the client (a PROXY line, X-Forwarded-For):
        count it under its real address."""
        key = limit_key(address)
        limit = self.settings.max_connections_per_address
        if limit and address not in self._trusted and self._per_address.get(key, 0) >= limit:
            return _ADDRESS_FULL
        self._release(conn.address, conn.limit_key)
        conn.address, conn.limit_key = self._hold(address, key)
        return None

    def _hold(self, address: str, key: str) -> tuple[str, str]:
        """Count one more connection from ``address`` (and under its limit
        key, where that is another string: an IPv6 address's /64); the one
        string for each, however many connections have it."""
        interned, counts = self._addresses, self._per_address
        address = interned.setdefault(address, address)
        counts[address] = counts.get(address, 0) + 1
        if key == address:
            return address, address
        key = interned.setdefault(key, key)
        counts[key] = counts.get(key, 0) + 1
        return address, key

    def _make_room(self) -> bool:
        """At the limit, close the oldest connection that has not logged in for
        a while (a slow-loris holds slots without ever logging in; a person
        logs in within seconds of connecting); False if there is none."""
        oldest: Connection | None = None
        for conn in self.connections:
            s = conn.session
            if (s.uid or s.closed or conn.transport is None) or (
                oldest is not None and s.anonymous_since >= oldest.session.anonymous_since
            ):
                continue
            oldest = conn
        grace = min(10.0, self.settings.login_timeout / 3)
        if oldest is None or self.clock() - oldest.session.anonymous_since < grace:
            return False
        if oldest.session.legacy is not True:
            oldest.send(_MAKING_ROOM)
        oldest.close()
        self.connections.discard(oldest)  # its slot is the newcomer's from now on
        return True

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self._release(conn.address, conn.limit_key)
        if not self.connections:
            self._drained.set()

    def _release(self, address: str, key: str) -> None:
        self._drop(address)
        if key is not address:
            self._drop(key)

    def _drop(self, counted: str) -> None:
        left = self._per_address.get(counted, 1) - 1
        if left > 0:
            self._per_address[counted] = left
        else:
            self._per_address.pop(counted, None)
            self._addresses.pop(counted, None)

    def _flush(self) -> None:
        conns, self.unflushed = self.unflushed, []
        for core in conns:
            core.flush()

    def watch(self, core: ConnectionCore) -> None:
        self._watched.append(core)
        if self._reporter is None:
            self._reporter = self._loop.call_later(REPORT_EVERY, self._report)

    def _report(self) -> None:
        watched, self._watched = self._watched, []
        now = self.clock()
        pressed = self.service.bus.pinned() > PINNED_PRESSED
        self.settle_grace = SETTLE_GRACE_PRESSED if pressed else SETTLE_GRACE
        self._watched = [core for core in watched if core.report(now)]
        budget = self.budget
        if budget.full:
            self._evict(budget.limit, now)
        self._reporter = (
            self._loop.call_later(REPORT_EVERY, self._report) if self._watched else None
        )

    def _evict(self, limit: int, now: float) -> None:
        """Over the budget: cut off stalled connections, what they hold
        stored (``budget.to_evict``): by address, the addresses holding the
        most first, and within one address only as many of its connections
        as it takes. Found by soak: 1,500 users behind one address in a
        1,000-member group burst, every stalled connection of that address
        was cut off at each report (about 1,450 evictions)."""
        by_address: dict[str, list[tuple[int, ConnectionCore]]] = {}
        for core in self._watched:
            if stalled := core.stalled(now):
                by_address.setdefault(core.limit_key, []).append((stalled, core))
        cut = to_evict(list(by_address.values()), limit)
        if not cut:
            return
        held = {id(core): n for conns in by_address.values() for n, core in conns}
        log.warning(
            "memory budget full: cutting off the %d connections holding the most "
            "(%d bytes, from %d addresses)",
            len(cut),
            sum(held[id(core)] for core in cut),
            len({core.limit_key for core in cut}),
        )
        for core in cut:
            core.evict()
        self.evictions += len(cut)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = logs.start_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("connection task failed", exc_info=task.exception())

    async def start(self) -> None:
        await self.store.create_schema()
        if not self.settings.redis_url:
            # Alone, this node is the only one that can have marked users online:
            # whatever is still marked is left over from a crash.
            await self.store.reset_states()
        await self.service.start()
        loop = self._loop = asyncio.get_running_loop()
        # CoreHost.flush_soon: the loop's call_soon itself, not a method of
        # ours calling it (a Python call less each loop iteration).
        self.flush_soon = functools.partial(loop.call_soon, self._flush)
        ctx = self._tls()
        factory: Callable[[], asyncio.Protocol] = lambda: Connection(self)  # noqa: E731
        if ctx is not None:  # handshakes done (and their failures logged) by us
            self._handshakes = factory = TlsHandshakes(ctx, factory)
        self._server = await loop.create_server(
            factory,
            self.settings.host,
            self.settings.port,
            backlog=4096,
            reuse_port=self.settings.reuse_port or None,
        )
        tune_listener(self._server)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.settings.http_port is not None:
            await self.http.start()
        self._sweeper = asyncio.ensure_future(self._sweep_silent())
        # What exists now lives as long as the node: keep it out of the cycle
        # collector's scans, whose pauses would otherwise show in latency.
        gc.collect()
        gc.freeze()
        # Only now: that collection can take longer than --shed-lag (a test
        # process's heap took 0.12 s), and the node would shed at its start.
        self.lag.start()
        cluster = (
            f"cluster {_mask(self.settings.redis_url)}" if self.settings.redis_url else "alone"
        )
        log.info(
            "listening on %s:%d, store %s, node %s, %s, up to %d connections",
            self.settings.host,
            self.port,
            self.store.url,
            self.node_id,
            cluster,
            self.max_connections,
        )

    def _tls(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return ctx

    async def _sweep_silent(self) -> None:
        """Close connections that never log in, and our clients that went silent
        (they ping every 30 s). The original client never pings: its
        connections are left to TCP keepalive."""
        s = self.settings
        every = max(0.1, min(5.0, s.login_timeout / 2, s.idle_timeout / 2, s.frame_timeout / 2))
        while True:
            await asyncio.sleep(every)
            now = self.clock()
            for conn in list(self.connections):
                core = conn.core
                quiet = now - core.last_seen
                session = conn.session
                # The original client is shown no ERROR: it is closed silently.
                legacy = session.legacy is True
                if not session.uid and now - session.anonymous_since > s.login_timeout:
                    # From accept: a PING does not extend it.
                    conn.time_out(None if legacy else _LOGIN_TIMEOUT)
                elif core.input_held:
                    # We are not reading it (its requests wait for our store
                    # or bus): a request half-read and its silence are ours,
                    # and its clocks start again when we read.
                    core.last_seen = now
                    if core.partial_since:
                        core.partial_since = now
                elif core.partial_since and now - core.partial_since > s.frame_timeout:
                    # One byte every few seconds is not a request.
                    conn.time_out(None if legacy else _FRAME_TIMEOUT)
                elif session.uid and session.legacy is False and quiet > s.idle_timeout:
                    conn.time_out(_IDLE_TIMEOUT)

    async def readiness(self) -> list[str]:
        """Why this node should not get new clients now; empty when it should."""
        problems = ["draining: shutting down"] if self.draining else []
        checks: list[tuple[str, Any]] = []
        ping = getattr(self.store, "ping", None)
        if ping is not None:
            checks.append(("store", ping))
        client = getattr(self.service.bus, "client", None)
        if client is not None:
            checks.append(("redis", client.ping))
        for name, check in checks:
            try:
                async with asyncio.timeout(2):
                    await check()
            except Exception as exc:
                problems.append(f"{name} unreachable: {exc.__class__.__name__}")
        return problems

    async def stop(self) -> None:
        self.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._reporter is not None:
            self._reporter.cancel()
            self._reporter = None
        self.lag.stop()
        if self._server is not None:
            self._server.close()
        if self._handshakes is not None:
            self._handshakes.close()
        self.http.close()
        self._drained.clear()
        for conn in list(self.connections):
            if conn.session.legacy is False:  # the original client knows no NOTICE
                conn.send(_GOODBYE)
            conn.close()
        # Let every connection_lost run, so each user's logout work is under way.
        if self.connections:
            try:
                await asyncio.wait_for(self._drained.wait(), self.settings.shutdown_grace)
            except TimeoutError:
                log.warning("%d connections did not close in time", len(self.connections))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.settings.shutdown_grace)
        for task in list(self._tasks):
            task.cancel()
        await self.service.shutdown()
        await self.store.close()
        log.info("stopped")

    async def admin_events(self, db: Path) -> None:
        """End the sessions `clusterchat admin` asked to end (and drop groups'
        cached members), then tell it by deleting each request once the
        sessions it names are gone."""
        svc = self.service
        for path, events in control.pending(db):
            uids = []
            for event in events:
                kind, ident = event[:1], event[1:]
                if not ident.isdigit():
                    continue
                if kind in ("k", "b"):
                    svc.kicked(int(ident), banned=kind == "b")
                    uids.append(int(ident))
                elif kind == "g":
                    svc.group_changed(int(ident))
            deadline = _monotonic() + control.PATIENCE
            # A session's end sets no event to wait on; this is rare and short.
            while any(u in svc.sessions for u in uids) and _monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            path.unlink(missing_ok=True)

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Before start(): a signal arriving while it runs must still stop us cleanly.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        db = None if self.settings.redis_url else sqlite_file(self.settings.db_url)
        if db is not None:  # alone: `clusterchat admin` reaches us this way (server/control.py)
            loop.add_signal_handler(signal.SIGUSR1, lambda: self.spawn(self.admin_events(db)))
            self.spawn(self.admin_events(db))  # any left while we started
        await self.start()
        try:
            await stop.wait()
            log.info("signal received, shutting down")
        finally:
            await self.stop()


def new_node_id() -> str:
    """A node's name when the operator gave none: short, random, unique enough."""
    return os.urandom(3).hex()


def _mask(url: str) -> str:
    """A URL fit for logs: no password."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
