"""bench/history_ab.py's pieces: the private MariaDB it can start (pinned,
answering, gone afterwards) and the on/off ratios it derives from CPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.history_ab import Costs, derived
from bench.private_mariadb import private_mariadb


def test_private_mariadb_is_pinned_answers_and_leaves_nothing() -> None:
    with private_mariadb("1") as inst:
        assert os.sched_getaffinity(inst.pid) == {1}
        cmd = ["mariadb", "-h127.0.0.1", f"-P{inst.port}", "-uroot", "-N", "-e"]
        out = subprocess.run([*cmd, "SELECT @@port"], check=True, capture_output=True, text=True)
        assert int(out.stdout) == inst.port
        datadir = Path(f"/proc/{inst.pid}/cwd").resolve()
    assert not Path(f"/proc/{inst.pid}").exists()
    assert not datadir.exists()


def test_ratios_from_cpu_per_delivery() -> None:
    costs = {
        (0, "shared", "nul", "off"): Costs(node=6.0, mariadbd=0.0, loadgen=6.0),
        (0, "shared", "nul", "on"): Costs(node=7.5, mariadbd=3.5, loadgen=5.0),
    }
    got = derived(costs, (0, "shared", "nul"), ["on"])
    # two cores the only limit: 12 us off against 16 us on; the node alone: 6 against 7.5
    assert got == {"cpu_of_off": {"on": 0.75}, "node_of_off": {"on": 0.8}}
    assert derived(costs, (1, "shared", "nul"), ["on"]) == {"cpu_of_off": {}, "node_of_off": {}}
