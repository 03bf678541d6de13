"""One TCP connection: the asyncio Protocol that feeds bytes to the core.

A connection is a Protocol, not a Task with streams, so an idle logged-in
user costs a few hundred bytes. What a connection decides (frames, request
order, the outbox, receipts, PROXY lines, what to store at its end) is
:class:`~clusterchat.server.core.ConnectionCore`'s; this adapter feeds it
the transport's events and performs what it asks (the core's
:class:`~clusterchat.server.core.Link`). The service writes to the core
(its :class:`~clusterchat.service.session.Peer`), not to this adapter.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from clusterchat.logs import names_connection
from clusterchat.server.core import ConnectionCore
from clusterchat.server.outbox import Outbox
from clusterchat.server.sockets import Refused, in_flight
from clusterchat.service.session import Session

if TYPE_CHECKING:
    from clusterchat.server.host import Host

#: Bytes the transport buffers before it pauses us: past this, messages wait
#: in the outbox, where they can still be stored offline.
_WRITE_HIGH = 64 * 1024


class Connection(asyncio.Protocol):
    __slots__ = ("_id", "_linger", "address", "core", "limit_key", "node", "transport")
    #: Refused at once while the node sheds load (see server/load.py).
    sheds_at_accept = True

    def __init__(self, node: Host[Connection]) -> None:
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.address = ""
        #: What per-address limits count it under (service/limits.py ``limit_key``).
        self.limit_key = ""
        now = node.clock()
        self.core = ConnectionCore(node, self, now)
        self._linger: asyncio.TimerHandle | None = None
        self._id = 0

    @property
    def id(self) -> int:
        """The number on its log lines (clusterchat.logs), given with the
        first one: a connection that logs nothing holds no number (an int
        object, on an idle connection)."""
        if not self._id:
            self._id = self.node.new_connection_id()
        return self._id

    @property
    def session(self) -> Session:
        """The core's (one slot less on every idle connection)."""
        return self.core.session

    # -- asyncio.Protocol: fed to the core ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = t.get_extra_info("peername")
        refusal = self.node.admit(self, peer[0] if peer else "", self.sheds_at_accept)
        if refusal is not None:
            t.set_protocol(Refused(t, self.refusal(refusal)))
            self.transport = None
            return
        if self.node.trusts(self.address):
            self.core.expect_proxy()
        t.set_write_buffer_limits(high=_WRITE_HIGH)
        self.node.connections.add(self)

    @names_connection
    def data_received(self, data: bytes) -> None:
        self.core.receive_data(data, self.node.clock())

    def eof_received(self) -> bool:
        self.core.receive_eof()
        return False  # close our side too

    @names_connection
    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        self.core.connection_lost()
        self.node.connection_closed(self)
        self.transport = None

    def pause_writing(self) -> None:
        self.core.writing_paused()

    def resume_writing(self) -> None:
        self.core.writing_resumed()

    def refusal(self, why: bytes) -> bytes:
        """What a connection over a limit is told before it is closed."""
        return why

    # -- what the node asks: passed on to the core --------------------------------------

    def send(self, data: bytes) -> bool:
        return self.core.send(data)

    def close(self) -> None:
        self.core.close()

    def time_out(self, why: bytes | None) -> None:
        """Closed by the node's sweep (login, frame or idle timeout), told
        ``why`` first unless None."""
        if why is not None:
            self.send(why)
        self.close()

    @property
    def outbox(self) -> Outbox | None:
        return self.core.outbox

    # -- core.Link: what the core asks of the transport -----------------------------------

    def write(self, data: bytes) -> bool:
        t = self.transport
        assert t is not None
        t.write(data)
        return not t.is_closing()

    def closing(self) -> bool:
        t = self.transport
        return t is None or t.is_closing()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def shut(self, linger: float | None = None) -> None:
        t = self.transport
        if t is not None:
            t.close()
            if linger is not None:
                self._linger = asyncio.get_running_loop().call_later(linger, t.abort)

    def refuse(self, why: bytes) -> None:
        t = self.transport
        if t is not None:
            t.write(why)
            t.write_eof()
            self._linger = asyncio.get_running_loop().call_later(2.0, t.abort)

    def in_flight(self) -> int:
        return in_flight(self.transport) if self.transport is not None else 0

    def readdress(self, address: str) -> bytes | None:
        return self.node.readdress(self, address)
