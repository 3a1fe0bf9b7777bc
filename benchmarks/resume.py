"""How long a resume takes to send its first request after a million committed rows.

    .venv/bin/python benchmarks/resume.py [--rows 1000000] [--quick]

Builds an input of N rows and a checkpoint in which every row but the last has a committed
result for the current request (written with batchrun's own checkpoint and fingerprint
code), then times `batchrun run` from process start to the simulator's first request, and
to the end of the run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from batchrun.checkpoint import Checkpoint, checkpoint_dir
from batchrun.columns import RowResult
from batchrun.job import load_job
from batchrun.render import Renderer
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


def build(root: Path, rows: int, base_url: str) -> Path:
    ids = [f"id{i:08d}" for i in range(rows)]
    frame = pl.DataFrame({"id": ids, "text": [f"great product number {i}" for i in range(rows)]})
    frame.write_parquet(root / "input.parquet")
    job_path = root / "job.toml"
    job_path.write_text(JOB.replace("BASE_URL", base_url))
    job = load_job(job_path, environ={"OPENAI_API_KEY": "sk-bench"})
    renderer = Renderer(job.prompt, job.request, frame.columns)
    checkpoint = Checkpoint(checkpoint_dir(job.output_path)).open()
    batch: list[RowResult] = []
    now = time.time()
    done = frame.head(rows - 1).with_row_index("pos")
    for key, position, fp, _, _ in renderer.render_batch(done, "id", "pos"):
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
    parser.add_argument("--quick", action="store_true", help="10,000 rows: checks it runs")
    args = parser.parse_args()
    rows = 10_000 if args.quick else args.rows
    first, total = measure(rows)
    print(
        f"{rows:,} rows, {rows - 1:,} committed: first request after {first:.2f} s, "
        f"run ended after {total:.2f} s (output of {rows:,} rows written)"
    )


def measure(rows: int) -> tuple[float, float]:
    """(seconds to the first request, seconds to the end) of resuming `rows` rows."""
    with tempfile.TemporaryDirectory() as tmp, start_in_thread(SimConfig()) as sim:
        root = Path(tmp)
        job_path = build(root, rows, sim.base_url)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "batchrun.cli", "run", str(job_path), "-q"],
            capture_output=True,
            text=True,
            env={"OPENAI_API_KEY": "sk-bench", "PATH": ""},
        )
        ended = time.monotonic()
        if proc.returncode != 0 or len(sim.requests) != 1:
            raise SystemExit(f"resume failed: {proc.returncode} {proc.stderr}")
        return sim.requests[0].t - started, ended - started


if __name__ == "__main__":
    main()
