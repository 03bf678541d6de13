"""Reproduce BENCHMARKS.md: the C loadgen against the C fwdserver (the
machine's ceiling) and against clusterchat, in one session, same pinning.

    .venv/bin/python bench/run.py [--loadgen-src DIR] [--runs 3] [--only w1,ws,...]

Server on CPU 0, load generator on CPU 1. Medians of --runs runs; chat rates
are also given as a fraction of the fwdserver ceiling measured alongside
(the forwarder answers neither dialect's acknowledgements, so one ceiling
serves both). Chat rows run in both dialects (--dialects): ``nul`` is the
original C++ client's, ``modern`` ours (newline framing, a CHAT_ACK for
every chat). Each row says what limited it: ``node CPU``, ``load
generator CPU`` or (cross-node rows) ``Redis CPU``, whichever was at least
90% busy over the measured interval, else neither (latency, or other load
on the machine). ``ws`` compares WebSocket with the modern dialect over
TCP, both driven by ``clusterchat bench`` (the C
loadgen has no WebSocket). Needs MariaDB and Redis (scripts/services).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import (
    DIALECT_FLAGS,
    LOADGEN_ENV,
    PY,
    REDIS,
    Loadgen,
    Row,
    free_port,
    loadgen_src,
    node_cmd,
    process,
    scratch_db,
    sh,
)

#: Percent of one core past which a process counts as the limit.
SATURATED = 90.0
#: Rows measured with the C load generator (the others drive ``clusterchat bench``).
LOADGEN_ROWS = ("w1", "w16", "cross", "group", "login", "hold", "workers")
#: Rows with the C forwarder's ceiling measured alongside.
CEILING_ROWS = ("w1", "w16", "cross", "group")


def limit(node_cpu: float | None, load_cpu: float | None, redis_cpu: float | None = None) -> str:
    """Which side was the bottleneck, from their CPU use in percent of a core."""
    if node_cpu is not None and node_cpu >= SATURATED:
        return "node CPU"
    if load_cpu is not None and load_cpu >= SATURATED:
        return "load generator CPU"
    if redis_cpu is not None and redis_cpu >= SATURATED:
        return "Redis CPU"
    return "neither saturated (latency, or a busy machine)"


def redis_pid() -> int | None:
    """The local Redis server's process, to report its CPU use (cross-node rows)."""
    try:
        return int(sh(["pgrep", "-o", "-x", "redis-server"]).split()[0])
    except (subprocess.CalledProcessError, IndexError, ValueError):
        return None


def median(rows: list[Row], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)


def median_cpu(rows: list[Row], key: str, pids: slice = slice(None)) -> float | None:
    """Median CPU percent, summed over the watched pids (or a slice of them)."""
    values = [
        sum(r[key][pids]) if isinstance(r[key], list) else float(r[key]) for r in rows if r.get(key)
    ]
    return statistics.median(values) if values else None


def chat_rows(
    lg: Loadgen,
    runs: int,
    label: str,
    scenario: list[str],
    targets: str,
    pids: list[int],
    fwd_port: int,
    ceiling_args: list[str] | None = None,
    redis: int | None = None,
) -> Row:
    """Alternate ceiling and server runs so drift hits both alike. ``redis``:
    Redis's pid, watched too (after the nodes' ``pids``)."""
    ceil, ours = [], []
    watched = [*pids, redis] if redis else pids
    pid_arg = ["--server-pid", ",".join(map(str, watched))]
    for _ in range(runs):
        ceil.append(
            lg.run(
                "--scenario",
                "chat",
                "--targets",
                f"127.0.0.1:{fwd_port}",
                *(ceiling_args if ceiling_args is not None else scenario[2:]),
            )
        )
        ours.append(lg.run(*scenario, "--targets", targets, *pid_arg))
    c, o = median(ceil, "ops_per_s"), median(ours, "ops_per_s")
    node_cpu = median_cpu(ours, "server_cpu_pct", slice(len(pids)))
    load_cpu = median_cpu(ours, "loadgen_cpu_pct")
    redis_cpu = median_cpu(ours, "server_cpu_pct", slice(len(pids), None)) if redis else None
    return {
        "label": label,
        "ceiling": c,
        "ops": o,
        "fraction": round(o / c, 3),
        "p50_us": median(ours, "p50_us"),
        "p99_us": median(ours, "p99_us"),
        "lost": sum(int(r["lost"]) for r in ours),
        "runs": [r["ops_per_s"] for r in ours],
        "ceiling_runs": [r["ops_per_s"] for r in ceil],
        "node_cpu_pct": node_cpu,
        "loadgen_cpu_pct": load_cpu,
        "redis_cpu_pct": redis_cpu,
        "limit": limit(node_cpu, load_cpu, redis_cpu),
        "ceiling_loadgen_cpu_pct": median_cpu(ceil, "loadgen_cpu_pct"),
    }


