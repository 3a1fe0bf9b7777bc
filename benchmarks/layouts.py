"""The candidates for assembling the output of a big job, measured side by side.

    .venv/bin/pip install duckdb      # only for the DuckDB candidate; batchrun does not use it
    .venv/bin/python benchmarks/layouts.py --rows 1000000,5000000
    .venv/bin/python benchmarks/layouts.py --quick

The end of a run joins every input row with its latest committed result, in input order, and
writes the output. The candidates, each in its own process on the same input and the same
committed results (segments of 100,000 rows, as a run's merges leave them):

- `polars-lazy`: batchrun 0.1's way: scan the segments, keep the last result per key
  (`unique`), join the input, `sink_parquet` (polars' streaming engine);
- `polars-eager`: the same query collected in memory, then written;
- `duckdb`: the same in DuckDB with `memory_limit = 256MB` (it spills to disk): the last
  result per key by `QUALIFY row_number()`, joined, `ORDER BY` position, `COPY TO` Parquet;
- `walk`: what batchrun does now: segments sorted by position, walked with the input a batch
  at a time (`batchrun.rows.sink.write_output`), a row group written per batch.

Each prints its peak RSS (MB) and wall time; a candidate that fails (or is not installed)
says so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import peak  # benchmarks/peak.py
import polars as pl

SEGMENT_ROWS = 100_000
CANDIDATES = ("polars-lazy", "polars-eager", "duckdb", "walk")
JOB = """
[input]
path = "input.parquet"
id_column = "id"
[prompt]
user = "Review: {text}"
[request]
model = "gpt-4o-mini"
max_tokens = 8
[endpoint]
base_url = "sim"
[output]
path = "out/result.parquet"
"""


def build(root: Path, rows: int) -> None:
    """The input, and a checkpoint answering every row, in batchrun's own layout."""
    from batchrun.checkpoint.folder import Checkpoint, checkpoint_dir
    from batchrun.config.job import load_job
    from batchrun.protocol.result import RowResult
    from batchrun.rows.plan import RunOptions, plan_run
    from batchrun.rows.render import Renderer
    from batchrun.rows.source import POSITION, ROW_KEY

    frame = pl.DataFrame(
        {
            "id": [f"id{i:09d}" for i in range(rows)],
            "text": [f"great product number {i}, would buy again" for i in range(rows)],
        }
    )
    frame.write_parquet(root / "input.parquet")
    (root / "job.toml").write_text(JOB)
    job = load_job(root / "job.toml", environ={})
    plan = plan_run(job, RunOptions())
    renderer: Renderer = plan.renderer
    checkpoint = Checkpoint(checkpoint_dir(job.output_path)).open()
    now = time.time()
    for batch in plan.source.batches(renderer.columns, SEGMENT_ROWS):
        results = [
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
                cost_usd=1e-5,
                latency_s=0.1,
                response_model="gpt-4o-mini",
                response_id=f"chatcmpl-{position}",
            )
            for key, position, fp, _, _ in renderer.rows(
                renderer.render_frame(batch, ROW_KEY, POSITION)
            )
        ]
        checkpoint.commit(results)
    checkpoint.close()


def candidate(name: str, root: Path) -> None:
    """Assemble the output one way (runs in its own process)."""
    from batchrun.checkpoint.folder import Checkpoint, checkpoint_dir
    from batchrun.protocol.result import KEY, RESULT_COLUMNS

    segments = [str(p) for p in Checkpoint(checkpoint_dir(root / "out/result.parquet")).segments()]
    out = root / f"{name}.parquet"
    columns = [c for c in RESULT_COLUMNS if c not in ("choices", "json_valid")]
    if name.startswith("polars"):
        inputs = pl.scan_parquet(root / "input.parquet").with_row_index("pos")
        results = (
            pl.scan_parquet(segments)
            .select(KEY, *columns)
            .unique(subset=KEY, keep="last", maintain_order=True)
        )
        joined = inputs.join(
            results, left_on="id", right_on=KEY, how="inner", maintain_order="left"
        )
        if name == "polars-lazy":
            joined.sink_parquet(out, compression="zstd", row_group_size=100_000)
        else:
            joined.collect().write_parquet(out, compression="zstd")
    elif name == "duckdb":
        import duckdb

        con = duckdb.connect()
        con.execute(f"SET memory_limit = '256MB'; SET threads = 2; SET temp_directory = '{root}'")
        listed = ", ".join(f"'{s}'" for s in segments)
        con.execute(
            f"""
            COPY (
              WITH latest AS (
                SELECT * FROM read_parquet([{listed}], filename = true, file_row_number = true)
                QUALIFY row_number() OVER (
                  PARTITION BY {KEY} ORDER BY filename DESC, file_row_number DESC) = 1
              ),
              inputs AS (
                SELECT *, file_row_number AS pos
                FROM read_parquet('{root / "input.parquet"}', file_row_number = true)
              )
              SELECT inputs.id, inputs.text, {", ".join(f"latest.{c}" for c in columns)}
              FROM inputs JOIN latest ON inputs.id = latest.{KEY}
              ORDER BY inputs.pos
            ) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
            """
        )
    else:
        from batchrun.config.job import load_job
        from batchrun.rows import sink
        from batchrun.rows.plan import RunOptions, plan_run

        job = load_job(root / "job.toml", environ={})
        plan = plan_run(job, RunOptions())
        sink.write_output(
            plan.source,
            Checkpoint(checkpoint_dir(job.output_path)),
            out,
            plan.columns,
            plan.renderer,
        )
    rows = pl.scan_parquet(out).select(pl.len()).collect().item()
    print(rows)


def measure(name: str, root: Path) -> tuple[float, float, str]:
    """Peak MB, seconds, and the rows written (or why it failed)."""
    result = peak.measure([sys.executable, __file__, "--candidate", name, str(root)])
    err = result.stderr.strip().splitlines()
    if result.code == 0:
        what = f"{int(result.stdout.strip()):,} rows"
    else:
        what = f"failed: {err[-1] if err else result.code}"
    return result.peak_mb, result.seconds, what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000", help="comma-separated row counts")
    parser.add_argument("--quick", action="store_true", help="20,000 rows: checks it runs")
    parser.add_argument("--candidate", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.candidate:
        candidate(args.candidate[0], Path(args.candidate[1]))
        return
    sizes = [20_000] if args.quick else [int(n) for n in args.rows.split(",")]
    print("| rows | candidate | peak MB | seconds | result |\n| --- | --- | --- | --- | --- |")
    for rows in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            build(root, rows)
            for name in CANDIDATES:
                peak, seconds, what = measure(name, root)
                print(f"| {rows:,} | {name} | {peak:,.0f} | {seconds:.1f} | {what} |", flush=True)


if __name__ == "__main__":
    main()
