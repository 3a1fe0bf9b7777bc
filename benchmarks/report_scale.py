"""Peak memory and time of `batchrun report` on a big checkpoint.

    .venv/bin/python benchmarks/report_scale.py                  # 1,000,000 rows
    .venv/bin/python benchmarks/report_scale.py --rows 5000000 --evaluate
    .venv/bin/python benchmarks/report_scale.py --quick          # 20,000 rows: checks it runs

Builds (not measured) an input of N rows (id, text, gold, lang) and a checkpoint of N rows
in segments of 100,000 (`--segment-rows`) as a run commits them (sorted by position, in the
checkpoint's row groups), with failures, answers cut by max_tokens, streamed rows, and a
last segment of retries that supersedes 5% of the rows; `--merge` merges the segments into
one first. With `--evaluate` the job has `[parse]` (labels) and `[eval]` (label scorer, by
lang), so the report reads the input beside the checkpoint. Then `batchrun report --json`
and `batchrun report --html PATH` each run as their own process, timed from start to exit,
with their peak RSS (`ru_maxrss` of `os.wait4`).

The checkpoint is built in a child process, and nothing heavy is imported here: Linux counts
into a child's peak RSS the memory of the process that spawned it, so the process that
spawns the reports stays small.
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
from typing import Any

SEGMENT_ROWS = 100_000  # rows a commit of the build writes, unless told
RETRIED = 0.05  # share of the rows committed again in a last segment
LABELS = ("positive", "negative", "neutral")
JOB = """
name = "report-scale"
[input]
path = "input.parquet"
id_column = "id"
[prompt]
system = "Label the review as positive, negative or neutral."
user = "Review: {text}"
[request]
model = "gpt-4o-mini"
max_tokens = 8
[endpoint]
base_url = "http://127.0.0.1:9/v1"
[output]
path = "out/result.parquet"
"""
EVALUATE = """
[parse]
format = "label"
labels = ["positive", "negative", "neutral"]
[eval]
expected_column = "gold"
scorer = "label"
group_by = "lang"
"""


def build(root: Path, rows: int, evaluate: bool, merge: bool, segment_rows: int) -> int:
    """Write the input, the job and its checkpoint under `root`; returns the segments."""
    import numpy as np
    import polars as pl

    from batchrun.checkpoint.folder import Checkpoint, checkpoint_dir
    from batchrun.checkpoint.segments import segment_name, write_atomic_table
    from batchrun.checkpoint.walk import sort_positions
    from batchrun.config.job import load_job

    rng = np.random.default_rng(7)
    ids = pl.format("id{}", pl.int_range(rows).cast(pl.String).str.zfill(8))
    frame = pl.select(
        id=ids,
        text=pl.format("great product number {}", pl.int_range(rows)),
        gold=pl.lit(pl.Series(np.array(LABELS)[rng.integers(0, 3, rows)])),
        lang=pl.lit(pl.Series(np.array(["en", "zh", "fr"])[rng.integers(0, 3, rows)])),
    )
    frame.write_parquet(root / "input.parquet")
    del frame
    job_path = root / "job.toml"
    job_path.write_text(JOB + (EVALUATE if evaluate else ""), encoding="utf-8")
    job = load_job(job_path, environ={"OPENAI_API_KEY": "sk-bench"})
    folder = checkpoint_dir(job.output_path)
    folder.mkdir(parents=True)
    t0 = 1_700_000_000.0
    commit = 0
    for start in range(0, rows, segment_rows):
        positions = np.arange(start, min(start + segment_rows, rows))
        commit += 1
        write_atomic_table(_results(rng, positions, t0), folder / segment_name(commit, commit))
    again = np.sort(rng.choice(rows, int(rows * RETRIED), replace=False))
    commit += 1
    table = sort_positions(_results(rng, again, t0 + rows / 400, failures=0.0))
    write_atomic_table(table, folder / segment_name(commit, commit))
    if merge:
        with Checkpoint(folder).open() as checkpoint, checkpoint._writing:
            checkpoint._merge(checkpoint.segments())  # every segment into one
    return len(Checkpoint(folder).segments())


def _results(rng: Any, positions: Any, t0: float, failures: float = 0.03) -> Any:
    """Committed results of the rows at `positions`, as a checkpoint table."""
    import numpy as np
    import pyarrow as pa

    from batchrun.protocol.result import CHECKPOINT_SCHEMA

    n = len(positions)
    failed = rng.random(n) < failures
    ok = ~failed
    prompt = rng.integers(15, 60, n)
    completion = rng.integers(1, 9, n)
    length = ok & (rng.random(n) < 0.02)
    streamed = ok & (rng.random(n) < 0.6)
    errors = np.array(["server_error", "rate_limited", "content_refused"])[rng.integers(0, 3, n)]
    values: dict[str, Any] = {
        "row_key": pa.array(np.char.add("id", np.char.zfill(positions.astype(str), 8))),
        "position": pa.array(positions, pa.int64()),
        "fingerprint": pa.array(np.full(n, "f" * 32)),
        "response": pa.array(np.array(LABELS)[rng.integers(0, 3, n)], mask=failed),
        "finish_reason": pa.array(np.where(length, "length", "stop"), mask=failed),
        "prompt_tokens": pa.array(prompt, mask=failed),
        "completion_tokens": pa.array(completion, mask=failed),
        "total_tokens": pa.array(prompt + completion, mask=failed),
        "cached_tokens": pa.array(np.zeros(n, np.int64), mask=failed),
        "reasoning_tokens": pa.array(np.zeros(n, np.int64), mask=failed),
        "cost_usd": pa.array(prompt * 1.5e-7 + completion * 6e-7, mask=failed),
        "status": pa.array(np.where(failed, "failed", "ok")),
        "error": pa.array(errors, mask=ok),
        "error_message": pa.array(np.char.add("upstream said: ", errors), mask=ok),
        "attempts": pa.array(rng.choice([1, 1, 1, 2, 3], n).astype(np.int32)),
        "latency_s": pa.array(rng.lognormal(-0.5, 0.6, n), mask=failed),
        "response_model": pa.array(np.full(n, "gpt-4o-mini-2024-07-18"), mask=failed),
        "ttft_s": pa.array(rng.lognormal(-2, 0.5, n), mask=~streamed),
        "usage_estimated": pa.array(np.zeros(n, bool), mask=failed),
        "finished_at": pa.array(t0 + positions / 400 + rng.random(n)),
    }
    columns = [
        values[name].cast(field.type) if name in values else pa.nulls(n, field.type)
        for name, field in zip(CHECKPOINT_SCHEMA.names, CHECKPOINT_SCHEMA, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=CHECKPOINT_SCHEMA)


def _timed(argv: list[str], cwd: Path) -> tuple[float, float, str]:
    """Seconds and peak MB of a command run to its end, and its stdout."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv[3:])} failed: {err.read().decode()[-2000:]}")
        out.seek(0)
        return seconds, usage.ru_maxrss / 1024, out.read().decode()


