"""What the chat service counts, as plain ints: the hot path bumps an
attribute or a dict entry, and the metrics collector reads them at scrape
time (no Prometheus label lookup per message)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ServiceCounts:
    #: Requests served, by request class (named at scrape time).
    requests: dict[type, int] = field(default_factory=dict)
    #: Refusals by (reply kind, errno): kind is "error", "login" or "register".
    refusals: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Chat messages written to a receiver on this node by a sender on it.
    relayed_local: int = 0
    #: Chat messages a node of the cluster took for its receiver.
    relayed_to_nodes: int = 0
    #: Chat messages from other nodes written to a receiver here.
    relayed_from_nodes: int = 0

    def refused(self, kind: str, errno: int) -> None:
        key = (kind, errno)
        self.refusals[key] = self.refusals.get(key, 0) + 1
