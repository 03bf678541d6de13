"""JSON bytes <-> typed messages, and every reply the server builds.

Decoding gives a typed request or a :class:`BadRequest`, which carries the
``errno`` and a sentence for the client (``read_request`` returns it,
``decode_request`` raises it); encoding returns ready-to-write
bytes (newline included) so a relayed message is serialised exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from clusterchat.protocol.messages import ChatStatus, ErrCode, MsgId, Request

_decoder = msgspec.json.Decoder(Request)
_any_decoder = msgspec.json.Decoder()
# Sorted keys, byte for byte what the original (nlohmann::json, a std::map) sent:
# tools written against it search replies by key order.
_encoder = msgspec.json.Encoder(order="sorted")


class BadRequest(Exception):
    """A frame that is not a valid request; ``msgid`` is what it claimed, if anything."""

    def __init__(self, code: ErrCode, errmsg: str, msgid: int | None = None) -> None:
        super().__init__(errmsg)
        self.code = code
        self.errmsg = errmsg
        self.msgid = msgid


_NOT_JSON = "request is not valid JSON in UTF-8"
#: Requests are flat objects; msgspec refuses JSON nested deeper than the
#: interpreter's recursion limit allows (about 1,000 levels) by raising
#: RecursionError, which must be a refusal like any other malformed frame.
_TOO_DEEP = "request is nested too deeply (requests are flat JSON objects)"


def read_request(frame: bytes) -> Request | BadRequest:
    """A frame as the typed request it is, or the refusal it earns (returned,
    not raised: the transport hands either to the service). One msgspec
    decode straight into the tagged struct on the usual path."""
    try:
        req: Request = _decoder.decode(frame)
    except msgspec.ValidationError as exc:
        return _classify(frame, exc)
    except ValueError:  # msgspec.DecodeError, or UnicodeDecodeError for bad UTF-8
        return BadRequest(ErrCode.MALFORMED, _NOT_JSON)
    except RecursionError:
        return BadRequest(ErrCode.MALFORMED, _TOO_DEEP)
    return req


#: A frame as the typed request it is, raising if it is not one (then
#: :func:`read_request` says why): the relay's usual path, one C call.
decode_valid = _decoder.decode


def decode_request(frame: bytes) -> Request:
    """``read_request``, raising the refusal."""
    req = read_request(frame)
    if isinstance(req, BadRequest):
        raise req
    return req


def _classify(frame: bytes, exc: msgspec.ValidationError) -> BadRequest:
    """Slow path, errors only: tell a bad msgid from a bad field."""
    try:
        frame.decode()
    except UnicodeDecodeError:
        # Not text, so not JSON. Checked here: msgspec's error for a bad
        # byte in a key is a DecodeError in some processes (a CI run), a
        # UnicodeDecodeError in others, and the first read as a bad field.
        return BadRequest(ErrCode.MALFORMED, _NOT_JSON)
    try:
        doc = _any_decoder.decode(frame)
    except msgspec.MsgspecError:  # valid JSON msgspec cannot hold, e.g. 1e400
        return BadRequest(ErrCode.INVALID_FIELD, _field_error(str(exc)))
    except ValueError:  # an unknown key that is not UTF-8 (found by atheris)
        return BadRequest(ErrCode.MALFORMED, _NOT_JSON)
    except RecursionError:  # a known msgid whose unknown keys nest deeply
        return BadRequest(ErrCode.MALFORMED, _TOO_DEEP)
    if not isinstance(doc, dict):
        return BadRequest(ErrCode.MALFORMED, "request must be a JSON object")
    msgid = doc.get("msgid")
    if "msgid" not in doc:
        return BadRequest(ErrCode.INVALID_FIELD, "request has no msgid")
    if type(msgid) is not int:
        return BadRequest(ErrCode.INVALID_FIELD, "msgid must be an integer")
    if msgid not in _REQUEST_IDS:
        return BadRequest(ErrCode.UNKNOWN_MSGID, f"unknown msgid {msgid}", msgid)
    return BadRequest(ErrCode.INVALID_FIELD, _field_error(str(exc)), msgid)


def _field_error(text: str) -> str:
    # msgspec says e.g. "Expected `int`, got `str` - at `$.toid`".
    head, sep, where = text.partition(" - at `$.")
    if sep:
        return f"field {where.rstrip('`')!r}: {head}"
    return text


_REQUEST_IDS = frozenset(int(cls.__struct_config__.tag) for cls in Request.__args__)


class _Kind(msgspec.Struct, gc=False):
    msgid: int = 0


_kind_decoder = msgspec.json.Decoder(_Kind)
_CHATS = frozenset({int(MsgId.ONE_CHAT), int(MsgId.GROUP_CHAT)})


def is_chat(payload: bytes) -> bool:
    """Whether a server-built document is a chat message (not an event or notice)."""
    try:
        return _kind_decoder.decode(payload).msgid in _CHATS
    except (msgspec.MsgspecError, ValueError):
        return False


def encode(doc: dict[str, Any]) -> bytes:
    return _encoder.encode(doc) + b"\n"


def encode_text(doc: str) -> bytes:
    """A stored JSON document, framed for the wire."""
    return doc.encode() + b"\n"


def dumps(doc: Any) -> str:
    """A JSON document as text, for the original's arrays-of-JSON-strings fields."""
    return _encoder.encode(doc).decode()


