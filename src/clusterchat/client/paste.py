"""Pasted text as one insert, not one key press per character; lines kept
within what the server takes.

A terminal without bracketed paste (or one that has it switched off) hands a
paste to prompt_toolkit as plain characters, and prompt_toolkit handles each
as a key press: key-binding lookup walking the layout, a new copy of the line
for the insert, and another copy saved for undo, per character. A
70,000-character paste cost about 25 s of CPU and, through the undo copies
(quadratic), gigabytes. Runs of plain characters that arrive in one read are
therefore turned into a single paste, which prompt_toolkit inserts at once
(its bracketed-paste handler: one insert, one undo entry). A person typing
produces one character per read, which is left alone.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from contextlib import AbstractContextManager

from prompt_toolkit.buffer import Buffer
from prompt_toolkit.filters import Condition
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPress, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.layout.processors import Processor, Transformation, TransformationInput

#: Reads (of up to 1 KiB each) taken at once when more input is waiting.
DRAIN_READS = 256


def _ready(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _plain(kp: KeyPress) -> bool:
    key = kp.key
    return not isinstance(key, Keys) and len(key) == 1 and key.isprintable()


def coalesce(keys: list[KeyPress]) -> list[KeyPress]:
    """Replace each run of two or more plain characters with one paste.

    The character right after Escape stays a key of its own (Escape then a
    letter is a Meta key binding)."""
    out: list[KeyPress] = []
    run: list[str] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(KeyPress(run[0], run[0]))
        elif run:
            out.append(KeyPress(Keys.BracketedPaste, "".join(run)))
        run.clear()

    after_escape = False
    for kp in keys:
        if _plain(kp) and not after_escape:
            run.append(kp.key)
            continue
        flush()
        out.append(kp)
        after_escape = kp.key == Keys.Escape
    flush()
    return out


class PastingInput(Input):
    """An :class:`Input` whose reads go through :func:`coalesce`."""

    def __init__(self, inner: Input) -> None:
        self.inner = inner

    def fileno(self) -> int:
        return self.inner.fileno()

    def typeahead_hash(self) -> str:
        return self.inner.typeahead_hash()

    def read_keys(self) -> list[KeyPress]:
        keys = self.inner.read_keys()
        # Take what else has already arrived too: a paste read 1 KiB at a
        # time would be drawn again after each KiB, the whole line each time.
        for _ in range(DRAIN_READS):
            if self.inner.closed or not _ready(self.inner.fileno()):
                break
            more = self.inner.read_keys()
            if not more:
                break
            keys += more
        return coalesce(keys)

    def flush_keys(self) -> list[KeyPress]:
        return coalesce(self.inner.flush_keys())

    def flush(self) -> None:
        self.inner.flush()

    @property
    def closed(self) -> bool:
        return self.inner.closed

    def raw_mode(self) -> AbstractContextManager[None]:
        return self.inner.raw_mode()

    def cooked_mode(self) -> AbstractContextManager[None]:
        return self.inner.cooked_mode()

    def attach(self, input_ready_callback: Callable[[], None]) -> AbstractContextManager[None]:
        return self.inner.attach(input_ready_callback)

    def detach(self) -> AbstractContextManager[None]:
        return self.inner.detach()

    def close(self) -> None:
        self.inner.close()


class LineGuard:
    """Keeps the line being typed within what one request may carry.

    Past ``limit()`` characters (a request frame holds at least one byte per
    character) the line can never be sent: it is refused at once, with a
    message, and what follows up to Enter is dropped, so the buffer (and each
    redraw) stays bounded however much is pasted.
    """

    def __init__(self, limit: Callable[[], int], out: Callable[[str], None]) -> None:
        self.limit, self.out = limit, out
        self.dropped = 0  # characters refused from the current line

    def reset(self) -> None:
        self.dropped = 0

    def insert(self, buf: Buffer, data: str) -> None:
        """A paste (or a run of typed-ahead characters) into ``buf``."""
        data = data.replace("\r\n", "\n").replace("\r", "\n")
        if not self.dropped and len(buf.text) + len(data) <= self.limit():
            buf.insert_text(data)
            return
        if not self.dropped:
            self.out(
                f"Too long to send: this line is over {self.limit():,} characters, and the "
                f"server takes at most {self.limit():,} bytes in one message. "
                "Press Enter to drop it (nothing is sent)."
            )
        self.dropped += len(data)

    def key_bindings(self) -> KeyBindings:
        kb = KeyBindings()
        over = Condition(lambda: self.dropped > 0)

        @kb.add(Keys.BracketedPaste)
        def _paste(event: KeyPressEvent) -> None:
            self.insert(event.current_buffer, event.data)

        @kb.add(Keys.Any, filter=over)
        def _typed(event: KeyPressEvent) -> None:
            self.dropped += len(event.data)

        @kb.add("enter", filter=over)
        def _drop(event: KeyPressEvent) -> None:
            length = len(event.current_buffer.text) + self.dropped
            event.current_buffer.reset()
            self.reset()
            self.out(f"Dropped that line ({length:,} characters): not sent.")

        return kb


class _Hidden(Processor):
    """Shows nothing of the line and keeps the cursor still: typing a password
    reveals neither it nor its length."""

    def apply_transformation(self, ti: TransformationInput) -> Transformation:
        return Transformation([], source_to_display=lambda i: 0, display_to_source=lambda i: 0)


def hidden() -> Processor:
    return _Hidden()
