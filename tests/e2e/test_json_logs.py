"""`--log-format json`: every line a JSON object, and lines about a client
connection carry that connection's id (a different one per connection)."""

from __future__ import annotations

import asyncio
import json

from clusterchat.client.connection import ChatConnection
from tests.e2e.test_process import server_process


async def test_json_lines_carry_the_connection_id(db_url: str) -> None:
    async with server_process("--port", "0", "--db", db_url, "--log-format", "json") as (
        proc,
        port,
        _,
    ):
        assert proc.stderr is not None
        ids = []
        for _ in range(2):
            c = await ChatConnection.open("127.0.0.1", port, legacy=True)
            await c.send({"msgid": 6, "toid": 1, "msg": "before login"})  # refused, logged
            async with asyncio.timeout(10):
                while True:
                    doc = json.loads(await proc.stderr.readline())
                    assert {"ts", "level", "logger", "msg"} <= set(doc)
                    if "refused legacy" in doc["msg"]:
                        break
            ids.append(doc["conn"])
            await c.close()
        assert all(isinstance(i, int) and i > 0 for i in ids) and ids[0] != ids[1]
