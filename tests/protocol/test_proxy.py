"""PROXY protocol v1 lines, fed as bytes."""

from __future__ import annotations

import pytest

from clusterchat.protocol import proxy


def test_a_line_names_the_client_and_the_rest_follows() -> None:
    data = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 6000\r\n{}\n"
    assert proxy.parse(data) == ("192.0.2.7", len(data) - 3)
    assert proxy.parse(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n") == ("2001:db8::1", 32)
    assert proxy.parse(b"PROXY UNKNOWN\r\n") == (None, 15)


def test_partial_lines_wait_and_others_are_not_headers() -> None:
    assert proxy.parse(b"PROXY TCP4 192.0.2.7") is None
    assert proxy.may_be_header(b"PRO") and proxy.may_be_header(b"PROXY TCP4")
    assert not proxy.may_be_header(b'{"msgid":12}')


@pytest.mark.parametrize(
    "line",
    [b"PROXY TCP4 not-an-ip 1.2.3.4 1 2\r\n", b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
     b"PROXY " + b"x" * 120],
)  # fmt: skip
def test_bad_lines_are_refused(line: bytes) -> None:
    with pytest.raises(proxy.BadHeader):
        proxy.parse(line)
