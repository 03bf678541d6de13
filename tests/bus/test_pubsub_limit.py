"""Reading Redis's pub/sub buffer limit, which the bus window must stay under."""

from __future__ import annotations

from clusterchat.bus.redis import pubsub_limit

DEFAULT = "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"


def test_the_soft_limit_counts_when_set() -> None:
    assert pubsub_limit({"client-output-buffer-limit": DEFAULT}) == 8388608


def test_the_hard_limit_counts_without_a_soft_one() -> None:
    assert pubsub_limit({"client-output-buffer-limit": "pubsub 1048576 0 0"}) == 1048576


def test_no_limit_or_nothing_readable() -> None:
    assert pubsub_limit({"client-output-buffer-limit": "pubsub 0 0 0"}) == 0
    assert pubsub_limit({}) == 0
