"""Several node processes on one port (SO_REUSEPORT), so one machine's cores
are all used. The kernel spreads connections; Redis carries messages between
the workers exactly as between machines. The parent only supervises: it
restarts a worker that dies and passes SIGINT/SIGTERM on."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger(__name__)

#: Set in a worker's environment: it binds with SO_REUSEPORT and spawns nothing.
WORKER_ENV = "CLUSTERCHAT_WORKER"


def supervise(argv: Sequence[str], workers: int) -> int:
    env = {**os.environ, WORKER_ENV: "1"}
    cmd = [sys.executable, "-m", "clusterchat", *argv]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn(slot: int) -> None:
        procs[slot] = subprocess.Popen(cmd, env={**env, "CLUSTERCHAT_WORKER_SLOT": str(slot)})

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            name = signal.Signals(signum).name
            log.info("%s received, stopping %d workers", name, len(procs))
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(workers):
        spawn(slot)
    log.info("supervising %d workers", workers)
    while not stopping:
        for slot, p in list(procs.items()):
            if p.poll() is not None and not stopping:
                log.warning("worker %d exited with %s; restarting", slot, p.returncode)
                spawn(slot)
        time.sleep(0.2)
    # A worker still starting Python when the signal came dies of it (no
    # handler yet): asked to stop, it stopped.
    codes = [p.wait() for p in procs.values()]
    codes = [0 if c in (-signal.SIGINT, -signal.SIGTERM) else c for c in codes]
    failed = [c for c in codes if c]
    if failed:
        log.warning("workers stopped; %d exited with %s", len(failed), failed)
    else:
        log.info("workers stopped")
    return max(codes, default=0)
