"""`/metrics`, `/healthz`, `/readyz` of real node processes, scraped over HTTP
and parsed with prometheus-client's own parser after a scripted workload:
every counter moves by what the workload did, across two nodes too."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from clusterchat.client.connection import ChatConnection
from clusterchat.protocol.messages import MsgId
from tests.conftest import PASSWORD, unique
from tests.e2e.test_process import server_process
from tests.helpers import free_ports, redis_prefix

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _get(port: int, path: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as res:
                return res.status, res.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(fetch)


async def scrape(port: int) -> Samples:
    status, text = await _get(port, "/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def _user(port: int) -> tuple[ChatConnection, int]:
    c = await ChatConnection.open("127.0.0.1", port)
    uid = await c.register(unique(), PASSWORD)
    assert (await c.login(uid, PASSWORD))["errno"] == 0
    return c, uid


async def test_counters_move_as_the_workload_did(mariadb_url: str, shared_redis: str) -> None:
    http = free_ports(2)
    prefix = redis_prefix("ccmetrics")
    common = ["--port", "0", "--db", mariadb_url, "--redis", shared_redis,
              "--redis-prefix", prefix, "--message-rate", "0"]  # fmt: skip
    async with (
        server_process(*common, "--http-port", str(http), "--node-id", "m0") as (_, port_a, _s),
        server_process(*common, "--http-port", str(http + 1), "--node-id", "m1") as (_, port_b, _t),
    ):
        assert await _get(http, "/healthz") == (200, "ok\n")
        assert await _get(http + 1, "/readyz") == (200, "ready\n")
        a0, b0 = await scrape(http), await scrape(http + 1)

        alice, alice_id = await _user(port_a)
        bob, bob_id = await _user(port_a)
        carol, carol_id = await _user(port_b)
        dave = await ChatConnection.open("127.0.0.1", port_a)
        dave_id = await dave.register(unique(), PASSWORD)
        assert (await dave.login(dave_id, "wrong"))["errno"] == 1

        def chat(to: int, text: str) -> dict[str, object]:
            return {"msgid": MsgId.ONE_CHAT, "id": alice_id, "name": "a", "toid": to, "msg": text}

        for i in range(3):  # local
            await alice.request(chat(bob_id, f"l{i}"), MsgId.CHAT_ACK)
            await bob.expect(MsgId.ONE_CHAT)
        for i in range(2):  # to the other node
            ack = await alice.request(chat(carol_id, f"r{i}"), MsgId.CHAT_ACK)
            assert ack["status"] == "delivered"
            await carol.expect(MsgId.ONE_CHAT)
        ack = await alice.request(chat(dave_id, "kept"), MsgId.CHAT_ACK)  # dave is offline
        assert ack["status"] == "stored"
        err = await alice.request({"msgid": MsgId.GROUP_CHAT, "groupid": 999999, "msg": "x"},
                                  MsgId.ERROR)  # fmt: skip
        assert err["errno"] == 130
        a1 = await scrape(http)
        assert value(a1, "clusterchat_offline_backlog") >= 1
        assert (await dave.login(dave_id, PASSWORD))["offlinemsg"]
        # The delivered rows are deleted after the login reply, in the
        # background: wait for that, not for a scrape that may come first.
        async with asyncio.timeout(10):
            while True:
                a2, b2 = await scrape(http), await scrape(http + 1)
                if moved(a0, a2, "clusterchat_messages_total", path="delivered_offline"):
                    break
                await asyncio.sleep(0.02)

        assert moved(a0, a2, "clusterchat_requests_total", kind="register") == 3
        assert moved(a0, a2, "clusterchat_requests_total", kind="login") == 4
        assert moved(a0, a2, "clusterchat_requests_total", kind="one_chat") == 6
        assert moved(a0, a2, "clusterchat_refusals_total", reply="login", errno="1") == 1
        assert moved(a0, a2, "clusterchat_refusals_total", reply="error", errno="130") == 1
        assert moved(a0, a2, "clusterchat_messages_total", path="local") == 3
        assert moved(a0, a2, "clusterchat_messages_total", path="to_nodes") == 2
        assert moved(b0, b2, "clusterchat_messages_total", path="from_nodes") == 2
        assert moved(a0, a2, "clusterchat_messages_total", path="stored_offline") == 1
        assert moved(a0, a2, "clusterchat_messages_total", path="delivered_offline") == 1
        assert moved(a0, a2, "clusterchat_bus_batches_total") >= 2
        assert value(a2, "clusterchat_logged_in_users") == 3
        assert value(b2, "clusterchat_logged_in_users") == 1
        assert value(a2, "clusterchat_connections", dialect="modern", transport="tcp") == 3
        assert moved(a0, a2, "clusterchat_password_hash_seconds_count") == 3 + 4
        assert moved(a0, a2, "clusterchat_store_seconds_count") > 0
        assert value(a2, "clusterchat_login_queue") == 0
        assert ("clusterchat_event_loop_lag_seconds", ()) in a2
        assert ("clusterchat_bus_unacked_batches", ()) in a2
        # Nobody here asked for receipts: nothing kept for them, nothing copied.
        assert value(a2, "clusterchat_bus_kept_bytes") == 0
        assert value(a2, "clusterchat_bus_copies") == 0
        assert ("clusterchat_slow_consumer_bytes", ()) in a2
        names = {name for name, _ in a2}
        for panel in json.loads(DASHBOARD.read_text())["panels"]:
            for target in panel["targets"]:
                for used in re.findall(r"clusterchat_[a-z_]+", target["expr"]):
                    assert used in names, f"dashboard panel {panel['title']!r}: no {used}"
        for c in (alice, bob, carol, dave):
            await c.close()
