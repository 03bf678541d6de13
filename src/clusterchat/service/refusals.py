"""Refusals logged at a bounded rate: one line per connection per interval,
and node-wide conditions (a store outage failing every request) one line per
interval for the whole node.

A client sending garbage as fast as it can must not fill the disk with our
log: the first refusal on a connection is logged, the next ones within the
interval are only counted, and the count goes into the next line (or a last
one when the connection closes). Tracebacks of our own bugs follow the same
rule: one per connection per interval, with the frame that caused it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from clusterchat.service.session import Session

#: Seconds between two log lines about one connection's refusals.
INTERVAL = 10.0


class RefusalLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.interval, self.clock = logger, interval, clock

    def note(self, s: Session, text: str, exc_info: bool = False) -> None:
        """Log ``text`` about ``s`` unless a line about it went out within the interval."""
        now = self.clock()
        after, quiet = s.log_state
        if now < after:
            s.log_state = (after, quiet + 1)
            return
        s.log_state = (now + self.interval, 0)
        more = f" ({quiet} more refused since the last line)" if quiet else ""
        level = logging.ERROR if exc_info else logging.INFO
        self.log.log(
            level, "%s (%s, uid %s)%s", text, s.peer.address, s.uid, more, exc_info=exc_info
        )

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

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.interval, self.clock = logger, interval, clock
        self._after = 0.0
        self._quiet = 0

    def warning(self, text: str) -> None:
        now = self.clock()
        if now < self._after:
            self._quiet += 1
            return
        quiet, self._quiet, self._after = self._quiet, 0, now + self.interval
        more = f" ({quiet} more like it since the last line)" if quiet else ""
        self.log.warning("%s%s", text, more)