def loads(data: bytes | str) -> Any:
    return _any_decoder.decode(data)


def error(code: int, errmsg: str, re: int | None = None) -> bytes:
    return encode({"msgid": MsgId.ERROR, "errno": int(code), "errmsg": errmsg, "re": re})


# The relay path: structs encode faster than dicts, and plain ints than
# IntEnums. Their fields are declared in sorted order, so an encoder that
# keeps the declared order writes what the sorted one would, without
# sorting the keys of every message it relays.
class _OneChatOut(msgspec.Struct, gc=False):
    id: int
    mid: str
    msg: str
    msgid: int
    name: str
    time: str
    toid: int
    ts: int


class _GroupChatOut(msgspec.Struct, gc=False):
    groupid: int
    id: int
    mid: str
    msg: str
    msgid: int
    name: str
    time: str
    ts: int


_ONE_CHAT, _GROUP_CHAT, _CHAT_ACK = int(MsgId.ONE_CHAT), int(MsgId.GROUP_CHAT), int(MsgId.CHAT_ACK)
_in_order = msgspec.json.Encoder()


def one_chat(uid: int, name: str, toid: int, msg: str, time: str, ts: int, mid: str) -> bytes:
    return _in_order.encode(_OneChatOut(uid, mid, msg, _ONE_CHAT, name, time, toid, ts)) + b"\n"


def group_chat(uid: int, name: str, gid: int, msg: str, time: str, ts: int, mid: str) -> bytes:
    return _in_order.encode(_GroupChatOut(gid, uid, mid, msg, _GROUP_CHAT, name, time, ts)) + b"\n"


#: A CHAT_ACK is sent for every chat of our dialect: pre-encoded around its
#: three fields (sorted keys, as the encoder would), half the cost of a struct.
CHAT_ACK_TEMPLATE = b'{"errno":0,"mid":%%b,"msgid":%d,"status":%%b,"ts":%%d}\n' % _CHAT_ACK
#: One JSON value, as bytes (sorted keys).
encode_json = _encoder.encode


def chat_ack(mid: str, ts: int, status: str) -> bytes:
    return CHAT_ACK_TEMPLATE % (_encoder.encode(mid), _encoder.encode(status), ts)


