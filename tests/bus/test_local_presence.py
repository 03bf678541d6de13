"""A lone node's presence: the service's table of sessions says who is
online; the presence itself remembers only the users claimed and not (or
no longer) in that table, so an idle connection costs it nothing (issue 14)."""

from __future__ import annotations

from clusterchat.bus.local import LocalPresence


async def test_a_user_stays_claimed_from_claim_through_session_to_release() -> None:
    p, sessions = LocalPresence(), dict[int, str]()
    assert await p.claim(7)
    assert not await p.claim(7)  # a second login, before the first registers
    sessions[7] = "session"
    p.registered(7, sessions)
    assert not await p.claim(7)
    assert await p.online([7, 8]) == {7}
    del sessions[7]
    p.unregistered(7)  # leaving: still claimed until released
    assert not await p.claim(7)
    assert await p.online([7]) == {7}
    await p.release(7)
    assert await p.online([7]) == set()
    assert await p.claim(7)


async def test_registered_users_take_no_entry_of_their_own() -> None:
    p, sessions = LocalPresence(), dict[int, str]()
    for uid in range(1000, 1100):
        assert await p.claim(uid)
        sessions[uid] = "session"
        p.registered(uid, sessions)
    assert await p.online(range(990, 1200)) == set(range(1000, 1100))
    assert len(p._unseated) == 0
