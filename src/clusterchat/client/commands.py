"""What a person types, parsed into commands. Pure: no I/O.

Two spellings are accepted: the original client's ``name:args`` forms
(``chat:42:hello``) and slash commands a person would guess (``/msg 42 hello``).
"""

from __future__ import annotations

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
  loginout                     /logout               log out (then log in again)
  login:ID:PASSWORD            /login ID [PASSWORD]  log in (asks for the password)
  register:NAME:PASSWORD       /register NAME [PW]   create an account
  ping                         /ping                 check the server answers
  help                         /help                 this list
  quit                         /quit                 leave
"""


def _int(text: str, what: str) -> int:
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


_BARE: dict[str, Command] = {
    "help": Help(),
    "friends": Friends(),
    "groups": Groups(),
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
    if line.startswith("/"):
        return _parse_slash(line[1:])
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
    if name == "login":
        uid, _, password = rest.partition(":")
        return Login(_int(uid, "the user id"), password or None)
    if name == "register":
        uname, _, password = rest.partition(":")
        return Register(
            _need(uname, "the name", "register:NAME:PASSWORD").strip(), password or None
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
    if name == "login":
        return Login(_int(first, "the user id"), tail.strip() or None)
    if name == "register":
        return Register(_need(first, "the name", "/register NAME [PASSWORD]"), tail.strip() or None)
    raise BadCommand(f"unknown command /{name}; /help lists them")
