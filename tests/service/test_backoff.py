"""The guessing delay: doubling, capped, and never overflowing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clusterchat.service.backoff import Backoff


def test_the_delay_doubles_from_the_first_paid_failure_up_to_the_cap() -> None:
    b = Backoff(free=5, first=5.0, cap=600.0, forget=3600.0)
    assert [b.delay(n) for n in (0, 4, 5, 6, 7)] == [0.0, 0.0, 5.0, 10.0, 20.0]
    assert b.delay(20) == 600.0


@given(st.integers(min_value=0, max_value=10**9))
def test_any_number_of_failures_gives_a_delay_within_the_cap(failures: int) -> None:
    """atheris found 2.0 ** n overflowing past ~1,000 failures from one address."""
    b = Backoff(free=5, first=5.0, cap=600.0, forget=3600.0)
    assert 0.0 <= b.delay(failures) <= 600.0


def test_many_failures_from_one_key_still_answer_with_a_wait() -> None:
    now = [0.0]
    b = Backoff(free=5, first=5.0, cap=600.0, forget=3600.0, clock=lambda: now[0])
    for _ in range(5000):
        b.failed("10.0.0.1")
    assert 0.0 < b.wait("10.0.0.1") <= 600.0
