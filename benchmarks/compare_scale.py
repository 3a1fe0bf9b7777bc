"""Time and peak memory of `batchrun compare` on two generated outputs of N rows.

    .venv/bin/python benchmarks/compare_scale.py [--rows 1000000 5000000] [--quick]

Writes two outputs as `batchrun run` writes them for a scored job with an id column (the
input's `id` and `text`, the result columns, `parsed` and `score`, the batchrun metadata),
the second with a tenth of its answers changed and its rows in a shuffled order. Then runs
`python -m batchrun.cli compare A B`, with `--json`, and with `--out` to Parquet and CSV,
each in its own process, and reports each one's wall time and peak RSS (from `os.wait4`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

LABELS = ["positive", "negative", "neutral"]
CHANGED = 10  # one row in this many has another answer in B


def labels(rows: int, seed: int) -> pl.Expr:
    """A label per row, drawn from a hash of its number."""
    draw = pl.int_range(0, rows, dtype=pl.UInt64).hash(seed)
    return pl.lit(pl.Series(LABELS)).get((draw % len(LABELS)).cast(pl.Int64))


def output(rows: int, model: str, changed: bool) -> pl.DataFrame:
    """One run's output: the gold label is A's answer; B's differs on every CHANGED-th row."""
    n = pl.int_range(0, rows, dtype=pl.Int64)
    gold = labels(rows, 1)
    answer = pl.when(n % CHANGED == 3).then(labels(rows, 2)).otherwise(gold) if changed else gold
    latency = (n.hash(3) % 2_000).cast(pl.Float64) / 1_000 + 0.05
    return pl.select(
        id=pl.format("r{}", n.cast(pl.String).str.zfill(8)),
        text=pl.format("Review {}: the kettle boils quickly and looks nice", n),
        response=pl.format("The answer is: {}.", answer),
        finish_reason=pl.lit("stop"),
        prompt_tokens=(n % 40 + 20),
        completion_tokens=pl.lit(3, pl.Int64),
        total_tokens=(n % 40 + 23),
        cost_usd=(n % 40 + 20).cast(pl.Float64) * 1.5e-7 + 1.8e-6,
        status=pl.lit("ok"),
        error=pl.lit(None, pl.String),
        attempts=pl.lit(1, pl.Int32),
        latency_s=latency,
        response_model=pl.lit(model),
        parsed=answer,
        score=(answer == gold).cast(pl.Float64),
    )


def write(frame: pl.DataFrame, path: Path, model: str) -> None:
    metadata = {"job": "scale", "input_rows": frame.height, "model": model, "id_column": "id"}
    frame.write_parquet(path, metadata={"batchrun": json.dumps(metadata)})


def command(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `batchrun` command in its own process."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"batchrun {' '.join(args)} failed: {err}")
    return elapsed, usage.ru_maxrss / 1024


def write_outputs(rows: int, root: Path) -> None:
    """A's output in its input order, B's shuffled."""
    write(output(rows, "model-a", changed=False), root / "a.parquet", "model-a")
    shuffled = output(rows, "model-b", changed=True).sample(fraction=1.0, shuffle=True, seed=7)
    write(shuffled, root / "b.parquet", "model-b")


def scale(rows: int, root: Path) -> None:
    # Written by another process: a child forked from a big parent would count the parent's
    # pages in its peak RSS until it execs.
    script = [sys.executable, __file__, "--write", str(root), "--rows", str(rows)]
    subprocess.run(script, check=True)
    a, b = root / "a.parquet", root / "b.parquet"
    sizes = f"{a.stat().st_size / 1e6:,.0f} MB and {b.stat().st_size / 1e6:,.0f} MB"
    print(f"{rows:,} rows a side ({sizes} on disk), B shuffled:")
    for label, extra in (
        ("compare A B", ()),
        ("compare A B --json", ("--json",)),
        ("compare A B --out d.parquet", ("--out", str(root / "d.parquet"))),
        ("compare A B --out d.csv", ("--out", str(root / "d.csv"))),
    ):
        seconds, peak = command("compare", str(a), str(b), *extra)
        print(f"  {label:<28} {seconds:6.1f} s  peak RSS {peak:,.0f} MB")
    disagreeing = pl.scan_parquet(root / "d.parquet").select(pl.len()).collect().item()
    print(f"  ({disagreeing:,} disagreeing rows written)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--quick", action="store_true", help="10,000 rows: checks it runs")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # the outputs, to here
    args = parser.parse_args()
    if args.write is not None:
        write_outputs(args.rows[0], args.write)
        return
    for rows in [10_000] if args.quick else args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            scale(rows, Path(tmp))


if __name__ == "__main__":
    main()
