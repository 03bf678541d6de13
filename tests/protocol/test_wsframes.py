"""The bulk WebSocket framing agrees with the ``websockets`` package's frames."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from clusterchat.protocol import wsframes

# Documents as the server writes them: UTF-8, no newline inside, any length up to 70,000.
documents = st.lists(
    st.text(max_size=300).map(lambda t: t.replace("\n", " ").encode())
    | st.integers(126, 70_000).map(lambda n: b"x" * n),
    max_size=8,
)


def library_frames(docs: list[bytes], mask: bool) -> bytes:
    return b"".join(Frame(Opcode.TEXT, d).serialize(mask=mask) for d in docs)


@given(documents)
def test_encode_is_what_the_library_parses(docs: list[bytes]) -> None:
    data = wsframes.encode(b"".join(d + b"\n" for d in docs))
    assert data == library_frames(docs, mask=False)


@given(documents, st.binary(min_size=4, max_size=4))
def test_masked_frames_unmask_to_the_documents(docs: list[bytes], mask: bytes) -> None:
    data = wsframes.encode(b"".join(d + b"\n" for d in docs), mask)
    read, used = wsframes.read(data, None, masked=True)
    assert read == docs
    assert used == len(data)


@given(documents, st.booleans(), st.integers(0, 200))
def test_reads_whole_frames_and_stops_at_a_partial_one(
    docs: list[bytes], masked: bool, cut: int
) -> None:
    data = library_frames(docs, mask=masked)
    head = data[: max(0, len(data) - cut)]
    read, used = wsframes.read(head, None, masked=masked)
    assert b"".join(read) == b"".join(docs)[: sum(len(d) for d in read)]
    assert read == docs[: len(read)]
    assert used == len(library_frames(read, mask=masked))  # whole frames, none begun
    assert read == docs if cut == 0 else len(read) < len(docs) or not docs


def test_stops_at_control_frames_fragments_wrong_masking_and_oversize() -> None:
    text = Frame(Opcode.TEXT, b"hi").serialize(mask=True)
    for other in (
        Frame(Opcode.PING, b"").serialize(mask=True),
        Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=True),
        Frame(Opcode.TEXT, b"part", fin=False).serialize(mask=True),
        Frame(Opcode.TEXT, b"unmasked").serialize(mask=False),
        Frame(Opcode.TEXT, b"x" * 300).serialize(mask=True),
        Frame(Opcode.TEXT, b"caf\xe9").serialize(mask=True),  # not UTF-8: the library's
    ):
        read, used = wsframes.read(text + other + text, 200, masked=True)
        assert (read, used) == ([b"hi"], len(text))


def test_binary_frames_need_not_be_utf8() -> None:
    data = Frame(Opcode.BINARY, b"caf\xe9").serialize(mask=True)
    assert wsframes.read(data, None, masked=True) == ([b"caf\xe9"], len(data))
    assert wsframes.is_utf8("café".encode()) and not wsframes.is_utf8(b"caf\xe9")
