"""The store and the cluster link that a node's settings name by URL.

Built where the process is configured (cli.py) and handed to the
:class:`~clusterchat.server.node.Node`; a node made without them (tests,
embedders) asks here itself. Nothing else turns a URL into a backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterchat.bus.base import Bus, Presence
from clusterchat.bus.local import LocalPresence, NoBus
from clusterchat.bus.redis import DEFAULT_KEEP_FOR, RedisCluster
from clusterchat.config import Settings
from clusterchat.storage.base import Store
from clusterchat.storage.sql import SqlStore


@dataclass(frozen=True)
class Backends:
    store: Store
    #: Who is online where, and the way to other nodes: one Redis client in a
    #: cluster; alone, a local table and no bus.
    presence: Presence
    bus: Bus


def open_backends(settings: Settings, node_id: str, store: Store | None = None) -> Backends:
    """What ``settings`` name (``store``, if given, instead of its URL's);
    nothing connects until the node starts."""
    store = store or SqlStore(settings.db_url, settings.db_pool, settings.limits.ticket_lifetime)
    if not settings.redis_url:
        return Backends(store, LocalPresence(), NoBus())
    cluster = RedisCluster(
        settings.redis_url,
        node_id,
        settings.redis_prefix,
        settings.presence_ttl,
        settings.bus_window,
        # Past the receiving node's receipt timeout (it settles within that), with room.
        keep_for=max(DEFAULT_KEEP_FOR, 4 * settings.limits.receipt_timeout),
    )
    return Backends(store, cluster, cluster)
