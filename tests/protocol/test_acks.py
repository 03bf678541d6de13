"""The client's side of receipts: when it acknowledges, and what."""

from __future__ import annotations

from clusterchat.protocol.acks import Acks


def test_acknowledges_every_n_and_on_the_timer_only_what_is_new() -> None:
    acks = Acks(every=3)
    assert acks.take() is None  # nothing seen
    assert [acks.saw(n) for n in (1, 2)] == [None, None]
    assert acks.saw(3) == 3  # every 3
    assert acks.take() is None  # nothing new since
    assert acks.saw(4) is None
    assert acks.saw(4) is None  # a duplicate number changes nothing
    assert acks.take() == 4  # timer or logout
    assert acks.take() is None
    acks.reset()  # a new login numbers from 1 again
    assert acks.saw(1) is None and acks.take() == 1
