"""The original's schema (table and column names kept), widened where it broke.

Changes from the original: ``password`` holds an argon2id hash (255 chars);
``offlinemessage`` gains an auto-increment ``id`` so offline messages are
delivered in the order sent, and its text is unbounded (MEDIUMTEXT on MySQL)
instead of VARCHAR(500). Everything is utf8mb4 on MySQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Enum,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql, sqlite

metadata = MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY, so BIGINT needs a variant.
_BigId = BigInteger().with_variant(sqlite.INTEGER(), "sqlite")

user = Table(
    "user",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(50), nullable=False, unique=True),
    Column("password", String(255), nullable=False),
    Column(
        "state",
        Enum("online", "offline", name="user_state"),
        nullable=False,
        server_default="offline",
    ),
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
    Column("groupname", String(50), nullable=False, unique=True),
    Column("groupdesc", String(200), nullable=False, server_default=""),
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
        Enum("creator", "normal", name="group_role"),
        nullable=False,
        server_default="normal",
    ),
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
    Index("ix_offlinemessage_userid_id", "userid", "id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)
