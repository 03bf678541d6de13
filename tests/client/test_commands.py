import pytest

from clusterchat.client import commands as c
from clusterchat.client import render
from clusterchat.client.app import Controller
from clusterchat.client.session import ChatClient


@pytest.mark.parametrize(
    ("line", "cmd"),
    [
        ("help", c.Help()),
        ("chat:42:hello: there", c.Chat(42, "hello: there")),
        ("addfriend:7", c.AddFriend(7)),
        ("creategroup:room:a nice place", c.CreateGroup("room", "a nice place")),
        ("creategroup:room", c.CreateGroup("room", "")),
        ("addgroup:3", c.JoinGroup(3)),
        ("groupchat:3:hi all", c.GroupChat(3, "hi all")),
        ("loginout", c.Logout()),
        ("login:5:pw", c.Login(5, "pw")),
        ("register:ann:pw", c.Register("ann", "pw")),
        ("friends", c.Friends()),
        ("groups", c.Groups()),
        ("quit", c.Quit()),
        ("/msg 42 hello there", c.Chat(42, "hello there")),
        ("/m 42 hi", c.Chat(42, "hi")),
        ("/g 3 hi all", c.GroupChat(3, "hi all")),
        ("/add 7", c.AddFriend(7)),
        ("/create room a nice place", c.CreateGroup("room", "a nice place")),
        ("/join 3", c.JoinGroup(3)),
        ("/friends", c.Friends()),
        ("/groups", c.Groups()),
        ("/logout", c.Logout()),
        ("/login 5", c.Login(5, None)),
        ("/login 5 secret", c.Login(5, "secret")),
        ("/register ann", c.Register("ann", None)),
        ("/quit", c.Quit()),
        ("/help", c.Help()),
        ("/ping", c.Ping()),
    ],
)
def test_parse(line: str, cmd: c.Command) -> None:
    assert c.parse(line) == cmd


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("chat:x:hi", "the user id must be a number"),
        ("chat:5:", "the message is missing"),
        ("chat:0:hi", "must be 1 or more"),
        ("/msg 5", "the message is missing"),
        ("/join", r"the group id is missing; write /join GROUPID$"),
        ("/msg", r"the user id is missing; write /msg ID MESSAGE$"),
        ("/m", r"the user id is missing; write /msg ID MESSAGE$"),
        ("chat", r"the user id is missing; write chat:ID:MESSAGE$"),
        ("/register", r"the name is missing; write /register NAME \[PASSWORD\]$"),
        ("addgroup:", r"the group id is missing; write addgroup:GROUPID$"),
        ("frobnicate", "unknown command"),
        ("hello there", r"to send a message write /msg ID MESSAGE \(to a user\) or /g GROUPID"),
        ("/frobnicate", "unknown command"),
        ("", "type a command"),
    ],
)
def test_bad_commands_say_how_to_fix_them(line: str, says: str) -> None:
    with pytest.raises(c.BadCommand, match=says):
        c.parse(line)


def test_untrusted_text_cannot_drive_the_terminal() -> None:
    hostile = "hi\x1b[2J\x1b]0;pwned\x07\r\nfake line\u202egnp.exe\x9b"
    shown = render.clean(hostile)
    assert shown.isprintable()
    assert "\x1b" not in shown and "\r" not in shown and "\u202e" not in shown
    assert shown == "hi\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x0afake line\\u202egnp.exe\\x9b"


def test_chat_lines_show_sender_id_time_and_group() -> None:
    msg = {"msgid": 10, "id": 3, "name": "ann\x1b", "groupid": 7, "msg": "yo", "ts": 0}
    line = render.chat(msg)
    assert "[group 7]" in line and "ann\\x1b (#3): yo" in line
    one = render.chat({"msgid": 6, "id": 3, "name": "ann", "msg": "hey", "time": "t"})
    assert one == "[t] ann (#3): hey"


