"""Run one atheris target: ``python fuzz/run.py TARGET [libFuzzer flags]``.

    python fuzz/run.py framing -runs=1000000
    python fuzz/run.py service -max_total_time=600 -rss_limit_mb=1024

libFuzzer prints ``Done N runs`` at the end; a failing input is written to
``crash-*`` in the working directory and the exit status is non-zero.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["clusterchat"]):
    sys.path.insert(0, str(Path(__file__).parent))
    from targets import SEEDS, TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: run.py {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target = TARGETS[sys.argv[1]]
    corpus = Path(tempfile.mkdtemp(prefix=f"cc-fuzz-{sys.argv[1]}-"))
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    flags = [a for a in sys.argv[2:] if a.startswith("-")]
    dirs = [a for a in sys.argv[2:] if not a.startswith("-")] or [str(corpus)]
    atheris.Setup([sys.argv[0], *flags, *dirs], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
