"""Which schema a database has, and bringing it to the one this code needs.

The schema is versioned with Alembic (scripts in ``storage/migrations``).
A database made before versioning is recognised by its columns and stamped
first: the original C++ system's tables (revision 0000), clusterchat's first
release (0001), the release that added session tickets (0002).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from clusterchat.storage.tables import metadata

log = logging.getLogger(__name__)

UPGRADE_HINT = "clusterchat db upgrade --db URL"


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("clusterchat.storage") / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The revision this code's tables correspond to."""
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None
    return rev


def known() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


@dataclass(frozen=True, slots=True)
class State:
    """``revision``: None for an empty database."""

    revision: str | None
    head: str
    known: bool
    #: False: no ``alembic_version`` row; the revision was told by the tables
    #: (made before versioning, or being made by another node right now).
    stamped: bool = True

    @property
    def versioned(self) -> bool:
        """Has an ``alembic_version`` row (else recognised by its columns)."""
        return self.stamped

    @property
    def current(self) -> bool:
        return self.revision == self.head

    @property
    def empty(self) -> bool:
        return self.revision is None

    def problem(self) -> str | None:
        """Why a node must not start on it, with what to do; None if it may."""
        if self.current or self.empty:
            return None
        if not self.known:
            return (
                f"the database's schema revision {self.revision} is unknown to this "
                f"clusterchat (newest it knows: {self.head}); run a newer clusterchat"
            )
        return (
            f"the database's schema is at revision {self.revision}, this clusterchat needs "
            f"{self.head}; back it up and run `{UPGRADE_HINT}`"
        )


def _ids_kept(connection: Connection, table: str) -> bool:
    """``table``'s ids are never reused: always so but on SQLite, where the
    table must say AUTOINCREMENT (revisions 0010 and 0011)."""
    if connection.dialect.name != "sqlite":
        return True
    sql = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar()
    return "AUTOINCREMENT" in str(sql or "").upper()


def _unversioned(connection: Connection) -> str | None:
    """The revision of tables made before versioning, by their columns; None if empty."""
    insp = inspect(connection)
    tables = {t.lower() for t in insp.get_table_names()}
    if "user" not in tables:
        return None
    if "mailboxshare" in tables:
        if not _ids_kept(connection, "offlinemessage"):
            return "0009"
        return "0011" if _ids_kept(connection, "user") else "0010"
    if "mailbox" in tables:
        return "0008"
    if "history" in tables:
        history_cols = {c["name"] for c in insp.get_columns("history")}
        return "0007" if "n" in history_cols else "0006"
    user_cols = {c["name"] for c in insp.get_columns("user")}
    if "namekey" in user_cols:
        return "0005"
    if "blocked" in tables:
        return "0004"
    if "banned" in user_cols:
        return "0003"
    if "ticket" in user_cols:
        return "0002"
    offline_cols = {c["name"] for c in insp.get_columns("offlinemessage")}
    return "0001" if "id" in offline_cols else "0000"


def state(connection: Connection) -> State:
    revision = MigrationContext.configure(connection).get_current_revision()
    stamped = revision is not None
    if revision is None:
        revision = _unversioned(connection)
    return State(revision, head(), revision in known(), stamped)


def stamp_new(connection: Connection) -> None:
    """Record that tables just made by ``metadata.create_all`` are at head
    (Alembic's recipe for a database built from scratch), unless another
    node already did."""
    if MigrationContext.configure(connection).get_current_revision() is None:
        command.stamp(_config(connection), "head")


def upgrade(connection: Connection) -> tuple[str | None, str]:
    """Stamp an unversioned database, then upgrade it to head; returns (from, to).
    The caller commits."""
    cfg = _config(connection)
    before = MigrationContext.configure(connection).get_current_revision()
    if before is None:
        before = _unversioned(connection)
        if before is None:  # empty: today's tables at once, as Alembic advises
            metadata.create_all(connection)
            command.stamp(cfg, "head")
            return None, head()
        log.info("database made before schema versioning: recognised as %s", before)
        command.stamp(cfg, before)
    command.upgrade(cfg, "head")
    if before != head():
        log.info("schema upgraded from revision %s to %s", before, head())
    return before, head()
