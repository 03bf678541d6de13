"""The client core with no socket: bytes in, events out, replies matched to
requests in order, receipts acknowledged (protocol/client.py)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterchat.protocol.acks import EVERY
from clusterchat.protocol.client import (
    MAX_REPLY,
    ClientProtocol,
    Event,
    NoReply,
    Push,
    ReceiptRefused,
    Reply,
    TooLong,
    Undecodable,
    Unexpected,
    taken_order,
)
from clusterchat.protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder
from clusterchat.protocol.messages import ErrCode, MsgId


def wire(doc: dict[str, Any]) -> bytes:
    """A document as the server writes it: one line."""
    return msgspec.json.encode(doc) + b"\n"


def loads(line: bytes) -> Any:
    return msgspec.json.decode(line)


def chat(i: int, seq: int | None = None) -> bytes:
    """A chat pushed by the server (receipts on: numbered, ``seq`` last)."""
    doc = {"msgid": 6, "id": 7, "name": "ann", "toid": 8, "msg": f"m{i}", "mid": f"n-{i}", "ts": 1}
    return wire(doc if seq is None else {**doc, "seq": seq})


def pong(i: int) -> bytes:
    return wire({"msgid": MsgId.PONG, "errno": 0, "node": f"node{i}"})


def refused(re: int) -> bytes:
    return wire({"msgid": MsgId.ERROR, "errno": ErrCode.NO_SUCH_USER, "errmsg": "?", "re": re})


def chat_ack(mid: str) -> bytes:
    return wire({"msgid": MsgId.CHAT_ACK, "errno": 0, "mid": mid, "status": "delivered", "ts": 1})


def reg_ack(uid: int) -> bytes:
    return wire({"msgid": MsgId.REG_ACK, "errno": 0, "id": uid})


def login_refused() -> bytes:
    return wire({"msgid": MsgId.LOGIN_ACK, "errno": 1, "errmsg": "wrong"})


def kinds(events: list[Event[Any]]) -> list[tuple[str, Any, Any]]:
    """What a test compares: each event's type, document (or frame) and token."""
    out: list[tuple[str, Any, Any]] = []
    for e in events:
        if isinstance(e, Undecodable):
            out.append(("Undecodable", e.frame, None))
        else:
            out.append((type(e).__name__, e.msg, e.token if isinstance(e, Reply) else None))
    return out


def feed_in_pieces(core: ClientProtocol[Any], data: bytes, cuts: list[int]) -> list[Event[Any]]:
    events: list[Event[Any]] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        events += core.receive_data(data[start:cut])
        start = cut
    return events


# -- a conversation: requests sent, then what the server answers, in pieces -----------

#: One step of the server's stream: a reply to the next request (None), or a push.
steps = st.lists(st.one_of(st.none(), st.integers(0, 10_000)), max_size=40)


@given(steps, st.data())
def test_any_split_of_the_stream_gives_the_same_events(
    stream: list[int | None], data: st.DataObject
) -> None:
    replies = stream.count(None)
    stream_bytes = b"".join(pong(n) if i is None else chat(i) for n, i in enumerate(stream))
    cuts = data.draw(st.lists(st.integers(0, len(stream_bytes)), max_size=30), label="cuts")

    whole: ClientProtocol[int] = ClientProtocol()
    pieces: ClientProtocol[int] = ClientProtocol()
    for k in range(replies):
        whole.send({"msgid": MsgId.PING}, k)
        pieces.send({"msgid": MsgId.PING}, k)

    expected = kinds(whole.receive_data(stream_bytes))
    assert kinds(feed_in_pieces(pieces, stream_bytes, cuts)) == expected
    assert pieces.waiting == whole.waiting == 0


@given(steps, st.data())
def test_replies_go_to_their_requests_in_order_whatever_is_pushed_between(
    stream: list[int | None], data: st.DataObject
) -> None:
    core: ClientProtocol[str] = ClientProtocol()
    replies = stream.count(None)
    for k in range(replies):
        core.send({"msgid": MsgId.PING}, f"request {k}")
    stream_bytes = b"".join(pong(n) if i is None else chat(i) for n, i in enumerate(stream))
    cuts = data.draw(st.lists(st.integers(0, len(stream_bytes)), max_size=10), label="cuts")

    events = feed_in_pieces(core, stream_bytes, cuts)

    got = [(e.token, e.msg["node"]) for e in events if isinstance(e, Reply)]
    # The k-th reply on the wire (built as pong(position)) answers request k.
    positions = [n for n, i in enumerate(stream) if i is None]
    assert got == [(f"request {k}", f"node{n}") for k, n in enumerate(positions)]
    pushed = [e.msg["msg"] for e in events if isinstance(e, Push)]
    assert pushed == [f"m{i}" for i in stream if i is not None]


