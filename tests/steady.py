"""Steady chat load through an outage, with every message accounted for.

Senders are our own client (``ChatClient``: it reconnects and logs back in
with its ticket, and drops duplicate deliveries), each sending to its own
receiver at a steady pace. Half the receivers stay online, so their
messages need no database; the other half are away, so theirs must be
stored. Each message ends up in one of these counts, by what the server
said about it:

- delivered / stored: acknowledged (CHAT_ACK): must reach the receiver;
- refused: an error reply (e.g. 150, store unavailable): not sent, the
  sender knows; a person would retry;
- unanswered: the connection dropped before the reply: the sender cannot
  know (it may have got through); reported, not required.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from clusterchat.client.session import ChatClient, ConnectionLost
from clusterchat.protocol import codec
from clusterchat.protocol.messages import MsgId
from tests.conftest import PASSWORD, unique

REPLY_TIMEOUT = 10.0


@dataclass
class Pair:
    sender: ChatClient
    receiver: ChatClient | None  # None while away
    receiver_id: int
    got: list[str] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))


async def _client(host: str, port: int, on_push: Any = None) -> ChatClient:
    client = ChatClient(host, port, on_push or (lambda _m: None), lambda _s: None)
    await client.connect()
    return client


async def _register(client: ChatClient) -> int:
    ack = await client.request({"msgid": MsgId.REG, "name": unique(), "password": PASSWORD})
    assert ack["errno"] == 0, ack
    return int(ack["id"])


class SteadyChat:
    def __init__(self, host: str, ports: list[int], pairs: int, per_second: float) -> None:
        self.host, self.ports, self.n, self.pace = host, ports, pairs, 1 / per_second
        self.pairs: list[Pair] = []
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _port(self, i: int) -> int:
        return self.ports[i % len(self.ports)]

    async def start(self) -> None:
        for i in range(self.n):
            got: list[str] = []
            # Behind a round-robin balancer the order of connecting decides
            # the node: vary it so that senders and receivers sit on every node.
            if (i // 2) % 2 == 0:
                sender = await self._sender(i)
                receiver, receiver_id = await self._receiver(i, got)
            else:
                receiver, receiver_id = await self._receiver(i, got)
                sender = await self._sender(i)
            pair = Pair(sender, None, receiver_id, got)
            if i % 2 == 0:  # online: live delivery
                assert (await receiver.login(receiver_id, PASSWORD))["errno"] == 0
                pair.receiver = receiver
            else:  # away: everything for them is stored
                await receiver.close()
            self.pairs.append(pair)
        self._tasks = [asyncio.ensure_future(self._send(k)) for k in range(self.n)]

    async def _sender(self, i: int) -> ChatClient:
        sender = await _client(self.host, self._port(i))
        uid = await _register(sender)
        assert (await sender.login(uid, PASSWORD))["errno"] == 0
        return sender

    async def _receiver(self, i: int, got: list[str]) -> tuple[ChatClient, int]:
        receiver = await _client(self.host, self._port(i + 1), self._collector(got))
        return receiver, await _register(receiver)

    @staticmethod
    def _collector(got: list[str]) -> Any:
        def on_push(msg: dict[str, Any]) -> None:
            if msg.get("msgid") == MsgId.ONE_CHAT:
                got.append(str(msg["msg"]))

        return on_push

    async def _send(self, k: int) -> None:
        pair, n = self.pairs[k], 0
        while not self._stop.is_set():
            text = f"{k}:{n}"
            n += 1
            doc = {"msgid": MsgId.ONE_CHAT, "toid": pair.receiver_id, "msg": text}
            try:
                reply = await asyncio.wait_for(pair.sender.request(doc), REPLY_TIMEOUT)
            except (ConnectionLost, TimeoutError):
                self.tally.counts["unanswered"] += 1
                # Wait for the client's own reconnect (and re-login) to finish.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pair.sender.ready.wait(), 30)
                await asyncio.sleep(0.2)
                continue
            if reply.get("msgid") == MsgId.CHAT_ACK:
                self.tally.counts[str(reply["status"])] += 1
                pair.acked.append(text)
            else:
                self.tally.counts[f"refused {reply.get('errno')}"] += 1
            await asyncio.sleep(self.pace)

    def sent(self) -> int:
        return sum(self.tally.counts.values())

    async def until_sent(self, more: int, timeout: float = 30) -> None:
        """Wait until ``more`` further messages have been answered (or not)."""
        target = self.sent() + more
        async with asyncio.timeout(timeout):
            while self.sent() < target:  # noqa: ASYNC110 - counts kept by the senders
                await asyncio.sleep(0.02)

    async def finish(self, timeout: float = 60) -> dict[str, int]:
        """Stop sending; bring the away receivers in; wait until every
        acknowledged message has arrived. Returns the figures."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for i, pair in enumerate(self.pairs):
            if pair.receiver is None:
                collect = self._collector(pair.got)
                pair.receiver = await _client(self.host, self._port(i + 1), collect)
                ack = await pair.receiver.login(pair.receiver_id, PASSWORD)
                assert ack["errno"] == 0, ack
                # The login reply carries what was stored; the rest is pushed.
                pair.got.extend(_texts(ack.get("offlinemsg") or []))
        async with asyncio.timeout(timeout):
            while any(not set(p.acked) <= set(p.got) for p in self.pairs):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        figures = dict(self.tally.counts)
        figures["acknowledged"] = sum(len(p.acked) for p in self.pairs)
        # Of those acknowledged: one left unanswered (its node died first)
        # may have got through too, and is no arrival of an acknowledged one.
        figures["arrived"] = sum(len(set(p.acked) & set(p.got)) for p in self.pairs)
        figures["duplicates"] = sum(len(p.got) - len(set(p.got)) for p in self.pairs)
        return figures

    async def close(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        for p in self.pairs:
            await p.sender.close()
            if p.receiver is not None:
                await p.receiver.close()


def _texts(items: list[Any]) -> list[str]:
    out = []
    for item in items:
        doc = codec.loads(item) if isinstance(item, str) else item
        if isinstance(doc, dict) and doc.get("msgid") == MsgId.ONE_CHAT:
            out.append(str(doc["msg"]))
    return out
