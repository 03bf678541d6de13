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
