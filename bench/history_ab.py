"""History on vs off at the node's ceiling (issue 16), alternating, with the
C loadgen: BENCHMARKS.md, "History on vs off".

    .venv/bin/python bench/history_ab.py [--runs 3] [--seconds 5] [--window 16]
        [--dialects nul,modern] [--before ../main/.venv/bin/python]
        [--stores shared,private] [--private-cpu 1]
        [--mariadb-port 3306] [--mariadb-pid PID]

Each run starts a fresh node (CPU 0, a fresh MariaDB database) per store,
dialect and variant, in turn: history off (``CLUSTERCHAT_HISTORY_DAYS=0``),
history on, and with ``--before`` history on with another checkout's
interpreter (the code before a change; "on" and "before" swap places every
run, and so do the dialects), each next to a C forwarder ceiling run; the
loadgen runs on CPU 1. Stores: ``shared`` is the shared MariaDB, which floats over
both cores (``--mariadb-port``/``--mariadb-pid`` point at another instance);
``private`` is one this script starts for itself, pinned to
``--private-cpu`` (bench/private_mariadb.py), so that mariadbd does not take
the node's core. Ports and database names are this script's own, so it can
run beside ``bench/run.py``. Prints one JSON line per node run:
deliveries/s, the ceiling beside it, CPU percent of the node, of mariadbd
and of the loadgen, and microseconds of CPU per delivery of node and
mariadbd, and the chats the node refused or slowed (ERROR 151) per cause; then
the on/off ratio per run, store and dialect, and at the end their medians
per store and dialect (``"median": true``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.private_mariadb import private_mariadb

#: The node's counters of chats refused (ERROR 151) or slowed, per cause.
REFUSALS = {
    "history": "clusterchat_history_refusals_total",
    "budget": "clusterchat_budget_refusals_total",
}


@dataclass(frozen=True)
class Store:
    name: str  # "shared" or "private"
    port: int
    pid: int  # mariadbd's, for its CPU


@dataclass(frozen=True)
class Costs:
    """Microseconds of CPU per delivery."""

    node: float
    mariadbd: float
    loadgen: float


def derived(
    costs: dict[tuple[int, str, str, str], Costs], key: tuple[int, str, str], names: list[str]
) -> dict[str, dict[str, float]]:
    """On/off ratios from CPU per delivery, steadier than rates on a shared
    machine: ``cpu_of_off``, what the ratio would be if the two cores were
    the only limit (node + loadgen off against node + mariadbd + loadgen
    on); ``node_of_off``, what a node whose database is on another machine
    sustains (its own CPU per delivery off against on)."""
    off = costs.get((*key, "off"))
    out: dict[str, dict[str, float]] = {"cpu_of_off": {}, "node_of_off": {}}
    for n in names:
        on = costs.get((*key, n))
        if off is None or on is None:
            continue
        total_on = on.node + on.mariadbd + on.loadgen
        out["cpu_of_off"][n] = round((off.node + off.loadgen) / total_on, 3)
        out["node_of_off"][n] = round(off.node / on.node, 3)
    return out


def refusals(http_port: int) -> dict[str, float]:
    """The node's refusal counters now (its /metrics): a modern chat refused
    with ERROR 151 is one the C loadgen never retries and counts lost."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    got = dict.fromkeys(REFUSALS, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        for key, metric in REFUSALS.items():
            if name == metric:
                got[key] = float(value)
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen-src", help="as bench/run.py's")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", default="5")
    ap.add_argument("--window", default="16")
    ap.add_argument("--dialects", default="nul")
    ap.add_argument("--before", default="", help="python of a checkout to run as 'before'")
    ap.add_argument("--stores", default="shared", help="shared, private or both, in turn")
    ap.add_argument("--private-cpu", default="1", help="the CPU a private mariadbd runs on")
    ap.add_argument("--mariadb-port", type=int, default=3306)
    ap.add_argument("--mariadb-pid", type=int, default=0)
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        stores = []
        for name in args.stores.split(","):
            if name == "shared":
                found = procs.sh(["pgrep", "-o", "-x", "mariadbd"])
                pid = args.mariadb_pid or int(found.split()[0])
                stores.append(Store(name, args.mariadb_port, pid))
            elif name == "private":
                inst = stack.enter_context(private_mariadb(args.private_cpu))
                stores.append(Store(name, inst.port, inst.pid))
            else:
                ap.error(f"unknown store {name!r}")
        bench(args, stores)


