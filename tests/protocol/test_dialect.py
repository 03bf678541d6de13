"""The legacy reply filter alone: what the original (NUL) client is sent
for each reply, and that typed replies give the bytes the codec gives."""

from __future__ import annotations

from clusterchat.protocol import codec, dialect
from clusterchat.protocol.messages import (
    LEGACY_REPLIES,
    History,
    ListFriends,
    LoginErr,
    MsgId,
    OneChat,
    RegErr,
)
from clusterchat.protocol.replies import (
    DISPLACED,
    KICKED,
    LOGOUT_ACK,
    Ack,
    ChatAck,
    Done,
    Error,
    Fixed,
    LoginOk,
    LoginRefused,
    RegOk,
    RegRefused,
    Unreadable,
)


def test_the_original_client_is_sent_none_of_our_replies() -> None:
    ours = [
        ChatAck("n-1", 5, "delivered"),
        ChatAck("n-1", 5, "sent", full=[3]),
        Error(123, "no", 6),
        Unreadable(100, "not JSON"),
        Unreadable(101, "unknown msgid 60", 60),
        Done(MsgId.BLOCK, {"userid": 2}),
        Ack(MsgId.FRIEND_LIST, {"friends": []}),
        Fixed.of({"msgid": MsgId.PONG, "node": "n"}),
        LOGOUT_ACK,
        KICKED,
        DISPLACED,
    ]
    for reply in ours:
        assert reply.msgid not in LEGACY_REPLIES
        assert dialect.for_original(reply) is None, reply


def test_the_original_client_is_sent_its_own_replies_unchanged() -> None:
    for reply in (
        RegOk(7),
        RegRefused(RegErr.FAILED, "taken"),
        LoginRefused(LoginErr.ALREADY_ONLINE, "online"),
        LoginOk(7, "ann", ["f"], [], ["m"]),
    ):
        assert dialect.for_original(reply) is reply


def test_the_original_login_reply_has_no_frame_limit() -> None:
    ours = LoginOk(7, "ann", [], [], [], ticket="t", max_frame=65536, receipts=False)
    shown = dialect.for_original(ours)
    assert shown == LoginOk(7, "ann", [], [], [], ticket="t", max_frame=None)
    assert b"maxframe" in ours.wire() and b"maxframe" not in shown.wire()


def test_a_bad_login_or_registration_is_refused_in_the_originals_own_reply() -> None:
    assert dialect.for_original(Unreadable(102, "field 'id'", MsgId.LOGIN)) == LoginRefused(
        LoginErr.BAD_CREDENTIALS, "field 'id'"
    )
    assert dialect.for_original(Unreadable(102, "field 'name'", MsgId.REG)) == RegRefused(
        RegErr.FAILED, "field 'name'"
    )
    # An ERROR that is not about an unreadable frame stays unsent, LOGIN or not.
    assert dialect.for_original(Error(150, "unavailable", MsgId.LOGIN)) is None


def test_which_of_our_requests_the_original_is_not_served() -> None:
    assert ListFriends in dialect.UNANSWERED and History in dialect.UNKNOWN
    assert OneChat not in dialect.UNANSWERED | dialect.UNKNOWN
    assert dialect.shown(None, MsgId.ERROR) and dialect.shown(False, MsgId.ERROR)
    assert not dialect.shown(True, MsgId.ERROR) and dialect.shown(True, MsgId.LOGIN_ACK)


def test_typed_replies_give_the_codecs_bytes() -> None:
    assert ChatAck("n-1", 5, "delivered").wire() == codec.chat_ack("n-1", 5, "delivered")
    assert ChatAck("n-1", 5, "partial", missed=[4]).wire() == codec.ack(
        MsgId.CHAT_ACK, mid="n-1", ts=5, status="partial", missed=[4]
    )
    assert Error(123, "no", 6).wire() == codec.error(123, "no", 6)
    assert Done(MsgId.INVITE, {"groupid": 1, "userid": 2}).wire() == codec.ack(
        MsgId.DONE, re=44, groupid=1, userid=2
    )
    assert LoginOk(7, "ann", [], [], [], max_frame=9).wire() == codec.login_ack(
        7, "ann", [], [], [], max_frame=9
    )
    assert RegOk(7).wire() == codec.reg_ack(7)
