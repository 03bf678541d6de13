"""Server messages as lines for people. Pure: no I/O.

Everything another user wrote is untrusted: control characters, escape
sequences and invisible formatting characters (bidi overrides) are shown
as visible escapes, never passed to the terminal.
"""

from __future__ import annotations

import json
import time
from typing import Any

from clusterchat.protocol.client import taken_order
from clusterchat.protocol.messages import MsgId


def clean(text: object) -> str:
    s = str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        if ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


#: Where a message's second and later lines start, at a terminal: indented,
#: so that no line a peer writes can pass for an event line of its own.
CONTINUED = "\n    "


def text(value: object, multiline: bool = False) -> str:
    """A message's text, escaped. With ``multiline`` (a person at a
    terminal) its line breaks, which the web client's Shift+Enter makes,
    start indented lines instead of showing as ``\\x0a``; without it (a
    script reads one event a line) they are escaped like any control."""
    if not multiline:
        return clean(value)
    return CONTINUED.join(clean(part) for part in str(value).replace("\r\n", "\n").split("\n"))


def _clock(msg: dict[str, Any]) -> str:
    ts = msg.get("ts")
    if isinstance(ts, int):
        return time.strftime("%H:%M:%S", time.localtime(ts / 1000))
    return clean(msg.get("time", "")) or "--:--:--"


def who(uid: object, name: object) -> str:
    return f"{clean(name)} (#{clean(uid)})"


def chat(msg: dict[str, Any], multiline: bool = False) -> str:
    sender = who(msg.get("id"), msg.get("name"))
    body = text(msg.get("msg", ""), multiline)
    if msg.get("msgid") == MsgId.GROUP_CHAT:
        return f"[{_clock(msg)}] [group {clean(msg.get('groupid'))}] {sender}: {body}"
    return f"[{_clock(msg)}] {sender}: {body}"


def _docs(items: object) -> list[dict[str, Any]]:
    """The original sends lists of JSON strings; our list replies send objects."""
    out = []
    for item in items if isinstance(items, list) else []:
        doc = json.loads(item) if isinstance(item, str) else item
        if isinstance(doc, dict):
            out.append(doc)
    return out


def friends(items: object) -> list[str]:
    docs = _docs(items)
    if not docs:
        return ["No friends yet: add one with /add ID."]
    lines = ["Friends:"]
    for f in docs:
        lines.append(f"  {who(f.get('id'), f.get('name'))}  {clean(f.get('state', '?'))}")
    return lines


#: Members of each group the login summary lists; `groups` lists them all.
SUMMARY_MEMBERS = 10


def groups(items: object, members: int | None = None) -> list[str]:
    """Each group with its members (the first ``members`` of each, if given:
    a member of a few 1,000-member groups got thousands of lines at login)."""
    docs = _docs(items)
    if not docs:
        return ["No groups yet: /create NAME or /join GROUPID."]
    lines = ["Groups:"]
    for g in docs:
        desc = clean(g.get("groupdesc", ""))
        head = f"  [group {clean(g.get('id'))}] {clean(g.get('groupname'))}"
        lines.append(f"{head} - {desc}" if desc else head)
        users = _docs(g.get("users"))
        for m in users[:members]:
            role = clean(m.get("role", ""))
            lines.append(
                f"      {who(m.get('id'), m.get('name'))}  {clean(m.get('state'))}  {role}"
            )
        if members is not None and len(users) > members:
            lines.append(f"      ... and {len(users) - members} more (`groups` lists them all)")
    return lines


def login_summary(ack: dict[str, Any], multiline: bool = False) -> list[str]:
    lines = [f"Logged in as {who(ack.get('id'), ack.get('name'))}."]
    lines += friends(ack.get("friends"))
    lines += groups(ack.get("groups"), SUMMARY_MEMBERS)
    for what in ack.get("more") or ():
        lines.append(f"  (more {clean(what)}: type `{clean(what)}` to list them all)")
    offline = sorted(_docs(ack.get("offlinemsg")), key=taken_order)
    if offline:
        lines.append(f"While you were away ({len(offline)}):")
        lines += ["  " + chat(m, multiline).replace(CONTINUED, CONTINUED + "  ") for m in offline]
    return lines


def refusal(msg: dict[str, Any]) -> str:
    """A refusal as a sentence."""
    text = clean(msg.get("errmsg") or "refused")
    return f"Not done: {text[:1].upper()}{text[1:]}."


