"""The replies the server sends, as typed values.

Handlers build one of these and hand it to the service's ``reply``, which
passes it through the dialect filter (:mod:`clusterchat.protocol.dialect`)
before ``wire()`` turns it into bytes. ``wire()`` gives exactly the bytes
the handlers wrote by hand before (sorted keys, as the original server's
nlohmann::json did; the CHAT_ACK from a template, it is sent for every chat).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId


class Reply(msgspec.Struct, frozen=True, gc=False):
    """One reply; ``msgid`` is the kind the peer reads."""

    msgid: ClassVar[MsgId]

    def wire(self) -> bytes:
        raise NotImplementedError


class Error(Reply, frozen=True, gc=False):
    """ERROR (11): a request refused; ``re`` is its msgid, if known."""

    msgid: ClassVar[MsgId] = MsgId.ERROR
    #: Which counter a refusal of this kind bumps (ServiceCounts.refusals).
    kind: ClassVar[str] = "error"
    errno: int
    errmsg: str
    re: int | None = None

    def wire(self) -> bytes:
        return codec.error(self.errno, self.errmsg, self.re)


class Unreadable(Error, frozen=True, gc=False):
    """ERROR for a frame that was no valid request (``codec.read_request``):
    the original client is told in its own LOGIN/REG reply, if it tried one."""


class LoginRefused(Reply, frozen=True, gc=False):
    msgid: ClassVar[MsgId] = MsgId.LOGIN_ACK
    kind: ClassVar[str] = "login"
    errno: int
    errmsg: str

    def wire(self) -> bytes:
        return codec.login_refused(self.errno, self.errmsg)


class RegRefused(Reply, frozen=True, gc=False):
    msgid: ClassVar[MsgId] = MsgId.REG_ACK
    kind: ClassVar[str] = "register"
    errno: int
    errmsg: str

    def wire(self) -> bytes:
        return codec.reg_refused(self.errno, self.errmsg)


class RegOk(Reply, frozen=True, gc=False):
    msgid: ClassVar[MsgId] = MsgId.REG_ACK
    uid: int

    def wire(self) -> bytes:
        return codec.reg_ack(self.uid)


class LoginOk(Reply, frozen=True, gc=False):
    """LOGIN_ACK, errno 0. ``friends``, ``groups``, ``offline``: JSON texts,
    as the original sent them. ``max_frame``: the longest request taken."""

    msgid: ClassVar[MsgId] = MsgId.LOGIN_ACK
    uid: int
    name: str
    friends: list[str]
    groups: list[str]
    offline: list[str]
    ticket: str | None = None
    resumed: bool = False
    more: list[str] | None = None
    max_frame: int | None = None
    receipts: bool = False

    def wire(self) -> bytes:
        return codec.login_ack(
            self.uid,
            self.name,
            self.friends,
            self.groups,
            self.offline,
            self.ticket,
            self.resumed,
            self.more,
            self.max_frame,
            self.receipts,
        )


class ChatAck(Reply, frozen=True, gc=False):
    """CHAT_ACK (18): where a chat went. ``missed``: group members the store
    failed for (status partial); ``full``: those whose mailbox is full."""

    msgid: ClassVar[MsgId] = MsgId.CHAT_ACK
    mid: str
    ts: int
    status: str
    missed: list[int] | None = None
    full: list[int] | None = None

    def wire(self) -> bytes:
        if self.missed is not None:
            return codec.ack(
                MsgId.CHAT_ACK, mid=self.mid, ts=self.ts, status=self.status, missed=self.missed
            )
        if self.full is not None:
            return codec.ack(
                MsgId.CHAT_ACK, mid=self.mid, ts=self.ts, status=self.status, full=self.full
            )
        return _CHAT_ACK % (_encode(self.mid), _encode(self.status), self.ts)


#: Sent for every chat of our dialect: formatted here, not through codec.chat_ack
#: (the same template; one call fewer on the hot path).
_CHAT_ACK = codec.CHAT_ACK_TEMPLATE
_encode = codec.encode_json


class Ack(Reply, frozen=True, gc=False):
    """One of our acknowledgements and lists (errno 0): ``kind`` is its
    msgid, ``fields`` the rest of the document."""

    kind: MsgId
    fields: dict[str, Any]

    @property
    def msgid(self) -> MsgId:  # type: ignore[override]
        return self.kind

    def wire(self) -> bytes:
        return codec.ack(self.kind, **self.fields)


class Done(Reply, frozen=True, gc=False):
    """DONE (41): a request of ours (30-44) but the lists took effect."""

    msgid: ClassVar[MsgId] = MsgId.DONE
    re: MsgId
    fields: dict[str, Any]

    def wire(self) -> bytes:
        return codec.ack(MsgId.DONE, re=int(self.re), **self.fields)


class Fixed(Reply, frozen=True, gc=False):
    """A reply that never changes (PONG, LOGOUT_ACK, a NOTICE), encoded once."""

    kind: MsgId
    data: bytes

    @property
    def msgid(self) -> MsgId:  # type: ignore[override]
        return self.kind

    def wire(self) -> bytes:
        return self.data

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Fixed:
        return cls(MsgId(doc["msgid"]), codec.encode(doc))


LOGOUT_ACK = Fixed(MsgId.LOGOUT_ACK, codec.ack(MsgId.LOGOUT_ACK))
# The NOTICEs that end a session for good (the connection closes next, the
# ticket is dead): our clients stop reconnecting when they read one. Each
# has an `event` (docs/PROTOCOL.md, NOTICE 23), which the web page matches
# on; the terminal client matches the text (the same since before `event`).
#: A password login elsewhere took over this session, which came by ticket.
DISPLACED_TEXT = "you logged in somewhere else; this session has ended"
DISPLACED = Fixed.of({"msgid": MsgId.NOTICE, "text": DISPLACED_TEXT, "event": "displaced"})
#: An operator's `clusterchat admin kick` (or `delete`), and `ban`.
KICKED_TEXT = "an operator ended this session"
BANNED_TEXT = "an operator banned this account; this session has ended"
KICKED = Fixed.of({"msgid": MsgId.NOTICE, "text": KICKED_TEXT, "event": "kicked"})
BANNED = Fixed.of({"msgid": MsgId.NOTICE, "text": BANNED_TEXT, "event": "banned"})

#: A refusal: a reply that bumps a refusal counter (``kind``, ``errno``).
Refusal = Error | LoginRefused | RegRefused
