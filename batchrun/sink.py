"""Writing the output Parquet: the input's columns, then the result columns, in input order."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import polars as pl

from .checkpoint import atomic_file
from .columns import KEY, RESULT_SCHEMA
from .job import Job
from .scoring import Annotator
from .source import ROW_KEY, Source


def write_output(
    source: Source,
    segments: Sequence[Path],
    path: Path,
    columns: Sequence[str],
    *,
    limit: int | None = None,
    exclude: Collection[str] = (),
    annotator: Annotator | None = None,
    metadata: Mapping[str, object] | None = None,
) -> int:
    """Join the input with its latest committed results and write `path` atomically.

    Rows without a result (or whose result is for an outdated request, `exclude`) are left
    out, so after an early stop the file holds exactly the rows finished so far. The
    annotator adds the `[parse]` and `[eval]` columns batch by batch; `metadata` is stored as
    JSON under the Parquet key `batchrun`. Returns the number of rows written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = source.keyed(limit)
    if segments:
        results = (
            pl.scan_parquet([str(s) for s in segments])
            .select(KEY, *columns)
            .unique(subset=KEY, keep="last", maintain_order=True)
        )
    else:
        results = pl.LazyFrame(schema={KEY: pl.String, **{c: _polars_type(c) for c in columns}})
    if exclude:
        stale = pl.LazyFrame({KEY: list(exclude)}, schema={KEY: pl.String})
        results = results.join(stale, on=KEY, how="anti")
    joined = inputs.join(
        results, left_on=ROW_KEY, right_on=KEY, how="inner", maintain_order="left"
    ).select(*source.columns, *columns)
    if annotator is not None:
        schema = {**joined.collect_schema(), **annotator.columns}
        joined = joined.map_batches(annotator, schema=schema, streamable=True)
    stored = {"batchrun": json.dumps(dict(metadata))} if metadata else None
    with atomic_file(path) as tmp:
        joined.sink_parquet(tmp, compression="zstd", row_group_size=100_000, metadata=stored)
    return pl.scan_parquet(path).select(pl.len()).collect().item()


def job_metadata(job: Job, input_rows: int) -> dict[str, object]:
    """What the output file says about the job that wrote it (read by `batchrun compare`):
    `input_rows` is how many rows the job covers, which a finished output holds."""
    return {
        "job": job.name,
        "input_rows": input_rows,
        "model": job.request["model"],
        "id_column": job.input.id_column,
        "parse": job.parse.format if job.parse is not None else None,
        "labels": job.parse.labels if job.parse is not None else None,
        "expected_column": job.eval.expected_column if job.eval is not None else None,
        "scorer": job.eval.scorer if job.eval is not None else None,
    }


def remove_temporaries(path: Path) -> None:
    """Delete output files a killed run left half-written (only ever under a hidden .tmp name)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _polars_type(column: str) -> pl.DataType:
    empty = pl.from_arrow(RESULT_SCHEMA.empty_table().select([column]))
    assert isinstance(empty, pl.DataFrame)
    return empty.schema[column]
