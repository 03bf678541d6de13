"""bench/history_layouts.py end to end, small: every variant's table takes
its rows and gets a CPU figure per repetition."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.history_layouts import VARIANTS

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "history_layouts.py"


def test_every_variant_writes_and_is_measured() -> None:
    names = ",".join(VARIANTS)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", "2000", "--reps", "1", "--variants", names],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    measured = [line.split()[2] for line in out.splitlines() if line.startswith("rep 0 ")]
    assert measured == list(VARIANTS)
