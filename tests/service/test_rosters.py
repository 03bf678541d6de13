"""Rosters: a group's member documents encoded once, byte for byte what
encoding them per login gave, and never kept past a change they may predate."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clusterchat.protocol import codec
from clusterchat.service.rosters import LIFETIME, Roster, Rosters
from clusterchat.storage.base import Group, Member

_text = st.text(max_size=12)
_members = st.lists(
    st.tuples(st.integers(1, 2**31), _text, st.sampled_from(["creator", "admin", "normal"])),
    max_size=8,
    unique_by=lambda m: m[0],
)


@given(st.integers(1, 2**31), _text, _text, _members, st.data())
def test_a_roster_document_is_the_per_member_one(
    gid: int, name: str, desc: str, members: list[tuple[int, str, str]], data: st.DataObject
) -> None:
    online = data.draw(
        st.sets(st.sampled_from([m[0] for m in members]) if members else st.nothing())
    )
    group = Group(gid, name, desc, tuple(Member(*m) for m in members))
    per_member = codec.group_doc(
        gid, name, desc, [codec.member_doc(u, n, u in online, r) for u, n, r in members]
    )
    assert Roster.of(group, 0.0).doc(gid, name, desc, online) == per_member


def _group(gid: int, *uids: int) -> Group:
    return Group(gid, f"g{gid}", "", tuple(Member(u, f"u{u}", "normal") for u in uids))


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_kept_until_changed_or_expired() -> None:
    clock = Clock()
    rosters = Rosters(clock)
    rosters.keep([_group(1, 1, 2), _group(2, 3)], rosters.reading())
    held = rosters.fresh()
    assert (1 in held, 2 in held) == (True, True)
    rosters.changed(1)
    assert 1 in held.held  # this login goes on with what it had
    assert (1 in rosters.fresh(), 2 in rosters.fresh()) == (False, True)
    clock.now += LIFETIME + 1
    assert 2 not in rosters.fresh()


def test_a_read_that_a_change_overtook_is_used_once_not_kept() -> None:
    rosters = Rosters(Clock())
    since = rosters.reading()
    rosters.changed(1)  # heard while the login was reading group 1
    made = rosters.keep([_group(1, 1, 2), _group(2, 3)], since)
    assert set(made) == {1, 2}  # this login shows what it read
    assert rosters.get(1) is None  # the next one reads group 1 again
    assert rosters.get(2) is not None
    since = rosters.reading()
    rosters.clear()  # e.g. the bus reconnected: changes may have been missed
    rosters.keep([_group(3, 1)], since)
    assert rosters.get(2) is None and rosters.get(3) is None
