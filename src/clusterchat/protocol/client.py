"""The client's side of the protocol, sans I/O: bytes in, events out.

One :class:`ClientProtocol` per connection. A request goes out as bytes
(:meth:`~ClientProtocol.send`); what the server sends comes in as bytes
(:meth:`~ClientProtocol.receive_data`, or :meth:`~ClientProtocol.receive_message`
for a WebSocket's whole messages) and comes out as events:

- :class:`Reply`: the answer to the oldest request still waiting for one,
  with the token the caller gave :meth:`~ClientProtocol.send` (the server
  answers in request order, so a FIFO matches them);
- :class:`Push`: a message the server sent unasked (messages.PUSHED);
- :class:`ReceiptRefused`: an ``ERROR`` with ``re: 63`` (RECEIVED has no reply);
- :class:`Unexpected`: a reply no request was waiting for (one written
  around this object, e.g. raw bytes a test sent);
- :class:`Undecodable`: a frame that is not a JSON object.

Which requests get a reply: in the modern (``\\n``) dialect every one but
RECEIVED; in the original (NUL) dialect only LOGIN and REG (the original
server answered nothing else).

With ``acknowledge=True`` receipts are handled here (protocol/acks.py): the
numbers pushes carry are counted, RECEIVED requests queue in
:meth:`~ClientProtocol.data_to_send`, the caller calls
:meth:`~ClientProtocol.acknowledge` about once a second while
:attr:`~ClientProtocol.unacknowledged`, and a LOGOUT carries what is due
before it. The terminal client (client/connection.py, client/session.py),
``clusterchat bench`` (bench/conn.py) and the tests drive this object.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Generic, TypeVar

import msgspec

from clusterchat.protocol.acks import Acks, received
from clusterchat.protocol.framing import DEFAULT_MAX_FRAME, NEWLINE, FrameDecoder
from clusterchat.protocol.messages import PUSHED, ErrCode, MsgId

T = TypeVar("T")

#: The largest frame a client takes from the server: replies carry lists
#: (offline messages, history pages) well over a request's limit.
MAX_REPLY = 16 * DEFAULT_MAX_FRAME

#: The server's documents, any JSON (what is not an object is Undecodable).
_decode = msgspec.json.Decoder().decode
#: Requests, keys sorted as every document of ours.
_encode = msgspec.json.Encoder(order="sorted").encode

_ERROR, _RECEIVED, _LOGIN_ACK = int(MsgId.ERROR), int(MsgId.RECEIVED), int(MsgId.LOGIN_ACK)
#: The ERRORs with which the server closes a connection of its own accord
#: (receipts not confirmed in time, or too many held; a timeout: no login, a
#: request half-sent, silence): they answer no request. Taken as the oldest
#: waiting request's reply, a chat the server had served was shown refused,
#: and sent again under a new mid (found by a soak: 2,997 messages delivered
#: twice); it is in doubt, as at any close.
_CLOSING = frozenset(
    {int(ErrCode.RECEIPT_TIMEOUT), int(ErrCode.RECEIPT_WINDOW_FULL), int(ErrCode.TIMEOUT)}
)
_LOGOUT = int(MsgId.LOGOUT)
_PUSHED = frozenset(int(m) for m in PUSHED)
#: What the original (NUL) dialect answers at all.
_LEGACY_ASKS = frozenset({int(MsgId.LOGIN), int(MsgId.REG)})


class Reply(msgspec.Struct, Generic[T], frozen=True, gc=False):
    """The reply to the oldest request waiting for one, and its token."""

    msg: dict[str, Any]
    frame: bytes
    token: T | None


class Push(msgspec.Struct, frozen=True, gc=False):
    """A message the server sent unasked: a chat, a notice, an event."""

    msg: dict[str, Any]
    frame: bytes


class ReceiptRefused(msgspec.Struct, frozen=True, gc=False):
    """The server refused a RECEIVED (an ``ERROR`` with ``re: 63``)."""

    msg: dict[str, Any]
    frame: bytes


class Unexpected(msgspec.Struct, frozen=True, gc=False):
    """A reply while no request sent through this object waits for one."""

    msg: dict[str, Any]
    frame: bytes


class Undecodable(msgspec.Struct, frozen=True, gc=False):
    """A frame that is not a JSON object."""

    frame: bytes
    reason: str


Event = Reply[T] | Push | ReceiptRefused | Unexpected | Undecodable


class TooLong(Exception):
    """A request whose frame the server would not take: nothing was sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request of {size} bytes, over the {limit}-byte frame limit")
        self.size, self.limit = size, limit


class NoReply(ValueError):
    """A token given with a request the server will not answer."""


