"""A line longer than the server takes is refused at once, and pasting it is cheap.

Issue 12, bug 5: a 70,000-character paste cost about 25 s of CPU and 2.4 GB
(one key press, one copy of the line and one undo copy per character), then
was sent and got the connection closed for exceeding the frame limit.
"""

from __future__ import annotations

import asyncio
import threading

from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys
from prompt_toolkit.output import DummyOutput

from clusterchat.client.app import prompt_sessions
from clusterchat.client.connection import ChatConnection
from clusterchat.client.paste import coalesce
from clusterchat.client.session import ChatClient
from clusterchat.protocol.framing import DEFAULT_MAX_FRAME
from clusterchat.server.node import Node
from tests.client.conftest import Scripted

PASTE = 70_000


def test_runs_of_plain_characters_become_one_paste() -> None:
    keys = [KeyPress(ch, ch) for ch in "abc"] + [KeyPress(Keys.ControlM, "\r")]
    keys += [KeyPress(Keys.Escape, "\x1b"), KeyPress("b", "b"), KeyPress("x", "x")]
    assert coalesce(keys) == [
        KeyPress(Keys.BracketedPaste, "abc"),
        KeyPress(Keys.ControlM, "\r"),
        KeyPress(Keys.Escape, "\x1b"),
        KeyPress("b", "b"),  # Meta-b stays a key binding
        KeyPress("x", "x"),  # one character typed: a key press as before
    ]


async def _prompt_with_paste(data: str) -> tuple[list[str], list[str], int, int]:
    """Feed ``data`` (then ``/quit``) to the client's prompt as a terminal
    without bracketed paste would; the lines it returned, what it printed,
    how often the line changed and the longest it got."""
    said: list[str] = []
    client = ChatClient("127.0.0.1", 1, on_push=lambda m: None, on_status=said.append)
    with create_pipe_input() as pipe:
        session, _, guard = prompt_sessions(client, said.append, input=pipe, output=DummyOutput())
        changes, longest = 0, 0

        def changed(buf: object) -> None:
            nonlocal changes, longest
            changes += 1
            longest = max(longest, len(session.default_buffer.text))

        session.default_buffer.on_text_changed += changed
        feed = data + "/quit\r"
        # A pipe holds 64 KiB: write from a thread, in terminal-sized pieces.
        writer = threading.Thread(
            target=lambda: [pipe.send_text(feed[i : i + 4096]) for i in range(0, len(feed), 4096)]
        )
        writer.start()
        lines = []
        async with asyncio.timeout(60):  # before the fix: minutes
            while (line := await session.prompt_async("ann> ")) != "/quit":
                guard.reset()
                lines.append(line)
        await asyncio.to_thread(writer.join)
    return lines, said, changes, longest


async def test_a_paste_too_long_to_send_is_refused_at_once_and_kept_bounded() -> None:
    lines, said, changes, longest = await _prompt_with_paste("chat:2:" + "x" * PASTE + "\r")
    assert lines == []  # never handed on to be sent
    assert any(s.startswith("Too long to send: this line is over 65,536") for s in said), said
    assert any(s.startswith("Dropped that line (70,007 characters)") for s in said), said
    assert longest <= DEFAULT_MAX_FRAME  # the buffer never held more than a frame can
    # One insert per read batch, not one per character (was 70,007).
    assert changes < 200, changes


async def test_a_long_line_that_fits_is_pasted_in_a_few_inserts() -> None:
    text = "chat:2:" + "y" * 50_000
    lines, said, changes, _ = await _prompt_with_paste(text + "\r")
    assert lines == [text]
    assert said == []
    assert changes < 200, changes


async def test_login_ack_tells_a_modern_client_the_frame_limit_not_an_original_one(
    lone_node: Node,
) -> None:
    modern = await ChatConnection.open("127.0.0.1", lone_node.port)
    uid = await modern.register("ann", "pw")
    ack = await modern.login(uid, "pw")
    assert ack["maxframe"] == DEFAULT_MAX_FRAME
    await modern.close()
    legacy = await ChatConnection.open("127.0.0.1", lone_node.port, legacy=True)
    uid = await legacy.register("bob", "pw")
    ack = await legacy.login(uid, "pw")
    assert ack["errno"] == 0 and "maxframe" not in ack
    await legacy.close()


async def test_scripted_client_refuses_a_line_over_the_frame_limit_and_stays_connected(
    lone_node: Node, scripted: list[Scripted]
) -> None:
    s = await Scripted.start(lone_node.port)
    scripted.append(s)
    await s.say("register:ann:pw")
    uid = int((await s.expect(r"Registered ann with id (\d+)")).group(1))
    await s.expect(r"Logged in as ann")
    await s.say(f"chat:{uid}:" + "x" * PASTE)
    await s.expect(r"Not sent: that is 70,\d{3} bytes as a request, and the server takes at most")
    await s.say("ping")
    await s.expect(r"pong from node")
    assert not any("Connection lost" in line for line in s.lines), s.lines
    assert await s.quit() == 1  # the long line was not sent: a script is told
