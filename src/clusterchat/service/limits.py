"""Counting failures per key (an account, an address) to stop brute force.

A fixed window per key: after ``limit`` failures within ``window`` seconds
the key is refused until the window ends. Checked before the slow password
hash, so guessing costs the server nothing. Per node: a cluster multiplies
the allowance by its node count (nginx spreads a guesser over them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one user or address may do; 0 switches a limit off."""

    #: Failed logins free of delay per (account, address) and per address;
    #: past them each try waits twice as long as the last, from
    #: ``login_delay`` up to ``login_delay_max`` seconds (service.backoff).
    #: A key is forgotten ``login_window`` seconds after its last failure.
    login_failures: int = 5
    login_failures_per_address: int = 50
    login_window: float = 900.0
    login_delay: float = 5.0
    login_delay_max: float = 600.0
    max_group_size: int = 1000
    #: Seconds a session ticket works after it was issued (each use issues a new one).
    ticket_lifetime: float = 28 * 86_400.0
    #: Registrations one address may attempt per window (counted when the
    #: password hash starts): accounts per address per day.
    registrations_per_address: int = 20
    registration_window: float = 86_400.0
    #: What one receiver may have waiting (ejabberd keeps 5,000 messages by
    #: default), how long a message kept for an offline receiver may be
    #: (bytes; group chat is always kept for someone, so it always applies),
    #: and what one user may own or join.
    max_offline_messages: int = 5000
    max_offline_bytes: int = 16 * 1024 * 1024
    max_stored_message: int = 16 * 1024
    max_groups_created: int = 100
    max_memberships: int = 500
    max_friends: int = 1000
    #: Requests per second a logged-in user may make, sustained, and how many
    #: may come at once (a token bucket). Far above any typing human; a bot
    #: or a stuck loop is slowed down, never allowed to crowd out the others.
    message_rate: float = 20.0
    message_burst: int = 50
    #: Receipts (clients that opted in): messages and bytes written and not yet
    #: acknowledged before the client is cut off (ERROR 187, all stored), and
    #: seconds without any acknowledgement while some wait (ERROR 186, stored).
    receipt_window: int = 2000
    receipt_bytes: int = 2 * 1024 * 1024
    receipt_timeout: float = 30.0


class FailureLimiter:
    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit, self.window, self.clock, self.max_keys = limit, window, clock, max_keys
        self._seen: dict[Hashable, list[float]] = {}  # key -> [window start, failures]

    def wait(self, key: Hashable) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
        if self.limit <= 0:
            return 0.0
        entry = self._seen.get(key)
        if entry is None or entry[1] < self.limit:
            return 0.0
        left = entry[0] + self.window - self.clock()
        if left <= 0:
            del self._seen[key]
            return 0.0
        return left

    def failed(self, key: Hashable) -> None:
        if self.limit <= 0:
            return
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            if len(self._seen) >= self.max_keys:  # forget the oldest windows first
                for old in list(self._seen)[: self.max_keys // 10]:
                    del self._seen[old]
            self._seen[key] = [now, 1]
        else:
            entry[1] += 1

    def succeeded(self, key: Hashable) -> None:
        self._seen.pop(key, None)
