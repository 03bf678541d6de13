"""The brute-force guard holds the guesser and lets the owner in: failures
count per (account, address) and per address, and buy a growing delay."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol.messages import LoginErr, MsgId
from clusterchat.server.node import Node
from clusterchat.service.backoff import Backoff
from clusterchat.service.limits import Limits
from clusterchat.service.passwords import HashCost
from tests.conftest import PASSWORD, unique

FREE, FIRST = 3, 0.2
ATTACKER, OWNER, NAT = "127.0.0.2", "127.0.0.3", "127.0.0.4"


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[Node]:
    limits = Limits(
        login_failures=FREE,
        login_failures_per_address=10,
        login_delay=FIRST,
        login_delay_max=60,
        message_rate=0,
    )
    n = Node(replace(settings, limits=limits))
    await n.start()
    yield n
    await n.stop()


async def _open(node: Node, address: str) -> ChatConnection:
    return await ChatConnection.open("127.0.0.1", node.port, local_addr=(address, 0))


def _wait(reply: dict[str, object]) -> int:
    assert reply["errno"] == LoginErr.TOO_MANY_FAILURES, reply
    found = re.search(r"try again in (\d+) s", str(reply["errmsg"]))
    assert found, reply
    return int(found.group(1))


async def test_the_guesser_is_held_and_the_owner_gets_in(guarded: Node) -> None:
    owner = await _open(guarded, OWNER)
    victim = await owner.register(unique(), PASSWORD)
    attacker = await _open(guarded, ATTACKER)
    guesses = refused = 0
    for _ in range(40):  # as fast as it can
        reply = await attacker.login(victim, "guess")
        guesses += reply["errno"] == LoginErr.BAD_CREDENTIALS
        refused += reply["errno"] == LoginErr.TOO_MANY_FAILURES
    # Three free guesses, then each waits: at most one more got through.
    assert guesses <= FREE + 1 and refused >= 40 - FREE - 1
    # The owner, from their own address, is not slowed at all.
    assert (await owner.login(victim, PASSWORD))["errno"] == 0
    print(f"40 tries in a burst: {guesses} checked, {refused} refused; owner let in")
    await attacker.close()
    await owner.close()


async def test_guesses_sent_at_once_get_no_more_free_tries(guarded: Node) -> None:
    # Before: every guess in flight passed the check made before any of them
    # was counted: 30 concurrent guesses were 30 password checks, not 3.
    owner = await _open(guarded, OWNER)
    victim = await owner.register(unique(), PASSWORD)
    bots = [await _open(guarded, ATTACKER) for _ in range(30)]
    replies = await asyncio.gather(*(b.login(victim, "guess") for b in bots))
    checked = sum(r["errno"] == LoginErr.BAD_CREDENTIALS for r in replies)
    assert checked <= FREE + 1, [r["errno"] for r in replies]
    held = (LoginErr.BAD_CREDENTIALS, LoginErr.TOO_MANY_FAILURES, LoginErr.UNAVAILABLE)
    assert all(r["errno"] in held for r in replies), replies
    assert (await owner.login(victim, PASSWORD))["errno"] == 0
    print(f"30 guesses at once: {checked} checked, the rest refused; owner let in")
    for c in (*bots, owner):
        await c.close()


async def test_one_address_cannot_fill_the_login_queue(settings: Settings) -> None:
    # Before: 40 password logins at once from one address (under its
    # connection limit) filled the queue (16), and the owner, from another
    # address, was told "busy".
    cost = HashCost(time_cost=2, memory_kib=16384, parallelism=1)
    node = Node(replace(settings, hash_cost=cost, login_queue=16))
    await node.start()
    try:
        owner = await _open(node, OWNER)
        uid = await owner.register(unique(), PASSWORD)
        bots = [await _open(node, ATTACKER) for _ in range(40)]
        flood = [asyncio.ensure_future(b.login(2_000_000_000 + n, "x")) for n, b in enumerate(bots)]
        await asyncio.sleep(0.05)  # the flood is in
        assert (await owner.login(uid, PASSWORD))["errno"] == LoginErr.OK
        replies = await asyncio.gather(*flood)
        busy = [r for r in replies if r["errno"] == LoginErr.UNAVAILABLE]
        assert busy and all("from your address" in str(r["errmsg"]) for r in busy), replies
        for c in (*bots, owner):
            await c.close()
    finally:
        await node.stop()


async def test_logins_queued_by_one_address_do_not_hold_up_another(settings: Settings) -> None:
    # Before: checks waited first come first served, so 30 password logins
    # queued by one address (its own accounts logging in and out as fast as
    # the request limit allows: never a failure, every one a full hash) made
    # the owner, from another address, wait behind all 30. Now addresses
    # take turns: the owner waits for the checks running and one more.
    cost = HashCost(time_cost=2, memory_kib=16384, parallelism=1)
    node = Node(replace(settings, hash_cost=cost))
    await node.start()
    try:
        owner = await _open(node, OWNER)
        uid = await owner.register(unique(), PASSWORD)
        bots = [await _open(node, ATTACKER) for _ in range(30)]
        accounts = [await b.register(unique(), PASSWORD) for b in bots]
        flood = [
            asyncio.ensure_future(b.login(a, PASSWORD)) for b, a in zip(bots, accounts, strict=True)
        ]
        passwords = node.service.passwords
        async with asyncio.timeout(10):
            while passwords.queued < 25:  # noqa: ASYNC110 - the node's state, polled
                await asyncio.sleep(0.005)
        assert (await owner.login(uid, PASSWORD))["errno"] == LoginErr.OK
        ahead = sum(f.done() for f in flood)
        assert ahead <= 10, f"{ahead} of the other address's 30 logins went first"
        assert all(r["errno"] == LoginErr.OK for r in await asyncio.gather(*flood))
        print(f"the owner's login came after {ahead} of the other address's 30")
        for c in (*bots, owner):
            await c.close()
    finally:
        await node.stop()


async def test_a_valid_ticket_works_even_from_the_guessers_address(guarded: Node) -> None:
    owner = await _open(guarded, ATTACKER)
    victim = await owner.register(unique(), PASSWORD)
    ticket = (await owner.login(victim, PASSWORD))["ticket"]
    await owner.abort()  # dropped, not logged out: the ticket stays valid
    attacker = await _open(guarded, ATTACKER)
    for _ in range(12):
        await attacker.login(victim, "guess")
    assert _wait(await attacker.login(victim, PASSWORD)) >= 1  # same address: held
    back = await _open(guarded, ATTACKER)
    reply = await back.request(
        {"msgid": MsgId.LOGIN, "id": victim, "ticket": ticket}, MsgId.LOGIN_ACK, timeout=20
    )
    assert reply["errno"] == 0 and reply["resumed"] is True
    for c in (attacker, back):
        await c.close()


async def test_guessing_ids_that_do_not_exist_locks_no_real_user(guarded: Node) -> None:
    real = await _open(guarded, NAT)
    uid = await real.register(unique(), PASSWORD)
    attacker = await _open(guarded, ATTACKER)
    for n in range(30):
        await attacker.login(2_000_000_000 + n, "guess")
    # The address that guessed is slowed down, for every account...
    assert _wait(await attacker.login(uid, PASSWORD)) >= 1
    # ...but the real user, elsewhere, is not.
    assert (await real.login(uid, PASSWORD))["errno"] == 0
    for c in (real, attacker):
        await c.close()


def test_the_delay_doubles_and_is_forgotten() -> None:
    now = [0.0]
    b = Backoff(2, 1.0, 8.0, 100.0, clock=lambda: now[0])
    waits = []
    for _ in range(7):
        b.failed("k")
        waits.append(b.wait("k"))
    assert waits == [0, 1, 2, 4, 8, 8, 8]
    now[0] = 5.0
    assert b.wait("k") == 3.0
    now[0] = 200.0
    assert b.wait("k") == 0
    b.failed("k")
    assert b.wait("k") == 0  # forgotten: free again