def notice(msg: dict[str, Any]) -> str:
    if msg.get("event") == "shutdown":  # this client reconnects by itself
        return "*** The server is restarting; reconnecting..."
    return f"*** {clean(msg.get('text', ''))}"


def friend_added(msg: dict[str, Any]) -> str:
    """FRIEND_ADDED: someone made you their friend (friendship is both ways)."""
    f = msg.get("friend")
    if not isinstance(f, dict):
        f = {}
    return f"*** {who(f.get('id'), f.get('name'))} added you as a friend."


def blocked(items: object) -> list[str]:
    docs = _docs(items)
    if not docs:
        return ["You block nobody."]
    return ["You block:"] + [f"  {who(d.get('id'), d.get('name'))}" for d in docs]


_ROLE_NOW = {
    "admin": "now an admin of",
    "normal": "no longer an admin of",
    "creator": "now the owner of",
}


def event(msg: dict[str, Any], me: int) -> str:
    """A FRIEND_EVENT or GROUP_EVENT as a notice, e.g. "you were removed from group 7 by bob"."""
    kind = msg.get("event")
    subject = "you" if msg.get("id") == me else who(msg.get("id"), msg.get("name"))
    by = who(msg.get("by"), msg.get("byname"))
    group = f"group {clean(msg.get('groupid'))}"
    if kind == "unfriended":
        text = f"{subject} removed you from their friends"
    elif kind == "left":
        text = f"{subject} left {group}"
    elif kind == "removed":
        were = "were" if subject == "you" else "was"
        text = f"{subject} {were} removed from {group} by {by}"
    elif kind == "role":
        are = "are" if subject == "you" else "is"
        now = _ROLE_NOW.get(str(msg.get("role")), f"now {clean(msg.get('role'))} in")
        text = f"{subject} {are} {now} {group}"
    elif kind == "edited":
        name, desc = clean(msg.get("groupname")), clean(msg.get("groupdesc", ""))
        only = ", invite-only" if msg.get("inviteonly") else ""
        text = f"{group} is now {name}" + (f" - {desc}" if desc else "") + f"{only} (by {by})"
    elif kind == "invited":
        name = clean(msg.get("groupname"))
        gid = clean(msg.get("groupid"))
        how = f"/join {gid} accepts, /decline {gid} turns it down"
        text = f"{by} invited you to {group} ({name}); {how}"
    elif kind == "deleted":
        text = f"{group} ({clean(msg.get('groupname'))}) was deleted by {by}"
    else:
        text = f"{group}: {clean(kind)}"
    return f"*** {text}"


def invites(items: object) -> list[str]:
    docs = _docs(items)
    if not docs:
        return ["No open invitations."]
    lines = ["Invitations (/join GROUPID accepts, /decline GROUPID turns down):"]
    for d in docs:
        head = f"  [group {clean(d.get('groupid'))}] {clean(d.get('groupname'))}"
        lines.append(f"{head}, from {who(d.get('by'), d.get('byname'))}")
    return lines


def history(
    target: int,
    group: bool,
    count: int,
    reply: dict[str, Any],
    before: int = 0,
    multiline: bool = False,
) -> list[str]:
    """A HISTORY_PAGE, oldest first as a conversation reads, and how to go
    further back; an empty page asked for before message ``before`` is the
    start of what is kept, not an empty conversation."""
    docs = _docs(reply.get("messages"))
    # The page names the partner (`name`): a page where only we spoke has
    # no message of theirs to take it from. An older server's page may not.
    name = None if group else reply.get("name")
    name = name or next((m.get("name") for m in docs if m.get("from") == target), None)
    where = f"group {target}" if group else (who(target, name) if name else f"user {target}")
    if not docs and before:
        return [f"No older messages with {where} kept (nothing before #{before})."]
    if not docs:
        return [f"No messages with {where} kept."]
    lines = [f"History with {where}:"]
    for m in sorted(docs, key=lambda m: (m.get("ts") or 0, m.get("id") or 0)):
        sender = who(m.get("from"), m.get("name"))
        lines.append(f"[{_day_clock(m)}] {sender}: {text(m.get('msg', ''), multiline)}")
    if reply.get("more"):
        oldest = min(int(m.get("id") or 0) for m in docs)
        cmd = "ghistory" if group else "history"
        further = f"/{cmd} {target} {count} {oldest}"
        lines.append(f"(older messages: {further}, the {count} before #{oldest})")
    return lines


def _day_clock(msg: dict[str, Any]) -> str:
    ts = msg.get("ts")
    if isinstance(ts, int):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts / 1000))
    return "--"
