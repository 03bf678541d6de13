"""`clusterchat admin` against a node running alone (no Redis) on its SQLite
file: kick, ban and delete end the user's live session with the notice that
says why, as they do in a cluster. The session used to stay connected (a
deleted or banned user chatting on until they logged out)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import LoginErr, MsgId
from tests.conftest import PASSWORD, unique
from tests.e2e.test_process import server_process

ALONE = {"CLUSTERCHAT_REDIS": ""}


async def _admin(db: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "admin", "--db", db, *args,
        env={**os.environ, **ALONE},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _online(port: int) -> tuple[ChatConnection, int]:
    c = await ChatConnection.open("127.0.0.1", port)
    uid = await c.register(unique(), PASSWORD)
    assert (await c.login(uid, PASSWORD))["errno"] == 0
    return c, uid


async def test_admin_ends_sessions_on_a_lone_node(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    async with server_process("--port", "0", "--db", db, env=ALONE) as (proc, port, _):
        (bob, bob_id), (alice, alice_id), (carol, carol_id) = [
            await _online(port) for _ in range(3)
        ]
        code, out, err = await _admin(db, "kick", str(bob_id))
        assert (code, out.strip()) == (0, f"user {bob_id}: session ended"), (out, err)
        assert (await bob.expect(MsgId.NOTICE))["event"] == "kicked"
        assert await bob.at_eof()

        code, out, err = await _admin(db, "ban", str(alice_id))
        assert code == 0 and "warning" not in err, err
        assert (await alice.expect(MsgId.NOTICE))["event"] == "banned"
        assert await alice.at_eof()
        again = await ChatConnection.open("127.0.0.1", port)
        assert (await again.login(alice_id, PASSWORD))["errno"] == LoginErr.BANNED

        # The session is over before the rows go: admin waited for it.
        code, out, err = await _admin(db, "delete", str(carol_id))
        assert code == 0 and out.startswith(f"user {carol_id} deleted"), (out, err)
        assert (await carol.expect(MsgId.NOTICE))["event"] == "kicked"
        assert await carol.at_eof()
        for c in (bob, alice, carol, again):
            await c.close()
        proc.terminate()
        assert await proc.wait() == 0
    # No node runs on the file now: nothing to end, the change is made all the same.
    code, out, err = await _admin(db, "ban", str(bob_id))
    assert code == 0 and out.strip() == f"user {bob_id} banned", (out, err)
    assert not list((tmp_path / "chat.db.events").iterdir())  # nothing left behind
