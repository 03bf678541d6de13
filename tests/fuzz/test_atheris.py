"""A short atheris run of every target in CI (fuzz/run.py runs them longer):
coverage-guided mutation of protocol input finds what example-based
strategies miss (it found the non-UTF-8 key in tests/protocol)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).parents[2] / "fuzz" / "run.py"
RUNS = {"framing": 100_000, "requests": 100_000, "service": 50_000}


@pytest.mark.parametrize("target", sorted(RUNS))
def test_target_survives_a_short_fuzzing_run(target: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN), target, f"-runs={RUNS[target]}", "-rss_limit_mb=1024"],
        cwd=tmp_path,  # where a crashing input would be written
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert done and int(done.group(1)) == RUNS[target], proc.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*"))