def delivered_ack_template(node_id: str) -> bytes:
    """CHAT_ACK "delivered" for mids ``<node_id>-<n>``, pre-encoded but for
    ``n`` and ``ts`` (``% (n, ts)``): the reply to every chat delivered on
    this node, with no JSON encoding per chat (digits need no escaping)."""
    before_mid, before_status, rest = CHAT_ACK_TEMPLATE.split(b"%b")
    mid = _encoder.encode(node_id + "-")[:-1].replace(b"%", b"%%") + b'%d"'
    return before_mid + mid + before_status + _encoder.encode(ChatStatus.DELIVERED) + rest


def login_ack(
    uid: int,
    name: str,
    friends: Sequence[str],
    groups: Sequence[str],
    offline: Sequence[str],
    ticket: str | None = None,
    resumed: bool = False,
    more: Sequence[str] | None = None,
    max_frame: int | None = None,
    receipts: bool = False,
) -> bytes:
    doc: dict[str, Any] = {"msgid": MsgId.LOGIN_ACK, "errno": 0, "id": uid, "name": name}
    if max_frame is not None:  # modern clients only: the longest request taken
        doc["maxframe"] = max_frame
    if receipts:  # pushes are numbered ("seq"); acknowledge them with RECEIVED
        doc["receipts"] = True
    if ticket is not None:
        doc["ticket"] = ticket
    if resumed:
        doc["resumed"] = True
    # The original only includes these keys when non-empty.
    if friends:
        doc["friends"] = friends
    if groups:
        doc["groups"] = groups
    if offline:
        doc["offlinemsg"] = offline
    if more:  # lists cut short: LIST_FRIENDS / LIST_GROUPS give them whole
        doc["more"] = more
    return encode(doc)


def login_refused(errno: int, errmsg: str) -> bytes:
    return encode({"msgid": MsgId.LOGIN_ACK, "errno": errno, "errmsg": errmsg})


def reg_ack(uid: int) -> bytes:
    return encode({"msgid": MsgId.REG_ACK, "errno": 0, "id": uid})


def reg_refused(errno: int, errmsg: str) -> bytes:
    return encode({"msgid": MsgId.REG_ACK, "errno": errno, "errmsg": errmsg})


def friend_doc(uid: int, name: str, online: bool) -> str:
    return dumps({"id": uid, "name": name, "state": "online" if online else "offline"})


def member_doc(uid: int, name: str, online: bool, role: str) -> str:
    state = "online" if online else "offline"
    return dumps({"id": uid, "name": name, "state": state, "role": role})


def group_doc(gid: int, name: str, desc: str, members: Iterable[str]) -> str:
    return dumps({"id": gid, "groupname": name, "groupdesc": desc, "users": list(members)})


#: How an entry of a group document's ``users`` ends (its state, the member
#: document's last key, then the JSON string's quote), online or not.
MEMBER_ONLINE = '\\"online\\"}"'
MEMBER_OFFLINE = '\\"offline\\"}"'


def member_entry(uid: int, name: str, role: str) -> str:
    """A member's entry in a group document's ``users`` (JSON text of a
    string holding the member's document) but for its ending,
    :data:`MEMBER_ONLINE` or :data:`MEMBER_OFFLINE`: made once per member,
    not once per login that shows the group."""
    whole = _encoder.encode(member_doc(uid, name, False, role)).decode()
    assert whole.endswith(MEMBER_OFFLINE)
    return whole[: -len(MEMBER_OFFLINE)]


def group_doc_of_entries(gid: int, name: str, desc: str, users: str) -> str:
    """:func:`group_doc`, given its ``users`` already as JSON: the entries
    (:func:`member_entry` and their endings) joined by commas."""
    head = f'{{"groupdesc":{_encoder.encode(desc).decode()},"groupname":'
    return f'{head}{_encoder.encode(name).decode()},"id":{gid},"users":[{users}]}}'


def ack(msgid: MsgId, **fields: Any) -> bytes:
    return encode({"msgid": msgid, "errno": 0, **fields})
