"""The original's schema (table and column names kept), widened where it broke.

Versioned with Alembic: a change here goes with a new script in
``storage/migrations/versions`` (docs/MIGRATIONS.md).

Changes from the original: ``password`` holds an argon2id hash (255 chars),
``ticket`` a session ticket's digest, ``banned`` an operator's ban;
``offlinemessage`` gains an auto-increment ``id`` so offline messages are
delivered in the order sent, and its text is unbounded (MEDIUMTEXT on MySQL)
instead of VARCHAR(500). Everything is utf8mb4 on MySQL. Groups gain an
``admin`` role, a join time and an invite-only flag; ``blocked`` holds who
blocks whom, ``groupinvite`` invitations to invite-only groups. ``history``
keeps every chat message for ``--history-days`` (revision 0006), several of
one conversation to a row (revision 0007). ``mailbox`` tallies each
user's stored offline messages for the quotas (revision 0008).
``offlinebody`` keeps a text sent to many receivers once, ``mailboxshare``
what each sender holds of a receiver's quota (revision 0009).

Names (users and groups) are unique by their key (``namekey``,
``groupkey``: see :mod:`clusterchat.protocol.names`), compared byte for
byte on every backend; MySQL's default collation would make "x😀" equal
"x😎" and "a" equal "a ".
"""

from __future__ import annotations

import time

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Enum,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.dialects import mysql, sqlite

from clusterchat.protocol.names import MAX_KEY, MAX_NAME

metadata = MetaData()


def _now_us() -> int:
    return time.time_ns() // 1000


