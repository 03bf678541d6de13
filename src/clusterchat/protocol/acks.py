"""What a client that asked for receipts owes the server: acknowledgements
(the protocol layer: the terminal client, the bench and tests share it).

The server numbers each pushed message (``"seq"``) and keeps it until the
client says, with RECEIVED (63), the highest number it has seen. A client
acknowledges every ``EVERY`` messages, on a timer (about once a second) if
anything is new, and before it logs out. Pure: the caller sends what
:meth:`Acks.saw` and :meth:`Acks.take` hand it.
"""

from __future__ import annotations

from typing import Any

from clusterchat.protocol.messages import MsgId

#: Messages seen before acknowledging without waiting for the timer; well
#: under the server's --receipt-window (2000 by default).
EVERY = 64
#: Seconds between timer acknowledgements (while anything is new).
INTERVAL = 1.0


class Acks:
    __slots__ = ("every", "seen", "sent")

    def __init__(self, every: int = EVERY) -> None:
        self.every = every
        self.seen = 0  # the highest number seen
        self.sent = 0  # the highest number acknowledged

    def reset(self) -> None:
        """A new login: numbering starts again at 1."""
        self.seen = self.sent = 0

    def saw(self, seq: int) -> int | None:
        """A pushed message numbered ``seq`` arrived; the number to
        acknowledge now, if ``every`` have arrived since the last one."""
        if seq > self.seen:
            self.seen = seq
            if seq - self.sent >= self.every:
                self.sent = seq
                return seq
        return None

    def take(self) -> int | None:
        """The number to acknowledge (timer, logout), or None if nothing new."""
        if self.seen > self.sent:
            self.sent = self.seen
            return self.seen
        return None


def received(seq: int) -> dict[str, Any]:
    """The RECEIVED request acknowledging everything up to ``seq``."""
    return {"msgid": MsgId.RECEIVED, "seq": seq}
