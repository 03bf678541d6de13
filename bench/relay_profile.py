"""Where a relayed chat's time goes in the whole node under the C loadgen:
system calls per chat, and CPU per chat split into the kernel's write
(its own sending, and the loopback peer's receiving, which Linux runs in
the writer's softirq), its read, epoll, and user space by shared object.

    flock -x /tmp/quiet.lock .venv/bin/python bench/relay_profile.py \\
        [--dialect modern] [--window 1] [--seconds 10] [--keep DIR]

One node (CPU 0, history off, a scratch MariaDB database) and the loadgen
(CPU 1, 50 pairs); after the warm-up, ``perf stat`` counts the node's
read, write and epoll_pwait calls for 3 s, then ``perf record -g`` samples
it for 3 s (cpu-clock: works in a VM without hardware counters). Prints
one JSON line. bench/relay_cpu.py and relay_instr.py measure the Python
part alone; this says what that part is of the whole. Needs ``perf`` and
root (or perf_event_paranoid at most 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs

_CALLS = ("read", "write", "epoll_pwait")


def count_calls(pid: int, seconds: float) -> dict[str, int]:
    """The node's system calls of interest over ``seconds``."""
    events = ",".join(f"syscalls:sys_enter_{c}" for c in _CALLS)
    cmd = ["perf", "stat", "-x,", "-e", events, "-p", str(pid), "--", "sleep", str(seconds)]
    err = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    got = {}
    for line in err.splitlines():
        value, _, rest = line.partition(",")
        for call in _CALLS:
            if rest.split(",")[1:2] == [f"syscalls:sys_enter_{call}"] and value.isdigit():
                got[call] = int(value)
    return got


def category(stack: list[str]) -> str:
    """A sample's place: kernel by system call, user space by shared object."""
    top = stack[0]
    if "[kernel.kallsyms]" not in top:
        return "user " + top.rsplit("(", 1)[-1].rstrip(")").rsplit("/", 1)[-1]
    joined = " ".join(stack)
    if "ksys_write" in joined:
        return "kernel write: the peer's receive" if "net_rx_action" in joined else "kernel write"
    if "ksys_read" in joined:
        return "kernel read"
    if "epoll" in joined:
        return "kernel epoll"
    return "kernel other"


def split(data: Path) -> dict[str, float]:
    """Percent of the samples in ``data`` per category."""
    cmd = ["perf", "script", "-i", str(data), "-F", "ip,sym,dso"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    counts: Counter[str] = Counter()
    for block in out.split("\n\n"):
        stack = [line.strip() for line in block.splitlines() if line.strip()]
        if stack:
            counts[category(stack)] += 1
    total = sum(counts.values()) or 1
    return {k: round(100 * v / total, 1) for k, v in counts.most_common()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dialect", choices=sorted(procs.DIALECT_FLAGS), default="modern")
    ap.add_argument("--window", default="1")
    ap.add_argument("--seconds", type=float, default=10, help="the loadgen's measured seconds")
    ap.add_argument("--keep", help="keep perf's data file in this directory")
    ap.add_argument("--loadgen-src")
    args = ap.parse_args()
    os.environ.setdefault("CLUSTERCHAT_HISTORY_DAYS", "0")
    lg = procs.Loadgen(procs.loadgen_src(args.loadgen_src))
    out = Path(args.keep or tempfile.mkdtemp(prefix="relay-profile-"))
    data = out / f"node-{args.dialect}-w{args.window}.data"
    port = procs.free_port()
    probe: dict[str, Any] = {}
    cheap = ["--hash-cost", "1,8,1", "--history-days", "0"]
    with (
        procs.scratch_db("prof") as db,
        procs.process(procs.node_cmd(port, db, *cheap), port) as node,
    ):

        def sample() -> None:
            time.sleep(2.0)  # the loadgen's set-up and 1 s warm-up
            probe["calls"] = count_calls(node.pid, 3)
            record = ["perf", "record", "-q", "-g", "-F", "1999", "-o", str(data)]
            subprocess.run([*record, "-p", str(node.pid), "--", "sleep", "3"], check=True)

        probing = threading.Thread(target=sample)
        probing.start()
        row = lg.run(
            *["--scenario", "chat", "-p", "50", "-w", args.window, "-t", str(args.seconds)],
            *procs.DIALECT_FLAGS[args.dialect],
            *["--targets", f"127.0.0.1:{port}", "--server-pid", str(node.pid)],
        )
        probing.join()
    rate, cpu = float(row["ops_per_s"]), float(row["server_cpu_pct"][0])
    chats = rate * 3
    result = {
        "dialect": args.dialect,
        "window": int(args.window),
        "chats_per_s": rate,
        "node_cpu_pct": cpu,
        "loadgen_cpu_pct": row["loadgen_cpu_pct"],
        "node_cpu_us_per_chat": round(cpu * 1e4 / rate, 2),
        "calls_per_chat": {k: round(v / chats, 3) for k, v in probe["calls"].items()},
        "cpu_pct": split(data),
        "perf_data": str(data) if args.keep else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
