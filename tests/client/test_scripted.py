"""Two real clients, driven line by line as another program would."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from clusterchat.server.node import Node
from tests.client.conftest import CLIENT_ENV, Scripted


async def registered(port: int, name: str, scripted: list[Scripted]) -> tuple[Scripted, int]:
    s = await Scripted.start(port)
    scripted.append(s)
    await s.say(f"register:{name}:pw")  # registering logs you in
    uid = int((await s.expect(rf"Registered {name} with id (\d+); logging you in")).group(1))
    await s.expect(rf"Logged in as {name} \(#{uid}\)")
    return s, uid


async def piped(port: int, script: str, timeout: float = 30) -> str:
    """`printf SCRIPT | clusterchat client 127.0.0.1 PORT`: its output, once it has exited 0."""
    cli = Path(sys.executable).with_name("clusterchat")
    proc = await asyncio.create_subprocess_exec(
        str(cli), "client", "127.0.0.1", str(port),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=CLIENT_ENV,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(script.encode()), timeout)
    assert proc.returncode == 0, err
    return out.decode()


async def dave_online(port: int) -> tuple[ChatConnection, int]:
    dave = await ChatConnection.open("127.0.0.1", port)
    dave_id = await dave.register("dave", "pw")
    assert (await dave.login(dave_id, "pw"))["errno"] == 0
    return dave, dave_id


@pytest.mark.parametrize("register", ["register:carol:pw", "/register carol pw"])
async def test_registering_logs_in_so_a_piped_script_can_chat_at_once(
    lone_node: Node, register: str
) -> None:
    """`printf 'register:carol:pw\\nchat:1:x\\n' | clusterchat client` (issue 12)."""
    dave, dave_id = await dave_online(lone_node.port)
    text = await piped(lone_node.port, f"{register}\n\nchat:{dave_id}:x\n")
    assert re.search(r"Registered carol with id \d+; logging you in", text), text
    assert "Logged in as carol" in text and "Not understood" not in text, text
    got = await dave.expect(MsgId.ONE_CHAT)
    assert got["name"] == "carol" and got["msg"] == "x"
    await dave.close()


async def test_two_clients_chat_befriend_group_and_get_offline_messages(
    lone_node: Node, scripted: list[Scripted]
) -> None:
    port = lone_node.port
    ann, ann_id = await registered(port, "ann", scripted)
    bob, bob_id = await registered(port, "bob", scripted)

    await ann.say(f"addfriend:{bob_id}")
    await ann.expect(rf"bob \(#{bob_id}\) is now your friend \(online\)")
    await bob.expect(rf"^\*\*\* ann \(#{ann_id}\) added you as a friend\.$")  # FRIEND_ADDED
    await ann.say(f"chat:{bob_id}:hello bob")
    await bob.expect(rf"\] ann \(#{ann_id}\): hello bob$")
    await bob.say(f"/msg {ann_id} hi ann")
    await ann.expect(rf"\] bob \(#{bob_id}\): hi ann$")

    await ann.say("creategroup:room:our room")
    gid = int((await ann.expect(r"Created group room with id (\d+)")).group(1))
    await bob.say(f"/join {gid}")
    await bob.expect(rf"Joined group room \(#{gid}\)\.")
    await bob.say(f"groupchat:{gid}:hello room")
    await ann.expect(rf"\[group {gid}\] bob \(#{bob_id}\): hello room$")

    await bob.say("/friends")
    await bob.expect(rf"ann \(#{ann_id}\)  online")
    await bob.say("/groups")
    await bob.expect(rf"\[group {gid}\] room - our room")

    # bob logs out; ann's messages wait for him, in order.
    await bob.say("loginout")
    await bob.expect("Logged out.")
    await ann.say(f"chat:{bob_id}:first")
    await ann.expect(r"offline: they get it at their next login")
    await ann.say(f"chat:{bob_id}:second \x1b[31mred\x1b[0m")
    await ann.expect(r"offline")
    await bob.say(f"login:{bob_id}:pw")
    await bob.expect(r"While you were away \(2\)")
    await bob.expect(rf"ann \(#{ann_id}\): first$")
    await bob.expect(r"ann \(#\d+\): second \\x1b\[31mred\\x1b\[0m$")  # escaped, not obeyed

    await ann.say(f"chat:{ann_id + 10_000}:anyone?")
    await ann.expect(r"Not done: No user has id \d+\.")
    await ann.say("nonsense")
    await ann.expect(r"Not understood: unknown command 'nonsense'")
    assert await ann.quit() == 1  # lines were refused and not understood: a script is told
    assert await bob.quit() == 0


async def test_json_mode_prints_raw_protocol(lone_node: Node, scripted: list[Scripted]) -> None:
    s = await Scripted.start(lone_node.port, "--json")
    scripted.append(s)
    await s.say("register:jay:pw")
    m = await s.expect(r'"msgid":5[,}]')
    assert json.loads(m.string) == {"msgid": 5, "errno": 0, "id": json.loads(m.string)["id"]}
    await s.say("/ping")
    pong = json.loads((await s.expect(r'"msgid":13[,}]')).string)
    assert pong["node"] == lone_node.node_id
    assert await s.quit() == 0


async def test_client_reconnects_and_logs_back_in_after_a_node_restart(
    lone_node: Node, scripted: list[Scripted]
) -> None:
    port = lone_node.port
    ann, ann_id = await registered(port, "ann", scripted)
    bob, bob_id = await registered(port, "bob", scripted)
    await lone_node.stop()
    await ann.expect(r"\*\*\* The server is restarting; reconnecting")  # it does so itself
    await ann.expect("Connection lost; reconnecting")
    # A script's line written while the node is away waits for the reconnect
    # (it used to fail at once: "Not done: the connection is down").
    await ann.say(f"chat:{bob_id}:after the restart")
    restarted = Node(replace(lone_node.settings, port=port))
    await restarted.start()
    try:
        await ann.expect("Reconnected to .*, logged in again", timeout=15)
        # Live, or stored and shown at bob's own login again (before his status line).
        await bob.expect(rf"ann \(#{ann_id}\): after the restart$", timeout=15)
        assert any(re.search("Reconnected to .*, logged in again", x) for x in bob.lines) or (
            await bob.expect("Reconnected to .*, logged in again", timeout=15)
        )
        assert await ann.quit() == 0
        assert await bob.quit() == 0
    finally:
        await restarted.stop()


@pytest.mark.parametrize("banned", [False, True], ids=["kick", "ban"])
async def test_a_kicked_client_says_why_and_does_not_reconnect(
    lone_node: Node, scripted: list[Scripted], banned: bool
) -> None:
    """`clusterchat admin kick` (or `ban`) revokes the ticket and closes the
    session. The client used to reconnect, try the dead ticket and print
    "Could not log in again: wrong id or password"; now it says an operator
    ended the session (or banned the account) and stays logged out."""
    ann, ann_id = await registered(lone_node.port, "ann", scripted)
    await lone_node.store.end_session(ann_id)  # what the operator's kick does
    lone_node.service.kicked(ann_id, banned=banned)
    await ann.expect(r"\*\*\* an operator (banned this account|ended this session)")
    why = "banned this account" if banned else "ended this session"
    await ann.expect(f"Logged out: an operator {why}.*Not reconnecting", timeout=15)
    assert await ann.quit() == 0
    assert ann.proc.stdout is not None
    seen = "\n".join(ann.lines) + (await ann.proc.stdout.read()).decode()
    assert "Reconnect" not in seen and "wrong id or password" not in seen, seen


async def test_a_kicked_client_logs_in_again_when_asked(
    lone_node: Node, scripted: list[Scripted]
) -> None:
    """After an operator's kick the client said "Not reconnecting; /quit, and
    start the client again", then offered its menu; every login from it
    answered "the connection is down (reconnecting); try again in a moment",
    forever (seen following the README's cluster section). A login the user
    asks for now connects again and logs in."""
    dave, dave_id = await dave_online(lone_node.port)
    ann, ann_id = await registered(lone_node.port, "ann", scripted)
    await lone_node.store.end_session(ann_id)  # what the operator's kick does
    lone_node.service.kicked(ann_id, banned=False)
    await ann.expect("Logged out: an operator ended this session.*/login ID", timeout=15)
    await ann.say(f"login:{ann_id}:pw")
    await ann.expect(rf"Logged in as ann \(#{ann_id}\)", timeout=15)
    assert not any("connection is down" in line for line in ann.lines), ann.lines
    await ann.say(f"chat:{dave_id}:back again")  # a request on the new connection is served
    assert (await dave.expect(MsgId.ONE_CHAT, timeout=15))["msg"] == "back again"
    assert await ann.quit() == 0
    await dave.close()


async def test_a_displaced_client_says_so_and_does_not_reconnect(
    lone_node: Node, scripted: list[Scripted]
) -> None:
    """The account logged in on another node, which took the session over:
    the client used to reconnect and print "Could not log in again" and
    "not logged in"; now it says why it was logged out and stays so."""
    ann, ann_id = await registered(lone_node.port, "ann", scripted)
    lone_node.service.displaced(ann_id)  # what another node's login makes this one do
    await ann.expect(r"\*\*\* you logged in somewhere else")
    await ann.expect("Logged out: this account logged in elsewhere .*Not reconnecting", timeout=15)
    assert await ann.quit() == 0
    assert ann.proc.stdout is not None
    seen = "\n".join(ann.lines) + (await ann.proc.stdout.read()).decode()
    assert "Reconnect" not in seen and "log in again" not in seen, seen


async def test_a_piped_batch_past_the_flood_limit_is_paced_not_dropped(lone_node: Node) -> None:
    """A script piping more chats than the flood limit's burst (50, then 20 a
    second) gets every one sent, in order: the client waits and sends again
    what the server refused as too fast. Before, 20 of these 70 printed
    "Not done: Too many requests" and were lost to the script."""
    dave, dave_id = await dave_online(lone_node.port)
    lines = "".join(f"chat:{dave_id}:line {i}\n" for i in range(70))
    text = await piped(lone_node.port, f"register:carol:pw\n{lines}", timeout=60)
    assert "Not done" not in text, text
    got = [(await dave.expect(MsgId.ONE_CHAT))["msg"] for _ in range(70)]
    assert got == [f"line {i}" for i in range(70)]
    await dave.close()


@pytest.mark.parametrize(
    ("script", "said"),
    [
        ("login:1:wrong\n", "Login refused: wrong id or password"),
        ("chat:1:hello\n", "Log in first"),
        ("register:carol:pw\nfrobnicate\n", "Not understood"),
    ],
)
async def test_a_piped_script_with_a_line_not_done_exits_1(
    lone_node: Node, script: str, said: str
) -> None:
    """A script could not tell that its lines failed: the client exited 0
    after "Login refused" or "Log in first". `client --help` says so."""
    cli = Path(sys.executable).with_name("clusterchat")
    proc = await asyncio.create_subprocess_exec(
        str(cli), "client", "127.0.0.1", str(lone_node.port),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=CLIENT_ENV,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(script.encode()), 30)
    assert said in out.decode() and proc.returncode == 1, (out, proc.returncode)


async def test_a_script_that_quits_at_once_acknowledges_what_it_showed(lone_node: Node) -> None:
    """`printf 'login:2:pw\\nquit\\n' | clusterchat client` showed the
    messages waiting for it and quit inside the client's one-second receipt
    timer, without acknowledging them: the server stored them again, and
    every later login showed them again "while you were away" (found by
    following the README). It acknowledges at the close now, as at a logout."""
    port = lone_node.port
    dave, _ = await dave_online(port)
    bob = await ChatConnection.open("127.0.0.1", port)
    bob_id = await bob.register("bob", "pw")
    await bob.close()

    async def logged_out() -> None:  # bob's session is gone: he may log in again
        async with asyncio.timeout(10):
            while bob_id in lone_node.service.sessions:  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    for end in ("quit\n", ""):  # a quit line, or the end of stdin
        chat = {"msgid": MsgId.ONE_CHAT, "toid": bob_id, "msg": f"before {end!r}"}
        assert (await dave.request(chat, MsgId.CHAT_ACK))["status"] == "stored"
        text = await piped(port, f"login:{bob_id}:pw\n{end}")
        assert "While you were away (1)" in text, text
        await logged_out()
        again = await ChatConnection.open("127.0.0.1", port)
        ack = await again.login(bob_id, "pw", receipts=True)
        await again.close()
        assert ack["errno"] == 0 and "offlinemsg" not in ack, ack
        await logged_out()
    await dave.close()
