"""Refusals logged at a bounded rate: one line per connection per interval,
and node-wide conditions (a store outage failing every request) one line per
interval for the whole node.

A client sending garbage as fast as it can must not fill the disk with our
log: the first refusal on a connection is logged, the next ones within the
interval are only counted, and the count goes into the next line (or a last
one when the connection closes). Tracebacks of our own bugs follow the same
rule: one per connection per interval, with the frame that caused it.

One client may also open connection after connection, each refused once:
lines about one address are bounded too (``PER_ADDRESS`` an interval); past
that its refusals are counted, and the count goes into its next line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from clusterchat.service.session import Session

#: Seconds between two log lines about one connection's refusals.
INTERVAL = 10.0
#: Log lines about one client address per interval, whatever its connections.
PER_ADDRESS = 10
#: Addresses remembered at most (past it, those whose interval is over are forgotten).
MAX_ADDRESSES = 10_000


class RefusalLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.interval, self.clock = logger, interval, clock
        #: Per address: [end of its interval, lines in it, refusals not logged].
        self._addresses: dict[str, list[float]] = {}

    def note(self, s: Session, text: str, exc_info: bool = False) -> None:
        """Log ``text`` about ``s`` unless a line about it (or ``PER_ADDRESS``
        about its address) went out within the interval."""
        now = self.clock()
        after, quiet = s.log_state
        if now < after:
            s.log_state = (after, quiet + 1)
            return
        gate = self._gate(s.peer.limit_key, now)  # an IPv6 address's /64
        if gate[1] >= PER_ADDRESS:
            gate[2] += 1  # in the address's next line, not this connection's
            return
        gate[1] += 1
        quiet += int(gate[2])
        s.log_state, gate[2] = (now + self.interval, 0), 0
        more = f" ({quiet} more refused since the last line)" if quiet else ""
        level = logging.ERROR if exc_info else logging.INFO
        self.log.log(
            level, "%s (%s, uid %s)%s", text, s.peer.address, s.uid, more, exc_info=exc_info
        )

    def _gate(self, address: str, now: float) -> list[float]:
        gate = self._addresses.get(address)
        if gate is None:
            if len(self._addresses) >= MAX_ADDRESSES:
                self._addresses = {a: g for a, g in self._addresses.items() if g[0] > now}
                if len(self._addresses) >= MAX_ADDRESSES:  # a flood of addresses
                    self._addresses.clear()
            gate = self._addresses[address] = [now + self.interval, 0, 0]
        elif now >= gate[0]:
            gate[0], gate[1] = now + self.interval, 0
        return gate

    def closed(self, s: Session) -> None:
        """The count nobody has heard about yet, if any."""
        after, quiet = s.log_state
        if quiet:
            self.log.info(
                "%d more refused before the connection closed (%s, uid %s)",
                quiet,
                s.peer.address,
                s.uid,
            )
            s.log_state = (after, 0)


class Sampled:
    """One warning per interval for a condition that fails many requests at
    once (the store or Redis gone): the first line says what, the next one
    how many more there were. Else an outage under load writes thousands of
    lines a second."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL) -> None:
        self.log, self.interval = logger, interval
        self._after = 0.0
        self._quiet = 0

    def warning(self, text: str) -> None:
        now = time.monotonic()
        if now < self._after:
            self._quiet += 1
            return
        quiet, self._quiet, self._after = self._quiet, 0, now + self.interval
        more = f" ({quiet} more like it since the last line)" if quiet else ""
        self.log.warning("%s%s", text, more)
