"""The node's HTTP port: the web client's files at ``/``, WebSocket chat at ``/ws``.

Every connection is a :class:`~clusterchat.server.websocket.WsConnection`,
admitted and counted like a TCP one. Its first request is routed here:
``/ws`` becomes a WebSocket (if its ``Origin`` is allowed), a path in
:attr:`HttpServer.routes` is answered by its coroutine, anything else is a
static file of the web client or 404. Plain HTTP responses close the
connection: the client is a handful of files, loaded once. Requests
pipelined behind the first are not read (websocket.py ``_head``): the client
sends them again on a new connection. While the node
sheds load (server/load.py) only those files are served: everything else
is answered 503, as a TCP connection is refused at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from websockets.http11 import Request

from clusterchat.protocol import forwarded
from clusterchat.protocol.trusted import TrustedProxies
from clusterchat.server.sockets import tune_listener
from clusterchat.server.websocket import WsConnection, response

if TYPE_CHECKING:
    from clusterchat.server.connection import Connection
    from clusterchat.server.host import Host

log = logging.getLogger(__name__)

#: An extra HTTP path: returns (status, content type, body). Ops endpoints
#: (``/metrics``, ``/healthz``) are added to :attr:`HttpServer.routes`.
Route = Callable[[], Awaitable[tuple[int, str, bytes]]]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}
#: The page may load only its own files and talk only to its own origin;
#: a message that slipped into the DOM as HTML still could not run script.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def load_static() -> dict[str, tuple[str, bytes]]:
    """The web client's files, by URL path, read once from the package."""
    files: dict[str, tuple[str, bytes]] = {}
    root = resources.files("clusterchat") / "web"
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            files["/" + entry.name] = (_TYPES[suffix], entry.read_bytes())
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return files


