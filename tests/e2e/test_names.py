"""One rule for names on every backend: NFKC, trimmed, unique ignoring case,
no control, bidi or invisible characters. Runs on SQLite and MariaDB."""

from __future__ import annotations

import pytest

from clusterchat.protocol.messages import ErrCode, MsgId, RegErr
from tests.conftest import PASSWORD, Connect, UserFactory, unique

FULL_WIDTH_ALICE = "\uff21\uff2c\uff29\uff23\uff25"
FULL_WIDTH_WIDE = "\uff57\uff49\uff44\uff45"


async def _reg(conn: object, name: str) -> dict[str, object]:
    return await conn.request(  # type: ignore[attr-defined, no-any-return]
        {"msgid": MsgId.REG, "name": name, "password": PASSWORD}, MsgId.REG_ACK
    )


async def test_names_mariadb_would_confuse_are_distinct_and_case_variants_collide(
    connect: Connect,
) -> None:
    conn = await connect()
    tag = unique("n")
    # utf8mb4_general_ci makes every emoji equal: here they are two names.
    for name in (f"{tag}😀", f"{tag}😎", f"{tag}é", f"{tag}e"):
        ack = await _reg(conn, name)
        assert ack["errno"] == 0, (name, ack)
    # One name, however it is cased, padded or width-mapped.
    await _reg(conn, f"{tag}Alice")
    for same in (f"{tag}alice", f"{tag}ALICE ", f" {tag}Alice", f"{tag}{FULL_WIDTH_ALICE}"):
        ack = await _reg(conn, same)
        assert ack["errno"] == RegErr.FAILED and "is taken" in str(ack["errmsg"]), (same, ack)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a\u202egnp.exe", "text-direction"),  # right-to-left override
        ("admin\u2066", "text-direction"),
        ("a\x07b", "control"),
        ("line\nbreak", "control"),
        ("a\u200bb", "invisible"),  # zero-width space
        ("   ", "only spaces"),
        ("\u3000\u00a0", "only spaces"),  # ideographic and no-break spaces
        # Invisible: each was an account of its own that looked like "alice"
        # (or like no name at all) on main.
        ("alice\u3164", "invisible"),  # a Hangul filler
        ("\u3164\u3164", "invisible"),
        ("\u2800", "invisible"),  # the blank braille pattern
        ("alice\u200d", "invisible"),  # a zero-width joiner joining nothing
        ("ali\u200dce", "invisible"),
        ("\u200d\u200d", "invisible"),
        ("alice\ufe0f", "invisible"),  # an emoji's variation selector after a letter
        ("alice\U000e0041", "invisible"),  # a tag character, no flag
        ("alice\u034f", "invisible"),  # the combining grapheme joiner
        ("\u0301", "combining mark"),  # an accent on nothing
    ],
)
async def test_bad_names_are_refused_with_a_reason(connect: Connect, name: str, why: str) -> None:
    conn = await connect()
    ack = await _reg(conn, name)
    assert ack["errno"] == RegErr.FAILED and why in str(ack["errmsg"]), ack
    legacy = await connect(legacy=True)  # the original client gets its own reply
    ack = await _reg(legacy, name)
    assert ack["errno"] == RegErr.FAILED and why in str(ack["errmsg"]), ack


async def test_names_are_stored_normalised(connect: Connect) -> None:
    conn = await connect()
    tag = unique("w")
    uid = (await _reg(conn, f"  {FULL_WIDTH_WIDE}  {tag}  "))["id"]
    login = await conn.request(
        {"msgid": MsgId.LOGIN, "id": uid, "password": PASSWORD}, MsgId.LOGIN_ACK
    )
    assert login["name"] == f"wide {tag}"
    # Emoji sequences are fine names: a family (zero-width joiners), a
    # rainbow flag (a variation selector too), a keycap, a subdivision flag
    # (tag characters), a skin tone.
    for emoji in (
        "👨\u200d👩\u200d👧",
        "🏳\ufe0f\u200d🌈",
        "1\ufe0f\u20e3",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
        "👩🏽\u200d💻",
    ):
        assert (await _reg(conn, f"{emoji}{tag}"))["errno"] == 0, emoji


async def test_group_names_follow_the_same_rule(user: UserFactory) -> None:
    alice = await user()
    tag = unique("g")
    ack = await alice.conn.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": f" {tag}Crew "}, MsgId.CREATE_GROUP_ACK
    )
    assert ack["groupname"] == f"{tag}Crew"
    err = await alice.conn.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": f"{tag}CREW"}, MsgId.ERROR
    )
    assert err["errno"] == ErrCode.GROUP_NAME_TAKEN
    err = await alice.conn.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": "x\u202ey"}, MsgId.ERROR
    )
    assert err["errno"] == ErrCode.INVALID_FIELD and "text-direction" in err["errmsg"]
    err = await alice.conn.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": f"{tag}Crew\u3164"}, MsgId.ERROR
    )
    assert err["errno"] == ErrCode.INVALID_FIELD and "invisible" in err["errmsg"]
    for emoji in ("😀", "😎"):
        ack = await alice.conn.request(
            {"msgid": MsgId.CREATE_GROUP, "groupname": f"{tag}{emoji}"}, MsgId.CREATE_GROUP_ACK
        )
        assert ack["errno"] == 0


async def test_renaming_a_group_follows_the_same_rule(user: UserFactory) -> None:
    # Before: EDIT_GROUP stored the name as sent (a text-direction override,
    # a bell, a zero-width space, only spaces, full-width letters all taken)
    # and kept the old name's key, so "Crew", "CREW" and "crew" were three
    # groups and the old name stayed taken by a group no longer called so.
    alice = await user()
    tag = unique("r")

    async def create(name: str) -> int:
        ack = await alice.conn.request(
            {"msgid": MsgId.CREATE_GROUP, "groupname": name}, MsgId.CREATE_GROUP_ACK
        )
        return int(ack["groupid"])

    async def rename(gid: int, name: str, reply: MsgId) -> dict[str, object]:
        edit = {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupname": name}
        return await alice.conn.request(edit, reply)

    first, second = await create(f"{tag}Old"), await create(f"{tag}Other")
    for bad, why in (
        (f"x\u202e{tag}", "text-direction"),
        (f"\x07{tag}", "control"),
        (f"a\u200b{tag}", "invisible"),
        ("   ", "only spaces"),
    ):
        err = await rename(first, bad, MsgId.ERROR)
        assert err["errno"] == ErrCode.INVALID_FIELD and why in str(err["errmsg"]), (bad, err)
    await rename(first, f"  {FULL_WIDTH_WIDE} {tag}Crew ", MsgId.DONE)
    err = await rename(second, f"wide {tag}CREW", MsgId.ERROR)  # one name, however cased
    assert err["errno"] == ErrCode.GROUP_NAME_TAKEN, err
    err = await alice.conn.request(
        {"msgid": MsgId.CREATE_GROUP, "groupname": f"WIDE {tag}crew"}, MsgId.ERROR
    )
    assert err["errno"] == ErrCode.GROUP_NAME_TAKEN, err
    await create(f"{tag}old")  # the old name is free again
    listed = await alice.conn.request({"msgid": MsgId.LIST_GROUPS}, MsgId.GROUP_LIST)
    shown = {g["id"]: g["groupname"] for g in listed["groups"]}
    assert shown[first] == f"wide {tag}Crew", shown
