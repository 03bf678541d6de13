"""A MariaDB instance of the benchmark's own: a fresh datadir, a free port,
pinned to one CPU with taskset.

The shared instance floats over both cores and may not be reconfigured or
pinned (other sessions use it), so a figure taken against it includes the
scheduler putting mariadbd on the node's core. One of these says what the node
sustains when the database is kept off its core. Settings are the shared
instance's (``my_print_defaults --mysqld``: utf8mb4, skip-name-resolve) on
MariaDB's defaults (128 MB buffer pool, a redo-log flush per commit).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import procs


@dataclass(frozen=True)
class Instance:
    port: int
    pid: int


def _wait_sql(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = ["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "-e", "SELECT 1"]
        if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"private mariadbd on port {port} did not answer")


@contextlib.contextmanager
def private_mariadb(cpu: str) -> Iterator[Instance]:
    """Start a throwaway mariadbd pinned to ``cpu``; removed on exit."""
    datadir = Path(tempfile.mkdtemp(prefix="ccb-mariadb-"))
    port = procs.free_port()
    try:
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={datadir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        proc = subprocess.Popen(
            [
                "taskset",
                "-c",
                cpu,
                "mariadbd",
                "--no-defaults",
                f"--datadir={datadir}",
                f"--port={port}",
                f"--socket={datadir / 'mysqld.sock'}",
                f"--pid-file={datadir / 'mysqld.pid'}",
                f"--log-error={datadir / 'error.log'}",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--user=root",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_sql(port)
            yield Instance(port, proc.pid)  # taskset exec()s: the pid is mariadbd's
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(datadir, ignore_errors=True)
