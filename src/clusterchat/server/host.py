"""What a connection needs from the node that accepted it.

The transports (connection.py for TCP, websocket.py for browsers) and the
HTTP port (http.py) see their node only through :class:`Host`; node.py
satisfies it and imports them, never the other way round. What the
connection core itself needs (settings, the budget, the service, the loop's
shared rounds) is the smaller :class:`~clusterchat.server.core.CoreHost`,
which ``Host`` extends with admission and bookkeeping. ``Conn`` is the
connection type the host keeps (a :class:`~clusterchat.server.connection.Connection`),
a parameter so that this module needs no import of the transports either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from clusterchat.server.core import CoreHost

if TYPE_CHECKING:
    from clusterchat.protocol.trusted import TrustedProxies
    from clusterchat.service.chat import ChatService

Conn = TypeVar("Conn")


class Host(CoreHost, Protocol[Conn]):
    #: Handles each request, and a connection's end (spills, logouts).
    service: ChatService
    #: Open connections (the node sweeps, drains and counts them).
    connections: set[Conn]
    clock: Callable[[], float]

    def new_connection_id(self) -> int: ...

    # -- admission: limits per node and per client address -----------------------
    def admit(self, conn: Conn, address: str, sheds: bool = True) -> bytes | None: ...
    def shed(self) -> bytes | None: ...
    def trusts(self, address: str) -> bool: ...
    @property
    def trusted_proxies(self) -> TrustedProxies: ...
    def readdress(self, conn: Conn, address: str) -> bytes | None: ...
    def connection_closed(self, conn: Conn) -> None: ...
