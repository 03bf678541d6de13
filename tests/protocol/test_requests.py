"""Request decoding refuses every bad frame with a protocol error, never an
exception of another kind (inputs found by atheris included)."""

from __future__ import annotations

import pytest

from clusterchat.protocol import codec
from clusterchat.protocol.codec import BadRequest
from clusterchat.protocol.messages import ErrCode, OneChat


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"not json", ErrCode.MALFORMED),
        (b"[1, 2]", ErrCode.MALFORMED),
        (b'{"msgid": "6"}', ErrCode.INVALID_FIELD),
        (b'{"msgid": 99}', ErrCode.UNKNOWN_MSGID),
        (b'{"msgid": 6, "toid": 1e400, "msg": "x"}', ErrCode.INVALID_FIELD),
        # Found by atheris: an unknown key that is not UTF-8 made the slow
        # path raise UnicodeDecodeError (an internal error for the client).
        (b'{"msgid":5,"to\xa0d":1,"msg":"hk",', ErrCode.MALFORMED),
        (b'{"\xa2msgid":9,"groupid":1,"msg":"x"}', ErrCode.MALFORMED),
        (b'{"msgid":6,"toid":1,"msg":"\xff"}', ErrCode.MALFORMED),
    ],
)
def test_bad_frames_are_refused_with_a_protocol_error(frame: bytes, code: ErrCode) -> None:
    with pytest.raises(BadRequest) as refused:
        codec.decode_request(frame)
    assert refused.value.code == code and refused.value.errmsg


def test_a_good_frame_decodes_to_its_request() -> None:
    req = codec.decode_request(b'{"msgid":6,"id":1,"toid":2,"msg":"hi","time":"now"}')
    assert isinstance(req, OneChat) and req.toid == 2 and req.msg == "hi"
