"""Deeply nested JSON is a malformed request like any other: a specific
error, the connection stays usable, and the log stays small."""

from __future__ import annotations

import asyncio
import logging

import pytest

from clusterchat.protocol.messages import ErrCode, MsgId
from tests.conftest import Connect


class _LineSeen(logging.Handler):
    """Sets an event when a log line containing ``text`` is emitted."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


#: What is logged of 300 refusals at once, not how fast they are answered
#: (the flood limit meters unreadable lines too: tests/e2e/test_limits.py).
pytestmark = pytest.mark.unmetered

DEPTH = 1000
FRAMES = 300
NESTED = [
    b"[" * DEPTH + b"]" * DEPTH,
    b'{"msgid":6,"toid":1,"msg":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
    b'{"msgid":12,"extra":' + b'{"a":' * DEPTH + b"1" + b"}" * DEPTH + b"}",
    b'{"msgid":99,"x":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
]


@pytest.mark.parametrize("frame", NESTED, ids=["array", "field", "unknown-key", "unknown-id"])
async def test_deep_nesting_is_error_100_and_logged_once(
    connect: Connect, caplog: pytest.LogCaptureFixture, frame: bytes
) -> None:
    caplog.set_level(logging.INFO)
    conn = await connect()
    await conn.send_raw((frame + b"\n") * FRAMES)
    for _ in range(FRAMES):
        err = await conn.expect(MsgId.ERROR)
        assert err["errno"] == ErrCode.MALFORMED and "nested too deeply" in err["errmsg"], err
    assert (await conn.request({"msgid": MsgId.PING}, MsgId.PONG))["node"]
    records = [r for r in caplog.records if r.name.startswith("clusterchat")]
    assert not any(r.exc_info for r in records)
    # One line for the first refusal; the other FRAMES - 1 are counted, not logged.
    assert len(records) == 1, [r.getMessage() for r in records]
    closed = _LineSeen("more refused")
    logging.getLogger("clusterchat").addHandler(closed)
    try:
        await conn.close()
        # The count comes in a last line when the connection closes.
        await asyncio.wait_for(closed.seen.wait(), 10)
    finally:
        logging.getLogger("clusterchat").removeHandler(closed)
    closing = [r.getMessage() for r in caplog.records if "more refused" in r.getMessage()]
    assert closing == [f"{FRAMES - 1} more refused before the connection closed (127.0.0.1, uid 0)"]
    total = sum(len(r.getMessage()) for r in caplog.records if r.name.startswith("clusterchat"))
    print(f"{FRAMES} frames of {len(frame)} bytes: {total} bytes of log")


async def test_the_original_client_gets_no_reply_and_the_log_stays_small(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    conn = await connect(legacy=True)
    await conn.send_raw((NESTED[1] + b"\0") * FRAMES)
    # Served in order: the register after them is answered, nothing before it.
    ack = await conn.request({"msgid": MsgId.REG, "name": "deep", "password": "p"}, MsgId.REG_ACK)
    assert ack["errno"] == 0
    lines = [r for r in caplog.records if "nested too deeply" in r.getMessage()]
    assert len(lines) == 1 and not lines[0].exc_info