def bench_rows(runs: int, label: str, args: list[str], pid: int) -> Row:
    """``clusterchat bench chat`` (CPU 1) against a node (CPU 0)."""
    rows = []
    for _ in range(runs):
        out = sh(
            [
                "taskset",
                "-c",
                "1",
                PY,
                "-m",
                "clusterchat",
                "bench",
                "chat",
                *args,
                "--server-pid",
                str(pid),
                "--json",
            ]
        )
        rows.append(json.loads(out))
    node_cpu = statistics.median(r["notes"].get("server CPU %", 0.0) for r in rows)
    load_cpu = statistics.median(r["notes"].get("client CPU %", 0.0) for r in rows)
    return {
        "label": label,
        "ops": median(rows, "ops_per_s"),
        "p50_us": median(rows, "p50_us"),
        "p99_us": median(rows, "p99_us"),
        "lost": sum(int(r["lost"]) for r in rows),
        "runs": [round(r["ops_per_s"]) for r in rows],
        "node_cpu_pct": node_cpu,
        "loadgen_cpu_pct": load_cpu,
        "limit": limit(node_cpu, load_cpu),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--loadgen-src",
        help="the C load generator's sources (loadgen.c, fwdserver.c, Makefile) "
        f"[env {LOADGEN_ENV}; default shared/tools/loadgen beside the checkout or a parent]",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", default="10")
    ap.add_argument(
        "--only", default="", help="comma list: w1,w16,cross,group,ws,login,reconnect,hold,workers"
    )
    ap.add_argument(
        "--dialects",
        default="nul,modern",
        help="chat rows (w1, w16, cross) in these dialects [default nul,modern]",
    )
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    dialects = [d for d in args.dialects.split(",") if d]

    def want(k: str) -> bool:
        return not only or k in only

    # Found (or refused) before any row runs; built when a row needs it.
    src = loadgen_src(args.loadgen_src) if any(map(want, LOADGEN_ROWS)) else None

    @functools.cache
    def lg() -> Loadgen:
        assert src is not None
        return Loadgen(src)

    t = args.seconds
    results: dict[str, Any] = {}
    cheap = ["--hash-cost", "1,8,1"]  # setup logins are not what these rows measure
    with contextlib.ExitStack() as ceiling:
        if any(map(want, CEILING_ROWS)):
            fwd, fwd_port = lg().forwarder()
            ceiling.enter_context(process(fwd, fwd_port))
        if want("w1") or want("w16"):
            port = free_port()
            with (
                scratch_db("chat") as db,
                process(node_cmd(port, db, *cheap), port) as p,
            ):
                for w in ("1", "16"):
                    if not want(f"w{w}"):
                        continue
                    for d in dialects:
                        scenario = [
                            "--scenario",
                            "chat",
                            "-p",
                            "50",
                            "-w",
                            w,
                            "-t",
                            t,
                            *DIALECT_FLAGS[d],
                        ]
                        results[f"chat_w{w}_{d}"] = chat_rows(
                            lg(),
                            args.runs,
                            f"1:1 chat, w{w}, {d} dialect",
                            scenario,
                            f"127.0.0.1:{port}",
                            [p.pid],
                            fwd_port,
                        )
        if want("cross"):
            pre = ["--redis", REDIS, "--redis-prefix", f"ccb{os.getpid()}:", *cheap]
            pa, pb = free_port(), free_port()
            with (
                scratch_db("cross") as db,
                process(node_cmd(pa, db, *pre), pa) as a,
                process(node_cmd(pb, db, *pre), pb) as b,
            ):
                for d in dialects:
                    scenario = [
                        "--scenario",
                        "chat",
                        "-p",
                        "50",
                        "-w",
                        "1",
                        "-t",
                        t,
                        *DIALECT_FLAGS[d],
                    ]
                    results[f"cross_{d}"] = chat_rows(
                        lg(),
                        args.runs,
                        f"1:1 chat across 2 nodes (both on CPU 0), w1, {d} dialect",
                        scenario,
                        f"127.0.0.1:{pa},127.0.0.1:{pb}",
                        [a.pid, b.pid],
                        fwd_port,
                        redis=redis_pid(),
                    )
        if want("group"):
            port = free_port()
            with (
                scratch_db("group") as db,
                process(node_cmd(port, db, *cheap), port) as p,
            ):
                scenario = ["--scenario", "group", "-g", "50", "-s", "1", "-w", "1", "-t", t]
                results["group"] = chat_rows(
                    lg(),
                    args.runs,
                    "group fan-out, 50 members, 1 sender, nul dialect",
                    scenario,
                    f"127.0.0.1:{port}",
                    [p.pid],
                    fwd_port,
                    ["-p", "50", "-w", "1", "-t", t],
                )
    if want("ws"):
        port, http = free_port(), free_port()
        with (
            scratch_db("ws") as db,
            process(node_cmd(port, db, *cheap, "--http-port", str(http)), port) as p,
        ):
            for w in ("1", "16"):
                common = ["-p", "50", "-w", w, "-t", t, "--warmup", "1"]
                tcp = bench_rows(
                    args.runs,
                    f"1:1 chat, w{w}, modern over TCP (clusterchat bench)",
                    [*common, "--target", f"127.0.0.1:{port}"],
                    p.pid,
                )
                ws = bench_rows(
                    args.runs,
                    f"1:1 chat, w{w}, WebSocket (clusterchat bench)",
                    [*common, "--target", f"127.0.0.1:{http}", "--transport", "ws"],
                    p.pid,
                )
                ws["fraction_of_tcp"] = round(ws["ops"] / tcp["ops"], 3) if tcp["ops"] else None
                results[f"bench_tcp_w{w}"], results[f"ws_w{w}"] = tcp, ws
    if want("login"):
        rows = []
        for _ in range(args.runs):
            port = free_port()
            with scratch_db("login") as db, process(node_cmd(port, db), port) as p:
                rows.append(
                    lg().run(
                        "--scenario",
                        "login",
                        "--targets",
                        f"127.0.0.1:{port}",
                        "-n",
                        "1000",
                        "-c",
                        "16",
                        "--server-pid",
                        str(p.pid),
                    )
                )
        results["login"] = {
            "label": "login storm, 1000 fresh users, 16 in flight, MariaDB, "
            "argon2id t=2 m=19MiB p=1",
            "ops": median(rows, "ops_per_s"),
            "failed": sum(int(r["failed"]) + int(r["timeouts"]) for r in rows),
            "p50_us": median(rows, "p50_us"),
            "p99_us": median(rows, "p99_us"),
            "runs": [r["ops_per_s"] for r in rows],
        }
    if want("reconnect"):
        rows = []
        for _ in range(args.runs):
            port = free_port()
            with scratch_db("rc") as db, process(node_cmd(port, db, *cheap), port):
                out = sh(
                    [
                        "taskset",
                        "-c",
                        "1",
                        PY,
                        "-m",
                        "clusterchat",
                        "bench",
                        "reconnect",
                        "--target",
                        f"127.0.0.1:{port}",
                        "-n",
                        "5000",
                        "--json",
                    ]
                )
                rows.append(json.loads(out))
        results["reconnect"] = {
            "label": "reconnect storm, 5000 users, session tickets, MariaDB",
            "seconds": statistics.median(r["seconds"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            "p99_us": median(rows, "p99_us"),
            "runs": [round(r["seconds"], 2) for r in rows],
        }
    if want("hold"):
        port = free_port()
        # What an idle connection costs, not how fast 10,000 log in: no bound on
        # the password-check queue (50 logins at once from one address would pass
        # its per-address share), none on the time to log in (the last of 10,000
        # connections, all opened first, wait longer than the default 30 s), no
        # shedding while the 10,000 connect.
        patient = [*cheap, "--login-queue", "0", "--login-timeout", "600", "--shed-lag", "0"]
        with scratch_db("hold") as db, process(node_cmd(port, db, *patient), port) as p:
            r = lg().run(
                "--scenario",
                "hold",
                "--targets",
                f"127.0.0.1:{port}",
                "-k",
                "10000",
                "-c",
                "50",
                "--setup-login-conc",  # the loadgen's default is 2 at a time
                "50",
                "--settle",
                "2",
                "--server-pid",
                str(p.pid),
            )
        results["hold"] = {
            "label": "10,000 idle logged-in connections",
            "kb_per_conn": r["kb_per_conn"],
            "open": r["open"],
            "logged_in": r["logged_in"],
        }
    if want("workers"):
        pre = ["--redis", REDIS, "--redis-prefix", f"ccw{os.getpid()}:", *cheap]
        workers = {}
        for n in (1, 2):
            port = free_port()
            with (
                scratch_db("workers") as db,
                process([*node_cmd(port, db, *pre), "--workers", str(n)], port, cpu=None),
            ):
                time.sleep(1)
                runs = [
                    lg().run(
                        "--scenario",
                        "chat",
                        "--targets",
                        f"127.0.0.1:{port}",
                        "-p",
                        "50",
                        "-w",
                        "16",
                        "-t",
                        t,
                        "--loss-timeout",
                        "10",
                    )
                    for _ in range(args.runs)
                ]
                workers[n] = {
                    "ops": median(runs, "ops_per_s"),
                    "lost": sum(int(r["lost"]) for r in runs),
                    "runs": [r["ops_per_s"] for r in runs],
                }
        results["workers"] = workers
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
