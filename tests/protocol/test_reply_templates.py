"""Pre-encoded replies are byte for byte what the encoder would build."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clusterchat.protocol import codec
from clusterchat.protocol.messages import ChatStatus, MsgId

STATUSES = [ChatStatus.DELIVERED, ChatStatus.STORED, ChatStatus.SENT, ChatStatus.PARTIAL]


@given(st.text(), st.integers(min_value=0, max_value=2**63 - 1), st.sampled_from(STATUSES))
def test_chat_ack_template_is_what_the_encoder_builds(mid: str, ts: int, status: str) -> None:
    doc = {"msgid": int(MsgId.CHAT_ACK), "errno": 0, "mid": mid, "ts": ts, "status": status}
    assert codec.chat_ack(mid, ts, status) == codec.encode(doc)


_ids = st.integers(min_value=1, max_value=2**31 - 1)


@given(_ids, st.text(), _ids, st.text(), st.text(), st.integers(0, 2**63 - 1), st.text())
def test_relayed_chats_have_sorted_keys_without_a_sort(
    uid: int, name: str, to: int, msg: str, time: str, ts: int, mid: str
) -> None:
    """The relay's structs declare their fields in sorted order and are
    encoded as declared: byte for byte the sorted encoding of the message."""
    one = {"msgid": 6, "id": uid, "name": name, "toid": to, "msg": msg, "time": time}
    assert codec.one_chat(uid, name, to, msg, time, ts, mid) == codec.encode(
        {**one, "ts": ts, "mid": mid}
    )
    group = {"msgid": 10, "id": uid, "name": name, "groupid": to, "msg": msg, "time": time}
    assert codec.group_chat(uid, name, to, msg, time, ts, mid) == codec.encode(
        {**group, "ts": ts, "mid": mid}
    )
