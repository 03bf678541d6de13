"""`clusterchat admin` to a lone node (no Redis) on an SQLite store: the
events a cluster's nodes hear on Redis (``k<uid>`` kick, ``b<uid>`` ban,
``g<gid>`` a group changed) are handed over as files in
``<file>.events/``, and SIGUSR1 tells the node, found by the pid in the
store's lock file (server/storelock.py), to act on them. The node deletes
each file once the sessions it names are gone, which is what admin waits
for: a deleted or banned user's session no longer outlives the command.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from pathlib import Path

from clusterchat.server import storelock
from clusterchat.storage.sql import sqlite_file

#: How long a session being ended may take to go (s).
PATIENCE = 10.0


def events_dir(db: Path) -> Path:
    return db.with_name(db.name + ".events")


async def post(url: str, events: list[str], timeout: float = PATIENCE) -> bool | None:
    """Hand ``events`` to the lone node on this store; True once it acted on
    them, False if it did not in ``timeout``, None if no lone node runs
    there (or the store is no SQLite file: then only Redis reaches nodes)."""
    db = sqlite_file(url)
    node = storelock.lone_node(url) if db else None
    if db is None or node is None:
        return None
    folder = events_dir(db)
    folder.mkdir(exist_ok=True)
    name = secrets.token_hex(8)
    (folder / f".{name}").write_text("\n".join(events))
    os.replace(folder / f".{name}", folder / name)  # whole, or not there
    try:
        os.kill(node.pid, signal.SIGUSR1)
    except ProcessLookupError:  # it ended meanwhile: nobody is online there
        (folder / name).unlink(missing_ok=True)
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (folder / name).exists():
        if loop.time() > deadline:
            (folder / name).unlink(missing_ok=True)
            return False
        await asyncio.sleep(0.02)
    return True


def pending(db: Path) -> list[tuple[Path, list[str]]]:
    """The event files waiting (the node's side), each with its events."""
    folder = events_dir(db)
    try:
        names = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for path in names:
        try:
            out.append((path, path.read_text().split()))
        except FileNotFoundError:  # given up on by admin meanwhile
            continue
    return out
