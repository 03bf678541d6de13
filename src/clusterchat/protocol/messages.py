"""Message ids, error codes and the typed requests a client may send.

Ids 1-10 are the original C++ system's and keep their numbers and field
names; 11 and up are ours (see docs/PROTOCOL.md). Requests are msgspec
structs tagged by ``msgid``, so decoding validates types and bounds in C.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Final, Literal

import msgspec


class MsgId(IntEnum):
    LOGIN = 1
    LOGIN_ACK = 2
    LOGOUT = 3
    REG = 4
    REG_ACK = 5
    ONE_CHAT = 6
    ADD_FRIEND = 7
    CREATE_GROUP = 8
    ADD_GROUP = 9
    GROUP_CHAT = 10
    # Ours, unknown to the original client.
    ERROR = 11
    PING = 12
    PONG = 13
    ADD_FRIEND_ACK = 14
    CREATE_GROUP_ACK = 15
    ADD_GROUP_ACK = 16
    LOGOUT_ACK = 17
    CHAT_ACK = 18
    LIST_FRIENDS = 19
    FRIEND_LIST = 20
    LIST_GROUPS = 21
    GROUP_LIST = 22
    NOTICE = 23  # server-initiated text for people, e.g. "this node is shutting down"
    FRIEND_ADDED = 24  # pushed: someone added you as a friend (modern dialect only)
    # Friends and groups a person manages (docs/PROTOCOL.md, "Managing friends and groups").
    REMOVE_FRIEND = 30
    BLOCK = 31
    UNBLOCK = 32
    LIST_BLOCKED = 33
    BLOCKED_LIST = 34
    LEAVE_GROUP = 35
    REMOVE_MEMBER = 36
    SET_ROLE = 37
    EDIT_GROUP = 38
    TRANSFER_GROUP = 39
    DELETE_GROUP = 40
    DONE = 41  # the reply to 30-44 but the lists: errno 0, ``re`` the request's msgid
    FRIEND_EVENT = 42  # pushed: a friend removed you
    GROUP_EVENT = 43  # pushed: a group you are (or were) in changed
    INVITE = 44  # to an invite-only group (ADD_GROUP accepts)
    LIST_INVITES = 45
    INVITE_LIST = 46
    # History (docs/PROTOCOL.md, "History"): modern dialect and WebSocket only.
    HISTORY = 60
    HISTORY_PAGE = 61
    # Receipts (docs/PROTOCOL.md, "Receipts"): the client acknowledges pushes.
    RECEIVED = 63


#: Messages the server sends without being asked; everything else it sends
#: answers exactly one request, in request order.
PUSHED: Final = frozenset(
    {
        MsgId.ONE_CHAT,
        MsgId.GROUP_CHAT,
        MsgId.NOTICE,
        MsgId.FRIEND_ADDED,
        MsgId.FRIEND_EVENT,
        MsgId.GROUP_EVENT,
    }
)


#: Replies the original server could send; a legacy-dialect peer gets only these.
LEGACY_REPLIES: Final = frozenset(
    {MsgId.LOGIN_ACK, MsgId.REG_ACK, MsgId.ONE_CHAT, MsgId.GROUP_CHAT}
)


class LoginErr(IntEnum):
    OK = 0
    BAD_CREDENTIALS = 1
    ALREADY_ONLINE = 2
    ALREADY_LOGGED_IN_HERE = 3
    UNAVAILABLE = 4
    TOO_MANY_FAILURES = 5  # brute-force guard: wait and retry
    BANNED = 6  # by an operator (`clusterchat admin ban`)


class RegErr(IntEnum):
    OK = 0
    FAILED = 1
    UNAVAILABLE = 4
    TOO_MANY = 5  # registrations from this address: wait and retry


class ErrCode(IntEnum):
    """``errno`` of an ERROR (11) reply; stable, documented in PROTOCOL.md."""

    MALFORMED = 100  # not JSON, or not a JSON object
    UNKNOWN_MSGID = 101
    INVALID_FIELD = 102  # missing, wrong type, out of range, too long
    FRAME_TOO_LARGE = 103
    NOT_LOGGED_IN = 110
    NO_SUCH_USER = 120
    FRIEND_SELF = 121
    ALREADY_FRIENDS = 122
    NO_SUCH_GROUP = 130
    GROUP_NAME_TAKEN = 131
    NOT_GROUP_MEMBER = 132
    ALREADY_MEMBER = 133
    GROUP_FULL = 134
    # Friends and groups a person manages: 123-129 and 135-139.
    REFUSED_BY_USER = 123  # the receiver does not take this from you; no reason is given
    NOT_FRIENDS = 124
    SELF_TARGET = 125  # you cannot do that to yourself (block, unfriend, remove, ...)
    NOT_ALLOWED = 126  # not allowed for your role in that group
    TARGET_NOT_MEMBER = 127  # the user you named is not a member of that group
    TARGET_ALREADY_MEMBER = 128  # the user you invited is in the group already
    INVITE_ONLY = 135  # that group takes members by invitation only
    # History (60/61): 180-184.
    HISTORY_OFF = 180  # this server keeps no history (--history-days 0)
    HISTORY_NOT_MEMBER = 181  # group history is for its members only
    HISTORY_TARGET = 182  # give exactly one of userid and groupid
    UNAVAILABLE = 150  # storage or cluster bus unreachable; retry later
    BUSY = 151  # holds all it may for others (memory budget, bus window): no effect, retry
    SERVER_FULL = 160  # the node has all the connections it can take; try another
    TIMEOUT = 161  # no login, or silence, for too long: the connection is closed
    TOO_FAST = 170  # over the per-user request rate; the request was not served
    MAILBOX_FULL = 171  # the receiver has as many messages waiting as they may
    TOO_LONG_TO_STORE = 172  # longer than a message kept for an offline receiver may be
    QUOTA = 173  # as many groups, memberships, friends or invitations as a user may have
    MAILBOX_SHARE_FULL = 174  # you have as many messages waiting for them as one sender may
    # Receipts: 185-189.
    RECEIPT_AHEAD = 185  # RECEIVED names a number not yet sent on this connection
    RECEIPT_TIMEOUT = 186  # nothing acknowledged for too long: closing (all kept)
    RECEIPT_WINDOW_FULL = 187  # too much unacknowledged: closing (all kept)
    RECEIPTS_OFF = 188  # RECEIVED on a connection that did not ask for receipts
    INTERNAL = 199


class ChatStatus:
    """``status`` of a CHAT_ACK: where the message went."""

    DELIVERED = "delivered"  # written to the receiver's connection
    STORED = "stored"  # receiver offline: kept for their next login
    SENT = "sent"  # group chat: fanned out (online members now, others later)
    #: Group chat: some members have it, the store failed for those in ``missed``.
    PARTIAL = "partial"


# Bounds, matching the original schema's column widths where it had them.
MAX_ID: Final = 2**31 - 1
Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
GroupName = Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
GroupDesc = Annotated[str, msgspec.Meta(max_length=200)]
ClientTime = Annotated[str, msgspec.Meta(max_length=64)]
Ticket = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# Chat text is bounded only by the frame limit.
#: Messages one HISTORY reply carries at most, and by default.
MAX_HISTORY_PAGE: Final = 200
DEFAULT_HISTORY_PAGE: Final = 50


class _Request(msgspec.Struct, frozen=True, tag_field="msgid", gc=False):
    """gc=False: requests hold only strings and ints, so they need no cycle
    collection, and untracked objects keep the collector off the hot path."""


class Login(_Request, frozen=True, gc=False, tag=int(MsgId.LOGIN)):
    id: Id
    password: Password | None = None
    #: Instead of the password: the ticket from this user's last login reply.
    ticket: Ticket | None = None
    #: Number pushed messages and keep them until acknowledged (RECEIVED);
    #: modern dialect and WebSocket only.
    receipts: bool = False


class Logout(_Request, frozen=True, gc=False, tag=int(MsgId.LOGOUT)):
    pass


class Register(_Request, frozen=True, gc=False, tag=int(MsgId.REG)):
    name: Name
    password: Password


class OneChat(_Request, frozen=True, gc=False, tag=int(MsgId.ONE_CHAT)):
    toid: Id
    msg: str
    time: ClientTime = ""


class AddFriend(_Request, frozen=True, gc=False, tag=int(MsgId.ADD_FRIEND)):
    friendid: Id


class CreateGroup(_Request, frozen=True, gc=False, tag=int(MsgId.CREATE_GROUP)):
    groupname: GroupName
    groupdesc: GroupDesc = ""


class AddGroup(_Request, frozen=True, gc=False, tag=int(MsgId.ADD_GROUP)):
    groupid: Id


class GroupChat(_Request, frozen=True, gc=False, tag=int(MsgId.GROUP_CHAT)):
    groupid: Id
    msg: str
    time: ClientTime = ""


class Ping(_Request, frozen=True, gc=False, tag=int(MsgId.PING)):
    pass


class ListFriends(_Request, frozen=True, gc=False, tag=int(MsgId.LIST_FRIENDS)):
    pass


class ListGroups(_Request, frozen=True, gc=False, tag=int(MsgId.LIST_GROUPS)):
    #: Groups with ids above this: the reply is paged (``more: true``).
    after: Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)] = 0


class RemoveFriend(_Request, frozen=True, gc=False, tag=int(MsgId.REMOVE_FRIEND)):
    friendid: Id


class Block(_Request, frozen=True, gc=False, tag=int(MsgId.BLOCK)):
    userid: Id


class Unblock(_Request, frozen=True, gc=False, tag=int(MsgId.UNBLOCK)):
    userid: Id


class ListBlocked(_Request, frozen=True, gc=False, tag=int(MsgId.LIST_BLOCKED)):
    pass


class LeaveGroup(_Request, frozen=True, gc=False, tag=int(MsgId.LEAVE_GROUP)):
    groupid: Id


class RemoveMember(_Request, frozen=True, gc=False, tag=int(MsgId.REMOVE_MEMBER)):
    groupid: Id
    userid: Id


class SetRole(_Request, frozen=True, gc=False, tag=int(MsgId.SET_ROLE)):
    """Appoint (``admin``) or demote (``normal``) a member."""

    groupid: Id
    userid: Id
    role: Literal["admin", "normal"]


class EditGroup(_Request, frozen=True, gc=False, tag=int(MsgId.EDIT_GROUP)):
    """Rename and/or re-describe; a field left out is kept."""

    groupid: Id
    groupname: GroupName | None = None
    groupdesc: GroupDesc | None = None
    #: Joining (ADD_GROUP) then needs an invitation (INVITE) from an admin.
    inviteonly: bool | None = None


class TransferGroup(_Request, frozen=True, gc=False, tag=int(MsgId.TRANSFER_GROUP)):
    groupid: Id
    userid: Id


class DeleteGroup(_Request, frozen=True, gc=False, tag=int(MsgId.DELETE_GROUP)):
    groupid: Id


class Invite(_Request, frozen=True, gc=False, tag=int(MsgId.INVITE)):
    groupid: Id
    userid: Id


class ListInvites(_Request, frozen=True, gc=False, tag=int(MsgId.LIST_INVITES)):
    pass


class History(_Request, frozen=True, gc=False, tag=int(MsgId.HISTORY)):
    """A page of a conversation, newest first: with a user (``userid``, any
    user you exchanged messages with, yourself included) or a group you are
    in (``groupid``, from when you joined). ``before``: a message ``id`` from
    an earlier page (0: the newest)."""

    userid: Id | None = None
    groupid: Id | None = None
    before: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_HISTORY_PAGE)] = DEFAULT_HISTORY_PAGE


class Received(_Request, frozen=True, gc=False, tag=int(MsgId.RECEIVED)):
    """Receipts: every pushed message numbered up to ``seq`` has arrived."""

    seq: Annotated[int, msgspec.Meta(ge=0, le=2**53)]


Request = (
    Login
    | Logout
    | Register
    | OneChat
    | AddFriend
    | CreateGroup
    | AddGroup
    | GroupChat
    | Ping
    | ListFriends
    | ListGroups
    | RemoveFriend
    | Block
    | Unblock
    | ListBlocked
    | LeaveGroup
    | RemoveMember
    | SetRole
    | EditGroup
    | TransferGroup
    | DeleteGroup
    | Invite
    | ListInvites
    | History
    | Received
)

#: Requests accepted before login.
ANONYMOUS_OK: Final = (Login, Register, Ping)
