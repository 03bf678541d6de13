"""Sans-I/O framing: bytes in, complete frames out.

Requests end with ``\\n`` (our dialect) or NUL (the original C++ client's
``strlen(json) + 1`` send); both are accepted on one connection. The decoder
keeps at most ``max_frame`` bytes of an unfinished frame, so a peer cannot
make it buffer without bound.
"""

from __future__ import annotations

import re
from typing import Final

DEFAULT_MAX_FRAME: Final = 64 * 1024

NUL: Final = 0
NEWLINE: Final = 10

_TERMINATOR = re.compile(rb"[\n\x00]")

#: Blank frames one read may hold before each further run of them is passed
#: on as one unreadable frame (:data:`BLANK_RUN_FRAME`), which the flood limit
#: counts: dropped silently, a stream of blank lines was the one input no
#: limit saw (13 MB of them in 4 s took 1.7 s of a node's CPU, its loop 2.4 s
#: late). No honest client sends 64 blank lines at once.
BLANK_RUN: Final = 64
BLANK_RUN_FRAME: Final = b"(64 blank lines)"


class FrameTooLarge(Exception):
    """A frame (or an unfinished one) exceeded the decoder's limit.

    ``frames`` holds the complete frames that came before it in the same
    read, so the caller can still serve them before closing.
    """

    def __init__(self, limit: int, frames: list[tuple[bytes, int]]) -> None:
        super().__init__(f"frame exceeds the {limit}-byte limit")
        self.limit = limit
        self.frames = frames


class FrameDecoder:
    """Splits a byte stream into frames, whatever the TCP read boundaries.

    ``feed`` returns ``(frame, terminator)`` pairs, where terminator is
    :data:`NUL` or :data:`NEWLINE`. Empty frames (``\\r\\n``-style blank lines,
    a stray NUL) are dropped, but for every :data:`BLANK_RUN` th of one read
    (passed on as :data:`BLANK_RUN_FRAME`: the only output that depends on
    where reads end); a trailing ``\\r`` is stripped.
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = b""
        self.max_frame = max_frame

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet terminated."""
        return len(self._buf)

    def whole(self, data: bytes) -> bytes | None:
        """The frame, if ``data`` is exactly one whole frame of either dialect
        and nothing is held before it (its terminator is ``data[-1]``); else
        None and nothing is consumed: :meth:`feed` it. The relay's usual read,
        with no list to build."""
        end = len(data) - 1
        if self._buf or not 0 < end <= self.max_frame:
            return None
        last = data[end]
        if last == NUL:
            other = NEWLINE
        elif last == NEWLINE:
            other = NUL
        else:
            return None
        frame = data[:end]
        # No terminator of either kind before its last byte (two frames),
        # and no \r to strip. (``in`` with an int is a bare memchr; find()
        # parses its arguments into a tuple first, ~1% of a relayed chat.)
        if last in frame or other in frame or frame[-1] == 13:
            return None
        return frame if data[0] == 123 or not frame.isspace() else None  # 123: "{"

    def split_off(self) -> FrameDecoder:
        """A new decoder holding what this one holds of an unfinished frame;
        this one is left empty. A server shares one decoder among the
        connections that have no frame half-received, and gives a connection
        its own once a frame arrives in parts: an idle one holds none."""
        own = FrameDecoder(self.max_frame)
        own._buf, self._buf = self._buf, b""
        return own

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        buf = self._buf + data if self._buf else data
        # Common cases first, with C-speed scans (an int needle is the fast
        # path of bytes.__contains__): one dialect per read, often one frame.
        if NUL not in buf:
            return self._split(buf, b"\n", NEWLINE)
        if NEWLINE not in buf:
            return self._split(buf, b"\x00", NUL)
        return self._split_mixed(buf)

    def _split(self, buf: bytes, sep: bytes, term: int) -> list[tuple[bytes, int]]:
        end = len(buf) - 1
        if buf.find(sep) == end and 0 < end <= self.max_frame and buf[end - 1] != 13:
            # Exactly one whole frame: the relay's usual read.
            self._buf = b""
            frame = buf[:end]
            return [] if frame.isspace() else [(frame, term)]
        parts = buf.split(sep)
        rest = parts.pop()
        limit = self.max_frame
        frames: list[tuple[bytes, int]] = []
        blank = 0
        for frame in parts:
            if len(frame) > limit:
                self._buf = b""
                raise FrameTooLarge(limit, frames)
            if frame.endswith(b"\r"):
                frame = frame[:-1]
            if frame and not frame.isspace():
                frames.append((frame, term))
            else:
                blank += 1
                if not blank % BLANK_RUN:
                    frames.append((BLANK_RUN_FRAME, term))
        return self._keep(rest, frames)

    def _split_mixed(self, buf: bytes) -> list[tuple[bytes, int]]:
        frames: list[tuple[bytes, int]] = []
        start = 0
        limit = self.max_frame
        blank = 0
        for m in _TERMINATOR.finditer(buf):
            end = m.start()
            if end - start > limit:
                self._buf = b""
                raise FrameTooLarge(limit, frames)
            frame = buf[start:end]
            if frame.endswith(b"\r"):
                frame = frame[:-1]
            if frame and not frame.isspace():
                frames.append((frame, buf[end]))
            else:
                blank += 1
                if not blank % BLANK_RUN:
                    frames.append((BLANK_RUN_FRAME, buf[end]))
            start = end + 1
        return self._keep(buf[start:], frames)

    def _keep(self, rest: bytes, frames: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        if len(rest) > self.max_frame:
            self._buf = b""
            raise FrameTooLarge(self.max_frame, frames)
        self._buf = rest
        return frames
