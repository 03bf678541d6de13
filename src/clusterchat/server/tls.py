"""TLS on the chat port (``--tls-cert``), with the handshake done here.

``create_server(ssl=...)`` would do it for us, but asyncio reports a failed
handshake nowhere outside its debug mode, and the usual failure is a plain
client (started without ``--tls``) whose first request is taken for a
ClientHello: the operator saw nothing at all. Each connection is wrapped by
``loop.start_tls`` instead, and a failure is logged, sampled (one line per
10 s with how many more) so a scanner cannot flood the log."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from clusterchat.service.refusals import Sampled

log = logging.getLogger(__name__)

#: Seconds a client may take over its handshake (asyncio's default is 60).
HANDSHAKE_TIMEOUT = 30.0


class TlsHandshakes:
    """The listener's protocol factory: each accepted connection does its
    handshake, then is handed to the chat protocol ``make()`` returns."""

    def __init__(self, ctx: ssl.SSLContext, make: Callable[[], asyncio.Protocol]) -> None:
        self.ctx, self.make = ctx, make
        self.failures = Sampled(log)
        self.pending: set[asyncio.Task[None]] = set()

    def __call__(self) -> asyncio.Protocol:
        return _Handshake(self)

    def close(self) -> None:
        """Handshakes still under way are abandoned (the node is stopping)."""
        for task in list(self.pending):
            task.cancel()

    async def handshake(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if peer else "?"
        early = _Early()
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                early,
                self.ctx,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.failures.warning(
                f"TLS handshake failed from {address}: {_reason(exc)} "
                "(a client without TLS? `clusterchat client --tls`)"
            )
            transport.abort()
            return
        if tls is None or early.lost:  # the connection closed during the handshake
            transport.abort()
            return
        app = self.make()
        app.connection_made(tls)
        tls.set_protocol(app)
        # What came between the handshake's end and this task's turn.
        if early.data:
            app.data_received(b"".join(early.data))
        if early.eof and not app.eof_received():
            tls.close()


class _Early(asyncio.Protocol):
    """The TLS connection's protocol until the chat protocol takes over: a
    client may write its first request along with its last handshake
    message, and asyncio hands it over before start_tls's caller runs."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


class _Handshake(asyncio.Protocol):
    """What the TCP connection talks to until TLS takes it over."""

    def __init__(self, owner: TlsHandshakes) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]
        t.pause_reading()  # the ClientHello is start_tls's to read
        task = asyncio.ensure_future(self.owner.handshake(t))
        self.owner.pending.add(task)
        task.add_done_callback(self.owner.pending.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # start_tls has taken over, or the handshake's task sees it
