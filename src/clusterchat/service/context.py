"""What request handlers outside chat.py may use of the chat service.

``ChatService`` (chat.py) implements it; friends.py, groups.py, pushes.py
and history.py name only this, so chat.py imports them and none of them
imports chat.py: the service has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

from clusterchat.bus.base import Bus
from clusterchat.protocol.messages import ErrCode, Request
from clusterchat.protocol.replies import Reply
from clusterchat.service.session import Session, Work
from clusterchat.storage.base import Store

#: A request handler: the session and its typed request (one class each).
Handler: TypeAlias = Callable[[Session, Any], Work]


class Service(Protocol):
    store: Store
    bus: Bus
    #: Sessions logged in on this node, by user id.
    sessions: dict[int, Session]

    def reply(self, s: Session, reply: Reply) -> Reply | None:
        """Send ``reply`` as the session's dialect shows it (protocol/dialect.py);
        returns what was sent, None if that dialect is shown nothing."""
        ...

    def charge(self, s: Session, tokens: float) -> None:
        """Take ``tokens`` more of the flood limit for a request that cost the
        node as much as that many (never into a debt that closes the connection)."""
        ...

    def refuse(self, s: Session, req: Request, code: ErrCode, errmsg: str) -> None:
        """Refuse ``req`` with an ERROR (counted; logged for the original client)."""
        ...

    def group_changed(self, gid: int) -> None:
        """Forget the cached members (and roster) of group ``gid`` on this node."""
        ...
