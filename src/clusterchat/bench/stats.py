"""Results of one benchmark run, and how they are shown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


def percentile(sorted_us: list[float], q: float) -> float:
    if not sorted_us:
        return 0.0
    i = min(len(sorted_us) - 1, max(0, round(q * (len(sorted_us) - 1))))
    return sorted_us[i]


@dataclass
class Result:
    scenario: str
    target: str
    ops: int = 0
    seconds: float = 0.0
    lost: int = 0
    errors: int = 0
    #: Requests the server turned away as busy (overload shedding), not errors.
    shed: int = 0
    latencies_us: list[float] = field(default_factory=list, repr=False)
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies_us)
        out = asdict(self)
        del out["latencies_us"]
        out.update(
            ops_per_s=round(self.ops_per_s, 1),
            p50_us=round(percentile(lat, 0.50)),
            p99_us=round(percentile(lat, 0.99)),
            p999_us=round(percentile(lat, 0.999)),
            max_us=round(lat[-1]) if lat else 0,
        )
        return out

    def to_json(self) -> str:
        return json.dumps(self.summary())


#: What one "op" is, per scenario: said under each table.
OPS_MEAN = {
    "chat": "deliveries (a message arriving at its receiver, after the warm-up)",
    "group": "deliveries (a message arriving at one member: each message counts once "
    "per receiving member)",
    "reg": "registrations accepted",
    "login": "logins accepted",
    "reconnect": "users logged back in with their ticket",
    "soak": "messages sent and acknowledged",
}


def table(result: Result) -> object:
    """A table that fits 80 columns: latencies in ms (said in the title, not
    in each cell, so no unit wraps), and what "ops" counts in the caption."""
    from rich import box
    from rich.table import Table

    s = result.summary()
    t = Table(
        title=f"clusterchat bench: {result.scenario} against {result.target}\n(latencies in ms)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("ops", "ops/s", "p50", "p99", "p99.9", "max", "lost", "shed", "errors"):
        t.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    t.add_row(
        str(s["ops"]),
        f"{s['ops_per_s']:,.0f}",
        _ms(s["p50_us"]),
        _ms(s["p99_us"]),
        _ms(s["p999_us"]),
        _ms(s["max_us"]),
        str(s["lost"]),
        str(s["shed"]),
        str(s["errors"]),
    )
    lines = [f"ops: {OPS_MEAN.get(result.scenario, 'operations completed')}"]
    if result.notes:
        lines.append(", ".join(f"{k}: {v}" for k, v in result.notes.items()))
    t.caption = "\n".join(lines)
    return t


def _ms(us: object) -> str:
    return f"{float(us) / 1000:.2f}"  # type: ignore[arg-type]
