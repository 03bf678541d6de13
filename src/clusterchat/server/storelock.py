"""One SQLite store, one lone node: a node without --redis believes every
session of its store is its own (it marks all users offline at start, it
delivers to no other node), so a second lone node on the same file would
undo the first's presence and lose its messages to users online there.

The node holds ``<file>.lock`` (flock) while it runs: exclusively when it
runs alone, shared when it joins a cluster through Redis (nodes of one
cluster may share a file). The kernel lets go when the process ends, even
on SIGKILL, so a crash leaves nothing to clean up. A lone node writes its
pid and address into the file: the refusal names them, and
`clusterchat admin` finds the node there to end sessions (server/control.py).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from clusterchat.storage.sql import sqlite_file


class StoreInUse(Exception):
    """Another node holds the store in a way this one cannot share."""


@dataclass(frozen=True)
class LoneNode:
    """What a lone node wrote into its store's lock file."""

    pid: int
    address: str


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def lone_node(url: str) -> LoneNode | None:
    """The lone node running on this SQLite store, if one is."""
    db = sqlite_file(url)
    if db is None or not lock_path(db).exists():
        return None
    with lock_path(db).open("r+") as f:
        try:  # a lock we can take: nobody holds it exclusively
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _written(f)
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _written(f: IO[str]) -> LoneNode | None:
    f.seek(0)
    try:
        doc = json.loads(f.read())
        return LoneNode(int(doc["pid"]), str(doc["address"]))
    except (ValueError, KeyError, TypeError):
        return None


def hold(url: str, alone: bool, address: str) -> IO[str] | None:
    """Take the store's lock for this process's life (the file object is the
    lock: keep it); None when the store is no SQLite file."""
    db = sqlite_file(url)
    if db is None:
        return None
    db.parent.mkdir(parents=True, exist_ok=True)
    f = lock_path(db).open("a+")
    try:
        fcntl.flock(f, (fcntl.LOCK_EX if alone else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreInUse(_refusal(db, f, alone)) from None
    if alone:
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "address": address}))
        f.flush()
    return f


def _refusal(db: Path, f: IO[str], alone: bool) -> str:
    own = "give this node a store of its own with --db sqlite+aiosqlite:///OTHER.db"
    if alone:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            f.close()
            return (
                f"{db} is in use by nodes of a cluster (--redis); a node without --redis "
                f"would take their users for its own: {own} (or CLUSTERCHAT_HOME=DIR), "
                "or join it to them with the same --redis"
            )
    other = _written(f)
    f.close()
    who = f" (pid {other.pid}, {other.address})" if other else ""
    if not alone:
        return f"{db} is in use by a node running without --redis{who}: {own}"
    return (
        f"{db} is in use by another node running without --redis{who}; two lone nodes "
        f"on one store would each take every user for its own: {own} (or "
        "CLUSTERCHAT_HOME=DIR), or run both with --redis to make them one cluster"
    )
