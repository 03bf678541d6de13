"""The interactive client in a real pseudo-terminal, as a person uses it."""

from __future__ import annotations

import json
import socket
import sys

import pexpect

from clusterchat.protocol.messages import MsgId
from tests.client.conftest import CLIENT_ENV


def spawn(port: int, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "clusterchat", "client", "127.0.0.1", str(port), *args],
        env=CLIENT_ENV,
        encoding="utf-8",
        timeout=10,
        dimensions=(40, 160),
    )
    return child


def register_via_menu(child: pexpect.spawn, name: str, password: str) -> int:
    child.expect("choice:")
    child.sendline("2")
    child.expect("name:")
    child.sendline(name)
    child.expect("password:")
    child.sendline(password)
    child.expect("password again:")  # asked twice: it is not shown
    child.sendline(password)
    child.expect(rf"Registered {name} with id (\d+); logging you in")
    uid = int(child.match.group(1))
    child.expect(rf"{name}>")
    return uid


def test_menu_login_hides_the_password_and_shows_the_user(server_port: int) -> None:
    first = spawn(server_port)
    uid = register_via_menu(first, "ann", "hunter22")
    first.sendline("/logout")
    first.expect("Logged out.")
    first.expect("choice:")
    first.sendline("1")
    first.expect("user id:")
    first.sendline(str(uid))
    first.expect("password:")
    first.sendline("hunter22")
    first.expect(rf"Logged in as ann \(#{uid}\)")
    typed = first.before or ""  # what the terminal showed while the password was typed
    first.expect("ann>")
    transcript = typed + (first.before or "")
    first.sendline("quit")
    first.expect(pexpect.EOF)
    assert "hunter22" not in transcript
    assert "********" not in transcript  # not echoed at all, as the README says


def test_registering_asks_for_the_password_twice(server_port: int) -> None:
    """The password was asked once, unseen: a typo made an account no one
    could log in to. Two that differ register nothing."""
    child = spawn(server_port)
    child.expect("choice:")
    child.sendline("2")
    child.expect("name:")
    child.sendline("dot")
    child.expect("password:")
    child.sendline("hunter22")
    child.expect("password again:")
    child.sendline("hunter23")
    child.expect("the two passwords differ; nothing registered")
    child.expect("choice:")
    child.sendline("/register dot")
    child.expect("password:")
    child.sendline("pw")
    child.expect("password again:")
    child.sendline("pw")
    child.expect(r"Registered dot with id \d+; logging you in")
    child.sendline("quit")
    child.expect(pexpect.EOF)


def test_incoming_message_does_not_break_the_line_being_typed(server_port: int) -> None:
    ann = spawn(server_port)
    ann_id = register_via_menu(ann, "ann", "pw")
    bob = spawn(server_port)
    bob_id = register_via_menu(bob, "bob", "pw")

    ann.send(f"chat:{bob_id}:half a sen")  # typed, not yet sent
    ann.expect("half a sen")
    bob.sendline(f"/msg {ann_id} interrupting!")
    ann.expect(rf"bob \(#{bob_id}\): interrupting!")
    # The prompt comes back with the half-typed line intact; finishing it sends it whole.
    ann.expect(r"ann> chat:\d+:half a sen")
    ann.send("tence\r")
    bob.expect(rf"ann \(#{ann_id}\): half a sentence")

    ann.sendline("groupchat:999:x")
    ann.expect("Not done: No group has id 999.")
    for child in (ann, bob):
        child.sendline("/quit")
        child.expect(pexpect.EOF)


def test_a_message_of_several_lines_shows_as_lines(server_port: int) -> None:
    """What a web user writes with Shift+Enter came out as "one\\x0atwo"."""
    ann = spawn(server_port)
    ann_id = register_via_menu(ann, "ann", "pw")
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as web:
        lines = web.makefile("rwb")

        def call(doc: dict[str, object]) -> dict[str, object]:
            lines.write(json.dumps(doc).encode() + b"\n")
            lines.flush()
            return json.loads(lines.readline())  # type: ignore[no-any-return]

        eve_id = call({"msgid": MsgId.REG, "name": "eve", "password": "pw"})["id"]
        assert call({"msgid": MsgId.LOGIN, "id": eve_id, "password": "pw"})["errno"] == 0
        call({"msgid": MsgId.ONE_CHAT, "toid": ann_id, "msg": "line one\nline two"})
    ann.expect(rf"eve \(#{eve_id}\): line one\r\n    line two")
    ann.sendline("/quit")
    ann.expect(pexpect.EOF)


def test_help_lists_original_and_slash_commands(server_port: int) -> None:
    child = spawn(server_port)
    register_via_menu(child, "cat", "pw")
    child.sendline("help")
    for form in ("chat:ID:MESSAGE", "/msg ID MESSAGE", "creategroup:NAME:DESC", "/join GROUPID"):
        child.expect_exact(form)
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_a_pasted_line_too_long_to_send_is_refused_at_once(server_port: int) -> None:
    """Issue 12: 70,000 characters typed into the terminal (no bracketed paste)
    took ~25 s of CPU and 2.4 GB, then cost the connection; now: refused, kept."""
    ann = spawn(server_port)
    ann_id = register_via_menu(ann, "ann", "pw")
    ann.send(f"chat:{ann_id}:" + "x" * 70_000)
    ann.expect("Too long to send: this line is over 65,536 characters", timeout=60)
    ann.send("\r")
    ann.expect(r"Dropped that line \(70,00\d characters\): not sent\.", timeout=30)
    ann.sendline(f"/msg {ann_id} still connected")
    ann.expect(rf"ann \(#{ann_id}\): still connected")
    assert "Connection lost" not in (ann.before or "")
    ann.sendline("/quit")
    ann.expect(pexpect.EOF)
