"""Presence and bus for a node that is alone: its own sessions are the truth."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence

from clusterchat.bus.base import Inbox, Settlement, WindowStats


class LocalPresence:
    """Who is online, for a node that is alone: the users with a session in
    the service's table (which it shares with :meth:`registered`), and the
    few claimed before their session is registered, or still claimed after
    it ended and until their release. Not a set of everyone online: each
    idle connection would pay an entry (50 to 100 bytes) for what the
    service's table already says."""

    def __init__(self) -> None:
        self._sessions: Container[int] = frozenset()
        self._unseated: set[int] = set()  # claimed, and not in the table

    async def claim(self, uid: int, full: bool = False) -> bool:
        if uid in self._unseated or uid in self._sessions:
            return False
        self._unseated.add(uid)
        return True

    async def mark_full(self, uid: int, full: bool) -> None:
        pass  # every sender is here, and reads the session's own mark

    async def release(self, uid: int) -> None:
        self._unseated.discard(uid)

    async def online(self, uids: Iterable[int]) -> set[int]:
        return {uid for uid in uids if uid in self._unseated or uid in self._sessions}

    def registered(self, uid: int, sessions: Container[int]) -> None:
        self._sessions = sessions
        self._unseated.discard(uid)

    def unregistered(self, uid: int) -> None:
        self._unseated.add(uid)


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

    def copy(
        self,
        uids: list[int],
        payload: bytes,
        settlement: Settlement,
        copied: Callable[[bool], None],
    ) -> bool:
        return True  # no other node: a lone node killed is the whole service down

    async def nudge(self, uids: Sequence[int]) -> None:
        return None

    async def take_over(self, uid: int) -> None:
        return None

    async def announce_group(self, gid: int) -> None:
        return None

    def window_stats(self) -> WindowStats | None:
        return None

    def pinned(self) -> float:
        return 0.0

    async def close(self) -> None:
        return None