def measure(
    rows: int, *, evaluate: bool = False, merge: bool = False, segment_rows: int = SEGMENT_ROWS
) -> list[dict[str, Any]]:
    """Build a checkpoint of `rows` rows in a child process, then time each report."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.monotonic()
        builder = [sys.executable, __file__, "--build", str(root), "--rows", str(rows)]
        builder += ["--segment-rows", str(segment_rows)]
        builder += ["--evaluate"] * evaluate + ["--merge"] * merge
        built = subprocess.run(builder, check=True, capture_output=True, text=True)
        segments = int(built.stdout.strip())
        built_s = time.monotonic() - started
        report = [sys.executable, "-m", "batchrun.cli", "report", str(root / "job.toml")]
        figures = []
        for name, extra in (("report --json", ["--json"]), ("report --html", ["--html", "r.html"])):
            seconds, peak_mb, out = _timed(report + extra, root)
            if name == "report --json":
                data = json.loads(out)
                if data["rows"]["committed"] != rows:
                    raise SystemExit(f"the report counts {data['rows']['committed']} rows")
            figures.append(
                {
                    "rows": rows,
                    "segments": segments,
                    "evaluate": evaluate,
                    "step": name,
                    "seconds": round(seconds, 2),
                    "peak_mb": round(peak_mb),
                    "build_s": round(built_s, 1),
                }
            )
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--evaluate", action="store_true", help="with [parse] and [eval]")
    parser.add_argument("--merge", action="store_true", help="merge the segments into one")
    parser.add_argument("--segment-rows", type=int, default=SEGMENT_ROWS, help="rows a commit")
    parser.add_argument("--quick", action="store_true", help="20,000 rows: checks it runs")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # the child's work
    args = parser.parse_args()
    rows = 20_000 if args.quick else args.rows
    if args.build is not None:
        print(build(args.build, rows, args.evaluate, args.merge, args.segment_rows))
        return
    figures = measure(
        rows, evaluate=args.evaluate, merge=args.merge, segment_rows=args.segment_rows
    )
    for row in figures:
        print(
            f"{row['rows']:,} rows in {row['segments']} segments"
            f"{', evaluated' if row['evaluate'] else ''}: {row['step']} took "
            f"{row['seconds']:.2f} s, peak memory {row['peak_mb']:,} MB"
        )


if __name__ == "__main__":
    main()
