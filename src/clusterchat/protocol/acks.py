"""What a client that asked for receipts owes the server: acknowledgements
(the protocol layer: the terminal client, the bench and tests share it).

The server numbers each pushed message (``"seq"``) and keeps it until the
client says, with RECEIVED (63), the highest number it has seen. A client
acknowledges every ``EVERY`` messages or ``EVERY_BYTES`` bytes, on a timer
(about once a second) if anything is new, and before it logs out. Pure: the caller sends what
:meth:`Acks.saw` and :meth:`Acks.take` hand it.
"""

from __future__ import annotations

from typing import Any

from clusterchat.protocol.messages import MsgId

#: Messages seen before acknowledging without waiting for the timer; well
#: under the server's --receipt-window (2000 by default).
EVERY = 64
#: Bytes seen before acknowledging without waiting for the timer; well under
#: the server's --receipt-bytes (2 MiB). Counting messages alone, a client
#: fed 60 KB messages by two senders filled that bound before its 64th
#: message or its timer, and was cut off (ERROR 187) 70-123 times in 13 s.
EVERY_BYTES = 256 * 1024
#: Seconds between timer acknowledgements (while anything is new).
INTERVAL = 1.0


class Acks:
    __slots__ = ("every", "every_bytes", "seen", "sent", "unsent_bytes")

    def __init__(self, every: int = EVERY, every_bytes: int = EVERY_BYTES) -> None:
        self.every = every
        self.every_bytes = every_bytes
        self.seen = 0  # the highest number seen
        self.sent = 0  # the highest number acknowledged
        self.unsent_bytes = 0  # bytes seen since then

    def reset(self) -> None:
        """A new login: numbering starts again at 1."""
        self.seen = self.sent = self.unsent_bytes = 0

    def saw(self, seq: int, nbytes: int = 0) -> int | None:
        """A pushed message numbered ``seq`` (``nbytes`` long) arrived; the
        number to acknowledge now, if ``every`` messages or ``every_bytes``
        bytes have arrived since the last one."""
        if seq > self.seen:
            self.seen = seq
            self.unsent_bytes += nbytes
            if seq - self.sent >= self.every or self.unsent_bytes >= self.every_bytes:
                self.sent = seq
                self.unsent_bytes = 0
                return seq
        return None

    def take(self) -> int | None:
        """The number to acknowledge (timer, logout), or None if nothing new."""
        if self.seen > self.sent:
            self.sent = self.seen
            self.unsent_bytes = 0
            return self.seen
        return None


def received(seq: int) -> dict[str, Any]:
    """The RECEIVED request acknowledging everything up to ``seq``."""
    return {"msgid": MsgId.RECEIVED, "seq": seq}
