"""Time and peak memory of `export-batch` and `import-batch` on an N-row job.

    .venv/bin/python benchmarks/batch_scale.py [--rows 1000000] [--quick]

Builds an input of N rows with an id column and a job for it, runs `batchrun export-batch`
into a folder, fabricates the Batch output files a batch would give back (every line
answered with a chat completion that carries its usage, one output file per input file, as
downloaded), then runs `batchrun import-batch` on them. Each command runs in a child process,
and its wall and CPU time and peak RSS (`os.wait4`'s ru_maxrss) are printed; the machine's
other work lengthens the wall time, not the CPU time. Nothing is sent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

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
base_url = "http://127.0.0.1:9/v1"
[output]
path = "out/result.parquet"
"""
LABELS = ("positive", "negative", "neutral")
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])
PART_ROWS = 100_000  # input rows generated and written at a time


def build(root: Path, rows: int) -> Path:
    """The input of `rows` rows and its job file, written a part at a time: this process
    stays small, which matters because Linux counts the RSS of the process that spawns a
    child into the child's ru_maxrss."""
    with pq.ParquetWriter(root / "input.parquet", SCHEMA) as writer:
        for start in range(0, rows, PART_ROWS):
            numbers = range(start, min(start + PART_ROWS, rows))
            ids = [f"id{i:08d}" for i in numbers]
            texts = [f"great product number {i}, it works well" for i in numbers]
            writer.write_table(pa.table([ids, texts], schema=SCHEMA))
    job = root / "job.toml"
    job.write_text(JOB)
    return job


def fabricate(folder: Path) -> list[Path]:
    """An output file for every Batch input file in `folder`, answering each of its lines."""
    outputs = []
    for number, path in enumerate(sorted(folder.glob("batch-*.jsonl")), start=1):
        target = folder / f"output-{number:04d}.jsonl"
        with open(path, "rb") as requests, open(target, "wb") as answers:
            for n, raw in enumerate(requests):
                line = orjson.loads(raw)
                body = {
                    "id": f"chatcmpl-{number}-{n}",
                    "object": "chat.completion",
                    "created": 1_767_225_600,
                    "model": line["body"]["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": LABELS[n % 3]},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 24, "completion_tokens": 1, "total_tokens": 25},
                }
                record = {
                    "id": f"batch_req_{number}_{n}",
                    "custom_id": line["custom_id"],
                    "response": {"status_code": 200, "request_id": f"req_{n}", "body": body},
                    "error": None,
                }
                answers.write(orjson.dumps(record) + b"\n")
        outputs.append(target)
    return outputs


def command(*argv: str) -> tuple[float, float, float, str]:
    """Run a batchrun command in a child process: its wall and CPU seconds, peak MB and
    stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun.cli", *argv],
            stdout=out,
            stderr=err,
            env={"OPENAI_API_KEY": "sk-bench", "PATH": ""},
        )
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, so Popen never waits
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"batchrun {argv[0]} failed ({status}): {err.read().decode()[-2000:]}")
        cpu = usage.ru_utime + usage.ru_stime
        return seconds, cpu, usage.ru_maxrss / 1024, out.read().decode()


def measure(rows: int) -> dict[str, tuple[float, float, float]]:
    """Wall and CPU seconds and peak MB of exporting and importing a job of `rows` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        job = build(root, rows)
        folder = root / "batches"
        export = command("export-batch", str(job), str(folder))
        started = time.monotonic()
        outputs = fabricate(folder)
        made = time.monotonic() - started
        imported = command("import-batch", str(job), *map(str, outputs))
        expected = f"job: {rows:,} rows: {rows:,} ok, 0 failed, 0 pending"
        if expected not in imported[3]:
            raise SystemExit(f"import-batch did not settle every row:\n{imported[3]}")
        if (
            pl.scan_parquet(root / "out" / "result.parquet").select(pl.len()).collect().item()
            != rows
        ):
            raise SystemExit("the output does not hold every row")
        size = sum(p.stat().st_size for p in outputs) / 1e6
        print(f"  fabricated {len(outputs)} output file(s), {size:,.0f} MB, in {made:.1f} s")
        return {"export-batch": export[:3], "import-batch": imported[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="10,000 rows: checks it runs")
    args = parser.parse_args()
    rows = 10_000 if args.quick else args.rows
    print(f"{rows:,} rows")
    for name, (seconds, cpu, peak) in measure(rows).items():
        print(f"  {name}: {seconds:.1f} s ({cpu:.1f} s of CPU), peak memory {peak:,.0f} MB")


if __name__ == "__main__":
    main()
