"""Presence and bus for a node that is alone: its own sessions are the truth."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from clusterchat.bus.base import Inbox, WindowStats


class LocalPresence:
    def __init__(self) -> None:
        self._online: set[int] = set()

    async def claim(self, uid: int) -> bool:
        if uid in self._online:
            return False
        self._online.add(uid)
        return True

    async def release(self, uid: int) -> None:
        self._online.discard(uid)

    async def online(self, uids: Iterable[int]) -> set[int]:
        return self._online.intersection(uids)


class NoBus:
    """No other nodes: a user not connected here is offline."""

    shared = False

    async def start(self, inbox: Inbox) -> None:
        return None

    async def send(self, uids: Sequence[int], payload: bytes) -> list[int]:
        return list(uids)

    def post(self, uid: int, payload: bytes) -> bool:
        return False

    def post_reported(self, uid: int, payload: bytes, published: Callable[[bool], None]) -> bool:
        return False

    async def nudge(self, uids: Sequence[int]) -> None:
        return None

    async def announce_group(self, gid: int) -> None:
        return None

    def window_stats(self) -> WindowStats | None:
        return None

    async def close(self) -> None:
        return None
