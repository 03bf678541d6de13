"""Log setup: text for people, one JSON object a line for log shippers
(``--log-format json``), and the id of the connection a line is about.

Nothing is set per read: a log line finds the connection it is about
lazily, in the task's context variable (set when a connection starts a
task, see :func:`start_task`) or else on the call stack (the method marked
with :func:`names_connection` that is serving a read). So the service's log
lines carry the id without passing it around, and the relay's hot path pays
nothing for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from types import CodeType
from typing import Any, TypeVar

#: The client connection a task serves (an object with an ``id``); None: none.
#: Its id is read only when a line is logged: a connection numbers itself
#: on its first line, so the many that never log hold no number.
connection: ContextVar[Any] = ContextVar("connection", default=None)

_F = TypeVar("_F", bound=Callable[..., Any])
_serving: set[CodeType] = set()


def names_connection(method: _F) -> _F:
    """Marks a method of an object with an ``id``: log lines made while it
    runs are about that connection."""
    _serving.add(method.__code__)
    return method


def _served() -> Any:
    """The connection being served here (None: none), found without its id."""
    conn = connection.get()
    if conn is not None:
        return conn
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in _serving:
            return frame.f_locals["self"]
        frame = frame.f_back  # type: ignore[assignment]
    return None


def current_connection() -> int:
    """The id of the connection being served here, looked up only when asked."""
    conn = _served()
    return int(conn.id) if conn is not None else 0


def start_task(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task whose log lines name the connection being served when it started."""
    conn = _served()
    if conn is None:
        return asyncio.ensure_future(coro)
    context = contextvars.copy_context()
    context.run(connection.set, conn)
    return asyncio.get_running_loop().create_task(coro, context=context)


class _WithConnection(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        cid = current_connection()
        record.conn = cid
        record.conn_tag = f" [conn {cid}]" if cid else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = getattr(record, "conn", 0)
        if cid:
            doc["conn"] = cid
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_WithConnection())
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = __import__("time").gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s%(conn_tag)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
