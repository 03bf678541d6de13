"""Where a node's CPU goes with history off and on: perf's samples of the
node under the C loadgen, split by shared object (the kernel, the
interpreter, msgspec, uvloop, ...), as microseconds per delivery.

    flock -x /tmp/quiet.lock .venv/bin/python bench/history_perf.py \\
        [--dialect modern] [--runs 2] [--seconds 5] [--window 16] [--keep DIR]

Each run starts a node (CPU 0, a fresh MariaDB database) with history off
and one with it on (the order swapped every run), drives it as
bench/history_ab.py does (50 pairs, the loadgen on CPU 1) and records
``perf record -e cpu-clock`` on the node for the middle of the measured
seconds. Prints one JSON line per node: deliveries/s, the node's CPU per
delivery, and that split by shared object; ``--keep`` keeps perf's data
files there (``perf report -i FILE --sort sym`` for functions). Needs
``perf`` and permission to sample the node (root, or perf_event_paranoid
at most 1); cpu-clock is a software event, so it works in a VM without
hardware counters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs


def shares(data: Path) -> dict[str, float]:
    """Percent of the samples in ``data`` per shared object."""
    cmd = ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    got: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith("%"):
            got[parts[1]] = float(parts[0][:-1])
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen-src", help="as bench/run.py's")
    ap.add_argument("--dialect", choices=sorted(procs.DIALECT_FLAGS), default="modern")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--window", default="16")
    ap.add_argument("--keep", help="a directory to keep perf's data files in")
    args = ap.parse_args()
    lg = procs.Loadgen(procs.loadgen_src(args.loadgen_src))
    keep = Path(args.keep or tempfile.mkdtemp(prefix="history-perf-"))
    keep.mkdir(parents=True, exist_ok=True)
    for run in range(args.runs):
        for name in ("off", "on") if run % 2 == 0 else ("on", "off"):
            # process() passes this environment on to the node
            if name == "off":
                os.environ["CLUSTERCHAT_HISTORY_DAYS"] = "0"
            else:
                os.environ.pop("CLUSTERCHAT_HISTORY_DAYS", None)
            port = procs.free_port()
            data = keep / f"{args.dialect}.{run}.{name}.data"
            with (
                procs.scratch_db("hperf") as db,
                procs.process(procs.node_cmd(port, db, "--hash-cost", "1,8,1"), port) as p,
            ):
                load = [str(lg.dir / "loadgen"), "--scenario", "chat", "-p", "50"]
                load += ["-w", args.window, "-t", str(args.seconds)]
                load += [*procs.DIALECT_FLAGS[args.dialect], "--targets", f"127.0.0.1:{port}"]
                load += ["--server-pid", str(p.pid)]
                gen = subprocess.Popen(
                    ["taskset", "-c", "1", *load], stdout=subprocess.PIPE, text=True
                )
                # past the logins and the loadgen's 1 s warm-up; done before its end
                time.sleep(2.5)
                record = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999"]
                record += ["-p", str(p.pid), "-o", str(data), "--", "sleep"]
                record.append(str(max(1, args.seconds - 2)))
                subprocess.run(record, check=True, capture_output=True)
                out, _ = gen.communicate()
            r = json.loads(out.strip().splitlines()[-1])
            ops = float(r["ops_per_s"])
            node_us = float(r["server_cpu_pct"][0]) * 1e4 / ops if ops else 0.0
            split = {
                dso: round(pct * node_us / 100, 2)
                for dso, pct in shares(data).items()
                if pct >= 0.5
            }
            row = {"run": run, "dialect": args.dialect, "history": name, "ops": ops}
            row.update({"node_us": round(node_us, 2), "us_by_object": split})
            print(json.dumps(row), flush=True)
    if not args.keep:
        print(f"perf data in {keep}", file=sys.stderr)


if __name__ == "__main__":
    main()
