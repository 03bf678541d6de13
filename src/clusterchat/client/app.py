"""The terminal client: an interactive prompt for people, a line protocol for programs.

Both front ends share :class:`Controller`, which turns a parsed command into
requests and the replies into lines; the interactive one draws with
prompt_toolkit so incoming messages never break the line being typed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from clusterchat.client import commands as c
from clusterchat.client import render
from clusterchat.client.session import ChatClient, ConnectionLost, TooLong
from clusterchat.protocol.messages import ChatStatus, MsgId

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

    from clusterchat.client.paste import LineGuard

Out = Callable[[str], None]
AskPassword = Callable[[str], Awaitable[str]]

#: How long a scripted line waits for a dropped connection to come back (s).
SCRIPT_PATIENCE = 30.0


class Controller:
    def __init__(self, client: ChatClient, out: Out, ask_password: AskPassword | None) -> None:
        self.client = client
        self.out = out
        self.ask_password = ask_password
        #: A command was refused or not carried out: a piped script exits 1.
        self.failed = False
        #: A person at a terminal: a message's line breaks start new lines
        #: (a script reads one event a line: they are escaped for it).
        self.multiline = False

    def fail(self, line: str) -> None:
        """Say why a command was not done, and remember that one was not."""
        self.failed = True
        self.out(line)

    def pushed(self, msg: dict[str, Any]) -> None:
        if msg.get("msgid") == MsgId.NOTICE:
            self.out(render.notice(msg))
        elif msg.get("msgid") == MsgId.FRIEND_ADDED:
            self.out(render.friend_added(msg))
        elif msg.get("msgid") in (MsgId.FRIEND_EVENT, MsgId.GROUP_EVENT):
            self.out(render.event(msg, self.client.uid))
        else:
            self.out(render.chat(msg, self.multiline))

    async def run_line(self, line: str) -> bool:
        """Parse and carry out a typed line; False when the user asked to quit."""
        if not line.strip():  # an empty line is no command: nothing to say
            return True
        try:
            cmd = c.parse(line)
        except c.BadCommand as exc:
            self.fail(f"Not understood: {exc}.")
            return True
        return await self.run(cmd)

    async def run(self, cmd: c.Command) -> bool:
        """Carry out one command; False when the user asked to quit."""
        if isinstance(cmd, c.Quit):
            return False
        if isinstance(cmd, c.Help):
            for line in c.HELP.splitlines():
                self.out(line)
            return True
        try:
            await self._run(cmd)
        except ConnectionLost as exc:
            self.fail(down(self.client, exc))
        except TooLong as exc:
            self.fail(too_long(exc))
        return True

    async def new_password(self) -> str | None:
        """A new account's password, typed twice where it is asked for (it is
        not shown: a typo would lock the account out at once); None if the
        two differ, or if it cannot be asked for."""
        if self.ask_password is None:
            return await self._password(None)
        first = await self.ask_password("password: ")
        if await self.ask_password("password again: ") != first:
            self.fail("Not done: the two passwords differ; nothing registered.")
            return None
        return first

    async def _password(self, given: str | None) -> str | None:
        if given is not None:
            return given
        if self.ask_password is None:
            self.fail("Not done: give the password too, e.g. login:ID:PASSWORD.")
            return None
        return await self.ask_password("password: ")

    async def _run(self, cmd: c.Command) -> None:
        client = self.client
        if isinstance(cmd, c.Login):
            if client.uid:
                self.fail(
                    f"Already logged in as {render.who(client.uid, client.name)}; /logout first."
                )
                return
            password = await self._password(cmd.password)
            if password is not None:
                await self.login(cmd.uid, password)
            return
        if isinstance(cmd, c.Register):
            password = cmd.password or await self.new_password()
            if password is not None:
                await self.register(cmd.name, password)
            return
        if isinstance(cmd, c.Ping):
            pong = await client.request({"msgid": MsgId.PING})
            self.out(f"pong from node {render.clean(pong.get('node', '?'))}")
            return
        if not client.uid:
            self.fail("Log in first: /login ID, or /register NAME.")
            return
        reply = await client.request(_request(cmd))
        if reply.get("msgid") == MsgId.ERROR:
            self.fail(render.refusal(reply))
            return
        if reply.get("errno") not in (0, None):  # an ack that refuses (its line says why)
            self.failed = True
        if isinstance(cmd, c.Groups):
            await self._more_groups(reply)
            return
        for line in _done(cmd, reply, self.multiline):
            self.out(line)
        if isinstance(cmd, c.Logout):
            client.forget()

    async def _more_groups(self, reply: dict[str, Any]) -> None:
        """Shows a GROUP_LIST and asks for the pages after it while it says
        `more` (a reply holds about 4,000 members' worth): one list, its
        header once, and a page refused says so instead of "No groups yet"."""
        first = True
        while True:
            docs = reply.get("groups") or []
            lines = render.groups(docs)
            if not first:
                lines = lines[1:] if docs else []  # no second "Groups:" header
            for line in lines:
                self.out(line)
            first = False
            if not (reply.get("more") and docs and isinstance(docs[-1], dict)):
                return
            after = docs[-1].get("id", 0)
            reply = await self.client.request({"msgid": MsgId.LIST_GROUPS, "after": after})
            if reply.get("msgid") == MsgId.ERROR:
                self.fail(f"(the rest of your groups were not listed) {render.refusal(reply)}")
                return

    async def register(self, name: str, password: str) -> bool:
        """Register and, unless logged in already, log in as the new user
        (the menu, `register:NAME:PW` and `/register NAME` alike)."""
        client = self.client
        ack = await client.request({"msgid": MsgId.REG, "name": name, "password": password})
        if ack.get("errno") != 0:
            self.fail(f"Registration refused: {render.clean(ack.get('errmsg'))}.")
            return False
        uid = int(ack["id"])
        if client.uid:
            self.out(
                f"Registered {render.clean(name)} with id {uid}; you are still logged in as "
                f"{render.who(client.uid, client.name)} (/logout, then /login {uid})."
            )
            return True
        self.out(f"Registered {render.clean(name)} with id {uid}; logging you in.")
        return await self.login(uid, password)

    async def login(self, uid: int, password: str) -> bool:
        ack = await self.client.login(uid, password)
        if ack.get("errno") != 0:
            self.fail(f"Login refused: {render.clean(ack.get('errmsg'))}.")
            return False
        for line in render.login_summary(ack, self.multiline):
            self.out(line)
        return True


def down(client: ChatClient, exc: ConnectionLost) -> str:
    """Why a command was not done with no connection: a reconnect is under
    way, or none is (the server ended the session) and connecting failed."""
    if client.displaced:
        return f"Not done: {exc}; /login ID to try again, or /quit."
    return "Not done: the connection is down (reconnecting); try again in a moment."


def too_long(exc: TooLong) -> str:
    return (
        f"Not sent: that is {exc.size:,} bytes as a request, and the server takes at most "
        f"{exc.limit:,} in one message. Split it into shorter messages."
    )


def _request(cmd: c.Command) -> dict[str, Any]:
    match cmd:
        case c.Chat(toid, text):
            return {"msgid": MsgId.ONE_CHAT, "toid": toid, "msg": text, "time": _now()}
        case c.GroupChat(gid, text):
            return {"msgid": MsgId.GROUP_CHAT, "groupid": gid, "msg": text, "time": _now()}
        case c.AddFriend(fid):
            return {"msgid": MsgId.ADD_FRIEND, "friendid": fid}
        case c.CreateGroup(name, desc):
            return {"msgid": MsgId.CREATE_GROUP, "groupname": name, "groupdesc": desc}
        case c.JoinGroup(gid):
            return {"msgid": MsgId.ADD_GROUP, "groupid": gid}
        case c.Friends():
            return {"msgid": MsgId.LIST_FRIENDS}
        case c.Groups():
            return {"msgid": MsgId.LIST_GROUPS}
        case c.Logout():
            return {"msgid": MsgId.LOGOUT}
        case c.Unfriend(fid):
            return {"msgid": MsgId.REMOVE_FRIEND, "friendid": fid}
        case c.Block(uid):
            return {"msgid": MsgId.BLOCK, "userid": uid}
        case c.Unblock(uid):
            return {"msgid": MsgId.UNBLOCK, "userid": uid}
        case c.Blocked():
            return {"msgid": MsgId.LIST_BLOCKED}
        case c.Leave(gid) | c.Decline(gid):  # leaving an invitation declines it
            return {"msgid": MsgId.LEAVE_GROUP, "groupid": gid}
        case c.Kick(gid, uid):
            return {"msgid": MsgId.REMOVE_MEMBER, "groupid": gid, "userid": uid}
        case c.SetRole(gid, uid, role):
            return {"msgid": MsgId.SET_ROLE, "groupid": gid, "userid": uid, "role": role}
        case c.Rename(gid, name):
            return {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupname": name}
        case c.Describe(gid, desc):
            return {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "groupdesc": desc}
        case c.Owner(gid, uid):
            return {"msgid": MsgId.TRANSFER_GROUP, "groupid": gid, "userid": uid}
        case c.DeleteGroup(gid):
            return {"msgid": MsgId.DELETE_GROUP, "groupid": gid}
        case c.Invite(gid, uid):
            return {"msgid": MsgId.INVITE, "groupid": gid, "userid": uid}
        case c.Invites():
            return {"msgid": MsgId.LIST_INVITES}
        case c.InviteOnly(gid, on):
            return {"msgid": MsgId.EDIT_GROUP, "groupid": gid, "inviteonly": on}
        case c.History(target, group, count, before):
            key = "groupid" if group else "userid"
            return {"msgid": MsgId.HISTORY, key: target, "limit": count, "before": before}
    raise AssertionError(cmd)


def _done(cmd: c.Command, reply: dict[str, Any], multiline: bool = False) -> list[str]:
    match cmd:
        case c.Chat(toid, _) if reply.get("status") == ChatStatus.STORED:
            return [f"(user {toid} is offline: they get it at their next login)"]
        case c.GroupChat(gid, _) if reply.get("status") == ChatStatus.PARTIAL:
            missed = len(reply.get("missed") or [])
            return [
                f"(group {gid}: {missed} offline members will not get it: the server "
                "could not store it for them; the others have it)"
            ]
        case c.AddFriend(_):
            f = reply.get("friend") or {}
            return [
                f"{render.who(f.get('id'), f.get('name'))} is now your friend ({f.get('state')})."
            ]
        case c.CreateGroup(name, _):
            return [f"Created group {render.clean(name)} with id {reply.get('groupid')}."]
        case c.JoinGroup(gid):
            gname = reply.get("groupname")
            if gname:
                return [f"Joined group {render.clean(gname)} (#{gid})."]
            return [f"Joined group {gid}."]
        case c.Friends():
            return render.friends(reply.get("friends"))
        case c.Groups():
            return render.groups(reply.get("groups"))
        case c.Logout():
            return ["Logged out."]
        case c.Unfriend(fid):
            return [f"User {fid} is no longer your friend."]
        case c.Block(uid):
            return [f"Blocked {render.who(uid, reply.get('name'))}: you get nothing from them."]
        case c.Unblock(uid):
            return [f"Unblocked user {uid}."]
        case c.Blocked():
            return render.blocked(reply.get("blocked"))
        case c.Leave(gid):
            return [f"You left group {gid}."]
        case c.Decline(gid):
            return [f"You declined the invitation to group {gid}."]
        case c.Kick(gid, uid):
            return [f"Removed user {uid} from group {gid}."]
        case c.SetRole(gid, uid, role):
            now = "an admin" if role == "admin" else "a normal member"
            return [f"User {uid} is {now} of group {gid}."]
        case c.Rename(gid, name):
            return [f"Group {gid} is now called {render.clean(name)}."]
        case c.Describe(gid, _):
            return [f"Group {gid} has its new description."]
        case c.Owner(gid, uid):
            return [f"User {uid} owns group {gid} now; you are an admin there."]
        case c.DeleteGroup(gid):
            return [f"Deleted group {gid}."]
        case c.Invite(gid, uid):
            return [f"Invited user {uid} to group {gid}."]
        case c.Invites():
            return render.invites(reply.get("invites"))
        case c.InviteOnly(gid, on):
            return [f"Group {gid} is {'invite-only' if on else 'open to all'} now."]
        case c.History(target, group, count, before):
            return render.history(target, group, count, reply, before, multiline)
    return []


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S")


# -- front ends -------------------------------------------------------------------------


async def scripted(ctl: Controller) -> None:
    """stdin is not a terminal: one command per line, one event per output line."""
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            cmd = c.parse(line)
        except c.BadCommand as exc:
            ctl.fail(f"Not understood: {exc}.")
            continue
        if not isinstance(cmd, c.Quit | c.Help):
            # A script cannot try again in a moment: its next line waits for
            # a reconnect under way (bounded, then it is told as usual).
            await ctl.client.reconnected(SCRIPT_PATIENCE)
        if not await ctl.run(cmd):
            return


MENU = "1. login  2. register  3. quit  (or a command, e.g. /login ID)"


def prompt_sessions(
    client: ChatClient, out: Out, **io: Any
) -> tuple[PromptSession[str], PromptSession[str], LineGuard]:
    """The line editor and the password prompt (``io``: input/output, for tests).

    Pastes arrive as one insert (client/paste.py) and a line longer than a
    request may be is refused while it is typed. The password prompt shows
    nothing as you type (not even stars) and keeps no history."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import DummyHistory
    from prompt_toolkit.input import create_input

    from clusterchat.client.paste import LineGuard, PastingInput, hidden

    guard = LineGuard(lambda: client.max_frame, out)
    inp = PastingInput(io.pop("input", None) or create_input())
    lines: PromptSession[str] = PromptSession(input=inp, key_bindings=guard.key_bindings(), **io)
    secret: PromptSession[str] = PromptSession(
        input=inp,
        key_bindings=guard.key_bindings(),
        input_processors=[hidden()],
        history=DummyHistory(),
        **io,
    )
    return lines, secret, guard


async def ask_password(client: ChatClient, out: Out, prompt: str = "password: ") -> str:
    """One password from the terminal, not echoed (`clusterchat client --user ID`)."""
    _, secret, _ = prompt_sessions(client, out)
    return await secret.prompt_async(prompt)


async def interactive(ctl: Controller, client: ChatClient) -> None:
    from prompt_toolkit.patch_stdout import patch_stdout

    session, secret, guard = prompt_sessions(client, ctl.out)

    async def ask(prompt: str, password: bool = False) -> str:
        guard.reset()
        return await (secret if password else session).prompt_async(prompt)

    ctl.ask_password = lambda prompt: ask(prompt, password=True)
    with patch_stdout():
        while True:
            try:
                if not client.uid:
                    ctl.out(MENU)
                    line = await ask("choice: ")
                    if line.strip() in ("1", "2", "3"):
                        if not await _menu(ctl, line.strip(), ask):
                            return
                        continue
                else:
                    line = await ask(f"{client.name}> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            if not await ctl.run_line(line):
                return


async def _menu(ctl: Controller, choice: str, ask: Callable[..., Awaitable[str]]) -> bool:
    if choice == "3":
        return False
    try:
        if choice == "1":
            uid = c.parse(f"login:{await ask('user id: ')}:x").uid  # type: ignore[union-attr]
            await ctl.login(uid, await ask("password: ", password=True))
            return True
        name = (await ask("name: ")).strip()
        if (password := await ctl.new_password()) is not None:
            await ctl.register(name, password)
    except c.BadCommand as exc:
        ctl.out(f"Not understood: {exc}.")
    except ConnectionLost as exc:
        ctl.out(down(ctl.client, exc))
    return True
