"""What the original C++ client (the NUL dialect) may see: one filter.

The original server sent four kinds of message: LOGIN_ACK, REG_ACK and the
chats it relayed (``messages.LEGACY_REPLIES``). Its client must never be
sent anything else, nor fields it did not know that change what it reads.
Handlers build the same typed reply for both dialects; ``for_original``
decides what of it the original client gets, and the service applies it in
one place (``ChatService.reply``). ``UNANSWERED`` and ``UNKNOWN`` say which
of our requests are not served for it at all.

Where the original has no reply to give, it cannot be told "retry" either:
a request that would be refused as busy or too fast waits instead (the
service asks ``shown(legacy, MsgId.ERROR)``).
"""

from __future__ import annotations

from typing import Final

from clusterchat.protocol.messages import (
    LEGACY_REPLIES,
    History,
    ListBlocked,
    ListFriends,
    ListGroups,
    ListInvites,
    LoginErr,
    MsgId,
    RegErr,
)
from clusterchat.protocol.replies import (
    ChatAck,
    Done,
    Error,
    LoginOk,
    LoginRefused,
    RegRefused,
    Reply,
    Unreadable,
)

#: Requests of ours whose only effect is a reply the original cannot read:
#: from it, they are not served (nor refused).
UNANSWERED: Final[frozenset[type]] = frozenset({ListFriends, ListGroups, ListBlocked, ListInvites})
#: Requests of ours the original client is refused as an unknown msgid.
UNKNOWN: Final[frozenset[type]] = frozenset({History})


#: Replies of ours it is never sent, known by their type alone.
NEVER: Final[frozenset[type]] = frozenset({ChatAck, Error, Done})


def shown(legacy: bool | None, msgid: MsgId) -> bool:
    """Whether a peer of this dialect is ever sent a message of this kind
    (``legacy`` None: no request seen yet, treated as ours)."""
    return not legacy or msgid in LEGACY_REPLIES


def issues_extras(legacy: bool | None) -> bool:
    """Whether a login issues a ticket and starts receipts: ours only. The
    original's LOGIN_ACK never carried them and it never sends RECEIVED
    (a ticket is not even made for it: one would replace its user's last)."""
    return not legacy


def for_original(reply: Reply) -> Reply | None:
    """What the original client is sent for ``reply``; None: nothing."""
    if type(reply) in NEVER:  # by type first: a CHAT_ACK is built for every chat
        return None
    if reply.msgid not in LEGACY_REPLIES:
        if type(reply) is Unreadable:
            # It knows no ERROR: a bad LOGIN or REG is refused in their own reply.
            if reply.re == MsgId.LOGIN:
                return LoginRefused(LoginErr.BAD_CREDENTIALS, reply.errmsg)
            if reply.re == MsgId.REG:
                return RegRefused(RegErr.FAILED, reply.errmsg)
        return None
    if type(reply) is LoginOk and reply.max_frame is not None:
        # It reads 1024 bytes at a time and knows no frame limit to be told.
        return LoginOk(
            reply.uid,
            reply.name,
            reply.friends,
            reply.groups,
            reply.offline,
            reply.ticket,
            reply.resumed,
            reply.more,
            None,
            reply.receipts,
        )
    return reply
