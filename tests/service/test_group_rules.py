"""The group permission rules, exhaustively: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterchat import errors
from clusterchat.service import group_rules as rules
from clusterchat.storage.base import Group, GroupChange, Member


def group(*roles: str) -> Group:
    return Group(7, "room", "d", tuple(Member(i + 1, f"u{i + 1}", r) for i, r in enumerate(roles)))


@st.composite
def groups(draw: st.DrawFn) -> Group:
    others = draw(st.lists(st.sampled_from(["admin", "normal"]), max_size=5))
    roles = [*others]
    roles.insert(draw(st.integers(0, len(others))), "creator")
    return group(*roles)


Action = Callable[[Group, int, int], GroupChange]
ACTIONS: dict[str, Action] = {
    "leave": lambda g, a, t: rules.leave(g, a),
    "remove": rules.remove,
    "admin": lambda g, a, t: rules.set_role(g, a, t, "admin"),
    "demote": lambda g, a, t: rules.set_role(g, a, t, "normal"),
    "edit": lambda g, a, t: rules.edit(g, a, "new", "new desc"),
    "transfer": rules.transfer,
    "delete": lambda g, a, t: rules.delete(g, a),
    "invite": rules.invite,
    "inviteonly": lambda g, a, t: rules.edit(g, a, None, None, True),
}


def after(g: Group, change: GroupChange) -> dict[int, str]:
    roles = {m.id: m.role for m in g.members if m.id not in change.remove}
    roles.update((uid, role) for uid, role in change.roles if uid in roles)
    return roles


@given(groups(), st.integers(1, 7), st.integers(1, 7), st.sampled_from(sorted(ACTIONS)))
def test_any_action_keeps_one_creator_and_respects_rank(
    g: Group, actor: int, target: int, action: str
) -> None:
    roles = {m.id: m.role for m in g.members}
    try:
        change = ACTIONS[action](g, actor, target)
    except errors.NotMember:
        assert actor not in roles
        return
    except errors.NotInGroup:
        assert target not in roles
        return
    except errors.InGroup:
        assert target in roles and action == "invite"
        return
    except (errors.NotAllowed, errors.SelfTarget):
        return
    assert actor in roles
    if change.delete:
        assert roles[actor] == "creator"
        assert action == "delete" or (action == "leave" and len(roles) == 1)
        return
    now = after(g, change)
    assert list(now.values()).count("creator") == 1, (roles, change)
    if roles[actor] == "normal":  # a normal member can only leave
        assert action == "leave" or not change
    if action != "leave":
        assert roles.get(target) != "creator" or action == "edit" or not change.remove


def test_normal_members_are_refused_every_admin_action() -> None:
    g = group("creator", "normal", "normal")
    for name in ("remove", "admin", "edit", "transfer", "delete", "invite", "inviteonly"):
        with pytest.raises(errors.NotAllowed):
            ACTIONS[name](g, 2, 3 if name != "invite" else 9)
    with pytest.raises(errors.NotAllowed):
        rules.set_role(group("creator", "normal", "admin"), 2, 3, "normal")


def test_admins_may_not_do_what_only_the_creator_may() -> None:
    g = group("creator", "admin", "admin", "normal")
    assert rules.remove(g, 2, 4) == GroupChange(remove=(4,))
    assert rules.set_role(g, 2, 4, "admin") == GroupChange(roles=((4, "admin"),))
    assert rules.set_role(g, 2, 2, "normal") == GroupChange(roles=((2, "normal"),))  # step down
    acts: tuple[Callable[[], object], ...] = (
        lambda: rules.remove(g, 2, 3),
        lambda: rules.remove(g, 2, 1),
        lambda: rules.set_role(g, 2, 3, "normal"),
        lambda: rules.set_role(g, 2, 1, "normal"),
        lambda: rules.transfer(g, 2, 4),
        lambda: rules.delete(g, 2),
    )
    for act in acts:
        with pytest.raises(errors.NotAllowed):
            act()


def test_creator_leaving_prefers_the_oldest_admin_then_the_longest_member() -> None:
    assert rules.leave(group("normal", "creator", "admin"), 2) == GroupChange(
        remove=(2,), roles=((3, "creator"),)
    )
    assert rules.leave(group("normal", "creator", "normal"), 2) == GroupChange(
        remove=(2,), roles=((1, "creator"),)
    )
    assert rules.leave(group("creator"), 1) == GroupChange(delete=True)


def test_events_say_who_did_what() -> None:
    g = group("creator", "admin", "normal")
    ann, bob = g.members[0], g.members[1]
    (removed,) = rules.events(g, rules.remove(g, 2, 3), bob)
    assert removed == {
        "groupid": 7, "by": 2, "byname": "u2", "event": "removed", "id": 3, "name": "u3",
    }  # fmt: skip
    left, owner = rules.events(g, rules.leave(g, 1), ann)
    assert (left["event"], owner["event"], owner["id"], owner["role"]) == (
        "left", "role", 2, "creator",
    )  # fmt: skip
    (edited,) = rules.events(g, rules.edit(g, 2, None, "new"), bob)
    assert (edited["groupname"], edited["groupdesc"]) == ("room", "new")
    assert rules.events(g, rules.edit(g, 2, "room", "d"), bob) == []
    assert rules.events(g, rules.delete(g, 1), ann)[0]["event"] == "deleted"