class ClientProtocol(Generic[T]):
    """One connection's protocol state: the FIFO of requests waiting for a
    reply, the frame decoder, receipts, and the server's frame limit."""

    __slots__ = (
        "_decoder",
        "_out",
        "_waiting",
        "acks",
        "legacy",
        "max_frame",
        "refuse_too_long",
        "terminator",
    )

    def __init__(
        self,
        legacy: bool = False,
        acknowledge: bool = False,
        refuse_too_long: bool = False,
        max_reply: int = MAX_REPLY,
    ) -> None:
        self.legacy = legacy
        self.terminator = b"\x00" if legacy else b"\n"
        #: Receipts to send, when asked to acknowledge what is pushed.
        self.acks: Acks | None = Acks() if acknowledge else None
        #: The largest request frame the server takes (bytes, without the
        #: terminator): its LOGIN_ACK says (``maxframe``), else the default.
        self.max_frame = DEFAULT_MAX_FRAME
        #: Raise TooLong for a request over ``max_frame`` instead of sending
        #: it (the server would close the connection).
        self.refuse_too_long = refuse_too_long
        self._decoder = FrameDecoder(max_reply)
        self._waiting: deque[T | None] = deque()
        self._out: list[bytes] = []

    # -- requests ------------------------------------------------------------------

    def expects_reply(self, msgid: object) -> bool:
        """Whether the server answers a request with this ``msgid``."""
        if self.legacy:
            return msgid in _LEGACY_ASKS
        return msgid != _RECEIVED

    def send(self, doc: dict[str, Any], token: T | None = None) -> bytes:
        """The bytes of a request, to be written now. If the server answers
        it, its :class:`Reply` carries ``token``."""
        msgid = doc.get("msgid")
        frame = _encode(doc)
        if self.refuse_too_long and len(frame) > self.max_frame:
            raise TooLong(len(frame), self.max_frame)
        if self.expects_reply(msgid):
            self._waiting.append(token)
        elif token is not None:
            raise NoReply(f"msgid {msgid} gets no reply in this dialect")
        if msgid == _LOGOUT and self.acks is not None and (due := self.acks.take()) is not None:
            # What arrived is acknowledged first, else it is stored for the next login.
            return self._receipt(due) + frame + self.terminator
        return frame + self.terminator

    @property
    def waiting(self) -> int:
        """Requests sent whose reply has not come."""
        return len(self._waiting)

    # -- what arrives --------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event[T]]:
        """Bytes read from the connection, split anywhere: the events of the
        frames they complete. Raises framing.FrameTooLarge past ``max_reply``."""
        return self._events(self._decoder.feed(data))

    def receive_message(self, payload: bytes) -> list[Event[T]]:
        """One whole message (a WebSocket text frame): its event."""
        return self._events([(payload, NEWLINE)])

    def receive_messages(self, payloads: list[bytes]) -> list[Event[T]]:
        """Whole messages read together: their events, in order."""
        return self._events([(p, NEWLINE) for p in payloads])

    def _events(self, frames: list[tuple[bytes, int]]) -> list[Event[T]]:
        # One loop, no call per frame but the decoder's: the bench's hot path.
        events: list[Event[T]] = []
        append = events.append
        acks = self.acks
        for frame, _ in frames:
            try:
                msg = _decode(frame)
            except ValueError as exc:
                append(Undecodable(frame, str(exc)))
                continue
            if type(msg) is not dict:
                append(Undecodable(frame, "not a JSON object"))
                continue
            msgid = msg.get("msgid")
            if type(msgid) is int and msgid in _PUSHED:  # (a list is unhashable)
                if acks is not None:
                    seq = msg.get("seq")
                    if type(seq) is int and (due := acks.saw(seq, len(frame))) is not None:
                        self._out.append(self._receipt(due))
                append(Push(msg, frame))
            elif msgid == _ERROR and msg.get("re") == _RECEIVED:
                append(ReceiptRefused(msg, frame))
            elif not self._waiting or (
                msgid == _ERROR and msg.get("re") is None and msg.get("errno") in _CLOSING
            ):
                append(Unexpected(msg, frame))
            else:
                if msgid == _LOGIN_ACK and msg.get("errno") == 0:
                    self._logged_in(msg)
                append(Reply(msg, frame, self._waiting.popleft()))
        return events

    def _logged_in(self, ack: dict[str, Any]) -> None:
        limit = ack.get("maxframe")
        if type(limit) is int and limit > 0:
            self.max_frame = limit
        if self.acks is not None:
            self.acks.reset()  # numbering starts again with this reply
            if ack.get("receipts"):  # the offline messages it carries are numbered 1 to n
                carried = ack.get("offlinemsg") or ()
                due = self.acks.saw(len(carried), sum(map(len, carried)))
                if due is not None:
                    self._out.append(self._receipt(due))

    # -- receipts ------------------------------------------------------------------

    @property
    def unacknowledged(self) -> bool:
        """Pushes arrived that no RECEIVED has covered yet (arm a timer)."""
        return self.acks is not None and self.acks.seen > self.acks.sent

    def acknowledge(self) -> None:
        """The timer (about once a second) or a close: acknowledge what arrived."""
        due = self.acks.take() if self.acks is not None else None
        if due is not None:
            self._out.append(self._receipt(due))

    def data_to_send(self) -> bytes:
        """What this object wants written besides requests (receipts), or b""."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def _receipt(self, seq: int) -> bytes:
        return _encode(received(seq)) + self.terminator

    # -- the end -------------------------------------------------------------------

    def connection_lost(self) -> list[T | None]:
        """The connection ended: the tokens of requests that will get no
        reply now, oldest first. The object may serve a new connection."""
        tokens = list(self._waiting)
        self._waiting.clear()
        self._decoder = FrameDecoder(self._decoder.max_frame)
        self._out.clear()
        if self.acks is not None:
            # Its numbers died with it (the server stores what was not
            # acknowledged); a receipt owed for them went out on the next
            # connection before its login and was refused "log in first".
            self.acks.reset()
        return tokens


def taken_order(doc: dict[str, Any]) -> tuple[int, str, int]:
    """A sort key for chats that arrive together, such as what was stored
    while one was away: the time the server took each, then, within one
    millisecond, one node's count (mids are ``<node>-<n>``). Stored messages
    can come after later ones (README, "Order"); ``ts`` and ``mid`` are what
    the server gives to put them back in order."""
    ts = doc.get("ts")
    node, _, n = str(doc.get("mid", "")).rpartition("-")
    return (ts if isinstance(ts, int) else 0, node, int(n) if n.isdigit() else 0)
