"""Reproduce BENCHMARKS.md: the C loadgen against the C fwdserver (the
machine's ceiling) and against clusterchat, in one session, same pinning.

    .venv/bin/python bench/run.py [--loadgen-src ../shared/tools/loadgen] [--runs 3]

Server on CPU 0, load generator on CPU 1. Medians of --runs runs; chat rates
are also given as a fraction of the fwdserver ceiling measured alongside.
Needs MariaDB and Redis running (scripts/services starts them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
MYSQL = "mysql+asyncmy://root@127.0.0.1:3306"
REDIS = "redis://127.0.0.1:6379/0"


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


@contextlib.contextmanager
def process(cmd: list[str], port: int, cpu: str | None = "0", env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    full = (["taskset", "-c", cpu] if cpu else []) + cmd
    p = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, **(env or {})}, start_new_session=True)  # fmt: skip
    try:
        wait_port(port)
        time.sleep(0.5)
        yield p
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def node_cmd(port: int, db: str, *extra: str) -> list[str]:
    return [PY, "-m", "clusterchat", "server", "--port", str(port), "--db", db,
            "--log-level", "WARNING", "--message-rate", "0", "--registrations", "0", *extra]  # fmt: skip


def fresh_db(name: str) -> str:
    sh(["mariadb", "-h127.0.0.1", "-uroot", "-e", f"DROP DATABASE IF EXISTS {name}"])
    return f"{MYSQL}/{name}"


class Loadgen:
    def __init__(self, src: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="loadgen-"))
        for f in ("loadgen.c", "fwdserver.c", "Makefile"):
            shutil.copy(src / f, self.dir / f)
        sh(["make", "-s", "-C", str(self.dir)])

    def run(self, *args: str) -> dict[str, object]:
        out = sh(["taskset", "-c", "1", str(self.dir / "loadgen"), *args]).stdout
        return json.loads(out.strip().splitlines()[-1])


def median(rows: list[dict[str, object]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)  # type: ignore[arg-type]


def chat_rows(lg: Loadgen, runs: int, label: str, args: list[str], port: int, fwd_port: int) -> dict[str, object]:  # fmt: skip
    """Alternate ceiling and server runs so drift hits both alike."""
    ceil, ours = [], []
    for _ in range(runs):
        ceil.append(lg.run("--scenario", "chat", "--targets", f"127.0.0.1:{fwd_port}", *args))
        ours.append(lg.run("--scenario", "chat", "--targets", f"127.0.0.1:{port}", *args))
    c, o = median(ceil, "ops_per_s"), median(ours, "ops_per_s")
    return {
        "label": label, "ceiling": c, "ops": o, "fraction": o / c,
        "p50_us": median(ours, "p50_us"), "p99_us": median(ours, "p99_us"),
        "lost": sum(int(r["lost"]) for r in ours), "runs": [r["ops_per_s"] for r in ours],  # type: ignore[call-overload]
        "ceiling_runs": [r["ops_per_s"] for r in ceil],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen-src", default=str(ROOT.parent / "shared" / "tools" / "loadgen"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", default="10")
    ap.add_argument("--only", default="", help="comma list: w1,w16,cross,group,login,reconnect,hold,workers")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    want = lambda k: not only or k in only  # noqa: E731
    lg = Loadgen(Path(args.loadgen_src))
    t = args.seconds
    results: dict[str, object] = {}
    fwd = [str(lg.dir / "fwdserver"), "7100"]
    cheap = ["--hash-cost", "1,8,1"]  # setup logins are not what these rows measure
    with process(fwd, 7100):
        if want("w1") or want("w16"):
            with process(node_cmd(7200, fresh_db("ccb_chat"), *cheap), 7200):
                if want("w1"):
                    results["chat_w1"] = chat_rows(lg, args.runs, "1:1 chat, w1", ["-p", "50", "-w", "1", "-t", t], 7200, 7100)
                if want("w16"):
                    results["chat_w16"] = chat_rows(lg, args.runs, "1:1 chat, w16", ["-p", "50", "-w", "16", "-t", t], 7200, 7100)
        if want("cross"):
            db = fresh_db("ccb_cross")
            pre = ["--redis", REDIS, "--redis-prefix", f"ccb{os.getpid()}:", *cheap]
            with process(node_cmd(7300, db, *pre), 7300), process(node_cmd(7301, db, *pre), 7301):
                ceil, ours = [], []
                for _ in range(args.runs):
                    ceil.append(lg.run("--scenario", "chat", "--targets", "127.0.0.1:7100", "-p", "50", "-w", "1", "-t", t))
                    ours.append(lg.run("--scenario", "chat", "--targets", "127.0.0.1:7300,127.0.0.1:7301", "-p", "50", "-w", "1", "-t", t))
                c, o = median(ceil, "ops_per_s"), median(ours, "ops_per_s")
                results["cross"] = {"label": "1:1 chat across 2 nodes, w1", "ceiling": c, "ops": o, "fraction": o / c,
                                    "p50_us": median(ours, "p50_us"), "p99_us": median(ours, "p99_us"),
                                    "lost": sum(int(r["lost"]) for r in ours), "runs": [r["ops_per_s"] for r in ours]}  # type: ignore[call-overload]
        if want("group"):
            with process(node_cmd(7400, fresh_db("ccb_group"), *cheap), 7400):
                ceil, ours = [], []
                for _ in range(args.runs):
                    ceil.append(lg.run("--scenario", "chat", "--targets", "127.0.0.1:7100", "-p", "50", "-w", "1", "-t", t))
                    ours.append(lg.run("--scenario", "group", "--targets", "127.0.0.1:7400", "-g", "50", "-s", "1", "-w", "1", "-t", t))
                c, o = median(ceil, "ops_per_s"), median(ours, "ops_per_s")
                results["group"] = {"label": "group fan-out, 50 members, 1 sender", "ceiling": c, "ops": o, "fraction": o / c,
                                    "p50_us": median(ours, "p50_us"), "p99_us": median(ours, "p99_us"),
                                    "lost": sum(int(r["lost"]) for r in ours), "runs": [r["ops_per_s"] for r in ours]}  # type: ignore[call-overload]
    if want("login"):
        rows = []
        for i in range(args.runs):
            with process(node_cmd(7500, fresh_db(f"ccb_login{i}")), 7500) as p:
                rows.append(lg.run("--scenario", "login", "--targets", "127.0.0.1:7500", "-n", "1000", "-c", "16", "--server-pid", str(p.pid)))
        results["login"] = {"label": "login storm, 1000 fresh users, 16 in flight, MariaDB, argon2id t=2 m=19MiB p=1",
                            "ops": median(rows, "ops_per_s"), "failed": sum(int(r["failed"]) + int(r["timeouts"]) for r in rows),  # type: ignore[call-overload]
                            "p50_us": median(rows, "p50_us"), "p99_us": median(rows, "p99_us"), "runs": [r["ops_per_s"] for r in rows]}
    if want("reconnect"):
        rows = []
        for i in range(args.runs):
            with process(node_cmd(7600, fresh_db(f"ccb_rc{i}"), *cheap), 7600):
                out = sh(["taskset", "-c", "1", PY, "-m", "clusterchat", "bench", "reconnect", "--target", "127.0.0.1:7600", "-n", "5000", "--json"]).stdout
                rows.append(json.loads(out))
        results["reconnect"] = {"label": "reconnect storm, 5000 users, session tickets, MariaDB",
                                "seconds": statistics.median(r["seconds"] for r in rows), "errors": sum(r["errors"] for r in rows),
                                "p99_us": median(rows, "p99_us"), "runs": [round(r["seconds"], 2) for r in rows]}
    if want("hold"):
        with process(node_cmd(7700, fresh_db("ccb_hold"), *cheap), 7700) as p:
            r = lg.run("--scenario", "hold", "--targets", "127.0.0.1:7700", "-k", "10000", "-c", "50", "--settle", "2", "--server-pid", str(p.pid))
        results["hold"] = {"label": "10,000 idle logged-in connections", "kb_per_conn": r["kb_per_conn"], "open": r["open"], "logged_in": r["logged_in"]}
    if want("workers"):
        db = fresh_db("ccb_workers")
        pre = ["--redis", REDIS, "--redis-prefix", f"ccw{os.getpid()}:", *cheap]
        rows = {}
        for n in (1, 2):
            with process([*node_cmd(7800, db, *pre), "--workers", str(n)], 7800, cpu=None):
                time.sleep(1)
                runs = [json.loads(sh(["taskset", "-c", "1", str(lg.dir / "loadgen"), "--scenario", "chat", "--targets", "127.0.0.1:7800", "-p", "50", "-w", "16", "-t", t, "--loss-timeout", "10"]).stdout.strip().splitlines()[-1]) for _ in range(args.runs)]
                rows[n] = {"ops": median(runs, "ops_per_s"), "lost": sum(int(r["lost"]) for r in runs), "runs": [r["ops_per_s"] for r in runs]}  # type: ignore[call-overload]
        results["workers"] = rows
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
