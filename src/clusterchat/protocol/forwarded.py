"""``X-Forwarded-For``, as nginx's HTTP proxy sends it with
``proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;``: the
client's real address for the WebSocket/HTTP path, as the PROXY line
(:mod:`.proxy`) gives it for TCP.

Each proxy appends the address it was connected from, so only the right
end of the list is written by proxies we trust; anything to the left may
have been typed by the client. The client is therefore the rightmost entry
that is not itself a trusted proxy (nginx's ``real_ip_recursive on;``,
Express's ``trust proxy``); if every entry is trusted, the leftmost. The
caller reads the header only when the TCP peer is a trusted proxy.
``X-Real-IP`` is not read: it names one hop and cannot be chained.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable

HEADER = "X-Forwarded-For"


def hop(entry: str) -> str | None:
    """One entry as a normalised address, or None if it is not one
    (``unknown``, a name, garbage). A port (``1.2.3.4:5``, ``[::1]:5``)
    is dropped."""
    entry = entry.strip()
    if entry.startswith("["):  # [v6] or [v6]:port
        end = entry.find("]")
        entry = entry[1:end] if end > 0 else ""
    elif entry.count(":") == 1:  # v4:port (a bare v6 has several colons)
        entry = entry.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return None


def client_address(values: Iterable[str], trusted: Container[str]) -> str | None:
    """The client's address from every ``X-Forwarded-For`` value of a
    request (in order), given the trusted proxies' addresses; None if there
    is no header, or if the entry that would name the client is not an
    address (a proxy of ours misconfigured): the caller keeps the peer's."""
    entries = [e for value in values for e in value.split(",") if e.strip()]
    found: str | None = None
    for entry in reversed(entries):
        address = hop(entry)
        if address is None:
            return None
        found = address
        if address not in trusted:
            return address
    return found
