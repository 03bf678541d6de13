"""Registration is metered per address and hashes on its own pool: a flood
of registrations cannot take the hashing threads password logins need."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import LoginErr, MsgId, RegErr
from clusterchat.server.node import Node
from clusterchat.service.limits import Limits
from clusterchat.service.passwords import HashCost
from tests.conftest import PASSWORD, unique


async def _reg(conn: ChatConnection) -> dict[str, object]:
    return await conn.request(
        {"msgid": MsgId.REG, "name": unique(), "password": PASSWORD}, MsgId.REG_ACK, timeout=60
    )


async def test_registrations_are_metered_per_address(settings: Settings) -> None:
    node = Node(replace(settings, limits=Limits(registrations_per_address=3)))
    await node.start()
    try:
        bot = await ChatConnection.open("127.0.0.1", node.port, local_addr=("127.0.0.2", 0))
        for _ in range(3):
            assert (await _reg(bot))["errno"] == 0
        refused = await _reg(bot)
        assert refused["errno"] == RegErr.TOO_MANY
        assert re.search(r"at most 3\); try again in \d+ s", str(refused["errmsg"])), refused
        # Someone else, from another address, registers at once.
        person = await ChatConnection.open("127.0.0.1", node.port, local_addr=("127.0.0.3", 0))
        assert (await _reg(person))["errno"] == 0
        for c in (bot, person):
            await c.close()
    finally:
        await node.stop()


async def test_registrations_sent_at_once_are_metered_too(settings: Settings) -> None:
    # Before: all 12 passed the check made before any was counted.
    node = Node(replace(settings, limits=Limits(registrations_per_address=3)))
    await node.start()
    try:
        bots = [
            await ChatConnection.open("127.0.0.1", node.port, local_addr=("127.0.0.2", 0))
            for _ in range(12)
        ]
        regs = await asyncio.gather(*(_reg(b) for b in bots))
        errnos = sorted(int(str(r["errno"])) for r in regs)
        assert errnos == [0] * 3 + [RegErr.TOO_MANY] * 9, regs
        for b in bots:
            await b.close()
    finally:
        await node.stop()


FLOOD, LOGINS = 100, 10


async def test_a_registration_flood_leaves_password_logins_their_share(
    settings: Settings,
) -> None:
    # A hash that costs something, so that the flood really queues.
    cost = HashCost(time_cost=2, memory_kib=16384, parallelism=1)
    node = Node(replace(settings, hash_cost=cost, register_queue=4, login_queue=64))
    await node.start()
    try:
        users = []
        for _ in range(LOGINS):
            c = await ChatConnection.open("127.0.0.1", node.port)
            users.append((c, await c.register(unique(), PASSWORD)))
        # One more user, who will come back by ticket during the flood.
        back = await ChatConnection.open("127.0.0.1", node.port)
        back_id = await back.register(unique(), PASSWORD)
        ticket = (await back.login(back_id, PASSWORD))["ticket"]
        await back.abort()
        async with asyncio.timeout(10):
            while back_id in node.service.sessions:  # noqa: ASYNC110 - polled with a deadline
                await asyncio.sleep(0.01)
        bots = [
            await ChatConnection.open(
                "127.0.0.1", node.port, local_addr=(f"127.0.1.{1 + n % 200}", 0)
            )
            for n in range(FLOOD)
        ]
        flood = [asyncio.ensure_future(_reg(b)) for b in bots]
        await asyncio.sleep(0)  # the flood goes out first
        loop = asyncio.get_running_loop()
        started = loop.time()
        again = await ChatConnection.open("127.0.0.1", node.port)
        by_ticket = {"msgid": MsgId.LOGIN, "id": back_id, "ticket": ticket}
        logins = await asyncio.gather(
            *(c.login(uid, PASSWORD) for c, uid in users), again.request(by_ticket, MsgId.LOGIN_ACK)
        )
        took = loop.time() - started
        regs = await asyncio.gather(*flood)
        assert [r["errno"] for r in logins] == [LoginErr.OK] * (LOGINS + 1), logins
        assert logins[-1]["resumed"] is True  # the ticket login never waited for a hash
        busy = [r for r in regs if r["errno"] == RegErr.UNAVAILABLE]
        done = [r for r in regs if r["errno"] == 0]
        assert busy and "registrations" in str(busy[0]["errmsg"])
        assert len(busy) + len(done) == FLOOD
        print(f"{FLOOD} REGs: {len(done)} done, {len(busy)} busy; {LOGINS}/{LOGINS} logins "
              f"ok in {took:.2f} s")  # fmt: skip
        for c in [*bots, again, *(c for c, _ in users)]:
            await c.close()
    finally:
        await node.stop()