class HttpServer:
    def __init__(self, node: Host[Connection]) -> None:
        self.node = node
        #: Extra GET paths and their handlers (see :data:`Route`).
        self.routes: dict[str, Route] = {}
        #: Allowed ``Origin`` values for /ws; empty: the page's own origin only.
        self.origins = frozenset(o.rstrip("/") for o in node.settings.http_origins)
        self.port = node.settings.http_port or 0
        #: Who may use :attr:`routes` (``--ops-from``).
        self.ops_from = TrustedProxies(node.settings.ops_from)
        self._static: dict[str, tuple[str, bytes]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._pinger: asyncio.Task[None] | None = None
        # When a trusted proxy's X-Forwarded-For was last found unusable.
        self._warned = -1e9

    async def start(self) -> None:
        s = self.node.settings
        self._static = load_static()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: WsConnection(self.node, self),
            s.host,
            s.http_port,
            backlog=4096,
            reuse_port=s.reuse_port or None,
        )
        tune_listener(self._server)
        self.port = self._server.sockets[0].getsockname()[1]
        self._pinger = asyncio.ensure_future(self._ping_quiet())
        log.info("web client on http://%s:%d/, WebSocket at /ws", s.host, self.port)

    def close(self) -> None:
        """Stop accepting (the node closes the connections themselves)."""
        if self._pinger is not None:
            self._pinger.cancel()
        if self._server is not None:
            self._server.close()

    # -- routing ----------------------------------------------------------------------

    def route(self, conn: WsConnection, request: Request) -> None:
        if not self._readdress(conn, request):
            return
        ws = conn.ws
        try:
            path = urlsplit(request.path).path
        except ValueError:  # "//[x": an unclosed IPv6 bracket
            conn.refused("HTTP request refused: unreadable path")
            ws.send_response(response(400, "text/plain; charset=utf-8", b"unreadable path\n"))
            return
        if path not in self._static and (refusal := self.node.shed()) is not None:
            # Shedding load: a session (or an ops route) waits; files are cheap.
            ws.send_response(response(503, "application/json", refusal, Retry_After="2"))
            return
        if path == "/ws":
            origins = request.headers.get_all("Origin")
            if len(origins) > 1 or len(request.headers.get_all("Host")) > 1:
                # Which one would the browser have meant? Refused, not guessed.
                conn.refused("WebSocket refused: Origin or Host given twice")
                res = ws.reject(400, "one Origin header and one Host header, please\n")
                ws.send_response(res)
                return
            origin = origins[0] if origins else None
            if origin is not None and not self.origin_allowed(origin, request):
                conn.refused(f"WebSocket refused: origin {origin[:100]!r}")
                res = ws.reject(403, "this origin may not open a chat connection\n")
            else:
                res = ws.accept(request)
            ws.send_response(res)
            return
        handler = self.routes.get(path)
        if handler is not None:
            if conn.address in self.ops_from:
                self.node.spawn(self._answer(conn, handler))
            else:  # what a node holds, and a database query, are not for anyone
                body = b"served to --ops-from addresses only\n"
                ws.send_response(response(403, "text/plain; charset=utf-8", body))
            return
        found = self._static.get(path)
        if found is None:
            ws.send_response(response(404, "text/plain; charset=utf-8", b"not found\n"))
        else:
            content_type, body = found
            ws.send_response(
                response(200, content_type, body, Cache_Control="no-cache", **_page_headers)
            )

    def _readdress(self, conn: WsConnection, request: Request) -> bool:
        """From a trusted proxy, count the connection under the client's
        address that the proxy put in X-Forwarded-For (from anyone else the
        header is ignored: a client could claim any address). False if that
        address is over its connection limit: refused, with HTTP 503."""
        node = self.node
        if not node.trusts(conn.address):
            return True
        values = request.headers.get_all(forwarded.HEADER)
        if not values:
            return True  # a tool on the proxy's machine, or a proxy that does not say
        address = forwarded.client_address(values, node.trusted_proxies)
        if address is None:
            if node.clock() - self._warned > 60.0:  # a misconfiguration: once a minute
                self._warned = node.clock()
                log.warning(
                    "X-Forwarded-For from trusted proxy %s names no client address: %r; "
                    "counted under the proxy's address",
                    conn.address,
                    ",".join(values)[:200],
                )
            return True
        if address == conn.address:
            return True
        refusal = node.readdress(conn, address)
        if refusal is None:
            return True
        conn.ws.send_response(response(503, "application/json", refusal))
        return False

    async def _answer(self, conn: WsConnection, handler: Route) -> None:
        try:
            status, content_type, body = await handler()
        except Exception:
            log.exception("HTTP route failed")
            status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        if conn.transport is not None and not conn.ws.eof_sent:  # else: bytes after it, closed
            conn.ws.send_response(response(status, content_type, body, Cache_Control="no-store"))
            conn.write_out()

    def origin_allowed(self, origin: str, request: Request) -> bool:
        """``--http-origins`` if given (``*``: any), else the page's own origin:
        the same host and port as the request's ``Host`` (nginx passes it on)."""
        origin = origin.rstrip("/")
        if self.origins:
            return "*" in self.origins or origin in self.origins
        host = request.headers.get("Host", "")
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:  # "http://[::1": an unclosed IPv6 bracket
            return False
        return bool(host) and netloc.lower() == host.lower()

    # -- keepalive ----------------------------------------------------------------------

    async def _ping_quiet(self) -> None:
        """Ping WebSockets quiet for half the idle timeout: a live browser
        pongs (which counts as activity), a vanished one is closed by the
        node's sweeper at the idle timeout, as a silent TCP client is."""
        idle = self.node.settings.idle_timeout
        every = max(0.05, idle / 4)
        while True:
            await asyncio.sleep(every)
            now = self.node.clock()
            for conn in list(self.node.connections):
                if (
                    isinstance(conn, WsConnection)
                    and conn.session.uid  # else the login timeout applies
                    and now - conn.core.last_seen > idle / 2
                ):
                    conn.ping()


_page_headers = {"Content_Security_Policy": _CSP, "Referrer_Policy": "no-referrer"}
