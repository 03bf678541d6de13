"""A node's Prometheus metrics, read from its plain counters at scrape time.

Nothing here runs per message: the service, store and bus keep ints (and two
unregistered histograms), and :class:`NodeCollector` turns them into metric
families when ``/metrics`` is asked. Each node has its own registry, so
several nodes can live in one process (tests do).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from clusterchat.storage.sql import SqlStore
from clusterchat.storage.tables import offlinemessage

if TYPE_CHECKING:
    from clusterchat.server.connection import Connection
    from clusterchat.server.host import Host
    from clusterchat.server.http import Route
    from clusterchat.server.load import LoopLag
    from clusterchat.storage.base import Store

    class Node(Host[Connection], Protocol):
        """What the metrics read of a node (node.Node is one)."""

        store: Store
        lag: LoopLag
        #: Connections cut off for holding the most of a full memory budget.
        evictions: int

        async def readiness(self) -> list[str]: ...


log = logging.getLogger(__name__)


def _request_name(kind: type) -> str:
    """``OneChat`` -> ``one_chat``."""
    name = kind.__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _transport(conn: Any, tls: bool) -> str:
    if type(conn).__name__.startswith("Ws"):
        return "websocket"
    return "tls" if tls else "tcp"


class NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node
        #: Rows in the offline table, counted before each scrape (bounded by a
        #: timeout: the last count stays if the store is slow or down).
        self.backlog: int | None = None
        #: The count under way: scrapes that come meanwhile share it, so a
        #: flood of scrapes (the HTTP port is public) runs one at a time.
        self._counting: asyncio.Future[None] | None = None

    async def refresh(self) -> None:
        """What needs I/O is read before the scrape (collect() is synchronous)."""
        if not isinstance(self.node.store, SqlStore):
            return
        counting = self._counting
        if counting is None or counting.done():
            counting = self._counting = asyncio.ensure_future(self._count())
        await asyncio.shield(counting)

    async def _count(self) -> None:
        store = self.node.store
        assert isinstance(store, SqlStore)
        try:
            async with asyncio.timeout(2):
                async with store.engine.connect() as conn:
                    q = select(func.count()).select_from(offlinemessage)
                    self.backlog = int((await conn.execute(q)).scalar_one())
        except Exception as exc:  # the store being down must not fail the scrape
            log.info("metrics: offline backlog not read: %s", exc)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        service = node.service
        counts = service.counts
        tls = bool(node.settings.tls_cert)

        conns = GaugeMetricFamily(
            "clusterchat_connections",
            "Open client connections by dialect (modern, original, unknown: nothing "
            "sent yet) and transport",
            labels=["dialect", "transport"],
        )
        by: dict[tuple[str, str], int] = {}
        held = with_receipts = unacked = unacked_bytes = 0
        for conn in list(node.connections):
            receipts = conn.outbox.receipts if conn.outbox is not None else None
            if receipts is not None:
                with_receipts += 1
                unacked += receipts.count
                unacked_bytes += receipts.nbytes
            legacy = conn.session.legacy
            dialect = "unknown" if legacy is None else "original" if legacy else "modern"
            key = (dialect, _transport(conn, tls))
            by[key] = by.get(key, 0) + 1
            out = conn.transport
            if out is not None:
                held += out.get_write_buffer_size()
        for (dialect, transport), n in sorted(by.items()):
            conns.add_metric([dialect, transport], n)
        yield conns
        yield GaugeMetricFamily(
            "clusterchat_logged_in_users",
            "Users logged in on this node",
            value=len(service.sessions),
        )
        yield GaugeMetricFamily(
            "clusterchat_slow_consumer_bytes",
            "Bytes written to clients but not yet taken by them (kernel buffers full)",
            value=held,
        )
        yield GaugeMetricFamily(
            "clusterchat_receipt_connections",
            "Connections whose client acknowledges what it receives (receipts)",
            value=with_receipts,
        )
        yield GaugeMetricFamily(
            "clusterchat_receipt_unacked",
            "Messages written to receipt connections and not yet acknowledged",
            value=unacked,
        )
        yield GaugeMetricFamily(
            "clusterchat_receipt_unacked_bytes",
            "Their bytes (counted against --memory-budget)",
            value=unacked_bytes,
        )
        budget = node.budget
        yield GaugeMetricFamily(
            "clusterchat_held_bytes",
            "Bytes of messages held for others on this node (outboxes and the bus), "
            "counted against --memory-budget",
            value=budget.used,
        )
        yield GaugeMetricFamily(
            "clusterchat_memory_budget_bytes", "--memory-budget (0: none)", value=budget.limit
        )
        yield CounterMetricFamily(
            "clusterchat_budget_refusals",
            "Messages refused because the memory budget was full (ERROR 151)",
            value=budget.refused,
        )
        yield CounterMetricFamily(
            "clusterchat_budget_evictions",
            "Connections cut off because the memory budget was full and they held "
            "the most of it (their messages stored)",
            value=node.evictions,
        )
        history = service.history
        if history is not None:
            yield GaugeMetricFamily(
                "clusterchat_history_queue",
                "Messages waiting to be written to history (--history-queue bounds it)",
                value=len(history),
            )
            yield CounterMetricFamily(
                "clusterchat_history_written",
                "Messages written to history by this node",
                value=history.written,
            )
            yield CounterMetricFamily(
                "clusterchat_history_refusals",
                "Messages refused (ERROR 151) or slowed because the history queue was full",
                value=history.refused,
            )
            yield CounterMetricFamily(
                "clusterchat_history_write_failures",
                "History writes that failed and are retried",
                value=history.failures,
            )

        requests = CounterMetricFamily(
            "clusterchat_requests", "Requests served, by kind", labels=["kind"]
        )
        for kind, n in sorted(counts.requests.items(), key=lambda kv: kv[0].__name__):
            requests.add_metric([_request_name(kind)], n)
        yield requests
        refusals = CounterMetricFamily(
            "clusterchat_refusals",
            "Requests refused, by reply (error, login, register) and errno",
            labels=["reply", "errno"],
        )
        for (reply, errno), n in sorted(counts.refusals.items()):
            refusals.add_metric([reply, str(errno)], n)
        yield refusals

        store = node.store
        messages = CounterMetricFamily(
            "clusterchat_messages",
            "Chat messages by path: local (sender and receiver here), to_nodes (taken by "
            "another node), from_nodes (arrived from another node), stored_offline (rows "
            "written for absent receivers, once per receiver), delivered_offline (stored "
            "rows delivered at login)",
            labels=["path"],
        )
        messages.add_metric(["local"], counts.relayed_local)
        messages.add_metric(["to_nodes"], counts.relayed_to_nodes)
        messages.add_metric(["from_nodes"], counts.relayed_from_nodes)
        messages.add_metric(["stored_offline"], getattr(store, "stored_rows", 0))
        messages.add_metric(["delivered_offline"], getattr(store, "delivered_rows", 0))
        yield messages
        if self.backlog is not None:
            yield GaugeMetricFamily(
                "clusterchat_offline_backlog",
                "Messages stored for absent users (whole cluster: one shared table)",
                value=self.backlog,
            )

        windows = service.bus.window_stats()
        if windows is not None:
            yield CounterMetricFamily(
                "clusterchat_bus_batches",
                "Inter-node batches with messages this node published",
                value=windows.batches,
            )
            yield GaugeMetricFamily(
                "clusterchat_bus_unacked_batches",
                "Inter-node batches sent and not yet acknowledged by their node",
                value=windows.unacked,
            )
            yield GaugeMetricFamily(
                "clusterchat_bus_window_bytes",
                "Bytes handed to other nodes and not yet acknowledged or stored (--bus-window)",
                value=windows.held,
            )
            yield GaugeMetricFamily(
                "clusterchat_bus_kept_bytes",
                "Bytes other nodes took for clients whose receipts are still out (kept here)",
                value=windows.kept,
            )
            yield GaugeMetricFamily(
                "clusterchat_bus_copies",
                "Same-node deliveries to clients with receipts, copied into Redis till confirmed",
                value=windows.copies,
            )

        passwords = service.passwords
        yield GaugeMetricFamily(
            "clusterchat_login_queue",
            "Password checks waiting for or running on a hashing thread",
            value=passwords.queued,
        )
        yield from passwords.seconds.collect()
        latency = getattr(store, "latency", None)
        if latency is not None:
            yield from latency.collect()
        yield GaugeMetricFamily(
            "clusterchat_event_loop_lag_seconds",
            "How late the event loop ran its last timer sample (0 with --shed-lag 0)",
            value=node.lag.last,
        )
        yield CounterMetricFamily(
            "clusterchat_shed_connections",
            "New connections refused because the event loop lagged",
            value=node.lag.shed,
        )


class Ops:
    """``/metrics``, ``/healthz`` and ``/readyz`` as HTTP routes of a node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.collector = NodeCollector(node)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    def routes(self) -> dict[str, Route]:
        return {"/metrics": self.metrics, "/healthz": self.healthz, "/readyz": self.readyz}

    async def metrics(self) -> tuple[int, str, bytes]:
        await self.collector.refresh()
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    async def healthz(self) -> tuple[int, str, bytes]:
        """The process serves (its event loop answers)."""
        return 200, "text/plain; charset=utf-8", b"ok\n"

    async def readyz(self) -> tuple[int, str, bytes]:
        """The node should get new clients: it is not draining, its store
        answers and, in a cluster, so does Redis."""
        problems = await self.node.readiness()
        if problems:
            return 503, "text/plain; charset=utf-8", ("\n".join(problems) + "\n").encode()
        return 200, "text/plain; charset=utf-8", b"ready\n"
