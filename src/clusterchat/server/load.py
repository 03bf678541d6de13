"""Is this node keeping up? Measured by how late the event loop runs a timer.

Everything a node does runs on one loop, so the loop's lag is the wait every
request sees on top of its own work. Past a threshold the node stops taking
new connections (they are told, and nginx or the client tries elsewhere) so
that the users it has keep bounded latency; it takes them again once it has
kept up for a while.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

#: How often the loop is sampled, and how long overload is assumed to last
#: after the last late sample (so the state does not flap per sample).
_EVERY = 0.05
_HOLD = 1.0


class LoopLag:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.worst = 0.0  # the largest lag seen, for logs and tests
        self.last = 0.0  # the latest sample, for metrics
        self.shed = 0  # connections refused because of it
        self._until = 0.0
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        if self.threshold <= 0:
            return
        self._loop = asyncio.get_running_loop()
        self._schedule(self._loop.time())

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + _EVERY
        self._timer = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = self.last = now - self._due
        if lag > self.worst:
            self.worst = lag
        if lag > self.threshold:
            if now >= self._until:
                log.warning("event loop %.2f s late: refusing new connections", lag)
            self._until = now + _HOLD
        self._schedule(now)

    @property
    def overloaded(self) -> bool:
        return self._loop is not None and self._loop.time() < self._until

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
