"""A receiver's own cut-offs cannot grow its mailbox past the quota.

What a cut-off connection leaves unconfirmed is stored whatever the quota
(it was acknowledged to its senders). A receiver fed by senders of its own
that reads and never confirms was cut off at the receipt window, came
back, and did it again: its mailbox grew by a window each time (an attack
measured 400 rows against a 50-message quota in 20 s). Now, while its
mailbox is at its quota, new messages to it take the stored path, where
the quota refuses them (ERROR 171): the mailbox ends at most a window and
a message past the quota, and an honest receiver who confirms what it was
kept gets live messages again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from clusterchat.client.connection import ChatConnection
from clusterchat.config import Settings
from clusterchat.protocol import codec
from clusterchat.protocol.messages import ChatStatus, ErrCode, MsgId
from clusterchat.server.node import Node
from tests.conftest import PASSWORD
from tests.mailboxes import (
    QUOTA,
    ROUNDS,
    SMALL,
    WINDOW,
    a_full_member_misses_a_group_message,
    chat,
    gone,
    logged_in,
    quota_limits,
    registered,
    stored_rows,
)

REFUSED = (ErrCode.MAILBOX_FULL, ErrCode.MAILBOX_SHARE_FULL)


def _limits(settings: Settings, quota: int) -> Settings:
    limits = quota_limits(settings.limits, quota)
    return replace(settings, limits=limits)


@pytest.fixture
async def qnode(settings: Settings) -> AsyncIterator[Node]:
    n = Node(_limits(settings, QUOTA))
    await n.start()
    yield n
    await n.stop()


@pytest.fixture
async def small_node(settings: Settings) -> AsyncIterator[Node]:
    """A quota smaller than the window, as --offline-quota 50 against the
    default --receipt-window 2000 in the attack that found this."""
    n = Node(_limits(settings, SMALL))
    await n.start()
    yield n
    await n.stop()


def _marked_full(node: Node, uid: int) -> bool:
    """The node sends ``uid``'s new messages through the store."""
    s = node.service.sessions.get(uid)
    return s is not None and s.race.full


async def test_a_receiver_that_never_confirms_is_held_to_its_quota(small_node: Node) -> None:
    """Rounds of: log in with receipts, read, confirm nothing, while two
    senders send past a window; then go. Before, every round that was cut
    off stored what it held whatever the quota (20 rounds: 11 + 19 rows
    past a 5-message quota, and on); now, once the mailbox is at its quota,
    new messages are refused and there is no cut-off to store: it stops at
    the quota plus the one cut-off's window and the message that overflowed it."""
    node = small_node
    senders = [await logged_in(node), await logged_in(node)]
    first, uid = await registered(node)
    await first.close()
    refused = cut_offs = 0
    most = 0
    for r in range(ROUNDS):
        mute = await ChatConnection.open("127.0.0.1", node.port)
        ack = await mute.login(uid, PASSWORD, receipts=True)
        assert ack["errno"] == 0 and ack["receipts"] is True
        for i in range(WINDOW + 2):
            reply = await chat(senders[i % 2][0], uid, f"r{r} m{i}")
            if reply["msgid"] == MsgId.ERROR:
                assert reply["errno"] in REFUSED, reply
                assert "not sent" in reply["errmsg"]
                refused += 1
            else:
                assert reply["msgid"] == MsgId.CHAT_ACK and reply["errno"] == 0, reply
        if uid in node.service.sessions:  # not cut off: it leaves (confirming nothing)
            await mute.abort()
        else:
            cut_offs += 1
            await mute.close()
        await gone(node, uid)
        most = max(most, await stored_rows(node, uid))
    assert cut_offs == 1  # the first round's window overflowed, as before; no other
    assert refused >= (ROUNDS - 1) * (WINDOW + 2)  # from the second round on, all refused
    assert most <= SMALL + WINDOW + 1, most
    for c, _ in senders:
        await c.close()


async def test_an_honest_receiver_with_a_full_mailbox_gets_live_messages_again(
    qnode: Node,
) -> None:
    """The quota's own refusals go on while it is full, its messages come in
    order, and once it confirms them the next message is delivered live."""
    (sender, _), (receiver, uid) = await logged_in(qnode), await registered(qnode)
    kept = []
    for i in range(QUOTA):
        ack = await chat(sender, uid, f"kept {i}")
        assert ack["status"] == ChatStatus.STORED, ack
        kept.append(ack["mid"])
    ack = await receiver.login(uid, PASSWORD, receipts=True)
    got = [codec.loads(m) for m in ack.get("offlinemsg", ())]
    # Full: a new message is refused as for an offline receiver, not delivered.
    refusal = await chat(sender, uid, "while full")
    assert refusal["msgid"] == MsgId.ERROR and refusal["errno"] == ErrCode.MAILBOX_FULL
    while len(got) < QUOTA:
        if got:
            await receiver.received(len(got))  # confirmed as read (the reply's are 1 to n)
        got.append(await receiver.expect(MsgId.ONE_CHAT))
    assert [m["mid"] for m in got] == kept  # all of them, in order
    assert [m.get("seq", i) for i, m in enumerate(got, 1)] == list(range(1, QUOTA + 1))
    await receiver.received(QUOTA)
    async with asyncio.timeout(5):  # the confirmed rows deleted: below the quota
        while _marked_full(qnode, uid):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    live = await chat(sender, uid, "live again")
    assert live["msgid"] == MsgId.CHAT_ACK and live["status"] == ChatStatus.DELIVERED, live
    assert (await receiver.expect(MsgId.ONE_CHAT))["mid"] == live["mid"]
    async with asyncio.timeout(5):  # the last confirmed rows' delete may still be under way
        while await stored_rows(qnode, uid):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    for c in (sender, receiver):
        await c.close()


async def test_a_full_member_online_misses_group_messages_as_if_away(qnode: Node) -> None:
    """A group message to a member here whose mailbox is full is kept for
    them within the quota like one to a member away: the sender's CHAT_ACK
    lists them in ``full``, and the others get it live."""
    await a_full_member_misses_a_group_message(qnode, qnode, QUOTA)


async def test_without_receipts_reading_the_mailbox_lets_live_messages_in(qnode: Node) -> None:
    """A client without receipts (rows deleted as written) is let back in
    once its stored messages are written to it."""
    (sender, _), (receiver, uid) = await logged_in(qnode), await registered(qnode)
    kept = [(await chat(sender, uid, f"kept {i}"))["mid"] for i in range(QUOTA)]
    ack = await receiver.login(uid, PASSWORD)
    got = [codec.loads(m)["mid"] for m in ack.get("offlinemsg", ())]
    while len(got) < QUOTA:
        got.append((await receiver.expect(MsgId.ONE_CHAT))["mid"])
    assert got == kept
    async with asyncio.timeout(5):  # its rows deleted: below the quota
        while _marked_full(qnode, uid):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    live = await chat(sender, uid, "live again")
    assert live["msgid"] == MsgId.CHAT_ACK and live["status"] == ChatStatus.DELIVERED, live
    assert (await receiver.expect(MsgId.ONE_CHAT))["mid"] == live["mid"]
    for c in (sender, receiver):
        await c.close()
