"""CPU per history row of the node's writer path and of mariadbd serving it
(BENCHMARKS.md, "Where history's CPU goes").

    taskset -c 0 .venv/bin/python bench/history_writer_cost.py [RATE] [SECONDS] [--null]
        [--convs N]

Feeds about RATE rows a second (``--convs`` conversations in turn, 50 by
default as the loadgen's; the loadgen's message size) through
``HistoryWriter`` and ``SqlStore`` on the shared MariaDB for SECONDS,
waits until all are written, and prints this process's CPU per row
and the CPU per row of the mariadbd threads serving this run's database
(``information_schema.PROCESSLIST.TID``). With ``--convs`` above the rows
of a round (RATE / 100) no round has two messages of one conversation:
history rows cannot be packed. ``--null`` writes nowhere: its
CPU per row is the feeding loop's own, to subtract. Run the interpreter of
another checkout (e.g. ``../main/.venv/bin/python``) for a before/after.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

# This checkout's code, not that of the checkout whose .venv this may be (bench/procs.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from clusterchat.service.history import HistoryWriter
from clusterchat.storage.base import Conversations
from clusterchat.storage.sql import SqlStore

TICK = os.sysconf("SC_CLK_TCK")


def sql(query: str) -> str:
    cmd = ["mariadb", "-h127.0.0.1", "-uroot", "-N", "-e", query]
    return subprocess.run(cmd, check=True, text=True, capture_output=True).stdout


def thread_cpu(pid: int, tid: int) -> float:
    """Seconds of CPU (user + system) of one thread; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class NullStore(SqlStore):
    def __init__(self) -> None:  # no database
        pass

    async def write_history(self, convs: Conversations) -> None:
        return None


async def main(rate: int, seconds: float, null: bool, mariadbd: int, convs: int) -> None:
    db = f"ccb_wcost{os.getpid()}"
    sql(f"DROP DATABASE IF EXISTS {db}")
    store = SqlStore(f"mysql+asyncmy://root@127.0.0.1:3306/{db}", pool_size=2)
    await store.create_schema()
    writer = HistoryWriter(NullStore() if null else store)
    for i in range(100):  # connections open before the clock starts
        writer.add(1, 2, 1, f"warm-{i}", 0, "warm")
    await writer.drain(10)
    listed = sql(f"SELECT TID FROM information_schema.PROCESSLIST WHERE DB='{db}'")
    tids = {int(t) for t in listed.split()}
    before = {t: thread_cpu(mariadbd, t) for t in tids}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    per_ms, n, ts = max(1, rate // 1000), 0, int(time.time() * 1000)
    body = "1234567890123456789:123456:42:" + "x" * 10
    while time.perf_counter() - wall0 < seconds:
        for _ in range(per_ms):
            a = (n % convs) * 2 + 1
            writer.add(a, a + 1, a, f"ab12cd-{n}", ts, body)
            n += 1
        await asyncio.sleep(0.001)
    await writer.drain(60)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    served = sum(thread_cpu(mariadbd, t) - before[t] for t in tids)
    print(
        f"{'null' if null else 'store'}, {convs} conversations: "
        f"{n} rows at {n / (wall1 - wall0):.0f}/s in "
        f"{writer.rounds} rounds ({n / max(1, writer.rounds):.0f} a round); CPU per row: "
        f"this process {1e6 * (cpu1 - cpu0) / n:.2f} us, mariadbd {1e6 * served / n:.2f} us"
    )
    await writer.close(5)
    await store.close()
    sql(f"DROP DATABASE IF EXISTS {db}")


if __name__ == "__main__":
    argv = sys.argv[1:]
    convs = 50
    if "--convs" in argv:
        at = argv.index("--convs")
        convs = int(argv[at + 1])
        del argv[at : at + 2]
    args = [a for a in argv if a != "--null"]
    asyncio.run(
        main(
            int(args[0]) if args else 50_000,
            float(args[1]) if len(args) > 1 else 4.0,
            "--null" in sys.argv,
            int(subprocess.check_output(["pgrep", "-o", "-x", "mariadbd"]).split()[0]),
            convs,
        )
    )
