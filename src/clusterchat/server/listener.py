"""What every listener of the node shares: socket options set once, and the
way a connection over a limit is refused."""

from __future__ import annotations

import asyncio
import socket


def tune_listener(server: asyncio.Server) -> None:
    """Set the options every accepted connection needs on the listening
    sockets: Linux copies them into each socket it accepts, so they cost
    nothing per connection (no system calls, no socket object kept)."""
    for sock in server.sockets:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Half-open connections (a peer that vanished) die within ~90 s.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class Refused(asyncio.Protocol):
    """A connection over the limit: say why, then close without a reset.

    Closing at once with the peer's first request unread would make the
    kernel send RST, and the peer would lose the explanation; so send it,
    half-close, and discard input until the peer closes (or a short while).
    """

    def __init__(self, transport: asyncio.Transport, why: bytes) -> None:
        self.transport = transport
        transport.write(why)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(2.0, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
