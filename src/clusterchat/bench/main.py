"""Run one scenario with a progress display, then print a table or JSON."""

from __future__ import annotations

import sys

from clusterchat.bench.scenarios import SCENARIOS, Options
from clusterchat.bench.soak import soak
from clusterchat.bench.stats import Result, table


async def run(scenario: str, opts: Options, as_json: bool) -> Result:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    console = Console(file=sys.stderr)
    with Progress(
        TextColumn("{task.description:>14}"),
        BarColumn(),
        TaskProgressColumn(),
        console=console,
        transient=True,
        disable=as_json or not console.is_terminal,
    ) as bar:
        tasks: dict[str, object] = {}

        def progress(phase: str, done: int, total: int) -> None:
            task = tasks.get(phase)
            if task is None:
                task = tasks[phase] = bar.add_task(phase, total=total)
            bar.update(task, completed=done)  # type: ignore[arg-type]

        result = await {**SCENARIOS, "soak": soak}[scenario](opts, progress)
    if result.notes.get("refused by the flood limit"):
        console.print(
            "[yellow]The server refused messages for flooding: run it with "
            "--message-rate 0 (or a rate above what this benchmark sends).[/]"
        )
    if as_json:
        print(result.to_json(), flush=True)
    else:
        Console().print(table(result))
    return result
