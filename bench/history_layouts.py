"""CPU per history row of table layouts and statement forms, on a private
mariadbd (BENCHMARKS.md, "History rows: what a row costs").

    .venv/bin/python bench/history_layouts.py [--rows 200000] [--batch 1000]
        [--reps 3] [--cpu 1] [--variants base,onetree,...]

Starts its own mariadbd (bench/private_mariadb.py, pinned to ``--cpu``),
creates one table per variant and, variant after variant in turn (A, B, C,
A, B, C...), writes ``--rows`` rows of 50 conversations in batches of
``--batch`` on one autocommitting asyncmy connection, as the node's writer
does. Prints per variant and repetition the CPU per row of the whole
mariadbd process and of this process's writing (the client's packing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.private_mariadb import private_mariadb

TICK = os.sysconf("SC_CLK_TCK")

_BASE_COLS = """
    conva INT NOT NULL, convb INT NOT NULL, sender INT NOT NULL,
    mid VARCHAR(128) NOT NULL, ts BIGINT NOT NULL, body MEDIUMTEXT NOT NULL"""
_NARROW_COLS = """
    conva INT NOT NULL, convb INT NOT NULL, sender INT NOT NULL,
    mid VARBINARY(128) NOT NULL, ts BIGINT NOT NULL, body MEDIUMTEXT NOT NULL"""


@dataclass(frozen=True)
class Variant:
    ddl: str
    #: True: the client gives ``id`` (one B-tree keyed by conversation).
    ids: bool = False
    #: True: one text multi-row INSERT instead of executemany.
    text: bool = False
    session: str = ""
    #: False: no ``ts`` column (the time is in the id).
    ts: bool = True


VARIANTS: dict[str, Variant] = {
    "base": Variant(
        f"id BIGINT NOT NULL AUTO_INCREMENT, {_BASE_COLS}, PRIMARY KEY (id),"
        " KEY ix (conva, convb, id)) CHARSET utf8mb4"
    ),
    "binmid": Variant(
        f"id BIGINT NOT NULL AUTO_INCREMENT, {_NARROW_COLS}, PRIMARY KEY (id),"
        " KEY ix (conva, convb, id)) CHARSET utf8mb4"
    ),
    "stats": Variant(
        f"id BIGINT NOT NULL AUTO_INCREMENT, {_BASE_COLS}, PRIMARY KEY (id),"
        " KEY ix (conva, convb, id)) CHARSET utf8mb4 STATS_AUTO_RECALC=0 STATS_PERSISTENT=1"
    ),
    "compact": Variant(
        f"id BIGINT NOT NULL AUTO_INCREMENT, {_BASE_COLS}, PRIMARY KEY (id),"
        " KEY ix (conva, convb, id)) CHARSET utf8mb4 ROW_FORMAT=COMPACT"
    ),
    "text": Variant(
        f"id BIGINT NOT NULL AUTO_INCREMENT, {_BASE_COLS}, PRIMARY KEY (id),"
        " KEY ix (conva, convb, id)) CHARSET utf8mb4",
        text=True,
    ),
    "onetree": Variant(
        f"id BIGINT NOT NULL, {_BASE_COLS}, PRIMARY KEY (conva, convb, id)) CHARSET utf8mb4",
        ids=True,
    ),
    "onetree_bin": Variant(
        f"id BIGINT NOT NULL, {_NARROW_COLS}, PRIMARY KEY (conva, convb, id)) CHARSET utf8mb4",
        ids=True,
    ),
    "onetree_nots": Variant(
        "id BIGINT NOT NULL, conva INT NOT NULL, convb INT NOT NULL, sender INT NOT NULL,"
        " mid VARBINARY(128) NOT NULL, body MEDIUMTEXT NOT NULL,"
        " PRIMARY KEY (conva, convb, id)) CHARSET utf8mb4",
        ids=True,
        ts=False,
    ),
    "readcommitted": Variant(
        f"id BIGINT NOT NULL AUTO_INCREMENT, {_BASE_COLS}, PRIMARY KEY (id),"
        " KEY ix (conva, convb, id)) CHARSET utf8mb4",
        session="SET SESSION tx_isolation = 'READ-COMMITTED'",
    ),
    "nochecks": Variant(
        f"id BIGINT NOT NULL AUTO_INCREMENT, {_BASE_COLS}, PRIMARY KEY (id),"
        " KEY ix (conva, convb, id)) CHARSET utf8mb4",
        session="SET SESSION unique_checks = 0, foreign_key_checks = 0",
    ),
    "varbody": Variant(
        "id BIGINT NOT NULL AUTO_INCREMENT, conva INT NOT NULL, convb INT NOT NULL,"
        " sender INT NOT NULL, mid VARCHAR(128) NOT NULL, ts BIGINT NOT NULL,"
        " body VARCHAR(8000) NOT NULL, PRIMARY KEY (id), KEY ix (conva, convb, id)) CHARSET utf8mb4"
    ),
    "idonly": Variant(
        f"id BIGINT NOT NULL AUTO_INCREMENT, {_BASE_COLS}, PRIMARY KEY (id)) CHARSET utf8mb4"
    ),
}


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def literal(v: object) -> str:
    if isinstance(v, int):
        return str(v)
    s = str(v).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


async def run_variant(
    conn: object, name: str, v: Variant, rows: int, batch: int, pid: int, gen: Callable[[], int]
) -> tuple[float, float]:
    cols = "conva, convb, sender, mid, ts, body" if v.ts else "conva, convb, sender, mid, body"
    n_cols = 6 if v.ts else 5
    if v.ids:
        cols = "id, " + cols
        n_cols += 1
    sql = f"INSERT INTO {name} ({cols}) VALUES ({','.join(['%s'] * n_cols)})"
    body = "1234567890123456789:123456:42:" + "x" * 10
    ts = int(time.time() * 1000)
    n = 0
    if v.session:
        async with conn.cursor() as cur:  # type: ignore[attr-defined]
            await cur.execute(v.session)
    cpu_m0, cpu_c0 = proc_cpu(pid), time.process_time()
    while n < rows:
        chunk = []
        for _ in range(batch):
            a = (n % 50) * 2 + 1
            row: tuple[object, ...] = (a, a + 1, a, f"ab12cd-{n}", ts, body)
            if not v.ts:
                row = (a, a + 1, a, f"ab12cd-{n}", body)
            if v.ids:
                row = (gen(), *row)
            chunk.append(row)
            n += 1
        async with conn.cursor() as cur:  # type: ignore[attr-defined]
            if v.text:
                values = ",".join("(" + ",".join(literal(x) for x in r) + ")" for r in chunk)
                await cur.execute(f"INSERT INTO {name} ({cols}) VALUES {values}")
            else:
                await cur.executemany(sql, chunk)
    cpu_m1, cpu_c1 = proc_cpu(pid), time.process_time()
    if v.session:  # back to the server's defaults for the next variant
        async with conn.cursor() as cur:  # type: ignore[attr-defined]
            await cur.execute(
                "SET SESSION tx_isolation = DEFAULT, unique_checks = DEFAULT,"
                " foreign_key_checks = DEFAULT"
            )
    return 1e6 * (cpu_m1 - cpu_m0) / rows, 1e6 * (cpu_c1 - cpu_c0) / rows


async def main(args: argparse.Namespace) -> None:
    import asyncmy

    names = args.variants.split(",")
    with private_mariadb(args.cpu) as inst:
        conn = await asyncmy.connect(
            host="127.0.0.1", port=inst.port, user="root", autocommit=True, charset="utf8mb4"
        )
        async with conn.cursor() as cur:
            await cur.execute("CREATE DATABASE hl CHARACTER SET utf8mb4")
            await cur.execute("USE hl")
            for name in names:
                await cur.execute(f"CREATE TABLE {name} ({VARIANTS[name].ddl}")
        counter = iter(range(1, 10**12))
        gen = counter.__next__
        # warm up: each table gets a batch first
        for name in names:
            await run_variant(conn, name, VARIANTS[name], args.batch, args.batch, inst.pid, gen)
        results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for rep in range(args.reps):
            for name in names:
                m, c = await run_variant(
                    conn, name, VARIANTS[name], args.rows, args.batch, inst.pid, gen
                )
                results[name].append((m, c))
                print(f"rep {rep} {name:12s} mariadbd {m:5.2f} us/row  client {c:5.2f} us/row")
        print("summary (mariadbd us/row per rep | client us/row per rep):")
        for name, rs in results.items():
            ms = " ".join(f"{m:.2f}" for m, _ in rs)
            cs = " ".join(f"{c:.2f}" for _, c in rs)
            print(f"  {name:12s} {ms} | {cs}")
        conn.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cpu", default="1")
    ap.add_argument("--variants", default="base,binmid,stats,compact,text,onetree,onetree_bin")
    asyncio.run(main(ap.parse_args()))
