"""What a person types, parsed into commands. Pure: no I/O.

Two spellings are accepted: the original client's ``name:args`` forms
(``chat:42:hello``) and slash commands a person would guess (``/msg 42 hello``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Chat:
    toid: int
    text: str


@dataclass(frozen=True)
class GroupChat:
    groupid: int
    text: str


@dataclass(frozen=True)
class AddFriend:
    friendid: int


@dataclass(frozen=True)
class CreateGroup:
    name: str
    desc: str


@dataclass(frozen=True)
class JoinGroup:
    groupid: int


@dataclass(frozen=True)
class Friends:
    pass


@dataclass(frozen=True)
class Groups:
    pass


@dataclass(frozen=True)
class Logout:
    pass


@dataclass(frozen=True)
class Login:
    uid: int
    password: str | None


@dataclass(frozen=True)
class Register:
    name: str
    password: str | None


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Unfriend:
    friendid: int


@dataclass(frozen=True)
class Block:
    userid: int


@dataclass(frozen=True)
class Unblock:
    userid: int


@dataclass(frozen=True)
class Blocked:
    pass


@dataclass(frozen=True)
class Leave:
    groupid: int


@dataclass(frozen=True)
class Kick:
    groupid: int
    userid: int


@dataclass(frozen=True)
class SetRole:
    groupid: int
    userid: int
    role: str  # "admin" | "normal"


@dataclass(frozen=True)
class Rename:
    groupid: int
    name: str


@dataclass(frozen=True)
class Describe:
    groupid: int
    desc: str


@dataclass(frozen=True)
class Owner:
    groupid: int
    userid: int


@dataclass(frozen=True)
class DeleteGroup:
    groupid: int


@dataclass(frozen=True)
class Invite:
    groupid: int
    userid: int


@dataclass(frozen=True)
class Decline:
    groupid: int


@dataclass(frozen=True)
class Invites:
    pass


@dataclass(frozen=True)
class InviteOnly:
    groupid: int
    on: bool


@dataclass(frozen=True)
class History:
    """The last ``count`` messages with a user (or a group: ``group``), older
    than message ``before`` (0: the newest)."""

    target: int
    group: bool = False
    count: int = 20
    before: int = 0


#: Most messages one /history shows (the server's page bound).
MAX_HISTORY = 200

Command = (
    Help
    | Chat
    | GroupChat
    | AddFriend
    | CreateGroup
    | JoinGroup
    | Friends
    | Groups
    | Logout
    | Login
    | Register
    | Ping
    | Quit
    | Unfriend
    | Block
    | Unblock
    | Blocked
    | Leave
    | Kick
    | SetRole
    | Rename
    | Describe
    | Owner
    | DeleteGroup
    | Invite
    | Decline
    | Invites
    | InviteOnly
    | History
)


class BadCommand(Exception):
    """A line we cannot act on; the message says how to write it."""


HELP = """\
Commands (the original client's form, or a slash command):
  chat:ID:MESSAGE              /msg ID MESSAGE       message a user
  groupchat:GROUPID:MESSAGE    /g GROUPID MESSAGE    message a group
  addfriend:ID                 /add ID               befriend a user (both ways)
  creategroup:NAME:DESC        /create NAME [DESC]   create a group (shows its id)
  addgroup:GROUPID             /join GROUPID         join a group
  friends                      /friends              friends, online or not
  groups                       /groups               your groups and their members
  unfriend:ID                  /unfriend ID          stop being friends (both ways)
  block:ID                     /block ID             refuse a user's messages, requests, presence
  unblock:ID                   /unblock ID           take a block back
  blocked                      /blocked              whom you block
  leave:GROUPID                /leave GROUPID        leave a group
  kick:GROUPID:ID              /kick GROUPID ID      remove a member (admins, the creator)
  admin:GROUPID:ID             /admin GROUPID ID     make a member an admin
  deadmin:GROUPID:ID           /deadmin GROUPID ID   make an admin a normal member again
  rename:GROUPID:NAME          /rename GROUPID NAME  rename a group
  describe:GROUPID:TEXT        /describe GID TEXT    change a group's description
  owner:GROUPID:ID             /owner GROUPID ID     hand your group to a member (creator)
  delgroup:GROUPID             /delgroup GROUPID     delete your group (creator)
  inviteonly:GROUPID:on|off    /inviteonly GID on    joining needs an invitation (off: not)
  invite:GROUPID:ID            /invite GROUPID ID    invite a user (they accept with /join)
  invites                      /invites              your open invitations
  decline:GROUPID              /decline GROUPID      turn an invitation down
  history:ID[:N]               /history ID [N]       the last N (20) messages with a user
  ghistory:GROUPID[:N]         /ghistory GID [N]     the last N (20) messages of a group
  loginout                     /logout               log out (then log in again)
  login:ID:PASSWORD            /login ID [PASSWORD]  log in (asks for the password)
  register:NAME:PASSWORD       /register NAME [PW]   create an account
  ping                         /ping                 check the server answers
  help                         /help                 this list
  quit                         /quit                 leave
"""


class _Missing(Exception):
    """An argument left out: the command's usage line says what to write."""

    def __init__(self, what: str) -> None:
        self.what = what


def _usages() -> dict[str, str]:
    """Each spelling (``chat:``, ``/msg``) and its usage, from HELP's two columns."""
    found: dict[str, str] = {}
    for row in HELP.splitlines()[1:]:
        colon, slash, _ = re.split(r"\s{2,}", row.strip(), maxsplit=2)
        found.setdefault(colon.split(":")[0] + ":", colon)
        found.setdefault(slash.split()[0], slash)
    for alias, name in _SLASH_ALIASES.items():
        found.setdefault(f"/{alias}", found[f"/{name}"])
    return found


_SLASH_ALIASES = {
    "m": "msg",
    "w": "msg",
    "chat": "msg",
    "gmsg": "g",
    "groupchat": "g",
    "addfriend": "add",
    "friend": "add",
    "creategroup": "create",
    "addgroup": "join",
    "deletegroup": "delgroup",
}


def usage(line: str) -> str | None:
    """How to write the command ``line`` starts with, or None if there is no such."""
    line = line.strip()
    key = line.split()[0].lower() if line.startswith("/") else line.split(":")[0].lower() + ":"
    return _USAGE.get(key)


def _int(text: str, what: str) -> int:
    if not text.strip():
        raise _Missing(what)
    try:
        value = int(text.strip())
    except ValueError:
        raise BadCommand(f"{what} must be a number, not {text.strip()!r}") from None
    if value < 1:
        raise BadCommand(f"{what} must be 1 or more")
    return value


def _need(text: str, what: str, usage: str) -> str:
    if not text.strip():
        raise BadCommand(f"{what} is missing; write {usage}")
    return text


_USAGE = _usages()

_BARE: dict[str, Command] = {
    "help": Help(),
    "friends": Friends(),
    "groups": Groups(),
    "blocked": Blocked(),
    "invites": Invites(),
    "loginout": Logout(),
    "logout": Logout(),
    "ping": Ping(),
    "quit": Quit(),
    "exit": Quit(),
}


def parse(line: str) -> Command:
    line = line.strip()
    if not line:
        raise BadCommand("type a command; `help` lists them")
    try:
        return _parse_slash(line[1:]) if line.startswith("/") else _parse_colon(line)
    except _Missing as exc:
        raise BadCommand(f"{exc.what} is missing; write {usage(line)}") from None


def _parse_colon(line: str) -> Command:
    name, _, rest = line.partition(":")
    name = name.strip().lower()
    if name in _BARE and not rest:
        return _BARE[name]
    if name == "chat":
        who, _, text = rest.partition(":")
        return Chat(_int(who, "the user id"), _need(text, "the message", "chat:ID:MESSAGE"))
    if name == "groupchat":
        gid, _, text = rest.partition(":")
        return GroupChat(
            _int(gid, "the group id"), _need(text, "the message", "groupchat:GROUPID:MESSAGE")
        )
    if name == "addfriend":
        return AddFriend(_int(rest, "the friend's id"))
    if name == "creategroup":
        gname, _, desc = rest.partition(":")
        return CreateGroup(_need(gname, "the group name", "creategroup:NAME:DESC").strip(), desc)
    if name == "addgroup":
        return JoinGroup(_int(rest, "the group id"))
    managed = _managed(name, *_split(rest), f"{name}:")
    if managed is not None:
        return managed
    if name == "login":
        uid, _, password = rest.partition(":")
        return Login(_int(uid, "the user id"), password or None)
    if name == "register":
        uname, _, password = rest.partition(":")
        return Register(
            _need(uname, "the name", "register:NAME:PASSWORD").strip(), password or None
        )
    if " " in name and not rest:  # prose typed at the prompt, as in a chat window
        raise BadCommand(
            f"unknown command {name!r}; to send a message write /msg ID MESSAGE (to a user) "
            "or /g GROUPID MESSAGE (to a group); `help` lists the commands"
        )
    raise BadCommand(f"unknown command {name!r}; `help` lists them")


def _parse_slash(line: str) -> Command:
    name, _, rest = line.partition(" ")
    name = name.lower()
    if name in _BARE or name in ("h", "?", "q"):
        if rest.strip():
            raise BadCommand(f"/{name} takes no arguments")
        return _BARE.get(name) or (Quit() if name == "q" else Help())
    first, _, tail = rest.strip().partition(" ")
    if name in ("msg", "m", "chat", "w"):
        return Chat(_int(first, "the user id"), _need(tail, "the message", "/msg ID MESSAGE"))
    if name in ("g", "gmsg", "groupchat"):
        return GroupChat(
            _int(first, "the group id"), _need(tail, "the message", "/g GROUPID MESSAGE")
        )
    if name in ("add", "addfriend", "friend"):
        return AddFriend(_int(rest, "the friend's id"))
    if name in ("create", "creategroup"):
        return CreateGroup(_need(first, "the group name", "/create NAME [DESC]"), tail.strip())
    if name in ("join", "addgroup"):
        return JoinGroup(_int(rest, "the group id"))
    managed = _managed(name, first, tail, f"/{name} ")
    if managed is not None:
        return managed
    if name == "login":
        return Login(_int(first, "the user id"), tail.strip() or None)
    if name == "register":
        return Register(_need(first, "the name", "/register NAME [PASSWORD]"), tail.strip() or None)
    raise BadCommand(f"unknown command /{name}; /help lists them")


def _split(rest: str) -> tuple[str, str]:
    first, _, tail = rest.partition(":")
    return first, tail


def _managed(name: str, first: str, tail: str, how: str) -> Command | None:
    """Friends and groups a person manages; ``how`` is the spelling used, for errors."""
    sep = ":" if how.endswith(":") else " "
    if name == "unfriend":
        return Unfriend(_int(first, "the friend's id"))
    if name == "block":
        return Block(_int(first, "the user id"))
    if name == "unblock":
        return Unblock(_int(first, "the user id"))
    if name == "leave":
        return Leave(_int(first, "the group id"))
    if name == "decline":
        return Decline(_int(first, "the group id"))
    if name in ("delgroup", "deletegroup"):
        return DeleteGroup(_int(first, "the group id"))
    if name == "inviteonly":
        gid, flag = _int(first, "the group id"), tail.strip().lower()
        if flag not in ("on", "off"):
            raise BadCommand(f"say on or off; write {how}GROUPID{sep}on")
        return InviteOnly(gid, flag == "on")
    if name in ("kick", "admin", "deadmin", "owner", "invite"):
        gid, uid = _int(first, "the group id"), _int(tail, "the user id")
        if name == "kick":
            return Kick(gid, uid)
        if name == "owner":
            return Owner(gid, uid)
        if name == "invite":
            return Invite(gid, uid)
        return SetRole(gid, uid, "admin" if name == "admin" else "normal")
    if name == "rename":
        gid = _int(first, "the group id")
        return Rename(gid, _need(tail, "the new name", f"{how}GROUPID{sep}NAME").strip())
    if name == "describe":
        return Describe(_int(first, "the group id"), tail.strip())
    if name in ("history", "ghistory"):
        return _history(name == "ghistory", first, tail, how)
    return None


def _history(group: bool, first: str, tail: str, how: str) -> History:
    """``ID [N [BEFORE]]``: BEFORE is the message id a previous /history said to go on from."""
    target = _int(first, "the group id" if group else "the user id")
    sep = ":" if how.endswith(":") else " "
    parts = [p for p in tail.replace(":", " ").split() if p]
    if len(parts) > 2:
        raise BadCommand(f"too many numbers; write {how}ID{sep}N")
    count = _int(parts[0], "the number of messages") if parts else 20
    if count > MAX_HISTORY:
        raise BadCommand(f"at most {MAX_HISTORY} messages at a time")
    before = _int(parts[1], "the message id to go back from") if len(parts) > 1 else 0
    return History(target, group, count, before)
