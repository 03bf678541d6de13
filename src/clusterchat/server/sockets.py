"""What the transports share at the socket level: options set once on each
listener, the way a connection over a limit is refused, and how many bytes
written are not yet past the peer's kernel."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import sys
import termios


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


def in_flight(transport: asyncio.Transport) -> int:
    """Bytes written that the peer's kernel has not acknowledged yet: the
    transport's buffer plus the kernel's send queue."""
    sock = transport.get_extra_info("socket")
    n = transport.get_write_buffer_size()
    return n + _unacked(sock.fileno()) if sock is not None else n


def _unacked(fd: int) -> int:
    """Bytes in the kernel's send queue the peer has not acknowledged."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"), sys.byteorder)
    except OSError:
        return 0
