"""Log setup: text for people, one JSON object a line for log shippers
(``--log-format json``), and the id of the connection a line is about.

The id travels in a context variable that the connection sets while it
serves a read (tasks started then inherit it), so the service's log lines
carry it without passing it around.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar

#: The id of the client connection being served; 0: none.
connection_id: ContextVar[int] = ContextVar("connection_id", default=0)


class _WithConnection(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        cid = connection_id.get()
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
