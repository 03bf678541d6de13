"""Brute-force guard that stops guessers, not owners: a growing delay per key.

Failures are counted per key (an (account, address) pair, and an address);
the first ``free`` cost nothing, then each further try must wait twice as
long as the one before (``first``, twice that, and so on up to ``cap``) counted
from the last failure. Tries made while waiting are refused without being
checked or counted, so the delay is all a guesser gets: at the cap, one
guess per ``cap`` seconds per key. A key is forgotten ``forget`` seconds
after its last failure, and a success forgets its (account, address) key.

Nothing is counted per account alone, so failures from other addresses
never slow the owner down, and failures on ids that do not exist only slow
the address that made them. Checked before the slow password hash.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class Backoff:
    def __init__(
        self,
        free: int,
        first: float,
        cap: float,
        forget: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.free, self.first, self.cap, self.forget = free, first, cap, forget
        self.clock, self.max_keys = clock, max_keys
        self._seen: dict[Hashable, list[float]] = {}  # key -> [failures, last failure]

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failures."""
        if self.free <= 0 or failures < self.free:
            return 0.0
        # The exponent is bounded: past ~1,000 failures 2.0 ** n overflows (found by atheris).
        return min(self.cap, self.first * 2.0 ** min(failures - self.free, 64))

    def wait(self, key: Hashable) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
        entry = self._seen.get(key)
        if entry is None:
            return 0.0
        since = self.clock() - entry[1]
        if since >= self.forget:
            del self._seen[key]
            return 0.0
        return max(0.0, self.delay(int(entry[0])) - since)

    def failed(self, key: Hashable) -> None:
        if self.free <= 0:
            return
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[1] >= self.forget:
            if len(self._seen) >= self.max_keys:  # forget the oldest first
                for old in list(self._seen)[: self.max_keys // 10]:
                    del self._seen[old]
            self._seen[key] = [1, now]
        else:
            entry[0] += 1
            entry[1] = now

    def succeeded(self, key: Hashable) -> None:
        self._seen.pop(key, None)
