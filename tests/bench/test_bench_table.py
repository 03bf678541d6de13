"""`clusterchat bench` tables at 80 columns: nothing wraps or is cut, and each
says what its "ops" are (issue 12: `5.90 / ms` wrapped onto a second row)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from clusterchat.bench.scenarios import SCENARIOS
from clusterchat.bench.stats import OPS_MEAN, Result, table


def render(result: Result) -> list[str]:
    out = io.StringIO()
    Console(width=80, file=out, color_system=None).print(table(result))
    return out.getvalue().splitlines()


@pytest.mark.parametrize("scenario", [*SCENARIOS, "soak"])
def test_table_fits_80_columns_and_says_what_ops_count(scenario: str) -> None:
    big = Result(
        scenario,
        "127.0.0.1:6000",
        ops=12_345_678,
        seconds=100.0,
        lost=12,
        errors=1234,
        shed=12345,
        # p50 5.90 ms, p99 1.2 s, p99.9 and max 12 s: a bad run, wide figures.
        latencies_us=[5_900.0] * 51 + [1_234_567.0] * 48 + [12_345_678.0],
        notes={"senders": 50},
    )
    lines = render(big)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "…" not in text
    row = next(line for line in lines if "12345678" in line).split()
    # Every figure whole on one row: no unit or digit wrapped to the next.
    assert row == ["12345678", "123,457", "5.90", "1234.57", "12345.68", "12345.68",
                   "12", "12345", "1234"]  # fmt: skip
    assert "(latencies in ms)" in text
    flat = " ".join(text.split())  # the caption wraps at 80 columns
    assert f"ops: {OPS_MEAN[scenario]}" in flat


def test_chat_and_group_ops_are_deliveries() -> None:
    for scenario in ("chat", "group"):
        text = " ".join(" ".join(render(Result(scenario, "x", ops=1, seconds=1.0))).split())
        assert "ops: deliveries (a message arriving at" in text
