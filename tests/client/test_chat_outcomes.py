"""What the terminal client says about a chat's acknowledgement."""

from __future__ import annotations

from clusterchat.client import commands as c
from clusterchat.client.app import _done
from clusterchat.protocol.messages import ChatStatus, MsgId


def test_a_partial_group_chat_says_how_many_members_miss_it() -> None:
    reply = {"msgid": MsgId.CHAT_ACK, "status": ChatStatus.PARTIAL, "missed": [4, 9]}
    (line,) = _done(c.GroupChat(7, "hi"), reply)
    assert "group 7" in line and "2 offline members will not get it" in line


def test_a_chat_stored_for_later_says_so() -> None:
    reply = {"msgid": MsgId.CHAT_ACK, "status": ChatStatus.STORED}
    assert _done(c.Chat(3, "hi"), reply) == ["(user 3 is offline: they get it at their next login)"]
