"""What the benchmark scripts share: the node and the C tools as pinned
processes on free ports, scratch MariaDB databases, the load generator.

Ports come from the kernel and database names carry the script's pid, so
two benchmarks (or a benchmark and the tests) can run at once without
meeting; each database is dropped again when its run is done.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
#: This checkout's code, first on the path of every process these scripts
#: start (``env``): a worktree's ``.venv`` may be another checkout's (a link
#: to main's), whose editable install would otherwise run *that* checkout's
#: code, not the one being measured. A ``--before`` interpreter of another
#: checkout runs without it (``node_cmd``).
SRC = str(ROOT / "src")
MARIADB = "127.0.0.1:3306"
REDIS = "redis://127.0.0.1:6379/0"
#: Where the C load generator's sources are, if not passed (``--loadgen-src``).
LOADGEN_ENV = "CLUSTERCHAT_BENCH_LOADGEN_SRC"
_LOADGEN_FILES = ("loadgen.c", "fwdserver.c", "Makefile")
#: Loadgen flags per dialect (the loadgen's default framing is NUL).
DIALECT_FLAGS: dict[str, list[str]] = {"nul": [], "modern": ["--newline"]}

Row = dict[str, Any]


def env() -> dict[str, str]:
    """This process's environment as it is now, with ``SRC`` first on PYTHONPATH."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{path}" if path else SRC}


def sh(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, env=env()).stdout


def free_port() -> int:
    """A port nobody listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


@contextlib.contextmanager
def process(cmd: list[str], port: int, cpu: str | None = "0") -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` pinned to ``cpu``, once it listens on ``port``; its whole
    process group is stopped after."""
    full = (["taskset", "-c", cpu] if cpu else []) + cmd
    p = subprocess.Popen(
        full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env(),
    )
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


def node_cmd(port: int, db: str, *extra: str, python: str = PY) -> list[str]:
    """A node for measuring: quiet, no message rate limit, no registration limit.
    ``python`` other than ``PY`` (another checkout's) runs its own code."""
    return [
        *([] if python == PY else ["env", "-u", "PYTHONPATH"]),
        python,
        "-m",
        "clusterchat",
        "server",
        "--port",
        str(port),
        "--db",
        db,
        "--log-level",
        "WARNING",
        "--message-rate",
        "0",
        "--registrations",
        "0",
        *extra,
    ]


_scratch = itertools.count()


@contextlib.contextmanager
def scratch_db(tag: str, server: str = MARIADB) -> Iterator[str]:
    """The URL of a MariaDB database of this process's own (the node
    creates it), dropped after."""
    host, _, port = server.partition(":")
    name = f"ccb_{tag}_{os.getpid()}_{next(_scratch)}"
    drop = ["mariadb", f"-h{host}", f"-P{port or 3306}", "-uroot", "-e"]
    sh([*drop, f"DROP DATABASE IF EXISTS {name}"])
    try:
        yield f"mysql+asyncmy://root@{server}/{name}"
    finally:
        subprocess.run([*drop, f"DROP DATABASE IF EXISTS {name}"], check=False)


def loadgen_src(given: str | None) -> Path:
    """The C load generator's sources: ``given``, else ``$CLUSTERCHAT_BENCH_LOADGEN_SRC``,
    else a ``shared/tools/loadgen`` beside the checkout or one of its parents.
    Exits saying what to pass if there is none."""
    value = given or os.environ.get(LOADGEN_ENV)
    candidates = [Path(value)] if value else [p / "shared/tools/loadgen" for p in ROOT.parents]
    for path in candidates:
        if all((path / f).is_file() for f in _LOADGEN_FILES):
            return path
    where = f"{value} has no" if value else "found no"
    raise SystemExit(
        f"{where} C load generator sources ({', '.join(_LOADGEN_FILES)}): "
        f"pass --loadgen-src DIR or set {LOADGEN_ENV}"
    )


class Loadgen:
    """The C load generator and forwarder, built in a temporary directory."""

    def __init__(self, src: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="loadgen-"))
        for f in _LOADGEN_FILES:
            shutil.copy(src / f, self.dir / f)
        sh(["make", "-s", "-C", str(self.dir)])

    def run(self, *args: str) -> Row:
        """One load generator run on CPU 1: its JSON summary."""
        out = sh(["taskset", "-c", "1", str(self.dir / "loadgen"), *args])
        row: Row = json.loads(out.strip().splitlines()[-1])
        return row

    def forwarder(self) -> tuple[list[str], int]:
        """The ceiling's command line, on a free port, and the port."""
        port = free_port()
        return [str(self.dir / "fwdserver"), str(port)], port
