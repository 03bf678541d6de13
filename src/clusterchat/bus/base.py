"""The seam between the chat service and other nodes.

A lone node uses :mod:`clusterchat.bus.local`; a cluster node plugs in a
Redis-backed pair without the service changing. Presence answers "is this
user logged in anywhere?"; the bus carries a ready-encoded message to the
node holding a user.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

#: Called by a bus for a message that arrived for a local user; returns False
#: if the user is not (or no longer) here, so the bus can store it offline.
Deliver = Callable[[int, bytes], Awaitable[bool]]


class Presence(Protocol):
    async def claim(self, uid: int) -> bool:
        """Mark a user online cluster-wide; False if already online somewhere."""
        ...

    async def release(self, uid: int) -> None: ...

    async def online(self, uids: Iterable[int]) -> set[int]:
        """The subset of ``uids`` logged in anywhere."""
        ...


class Bus(Protocol):
    async def start(self, deliver: Deliver) -> None: ...

    async def send(self, uid: int, payload: bytes) -> bool:
        """Hand a message to the node holding ``uid``; False if no node took it."""
        ...

    async def close(self) -> None: ...
