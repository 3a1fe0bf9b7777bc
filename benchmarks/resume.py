"""How long a resume takes to send its first request after a million committed rows.

    .venv/bin/python benchmarks/resume.py [--rows 1000000] [--evaluate] [--quick]

Builds an input of N rows and a checkpoint in which every row but the last has a committed
result for the current request (written with batchrun's own checkpoint and fingerprint
code), then times `batchrun run` from process start to the simulator's first request, and
to the end of the run, and gives the run's peak memory. With `--evaluate` the job also has
a gold column, `[parse]` (labels) and `[eval]` (label scorer, by group), so the output
written at the end is parsed and scored.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import peak  # benchmarks/peak.py
import polars as pl

from batchrun.checkpoint.folder import Checkpoint, checkpoint_dir
from batchrun.config.job import load_job
from batchrun.protocol.result import RowResult
from batchrun.rows.render import Renderer
from batchrun.sim import SimConfig, start_in_thread

JOB = """
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
base_url = "BASE_URL"
[limits]
requests_per_minute = 60000
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


def build(root: Path, rows: int, base_url: str, evaluate: bool) -> Path:
    ids = [f"id{i:08d}" for i in range(rows)]
    frame = pl.DataFrame({"id": ids, "text": [f"great product number {i}" for i in range(rows)]})
    if evaluate:
        frame = frame.with_columns(
            gold=pl.Series(["positive", "negative", "neutral"] * (rows // 3 + 1)).head(rows),
            lang=pl.Series(["en", "zh"] * (rows // 2 + 1)).head(rows),
        )
    frame.write_parquet(root / "input.parquet")
    job_path = root / "job.toml"
    job_path.write_text(JOB.replace("BASE_URL", base_url) + (EVALUATE if evaluate else ""))
    job = load_job(job_path, environ={"OPENAI_API_KEY": "sk-bench"})
    renderer = Renderer(job.prompt, job.request, frame.columns)
    checkpoint = Checkpoint(checkpoint_dir(job.output_path)).open()
    batch: list[RowResult] = []
    now = time.time()
    done = frame.head(rows - 1).with_row_index("pos")
    for key, position, fp, _, _ in renderer.rows(renderer.render_frame(done, "id", "pos")):
        batch.append(
            RowResult(
                key,
                position,
                fp,
                "ok",
                1,
                now,
                response="positive",
                prompt_tokens=20,
                completion_tokens=1,
                total_tokens=21,
            )
        )
        if len(batch) == 100_000:
            checkpoint.commit(batch)
            batch = []
    checkpoint.commit(batch)
    checkpoint.close()
    return job_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--evaluate", action="store_true", help="with [parse] and [eval]")
    parser.add_argument("--quick", action="store_true", help="10,000 rows: checks it runs")
    args = parser.parse_args()
    rows = 10_000 if args.quick else args.rows
    first, total, peak_mb = measure(rows, args.evaluate)
    print(
        f"{rows:,} rows, {rows - 1:,} committed{' (parsed and scored)' if args.evaluate else ''}"
        f": first request after {first:.2f} s, run ended after {total:.2f} s (output of "
        f"{rows:,} rows written), peak memory {peak_mb:,.0f} MB"
    )


def measure(rows: int, evaluate: bool = False) -> tuple[float, float, float]:
    """Seconds to the first request and to the end of resuming `rows` rows, and peak MB."""
    with tempfile.TemporaryDirectory() as tmp, start_in_thread(SimConfig()) as sim:
        root = Path(tmp)
        job_path = build(root, rows, sim.base_url, evaluate)
        started = time.monotonic()
        # Under peak.py's launcher: measured from here, this process's own peak (the rows it
        # built) would count as the command's.
        result = peak.measure(
            [sys.executable, "-m", "batchrun.cli", "run", str(job_path), "-q"],
            env={"OPENAI_API_KEY": "sk-bench", "PATH": ""},
        )
        if result.code != 0 or len(sim.requests) != 1:
            raise SystemExit(f"resume failed: {result.code} {result.stderr}")
        return sim.requests[0].t - started, result.seconds, result.peak_mb


if __name__ == "__main__":
    main()
