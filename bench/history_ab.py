"""History on vs off at the node's ceiling (issue 16), alternating, with the
C loadgen: BENCHMARKS.md, "History on vs off".

    .venv/bin/python bench/history_ab.py [--runs 3] [--seconds 5] [--window 16]
        [--dialects nul,modern] [--before ../main/.venv/bin/python]
        [--mariadb-port 3306] [--mariadb-pid PID]

Each run starts a fresh node (CPU 0, a fresh MariaDB database) per variant,
in turn: history off (``CLUSTERCHAT_HISTORY_DAYS=0``), history on, and with
``--before`` history on with another checkout's interpreter (the code before
a change), each next to a C forwarder ceiling run; the loadgen runs on CPU
1. MariaDB runs wherever it runs: the shared instance floats over both
cores (``--mariadb-port``/``--mariadb-pid`` point at another instance, e.g.
one pinned with taskset). Ports and database names are this script's own,
so it can run beside ``bench/run.py``. Prints one JSON line per node run:
deliveries/s, the ceiling beside it, CPU percent of the node, of mariadbd
and of the loadgen, and microseconds of CPU per delivery of node and
mariadbd; then the on/off ratio per run and dialect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen-src", help="as bench/run.py's")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", default="5")
    ap.add_argument("--window", default="16")
    ap.add_argument("--dialects", default="nul")
    ap.add_argument("--before", default="", help="python of a checkout to run as 'before'")
    ap.add_argument("--mariadb-port", type=int, default=3306)
    ap.add_argument("--mariadb-pid", type=int, default=0)
    args = ap.parse_args()
    md_pid = args.mariadb_pid or int(procs.sh(["pgrep", "-o", "-x", "mariadbd"]).split()[0])
    lg = procs.Loadgen(procs.loadgen_src(args.loadgen_src))
    variants = [("off", procs.PY), ("on", procs.PY)] + (
        [("before", args.before)] if args.before else []
    )
    mariadb = f"127.0.0.1:{args.mariadb_port}"
    rates: dict[tuple[int, str, str], float] = {}
    fwd, port_fwd = lg.forwarder()
    cheap = ("--hash-cost", "1,8,1")
    with procs.process(fwd, port_fwd):
        for run in range(args.runs):
            for name, python in variants:
                # process() passes this environment on to the node
                if name == "off":
                    os.environ["CLUSTERCHAT_HISTORY_DAYS"] = "0"
                else:
                    os.environ.pop("CLUSTERCHAT_HISTORY_DAYS", None)
                port = procs.free_port()
                with (
                    procs.scratch_db("hist", mariadb) as db,
                    procs.process(procs.node_cmd(port, db, *cheap, python=python), port) as p,
                ):
                    for d in args.dialects.split(","):
                        common = ["--scenario", "chat", "-p", "50", "-w", args.window]
                        common += ["-t", args.seconds, *procs.DIALECT_FLAGS[d]]
                        ceil = lg.run(*common, "--targets", f"127.0.0.1:{port_fwd}")
                        r = lg.run(
                            *common,
                            "--targets",
                            f"127.0.0.1:{port}",
                            "--server-pid",
                            f"{p.pid},{md_pid}",
                        )
                        ops = float(r["ops_per_s"])
                        node_cpu, md_cpu = r["server_cpu_pct"]
                        rates[(run, d, name)] = ops
                        row = {
                            "run": run,
                            "dialect": d,
                            "history": name,
                            "ops": ops,
                            "ceiling": ceil["ops_per_s"],
                            "lost": r["lost"],
                            "p99_us": r["p99_us"],
                            "node_cpu_pct": node_cpu,
                            "mariadbd_cpu_pct": md_cpu,
                            "loadgen_cpu_pct": r["loadgen_cpu_pct"],
                            "node_us": round(node_cpu * 1e4 / ops, 2) if ops else None,
                            "mariadbd_us": round(md_cpu * 1e4 / ops, 2) if ops else None,
                        }
                        print(json.dumps(row), flush=True)
            for d in args.dialects.split(","):
                off = rates[(run, d, "off")]
                ratios = {n: round(rates[(run, d, n)] / off, 3) for n, _ in variants[1:]}
                print(json.dumps({"run": run, "dialect": d, "of_off": ratios}), flush=True)


if __name__ == "__main__":
    main()