@given(st.lists(st.binary(max_size=40), max_size=20), st.integers(0, 5))
def test_whatever_arrives_each_frame_is_one_event_and_nothing_raises(
    pieces: list[bytes], waiting: int
) -> None:
    core: ClientProtocol[int] = ClientProtocol(acknowledge=True)
    for k in range(waiting):
        core.send({"msgid": MsgId.PING}, k)
    events: list[Event[int]] = []
    for piece in pieces:
        events += core.receive_data(piece)
    frames = FrameDecoder(MAX_REPLY).feed(b"".join(pieces))
    assert [e.frame for e in events] == [f for f, _ in frames]
    tokens = [e.token for e in events if isinstance(e, Reply)]
    assert tokens == list(range(len(tokens)))  # in order, none twice
    assert core.waiting == waiting - len(tokens)


def test_an_error_reply_is_matched_to_the_request_it_refuses() -> None:
    core: ClientProtocol[str] = ClientProtocol()
    core.send({"msgid": MsgId.PING}, "ping")
    core.send({"msgid": MsgId.ONE_CHAT, "toid": 9, "msg": "hi"}, "chat to 9")
    core.send({"msgid": MsgId.ONE_CHAT, "toid": 8, "msg": "hi"}, "chat to 8")
    events = core.receive_data(pong(0) + chat(1) + refused(MsgId.ONE_CHAT) + chat_ack("n-2"))
    assert kinds(events) == [
        ("Reply", loads(pong(0)), "ping"),
        ("Push", loads(chat(1)), None),
        ("Reply", loads(refused(MsgId.ONE_CHAT)), "chat to 9"),
        ("Reply", loads(chat_ack("n-2")), "chat to 8"),
    ]


def test_a_refused_receipt_answers_no_request() -> None:
    core: ClientProtocol[str] = ClientProtocol()
    assert core.send({"msgid": MsgId.RECEIVED, "seq": 5}) == b'{"msgid":63,"seq":5}\n'
    core.send({"msgid": MsgId.PING}, "ping")
    events = core.receive_data(refused(MsgId.RECEIVED) + pong(0))
    assert [type(e) for e in events] == [ReceiptRefused, Reply]
    assert isinstance(events[1], Reply) and events[1].token == "ping"
    with pytest.raises(NoReply):  # a receipt has no reply to wait for
        core.send({"msgid": MsgId.RECEIVED, "seq": 6}, "never")


def test_a_reply_nobody_waits_for_and_a_broken_frame_are_events_too() -> None:
    core: ClientProtocol[str] = ClientProtocol()
    events = core.receive_data(pong(0) + b'not json\n[1,2]\n{"msgid":[6]}\n')
    assert [type(e) for e in events] == [Unexpected, Undecodable, Undecodable, Unexpected]
    assert [e.frame for e in events] == [pong(0)[:-1], b"not json", b"[1,2]", b'{"msgid":[6]}']


# -- the original (NUL) dialect ------------------------------------------------------


def test_the_original_dialect_waits_only_for_login_and_register_replies() -> None:
    core: ClientProtocol[str] = ClientProtocol(legacy=True)
    assert core.send({"msgid": MsgId.ONE_CHAT, "toid": 2, "msg": "a"}).endswith(b"}\x00")
    assert core.send({"msgid": MsgId.ADD_FRIEND, "friendid": 2}).endswith(b"\x00")
    assert core.waiting == 0  # the original server answers neither
    core.send({"msgid": MsgId.REG, "name": "x", "password": "p"}, "reg")
    core.send({"msgid": MsgId.LOGIN, "id": 1, "password": "p"}, "login")
    with pytest.raises(NoReply):
        core.send({"msgid": MsgId.GROUP_CHAT, "groupid": 1, "msg": "a"}, "never answered")
    assert core.waiting == 2
    events = core.receive_data(reg_ack(1) + chat(0) + login_refused())
    assert kinds(events) == [
        ("Reply", loads(reg_ack(1)), "reg"),
        ("Push", loads(chat(0)), None),
        ("Reply", loads(login_refused()), "login"),
    ]


