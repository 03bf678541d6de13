import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterchat.protocol.framing import NEWLINE, NUL, FrameDecoder, FrameTooLarge

LIMIT = 64

payloads = (
    st.binary(min_size=1, max_size=LIMIT)
    .map(lambda b: b.replace(b"\n", b"x").replace(b"\x00", b"y"))
    .filter(lambda b: b.strip() and not b.endswith(b"\r"))
)
frames = st.lists(st.tuples(payloads, st.sampled_from([NUL, NEWLINE])), max_size=20)


def _stream(items: list[tuple[bytes, int]]) -> bytes:
    return b"".join(p + bytes([t]) for p, t in items)


def _feed_in_pieces(data: bytes, cuts: list[int]) -> list[tuple[bytes, int]]:
    dec = FrameDecoder(max_frame=LIMIT)
    out: list[tuple[bytes, int]] = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += dec.feed(data[prev:cut])
        prev = cut
    assert dec.pending == 0
    return out


@given(frames, st.lists(st.integers(min_value=0, max_value=20 * (LIMIT + 1))))
def test_any_split_gives_the_same_frames(items: list[tuple[bytes, int]], cuts: list[int]) -> None:
    data = _stream(items)
    cuts = [c for c in cuts if c <= len(data)]
    assert _feed_in_pieces(data, cuts) == items


@given(frames)
def test_byte_at_a_time(items: list[tuple[bytes, int]]) -> None:
    data = _stream(items)
    assert _feed_in_pieces(data, list(range(len(data)))) == items


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300)))
def test_arbitrary_bytes_same_outcome_for_any_split(data: bytes, cuts: list[int]) -> None:
    """Whatever the bytes, splitting never changes the frames or whether the limit trips."""

    def run(pieces: list[bytes]) -> tuple[list[tuple[bytes, int]], bool]:
        dec = FrameDecoder(max_frame=LIMIT)
        out: list[tuple[bytes, int]] = []
        for piece in pieces:
            try:
                out += dec.feed(piece)
            except FrameTooLarge as exc:
                return out + exc.frames, True
        return out, False

    bounds = [0, *sorted({c for c in cuts if c <= len(data)}), len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    whole, whole_err = run([data])
    split, split_err = run(pieces)
    assert whole_err == split_err
    if whole_err:
        # Frames completed before the oversized one are served in both cases.
        assert split[: len(whole)] == whole or whole[: len(split)] == split
    else:
        assert split == whole


@given(st.binary(max_size=LIMIT + 3), st.binary(max_size=4))
def test_whole_is_feed_when_the_read_is_one_frame(data: bytes, held: bytes) -> None:
    """The core's fast path: ``whole`` gives a frame only where ``feed`` would
    give exactly that one frame (same terminator: the read's last byte), and
    leaves the decoder as ``feed`` would; else None, consuming nothing."""
    for tail in (b"", b"\x00", b"\n", b"\r\n", b"{}\n\x00", b"{}\x00\n"):
        fast, slow = FrameDecoder(max_frame=LIMIT), FrameDecoder(max_frame=LIMIT)
        fast.feed(held)
        slow.feed(held)
        before = fast.pending
        read = data + tail
        frame = fast.whole(read)
        try:
            frames = slow.feed(read)
        except FrameTooLarge:
            assert frame is None
            continue
        if frame is not None:
            assert frames == [(frame, read[-1])]
            assert fast.pending == slow.pending == 0
        else:
            assert fast.pending == before  # nothing consumed: feed it
            assert fast.feed(read) == frames


def test_whole_takes_a_usual_chat_in_either_dialect() -> None:
    chat = b'{"msgid":6,"toid":2,"msg":"hi"}'
    for term in (NUL, NEWLINE):
        assert FrameDecoder().whole(chat + bytes([term])) == chat
    assert FrameDecoder().whole(chat + b"\x00" + chat + b"\x00") is None  # two: feed them
    assert FrameDecoder().whole(chat) is None  # unfinished


def test_blank_frames_are_dropped_in_either_dialect() -> None:
    assert FrameDecoder().feed(b"  \x00") == []
    assert FrameDecoder().feed(b" \t \n") == []
    assert FrameDecoder().feed(b"\r\n") == []


def test_crlf_and_blank_lines() -> None:
    dec = FrameDecoder()
    assert dec.feed(b'{"a":1}\r\n\n\x00  \n{"b":2}\x00') == [
        (b'{"a":1}', NEWLINE),
        (b'{"b":2}', NUL),
    ]


def test_frame_at_limit_passes_and_one_more_byte_fails() -> None:
    dec = FrameDecoder(max_frame=8)
    assert dec.feed(b"12345678\n") == [(b"12345678", NEWLINE)]
    with pytest.raises(FrameTooLarge) as info:
        dec.feed(b"ok\n123456789\n")
    assert info.value.frames == [(b"ok", NEWLINE)]


def test_unterminated_frame_over_limit_fails_before_its_end_arrives() -> None:
    dec = FrameDecoder(max_frame=8)
    dec.feed(b"1234")
    with pytest.raises(FrameTooLarge):
        dec.feed(b"56789")


def test_split_off_takes_the_unfinished_frame_and_leaves_the_decoder_empty() -> None:
    shared = FrameDecoder(max_frame=LIMIT)
    assert shared.feed(b"a\nb") == [(b"a", NEWLINE)]
    own = shared.split_off()
    assert shared.pending == 0 and own.pending == 1 and own.max_frame == LIMIT
    assert shared.feed(b"c\n") == [(b"c", NEWLINE)]
    assert own.feed(b"d\n") == [(b"bd", NEWLINE)]


def test_a_run_of_blank_frames_is_passed_on_to_be_metered() -> None:
    # Before: any number of blank lines was dropped unseen, so no limit
    # counted them (13 MB of them in 4 s took 1.7 s of a node's CPU).
    from clusterchat.protocol.framing import BLANK_RUN, BLANK_RUN_FRAME

    d = FrameDecoder()
    assert d.feed(b"\n" * (BLANK_RUN - 1) + b'{"a":1}\n') == [(b'{"a":1}', NEWLINE)]
    runs = d.feed(b"\r\n" * (3 * BLANK_RUN + 5))
    assert runs == [(BLANK_RUN_FRAME, NEWLINE)] * 3
    mixed = d.feed(b"\n\x00" * BLANK_RUN)
    assert len(mixed) == 2 and all(f == BLANK_RUN_FRAME for f, _ in mixed)