def _exact(length: int) -> String:
    """VARCHAR compared byte for byte: SQLite always does, MySQL with utf8mb4_bin."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


# SQLite only auto-increments INTEGER PRIMARY KEY, so BIGINT needs a variant.
_BigId = BigInteger().with_variant(sqlite.INTEGER(), "sqlite")

user = Table(
    "user",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", _exact(MAX_NAME), nullable=False, unique=True),
    Column("namekey", _exact(MAX_KEY), nullable=False, unique=True),
    Column("password", String(255), nullable=False),
    Column(
        "state",
        Enum("online", "offline", name="user_state"),
        nullable=False,
        server_default="offline",
    ),
    # SHA-256 of the session ticket issued at the last login: lets a client
    # that lost its connection log in again without the slow password hash.
    Column("ticket", String(64), nullable=True),
    # Set by `clusterchat admin ban`: no login, password or ticket.
    Column("banned", Boolean, nullable=False, server_default=false()),
    # When that ticket stops working (seconds since the epoch); a ticket is
    # replaced at each use, so a stolen old one is dead once the owner uses theirs.
    Column("ticketexpiry", BigInteger, nullable=True),
    # Revision 0011: ids never reused (SQLite reuses the highest otherwise):
    # a deleted account's id must not pass to the next one who registers.
    sqlite_autoincrement=True,
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

friend = Table(
    "friend",
    metadata,
    Column("userid", Integer, primary_key=True, autoincrement=False),
    Column("friendid", Integer, primary_key=True, autoincrement=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

allgroup = Table(
    "allgroup",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("groupname", _exact(MAX_NAME), nullable=False, unique=True),
    Column("groupkey", _exact(MAX_KEY), nullable=False, unique=True),
    Column("groupdesc", String(200), nullable=False, server_default=""),
    # Joining needs an invitation (groupinvite) from an admin or the creator.
    Column("inviteonly", Boolean, nullable=False, server_default=false()),
    sqlite_autoincrement=True,  # revision 0011, as ``user``
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

groupuser = Table(
    "groupuser",
    metadata,
    Column("groupid", Integer, primary_key=True, autoincrement=False),
    Column("userid", Integer, primary_key=True, autoincrement=False),
    Column(
        "grouprole",
        Enum("creator", "normal", "admin", name="group_role"),
        nullable=False,
        server_default="normal",
    ),
    # When the member joined (microseconds since the epoch): a creator who
    # leaves hands the group to the longest member. Set by the insert.
    Column("joined", BigInteger, nullable=False, server_default="0", default=_now_us),
    Index("ix_groupuser_userid", "userid"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

offlinemessage = Table(
    "offlinemessage",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("userid", Integer, nullable=False),
    Column("message", Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"), nullable=False),
    # Bytes of ``message`` (UTF-8): per-receiver quotas sum this, not the text.
    Column("size", Integer, nullable=False, server_default="0"),
    # Revision 0009. A row whose text is shared (one message to many
    # receivers, a group's fan-out) has ``userid`` = minus the receiver's id,
    # ``message`` empty and ``bodyid`` naming its ``offlinebody``; ``size`` is
    # still the text's. Negative so that code from before 0009, which reads
    # ``userid = receiver``, never sees such a row (during a rolling upgrade
    # it neither delivers it as an empty text nor deletes it).
    Column("bodyid", BigInteger, nullable=True),
    # Who sent it (0: not known, kept before 0009 or re-stored by a node):
    # the per-sender share of a receiver's quota (``mailboxshare``).
    Column("sender", Integer, nullable=False, server_default="0"),
    Index("ix_offlinemessage_userid_id", "userid", "id"),
    # Revision 0010: ids never reused (SQLite reuses the highest otherwise);
    # a confirmed row is deleted by id, maybe late (service/stored_rows.py).
    sqlite_autoincrement=True,
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

#: The text of a message kept for many receivers, stored once (revision
#: 0009): a group message for 1,000 offline members was 1,000 copies of its
#: text, built and escaped on the node's event loop. ``refs``: the
#: ``offlinemessage`` rows naming it; the transaction deleting the last of
#: them deletes it.
offlinebody = Table(
    "offlinebody",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("message", Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"), nullable=False),
    Column("size", Integer, nullable=False, server_default="0"),
    Column("refs", Integer, nullable=False, server_default="0"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

#: Each user's stored offline count and bytes (revision 0008), kept with the
#: rows in the same transaction, so the quota check reads one row per
#: receiver instead of summing the mailbox. A bound, not the truth: the
#: store recounts a user exactly before refusing one, and corrects it.
mailbox = Table(
    "mailbox",
    metadata,
    Column("userid", Integer, primary_key=True, autoincrement=False),
    Column("n", Integer, nullable=False, server_default="0"),
    Column("bytes", _BigId, nullable=False, server_default="0"),
    # When (epoch seconds) a recount last confirmed the user full: refusals
    # trust the tally until it is MAILBOX_RECHECK seconds old.
    Column("checked", Integer, nullable=False, server_default="0"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

#: What one sender has stored in one receiver's mailbox (revision 0009), kept
#: like ``mailbox`` in the same transactions as the rows: one sender may hold
#: only a share of a receiver's quota (``--offline-share``). A row goes when
#: its count reaches 0. A bound too, recounted before it refuses.
mailboxshare = Table(
    "mailboxshare",
    metadata,
    Column("userid", Integer, primary_key=True, autoincrement=False),
    Column("sender", Integer, primary_key=True, autoincrement=False),
    Column("n", Integer, nullable=False, server_default="0"),
    Column("bytes", _BigId, nullable=False, server_default="0"),
    Column("checked", Integer, nullable=False, server_default="0"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)


blocked = Table(
    "blocked",
    metadata,
    # ``userid`` blocks ``blockedid``: no chat, friend request or presence from them.
    Column("userid", Integer, primary_key=True, autoincrement=False),
    Column("blockedid", Integer, primary_key=True, autoincrement=False),
    Index("ix_blocked_blockedid", "blockedid"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)


groupinvite = Table(
    "groupinvite",
    metadata,
    # ``inviter`` invited ``userid`` to ``groupid``; joining uses it up.
    Column("groupid", Integer, primary_key=True, autoincrement=False),
    Column("userid", Integer, primary_key=True, autoincrement=False),
    Column("inviter", Integer, nullable=False),
    Index("ix_groupinvite_userid", "userid"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)


#: Every 1:1 and group message, kept for ``--history-days`` (written in batches
#: by the sender's node, purged in small chunks by id). A conversation is the
#: pair (``conva``, ``convb``): the two users' ids lower first for 1:1 chat,
#: (0, group id) for a group (no user has id 0). ``id`` orders and pages it:
#: "the newest rows before id X" is one range scan of the index below. A row
#: holds ``n`` messages of one conversation, written in one round (revision
#: 0007): ``sender``, ``mid`` and ``ts`` are its newest message's, and
#: ``body`` is that message's text when ``n`` is 1, else all ``n`` of them as a
#: JSON array of ``[sender, mid, ts, text]``, oldest first (storage/history.py).
history = Table(
    "history",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("conva", Integer, nullable=False),
    Column("convb", Integer, nullable=False),
    Column("sender", Integer, nullable=False),
    Column("mid", String(128), nullable=False),
    # The server's time the message was accepted (milliseconds since the epoch).
    Column("ts", BigInteger, nullable=False),
    Column("body", Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"), nullable=False),
    Column("n", Integer, nullable=False, server_default="1"),
    Index("ix_history_conv_id", "conva", "convb", "id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)


def mysql_ddl(database: str = "chat") -> str:
    """The schema as MySQL statements: what ships as ``sql/chat.sql``."""
    from sqlalchemy.dialects import mysql
    from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

    dialect = mysql.dialect()
    out = [
        "-- clusterchat schema for MySQL/MariaDB, for people who create databases by hand.",
        "-- Generated by `clusterchat db schema` from clusterchat/storage/tables.py.",
        "-- `clusterchat db init --db mysql+asyncmy://USER@HOST:3306/chat` does the same.",
        "",
        f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4;",
        f"USE `{database}`;",
        "",
    ]
    for table in metadata.sorted_tables:
        stmts: list[ExecutableDDLElement] = [CreateTable(table, if_not_exists=True)]
        stmts += [CreateIndex(ix, if_not_exists=True) for ix in sorted(table.indexes, key=str)]
        for stmt in stmts:
            lines = str(stmt.compile(dialect=dialect)).strip().splitlines()
            out += [line.rstrip() for line in lines]
            out[-1] += ";"
            out.append("")
    return "\n".join(out)
