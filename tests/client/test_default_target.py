"""`clusterchat client` with no address, while `clusterchat cluster up`
runs here, connects to the cluster's nginx port, whatever --listen-port
chose: it used to try 8000 whatever the cluster listened on."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from clusterchat.server.node import Node
from tests.client.conftest import CLIENT_ENV


async def test_the_client_finds_the_clusters_chosen_port(lone_node: Node, tmp_path: Path) -> None:
    # What `cluster up --listen-port P` records (here P is a real node's port).
    (tmp_path / "cluster").mkdir()
    state = {"listen": f"127.0.0.1:{lone_node.port}", "procs": [], "web": ""}
    (tmp_path / "cluster" / "cluster.json").write_text(json.dumps(state))
    env = {**CLIENT_ENV, "CLUSTERCHAT_HOME": str(tmp_path)}
    env.pop("CLUSTERCHAT_PORT", None)
    env.pop("CLUSTERCHAT_HOST", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterchat", "client",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(b"ping\nquit\n"), 30)
    text = out.decode()
    assert proc.returncode == 0, (text, err)
    assert f"Connected to 127.0.0.1:{lone_node.port}." in text and "pong from node" in text, text
