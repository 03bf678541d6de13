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


def test_acknowledges_after_so_many_bytes_too() -> None:
    """Big messages fill the server's --receipt-bytes long before the 64th:
    a client counting messages alone was cut off (ERROR 187)."""
    acks = Acks(every=64, every_bytes=1000)
    assert acks.saw(1, 600) is None
    assert acks.saw(2, 600) == 2  # 1,200 bytes unacknowledged
    assert acks.saw(3, 600) is None  # counting starts again
    assert acks.take() == 3
    assert acks.saw(4, 999) is None and acks.saw(5, 1) == 5
