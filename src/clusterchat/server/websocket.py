"""One WebSocket (or plain HTTP) connection on the node's HTTP port.

Another adapter over the same :class:`~clusterchat.server.core.ConnectionCore`
as TCP's :class:`~clusterchat.server.connection.Connection` (whose transport
side it shares): its bytes go through the ``websockets`` package's sans-I/O
:class:`ServerProtocol` instead of the newline framer, each text message is
fed to the core as one request of the modern dialect, and each document the
core writes becomes one text message. Request order, the outbox, flow
control, limits and timeouts are the core's; this class only translates
between WebSocket frames and frames of the chat protocol.
The first HTTP request of the connection is routed by :mod:`.http`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from websockets import protocol as wsprotocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, PayloadTooBig
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from clusterchat.logs import names_connection
from clusterchat.protocol import wsframes
from clusterchat.server.connection import Connection

if TYPE_CHECKING:
    from clusterchat.server.host import Host

# The library logs every connection opened and closed at INFO: too chatty at 10,000.
_protocol_log = logging.getLogger("clusterchat.server.websocket.protocol")
_protocol_log.setLevel(logging.WARNING)

OPEN = State.OPEN
CONNECTING = State.CONNECTING
#: Where an HTTP request's head ends (the library takes no body).
_HEAD_END = b"\r\n\r\n"
#: Bytes an HTTP request's head (its request line and headers) may take, as
#: nginx's default ``large_client_header_buffers 4 8k``: a browser's
#: handshake is a few hundred bytes plus its cookies. The library alone
#: allows 128 headers of 8 KiB, and keeps them: 100 connections from one
#: address held 100 MiB of the node's memory for the login timeout.
MAX_REQUEST = 32 * 1024
_WAITS_FOR_A_FRAME = StreamReader.at_eof.__code__


def between_frames(ws: wsprotocol.Protocol) -> bool:
    """Whether the library's parser waits for a new frame, not for the
    rest of one whose header it has taken (its buffer may be empty then
    too): only then may the next bytes be read as frames here."""
    g: Any = ws.parser
    while g.gi_yieldfrom is not None:
        g = g.gi_yieldfrom
    return g.gi_code is _WAITS_FOR_A_FRAME


class Router(Protocol):
    """Answers a plain HTTP request or a WebSocket upgrade (http.HttpServer)."""

    def route(self, conn: WsConnection, request: Request) -> None: ...


class WsConnection(Connection):
    __slots__ = ("asked", "between", "fragments", "head_tail", "http", "requested", "text", "ws")

    def __init__(self, node: Host[Connection], http: Router) -> None:
        super().__init__(node)
        self.http = http
        #: The fragmented message so far: its bytes, one buffer (a list of
        #: frames grew by a slot for each empty one, which --max-frame, a
        #: bound on bytes, never counted).
        self.fragments: bytearray | None = None
        self.text = False  # the fragmented message is text (else binary)
        self.ws = ServerProtocol(max_size=node.settings.max_frame, logger=_protocol_log)
        #: The library's parser is between frames (see :func:`between_frames`).
        self.between = False
        #: The HTTP request was read (it is being answered, or was).
        self.asked = False
        #: The last bytes of the request's head so far: its end may straddle reads.
        self.head_tail = b""
        #: Bytes of the request's head so far (see MAX_REQUEST).
        self.requested = 0

    #: While the node sheds load, its static files are still served: they
    #: cost about what a refusal does (a request read, one write from
    #: memory), and a page refused its script cannot retry by itself.
    #: A WebSocket (a session) is refused at its request (http.py).
    sheds_at_accept = False

    def refusal(self, why: bytes) -> bytes:
        """Over a limit: the JSON error, as an HTTP 503 the browser can show."""
        return response(503, "application/json", why).serialize()

    # -- bytes in -------------------------------------------------------------------

    @names_connection  # its log lines name this connection
    def data_received(self, data: bytes) -> None:
        core = self.core
        core.last_seen = now = self.node.clock()
        ws = self.ws
        whole = False  # a message ended in this read
        if self.between and ws.current_size is None and ws.state is OPEN:
            # Between frames: the chat messages are read here, and only
            # what follows the first other frame goes through the library.
            messages, used = wsframes.read(data, ws.max_message_size, masked=True)
            if messages:
                core.receive_frames(messages)
                whole = True
            if used == len(data):
                core.partial_since = 0.0
                return  # the library was not asked for anything to send
            data = data[used:]
        behind = b""  # what followed the request's head in this read
        if ws.state is CONNECTING:
            if self.asked:
                # A route is answering the request: what comes meanwhile is
                # not read (its answer closes the connection).
                return
            data, behind = self._head(data)
            self.requested += len(data)
            if self.requested > MAX_REQUEST and not ws.eof_sent:
                self.asked = True  # answered here; nothing more is read
                self.refused("HTTP request refused: headers over 32 KiB (431)")
                big = b"request headers over 32 KiB\n"
                ws.send_response(response(431, "text/plain; charset=utf-8", big))
                self.write_out()
                return
        ws.receive_data(data)
        upgraded = False
        for event in ws.events_received():
            if isinstance(event, Frame):
                if (
                    not event.fin or event.opcode is Opcode.PING or event.opcode is Opcode.PONG
                ) and self._too_many_frames():  # no request, yet parsed: metered as one
                    break
                if event.opcode is Opcode.TEXT or event.opcode is Opcode.BINARY:
                    if event.fin:
                        if not self._take(bytes(event.data), event.opcode is Opcode.TEXT):
                            break
                        whole = True
                    else:  # the first of a fragmented message's frames
                        self.fragments = bytearray(event.data)
                        self.text = event.opcode is Opcode.TEXT
                elif event.opcode is Opcode.CONT and self.fragments is not None:
                    # The library checked their order and --max-frame on the total.
                    self.fragments += event.data
                    if event.fin:
                        message, self.fragments = bytes(self.fragments), None
                        if not self._take(message, self.text):
                            break
                        whole = True
            elif isinstance(event, Request):
                self.asked = True
                self.http.route(self, event)
                upgraded = ws.state is OPEN
        self.between = ws.state is OPEN and between_frames(ws)
        if upgraded and self.between:
            # The server's parser keeps the handshake request (its headers,
            # 2 KB) for the life of the connection; between frames the base
            # class's parser reads on without it.
            ws.parser = wsprotocol.Protocol.parse(ws)
            next(ws.parser)
        if ws.state is OPEN and (ws.reader.buffer or self.fragments is not None):
            # A message begun, not whole: --frame-timeout counts from its
            # start, as on TCP (dribbling it keeps the connection lively).
            if whole or not core.partial_since:
                core.partial_since = now
        else:
            core.partial_since = 0.0
        if isinstance(ws.handshake_exc, InvalidMessage) and not self._closing_transport():
            # Not an HTTP/1.1 GET (a POST, garbage): the library closes
            # without a word.
            self._refuse_http(b"not an HTTP/1.1 GET request\n")
        if ws.state is not OPEN and not core.ended and ws.handshake_exc is None:
            # A close frame (or a broken frame, or one over --max-frame) from
            # the peer: like a FIN, it read what its kernel acknowledged.
            if isinstance(ws.parser_exc, PayloadTooBig):
                self.refused("closing WebSocket: message over --max-frame")
            core.receive_eof()
        self.write_out()
        if behind and ws.state is OPEN:
            # Frames sent right behind the upgrade request, before its answer.
            self.data_received(behind)

    def _head(self, data: bytes) -> tuple[bytes, bytes]:
        """The request's head and what follows it in this read. The library
        would read what follows as WebSocket frames, and fail a second
        request pipelined behind the first before the first was answered;
        cut there, the first is answered (with ``Connection: close``) and
        the rest is read only if the request became a WebSocket. HTTP/1.1
        lets a client pipeline; a server that answers ``close`` must not
        process the requests after it (RFC 9112 section 9.6), and the
        client sends them again on a new connection."""
        seen = self.head_tail + data
        end = seen.find(_HEAD_END)
        if end < 0:
            self.head_tail = seen[-(len(_HEAD_END) - 1) :]
            return data, b""
        cut = end + len(_HEAD_END) - len(self.head_tail)
        self.head_tail = b""
        return data[:cut], data[cut:]

    def _take(self, message: bytes, text: bool) -> bool:
        """A whole message for the core; a text one that is not UTF-8 fails
        the connection with close code 1007 instead (RFC 6455 section 8.1),
        and nothing after it is read: False."""
        if text and not wsframes.is_utf8(message):
            self.refused("closing WebSocket: a text message is not valid UTF-8 (1007)")
            self.core.flush()  # the replies to what came before it, then the close
            self.ws.fail(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
            return False
        self.core.receive_frame(message)
        return True

    def _too_many_frames(self) -> bool:
        """Take a flood token for a frame that is no request (a ping, a pong,
        a fragment); True if the peer is a burst past the limit regardless:
        the connection fails with close code 1008 (policy violation). Before:
        one connection sending empty pings or continuation frames, which no
        limit counted, held a core and the loop 5 s late for everyone."""
        if self.node.service.spent(self.session):
            return False
        self.refused("closing WebSocket: frames past the flood limit, regardless (1008)")
        self.core.flush()
        self.ws.fail(CloseCode.POLICY_VIOLATION, "too many frames: past the flood limit")
        return True

    def _refuse_http(self, why: bytes) -> None:
        """A 400 the library would not send, before its close."""
        self.refused(f"HTTP request refused: {why.decode().strip()}")
        if self.transport is not None:
            self.transport.write(response(400, "text/plain; charset=utf-8", why).serialize())

    def refused(self, text: str) -> None:
        """Logged as a refused request is: at a bounded rate per connection
        and per address (service/refusals.py)."""
        self.node.service.refusals.note(self.session, text)

    def _closing_transport(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def write_out(self) -> None:
        """Write what the protocol has for the peer; an empty chunk means close."""
        t = self.transport
        chunks = self.ws.data_to_send()
        if t is None or not chunks:
            return
        t.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))  # one syscall
        if not chunks[-1]:
            t.close()

    # -- core.Link -----------------------------------------------------------------------

    def closing(self) -> bool:
        return self.ws.state is not OPEN or super().closing()

    def write(self, data: bytes) -> bool:
        ws = self.ws
        if ws.state is not OPEN:
            return False  # closing: replies are not owed, the outbox kept its messages
        # One text frame per document, all in one write, after anything
        # the library has queued (a pong).
        t = self.transport
        if t is None:
            return False
        if ws.writes:
            self.write_out()
        t.write(wsframes.encode(data))
        return not self.closing()

    def time_out(self, why: bytes | None) -> None:
        ws = self.ws
        if (
            ws.state is CONNECTING
            and not self.asked
            and ws.handshake_exc is None
            and not self._closing_transport()
        ):
            # No whole request yet (its headers too slow): say so, as HTTP,
            # rather than a bare close.
            assert self.transport is not None
            self.refused("HTTP request refused: its headers did not arrive in time (408)")
            slow = b"the request's headers did not arrive in time\n"
            self.transport.write(response(408, "text/plain; charset=utf-8", slow).serialize())
        super().time_out(why)

    def close(self) -> None:
        core = self.core
        if self.ws.state is OPEN and self.transport is not None and not core.ended:
            core.flush()
            self.ws.send_close(CloseCode.NORMAL_CLOSURE)
            self.write_out()
        core.close()

    def ping(self) -> None:
        """Ask the browser for a pong (it answers by itself, even in a
        background tab); a peer that vanished does not, and times out."""
        if self.ws.state is OPEN and self.transport is not None:
            self.ws.send_ping(b"")
            self.write_out()


def response(status: int, content_type: str, body: bytes, **headers: str) -> Response:
    """A plain HTTP response; the connection closes after it."""
    h = Headers(
        {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Connection": "close",
            "X-Content-Type-Options": "nosniff",
        }
    )
    for name, value in headers.items():
        h[name.replace("_", "-")] = value
    return Response(status, HTTPStatus(status).phrase, h, body)