def bench(args: argparse.Namespace, stores: list[Store]) -> None:
    lg = procs.Loadgen(procs.loadgen_src(args.loadgen_src))
    variants = [("off", procs.PY), ("on", procs.PY)] + (
        [("before", args.before)] if args.before else []
    )
    dialects = args.dialects.split(",")
    rates: dict[tuple[int, str, str, str], float] = {}
    costs: dict[tuple[int, str, str, str], Costs] = {}
    summary: list[dict[str, Any]] = []  # the ratio lines, for their medians at the end
    fwd, port_fwd = lg.forwarder()
    with procs.process(fwd, port_fwd):
        for run in range(args.runs):
            for store in stores:
                # Each dialect has nodes and databases of its own, and the
                # dialects swap places every run: a dialect measured second on
                # a node found mariadbd 30-40% dearer per delivery, whichever
                # it was (the first one's writes still being flushed; BENCHMARKS.md).
                for d in dialects if run % 2 == 0 else dialects[::-1]:
                    # The on variants swap places every run too: a node run
                    # later in a run found mariadbd 10-18% dearer per delivery
                    # in an A/A test (the same code as "on" and "before").
                    on = variants[1:] if run % 2 == 0 else variants[:0:-1]
                    for name, python in variants[:1] + on:
                        row = one(args, lg, port_fwd, store, d, name, python)
                        print(json.dumps({"run": run, **row}), flush=True)
                        rates[(run, store.name, d, name)] = row["ops"]
                        if row["ops"]:
                            cpu = ("node_cpu_pct", "mariadbd_cpu_pct", "loadgen_cpu_pct")
                            costs[(run, store.name, d, name)] = Costs(
                                *(float(row[k]) * 1e4 / row["ops"] for k in cpu)
                            )
                for d in dialects:
                    off = rates[(run, store.name, d, "off")]
                    ratios = {
                        n: round(rates[(run, store.name, d, n)] / off, 3) for n, _ in variants[1:]
                    }
                    doc = {"run": run, "store": store.name, "dialect": d, "of_off": ratios}
                    doc.update(derived(costs, (run, store.name, d), [n for n, _ in variants[1:]]))
                    print(json.dumps(doc), flush=True)
                    summary.append(doc)
    for store in stores:
        for d in dialects:
            docs = [doc for doc in summary if doc["store"] == store.name and doc["dialect"] == d]
            medians = {
                key: {
                    n: round(statistics.median(doc[key][n] for doc in docs if n in doc[key]), 3)
                    for n, _ in variants[1:]
                    if any(n in doc[key] for doc in docs)
                }
                for key in ("of_off", "node_of_off")
            }
            print(json.dumps({"median": True, "store": store.name, "dialect": d, **medians}))


def one(
    args: argparse.Namespace,
    lg: procs.Loadgen,
    port_fwd: int,
    store: Store,
    dialect: str,
    name: str,
    python: str,
) -> dict[str, Any]:
    """One variant in one dialect: the ceiling, then a fresh node on a fresh
    database under the same load; its row."""
    # process() passes this environment on to the node
    if name == "off":
        os.environ["CLUSTERCHAT_HISTORY_DAYS"] = "0"
    else:
        os.environ.pop("CLUSTERCHAT_HISTORY_DAYS", None)
    port, http = procs.free_port(), procs.free_port()
    extra = ("--hash-cost", "1,8,1", "--http-port", str(http))
    common = ["--scenario", "chat", "-p", "50", "-w", args.window]
    common += ["-t", args.seconds, *procs.DIALECT_FLAGS[dialect]]
    with (
        procs.scratch_db("hist", f"127.0.0.1:{store.port}") as db,
        procs.process(procs.node_cmd(port, db, *extra, python=python), port) as p,
    ):
        ceil = lg.run(*common, "--targets", f"127.0.0.1:{port_fwd}")
        refused = refusals(http)
        r = lg.run(
            *common, "--targets", f"127.0.0.1:{port}", "--server-pid", f"{p.pid},{store.pid}"
        )
        refused = {k: v - refused[k] for k, v in refusals(http).items()}
    ops = float(r["ops_per_s"])
    node_cpu, md_cpu = r["server_cpu_pct"]
    return {
        "store": store.name,
        "dialect": dialect,
        "history": name,
        "ops": ops,
        "ceiling": ceil["ops_per_s"],
        "lost": r["lost"],
        "p99_us": r["p99_us"],
        "refused": refused,
        "node_cpu_pct": node_cpu,
        "mariadbd_cpu_pct": md_cpu,
        "loadgen_cpu_pct": r["loadgen_cpu_pct"],
        "node_us": round(node_cpu * 1e4 / ops, 2) if ops else None,
        "mariadbd_us": round(md_cpu * 1e4 / ops, 2) if ops else None,
    }


if __name__ == "__main__":
    main()
