"""The PROXY protocol (version 1, text), as nginx sends it with
``proxy_protocol on;``: one line before the client's bytes that names the
client's real address, so per-address limits see it and not nginx's.

Accepted only from ``--trusted-proxy`` addresses (anyone else could claim
any address), and optional from them: a trusted address that sends no
header (a tool on the same machine) is taken as it is. Spec:
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
from typing import Final

SIGNATURE: Final = b"PROXY "
#: The longest v1 line the spec allows, CRLF included.
MAX_LINE: Final = 107


class BadHeader(ValueError):
    pass


def may_be_header(data: bytes) -> bool:
    """Whether ``data`` (the first bytes) could begin a PROXY line."""
    n = min(len(data), len(SIGNATURE))
    return data[:n] == SIGNATURE[:n]


def parse(data: bytes) -> tuple[str | None, int] | None:
    """(client address or None for UNKNOWN, bytes consumed), or None if the
    line is not complete yet; raises :class:`BadHeader`."""
    end = data.find(b"\r\n", 0, MAX_LINE)
    if end < 0:
        if len(data) >= MAX_LINE:
            raise BadHeader("PROXY line too long")
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return None, end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise BadHeader(f"not a PROXY v1 line: {data[:end][:60]!r}")
    try:
        address = ipaddress.ip_address(parts[2])
    except ValueError:
        raise BadHeader(f"bad address in PROXY line: {parts[2][:40]!r}") from None
    return str(address), end + 2