def test_refusals_read_as_sentences() -> None:
    assert render.refusal({"msgid": 11, "errno": 120, "errmsg": "no user has id 9"}) == (
        "Not done: No user has id 9."
    )


async def test_an_empty_line_is_ignored() -> None:
    said: list[str] = []
    client = ChatClient("127.0.0.1", 1, on_push=lambda m: None, on_status=said.append)
    ctl = Controller(client, said.append, ask_password=None)
    for line in ("", "   ", "\t"):
        assert await ctl.run_line(line)
    assert said == []


def test_a_join_names_the_group_and_a_new_friend_is_announced() -> None:
    from clusterchat.client.app import _done

    assert _done(c.JoinGroup(3), {"groupid": 3, "groupname": "room\x1b"}) == [
        "Joined group room\\x1b (#3)."
    ]
    assert _done(c.JoinGroup(3), {"groupid": 3}) == ["Joined group 3."]  # an older server
    added = {"msgid": 24, "friend": {"id": 7, "name": "ann", "state": "online"}}
    assert render.friend_added(added) == "*** ann (#7) added you as a friend."


def test_the_login_summary_lists_a_few_members_of_each_group() -> None:
    """A member of a few 1,000-member groups got thousands of lines at login."""
    big = {"id": 7, "groupname": "all", "users": [{"id": i, "name": f"u{i}"} for i in range(1000)]}
    ack = {"msgid": 2, "errno": 0, "id": 3, "name": "ann", "groups": [big, big]}
    lines = render.login_summary(ack)
    assert len(lines) < 40
    assert (
        lines.count(f"      ... and {1000 - render.SUMMARY_MEMBERS} more (`groups` lists them all)")
        == 2
    )
    assert len(render.groups([big])) == 1002  # the `groups` command: every member


def test_what_was_stored_is_shown_in_the_order_the_server_took_it() -> None:
    """Stored messages can come after later ones (a connection with receipts
    that ended, a batch lost between nodes): the login summary puts them
    back by ts, and within one millisecond by the node's count in the mid."""
    ann = {"msgid": 6, "id": 2, "name": "bob", "toid": 3}
    stored = [
        {**ann, "msg": "third", "ts": 2_000, "mid": "n1-12"},
        {**ann, "msg": "first", "ts": 1_000, "mid": "n1-9"},
        {**ann, "msg": "second", "ts": 2_000, "mid": "n1-10"},
    ]
    ack = {"msgid": 2, "errno": 0, "id": 3, "name": "ann", "offlinemsg": stored}
    lines = render.login_summary(ack)
    away = lines.index("While you were away (3):")
    shown = [line.rsplit(": ", 1)[1] for line in lines[away + 1 :]]
    assert shown == ["first", "second", "third"]


def test_a_message_of_several_lines_reads_as_lines_at_a_terminal() -> None:
    """A web user's Shift+Enter makes a message of two lines; at a terminal
    it showed as "line one\\x0aline two" (seen in tmux following the
    README). A person now sees indented lines, so that no line can pass for
    an event of its own; a script, reading one event a line, still gets it
    escaped on one line."""
    msg = {"msgid": 6, "id": 5, "name": "eve", "msg": "line one\r\nline two\n\x1b[2Jthree", "ts": 0}
    shown = render.chat(msg, multiline=True)
    first, *rest = shown.split("\n")
    assert first.endswith("eve (#5): line one")
    assert rest == ["    line two", "    \\x1b[2Jthree"]
    assert all(line.isprintable() for line in shown.split("\n"))
    assert "\n" not in render.chat(msg)  # a script's one line
    assert render.chat(msg).endswith("line one\\x0d\\x0aline two\\x0a\\x1b[2Jthree")
    page = {"messages": [{"id": 1, "from": 5, "name": "eve", "msg": "a\nb", "ts": 0}]}
    assert render.history(5, False, 20, page, multiline=True)[-1].endswith("eve (#5): a\n    b")