# -- receipts --------------------------------------------------------------------------


def login_ack(offline: int, receipts: bool = True, maxframe: int | None = None) -> bytes:
    doc: dict[str, Any] = {"msgid": MsgId.LOGIN_ACK, "errno": 0, "id": 8, "name": "bob"}
    doc["offlinemsg"] = [chat(i).decode().rstrip("\n") for i in range(offline)]
    if receipts:
        doc["receipts"] = True
    if maxframe is not None:
        doc["maxframe"] = maxframe
    return wire(doc)


def logged_in(offline: int = 0) -> ClientProtocol[str]:
    core: ClientProtocol[str] = ClientProtocol(acknowledge=True)
    core.send({"msgid": MsgId.LOGIN, "id": 8, "password": "p", "receipts": True}, "login")
    (reply,) = core.receive_data(login_ack(offline))
    assert isinstance(reply, Reply) and reply.token == "login"
    return core


def test_pushes_are_acknowledged_every_n_then_on_the_timer() -> None:
    core = logged_in()
    events = core.receive_data(b"".join(chat(i, seq=i) for i in range(1, EVERY + 3)))
    assert len(events) == EVERY + 2
    assert core.data_to_send() == b'{"msgid":63,"seq":%d}\n' % EVERY
    assert core.data_to_send() == b""  # given once
    assert core.unacknowledged  # two more: the caller's timer will say so
    core.acknowledge()
    assert core.data_to_send() == b'{"msgid":63,"seq":%d}\n' % (EVERY + 2)
    assert not core.unacknowledged
    core.acknowledge()
    assert core.data_to_send() == b""  # nothing new


def test_the_offline_messages_of_the_login_reply_count_as_numbered_1_to_n() -> None:
    core = logged_in(offline=EVERY)
    assert core.data_to_send() == b'{"msgid":63,"seq":%d}\n' % EVERY
    core.receive_data(chat(0, seq=EVERY + 1))
    assert core.unacknowledged


def test_a_logout_carries_the_receipt_it_owes_first() -> None:
    core = logged_in()
    core.receive_data(chat(1, seq=1) + chat(2, seq=2))
    data = core.send({"msgid": MsgId.LOGOUT}, "logout")
    assert data == b'{"msgid":63,"seq":2}\n{"msgid":3}\n'
    assert not core.unacknowledged


def test_a_new_login_numbers_from_1_again() -> None:
    core = logged_in()
    core.receive_data(chat(1, seq=30))
    core.acknowledge()
    assert core.data_to_send() == b'{"msgid":63,"seq":30}\n'
    core.send({"msgid": MsgId.LOGIN, "id": 8, "password": "p", "receipts": True}, "again")
    core.receive_data(login_ack(0))
    core.receive_data(chat(2, seq=1))
    core.acknowledge()
    assert core.data_to_send() == b'{"msgid":63,"seq":1}\n'


def test_a_lost_connection_owes_no_receipt_to_the_next() -> None:
    core = logged_in()
    core.receive_data(chat(1, seq=1) + chat(2, seq=2))
    assert core.unacknowledged
    core.connection_lost()
    assert not core.unacknowledged  # no timer armed on the next connection
    core.acknowledge()
    assert core.data_to_send() == b""
    assert core.send({"msgid": MsgId.LOGOUT}, "logout") == b'{"msgid":3}\n'


def test_without_acknowledging_nothing_is_sent_of_its_own_accord() -> None:
    core: ClientProtocol[str] = ClientProtocol()
    core.receive_data(b"".join(chat(i, seq=i) for i in range(1, 2 * EVERY)))
    core.acknowledge()
    assert core.data_to_send() == b"" and not core.unacknowledged


# -- the server's frame limit, and the end --------------------------------------------


