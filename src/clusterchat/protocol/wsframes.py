"""WebSocket data frames of the chat protocol, read and written in bulk.

Every chat message is one short, unfragmented text frame. The ``websockets``
package handles each through a generator-based parser and a ``Frame`` object
per message, which at chat rates costs more than the rest of the relay. These
two functions do the common case on whole buffers: :func:`read` takes the
complete data frames at the start of a buffer and stops at anything else (a
control frame, a fragment, a partial or oversized frame), which the caller
leaves to the library; :func:`encode` frames many newline-ended documents at
once. No extension (permessage-deflate) is ever negotiated, so the RSV bits
are zero. RFC 6455 section 5.2 has the format.
"""

from __future__ import annotations

import struct

try:
    from websockets.speedups import apply_mask  # the package's C version
except ImportError:  # pragma: no cover - a build without it
    from websockets.utils import apply_mask

_TEXT = 0x81  # FIN, no RSV bits, opcode 1
_BINARY = 0x82
_MASKED = 0x80
_SHORT = [bytes((_TEXT, n)) for n in range(126)]  # headers of unmasked frames < 126 bytes
_SHORT_MASKED = [bytes((_TEXT, _MASKED | n)) for n in range(126)]  # a client's
_MEDIUM = struct.Struct("!BBH")  # length 126, then 16 bits
_LONG = struct.Struct("!BBQ")  # length 127, then 64 bits


def is_utf8(payload: bytes) -> bool:
    """Whether a text message is valid UTF-8, as RFC 6455 section 8.1 wants
    (else the connection fails with close code 1007). ASCII, the usual
    case, is checked without decoding."""
    if payload.isascii():
        return True
    try:
        payload.decode()
    except UnicodeDecodeError:
        return False
    return True


def read(data: bytes, max_size: int | None, masked: bool) -> tuple[list[bytes], int]:
    """The payloads of the complete, final, text or binary frames that
    ``data`` begins with (``masked``: as a client sends them), and how many
    bytes they took; reading stops at the first frame that is anything else,
    longer than ``max_size``, or text that is not UTF-8 (the caller's
    library path fails the connection for it)."""
    out: list[bytes] = []
    pos, end = 0, len(data)
    mask_bit = _MASKED if masked else 0
    while pos + 2 <= end:
        op, size = data[pos], data[pos + 1]
        if (op != _TEXT and op != _BINARY) or size & _MASKED != mask_bit:
            break
        size &= 0x7F
        head = pos + 2
        if size == 126:
            if head + 2 > end:
                break
            size = (data[head] << 8) | data[head + 1]
            head += 2
        elif size == 127:
            if head + 8 > end:
                break
            size = int.from_bytes(data[head : head + 8], "big")
            head += 8
        if max_size is not None and size > max_size:
            break
        if masked:
            stop = head + 4 + size
            if stop > end:
                break
            payload = apply_mask(data[head + 4 : stop], data[head : head + 4])
        else:
            stop = head + size
            if stop > end:
                break
            payload = data[head:stop]
        if op == _TEXT and not payload.isascii() and not is_utf8(payload):
            break
        out.append(payload)
        pos = stop
    return out, pos


def encode(data: bytes, mask: bytes | None = None) -> bytes:
    """One text frame per newline-ended document in ``data`` (JSON text has
    no newline of its own), in one buffer; a client passes a 4-byte ``mask``."""
    parts: list[bytes] = []
    add = parts.append
    for line in data.split(b"\n")[:-1]:
        n = len(line)
        if mask is not None:
            add(_SHORT_MASKED[n] if n < 126 else _header(n, _MASKED))
            add(mask)
            add(apply_mask(line, mask))
        elif n < 126:
            add(_SHORT[n])
            add(line)
        else:
            add(_header(n, 0))
            add(line)
    return b"".join(parts)


def _header(n: int, mask_bit: int) -> bytes:
    if n < 126:
        return bytes((_TEXT, mask_bit | n))
    if n < 65536:
        return _MEDIUM.pack(_TEXT, mask_bit | 126, n)
    return _LONG.pack(_TEXT, mask_bit | 127, n)