def test_a_request_over_the_limit_the_login_reply_gave_is_refused_unsent() -> None:
    core: ClientProtocol[str] = ClientProtocol(refuse_too_long=True)
    assert core.max_frame == DEFAULT_MAX_FRAME
    core.send({"msgid": MsgId.LOGIN, "id": 8, "password": "p"}, "login")
    core.receive_data(login_ack(0, receipts=False, maxframe=100))
    assert core.max_frame == 100
    with pytest.raises(TooLong) as too_long:
        core.send({"msgid": MsgId.ONE_CHAT, "toid": 2, "msg": "x" * 100}, "chat")
    assert too_long.value.limit == 100 and too_long.value.size > 100
    assert core.waiting == 0  # nothing sent, nothing waits
    lax: ClientProtocol[str] = ClientProtocol()  # the tests' raw client sends anything
    lax.max_frame = 100
    assert lax.send({"msgid": MsgId.ONE_CHAT, "toid": 2, "msg": "x" * 100}).endswith(b"\n")


def test_a_lost_connection_hands_back_what_waited_and_forgets_half_a_frame() -> None:
    core: ClientProtocol[str] = ClientProtocol()
    core.send({"msgid": MsgId.PING}, "a")
    core.send({"msgid": MsgId.PING})
    core.send({"msgid": MsgId.PING}, "c")
    assert core.receive_data(pong(0)[:5]) == []
    assert core.connection_lost() == ["a", None, "c"]
    core.send({"msgid": MsgId.PING}, "next")  # a new connection
    (event,) = core.receive_data(pong(1))
    assert isinstance(event, Reply) and event.token == "next"


def test_a_websocket_message_is_one_frame() -> None:
    core: ClientProtocol[str] = ClientProtocol()
    core.send({"msgid": MsgId.PING}, "ping")
    (reply,) = core.receive_message(pong(0).rstrip(b"\n"))
    (push,) = core.receive_message(chat(3))
    assert isinstance(reply, Reply) and reply.token == "ping"
    assert isinstance(push, Push) and push.msg["msg"] == "m3"


def test_websocket_messages_read_together_are_events_in_order() -> None:
    core: ClientProtocol[str] = ClientProtocol()
    core.send({"msgid": MsgId.PING}, "ping")
    reply, push = core.receive_messages([pong(0).rstrip(b"\n"), chat(3)])
    assert isinstance(reply, Reply) and reply.token == "ping"
    assert isinstance(push, Push) and push.msg["msg"] == "m3"


@pytest.mark.parametrize(
    "errno", [ErrCode.RECEIPT_TIMEOUT, ErrCode.RECEIPT_WINDOW_FULL, ErrCode.TIMEOUT]
)
def test_an_error_the_server_closes_with_answers_no_request(errno: ErrCode) -> None:
    """ERROR 186/187 (receipts) and 161 (a timeout: a request half-sent, or
    silence) close the connection of the server's own accord: the chat
    waiting may have been served, so it is not "refused" (it fails as in
    doubt when the connection closes). Before, it took the chat's place: the
    soak's sender sent it again under a new mid (161: a chat the server had
    stored was shown refused)."""
    core: ClientProtocol[str] = ClientProtocol()
    core.send({"msgid": MsgId.ONE_CHAT, "toid": 2, "msg": "hi"}, "chat")
    closing = wire({"msgid": MsgId.ERROR, "errno": errno, "re": None})
    events = core.receive_data(closing)
    assert [type(e) for e in events] == [Unexpected]
    assert core.connection_lost() == ["chat"]  # still waiting: in doubt at the close
    # A refusal of the request itself still answers it.
    core = ClientProtocol()
    core.send({"msgid": MsgId.ONE_CHAT, "toid": 2, "msg": "hi"}, "chat")
    events = core.receive_data(refused(MsgId.ONE_CHAT))
    assert [type(e) for e in events] == [Reply]


@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["a", "b-1"]), st.integers(0, 99))))
def test_taken_order_sorts_by_time_then_one_nodes_count(
    taken: list[tuple[int, str, int]],
) -> None:
    """Whatever order stored chats come in, one node's chats of one
    millisecond come out by their count (not as text: 10 after 9)."""
    docs = [{"ts": ts, "mid": f"{node}-{n}"} for ts, node, n in taken]
    keys = [taken_order(d) for d in sorted(docs, key=taken_order)]
    assert keys == sorted((ts, node, n) for ts, node, n in taken)
    assert taken_order({"msg": "from an older server"}) == (0, "", 0)
