"""The run report's figures, added up over the checkpoint in a few streaming passes.

Memory follows the window, batch and row group sizes, never the number of rows:

1. over every committed result, superseded ones included, row group by row group: their
   count, spend, requests sent, and spend by response model;
2. over the rows' current results, window by window (`batchrun.checkpoint.walk`): counts, sums, the
   lowest and highest finish and latency, rows per finish reason and per error, the first
   row keys cut by max_tokens, and the first pass of the duration percentiles. Each
   window's status, finish time and durations are also written to a scratch Parquet file
   (about 18 bytes a row), which the next passes read instead of walking the checkpoint
   again;
3. as many over the scratch file as the exact percentiles need (one, usually; at most
   `quantiles.MAX_PASSES - 1`: see `batchrun.core.quantiles`);
4. one over the scratch file for the latency histogram and the throughput buckets, which
   need p99 and the run's first and last finish.

The walk and the files of the first pass are all opened before either is read, and the
scratch file is a copy of what the walk read, so a merge during a run (which removes files,
and an open file reads on after its name is removed) cannot make two passes see different
results. `batchrun.report.figures` puts the tally into the report's records.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from ..checkpoint.walk import Walk
from ..core import sizes
from ..core.quantiles import Quantiles
from ..protocol.result import FINISHED_AT, KEY

UNKNOWN = "(unknown)"
TOKEN_KINDS = ("prompt", "completion", "total", "cached", "reasoning")
PERCENTILES = (50, 90, 99)
HISTOGRAM_BINS = 20
# Throughput bucket sizes in seconds, smallest first; the first giving fewer than
# MAX_BUCKETS buckets over the run's span is used (beyond the last: whole days).
BUCKET_SIZES = (1, 10, 60, 600, 3600, 6 * 3600, 86400)
MAX_BUCKETS = 60
LENGTH_EXAMPLES = 10
DURATIONS = ("latency", "ttft")  # the durations with percentiles, as `<name>_s` columns
# The checkpoint columns each pass reads; answers and ids are never read.
CURRENT_COLUMNS = (
    FINISHED_AT,
    "status",
    "finish_reason",
    *(f"{kind}_tokens" for kind in TOKEN_KINDS),
    "cost_usd",
    "error",
    "error_message",
    "attempts",
    "latency_s",
    "ttft_s",
    "response_model",
    "usage_estimated",
    "endpoint",
)
SCRATCH_COLUMNS = ("status", FINISHED_AT, *(f"{name}_s" for name in DURATIONS))
EVERY_COLUMNS = ("cost_usd", "attempts", "total_tokens", "response_model")
OK = pl.col("status") == "ok"
# What the report adds up per endpoint over the current results.
ENDPOINT_SUMS = {
    "rows": pl.len(),
    "ok": OK.sum(),
    "failed": (pl.col("status") == "failed").sum(),
    "cost_usd": pl.col("cost_usd").sum(),
    "latency_sum": pl.col("latency_s").filter(OK).sum(),
    "latency_n": pl.col("latency_s").filter(OK).count(),
    "latency_max": pl.col("latency_s").filter(OK).max(),
}

ModelSpend = tuple[int, float, int]  # a response model's answers, their cost, costs unknown
BucketCounts = tuple[float, float, int, int]  # a throughput bucket's start, size, ok, failed


@dataclass(frozen=True)
class Tally:
    """What the passes found; `batchrun.report.figures` turns it into the report's records."""

    totals: dict[str, Any]  # counts, sums, lows and highs over the current results
    reasons: Counter[str]  # current rows per finish reason
    errors: dict[str, tuple[int, str | None]]  # failed rows and first message, per error
    length_keys: list[str]  # the first row keys cut by max_tokens, in position order
    percentiles: dict[str, tuple[float, ...] | None]  # PERCENTILES of each duration
    every: dict[str, Any]  # results, spend and requests sent over every committed result
    models: dict[str, ModelSpend]  # per response model, over results that carry usage
    bins: Counter[int]  # ok rows per latency histogram bin
    buckets: list[BucketCounts]  # every throughput bucket from the first finish to the last
    # Per endpoint that gave current results (None: before results named theirs): counts,
    # cost and latency sums (see ENDPOINT_SUMS), and failed rows per error.
    endpoints: dict[str | None, dict[str, Any]]


def tally(segments: Sequence[Path], requested_model: str) -> Tally:
    """Add up the figures of `segments` in the passes the module docstring lists."""
    with (
        Walk(segments, CURRENT_COLUMNS) as walk,
        tempfile.TemporaryDirectory(prefix="batchrun-report-") as scratch_dir,
    ):
        every, models = _every(segments)
        current = _Current(requested_model)
        scratch = Path(scratch_dir) / "current.parquet"
        _walk(walk, current, scratch)

        def again() -> Iterator[pl.DataFrame]:
            return _batches([scratch]) if scratch.exists() else iter(())

        _narrow(current.durations, again)
        percentiles = {name: q.result() for name, q in current.durations.items()}
        totals = current.totals()
        bins, buckets = _series(again(), totals, percentiles["latency"])
    return Tally(
        totals=totals,
        reasons=current.reasons,
        errors=current.errors,
        length_keys=current.length_keys,
        percentiles=percentiles,
        every=every,
        models=models,
        bins=bins,
        buckets=buckets,
        endpoints=current.endpoints,
    )


def _walk(walk: Walk, current: _Current, scratch: Path) -> None:
    """Add every window of current results to `current`, and write its SCRATCH_COLUMNS to
    `scratch` (no file when there are no results)."""
    writer: pq.ParquetWriter | None = None
    try:
        for window in walk.windows():
            current.add(window)
            table = window.select(SCRATCH_COLUMNS).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(
                    scratch,
                    table.schema,
                    compression="lz4",  # a third of the time zstd takes, 15% larger
                    use_dictionary=["status"],  # not the floats: that took most of the time
                    write_statistics=False,
                )
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()


def _batches(paths: Sequence[Path], columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
    """The rows of Parquet files, `sizes.TALLY_ROWS` at a time; every file is opened first."""
    files = [pq.ParquetFile(path, pre_buffer=False) for path in paths]  # see batchrun.rows.source
    try:
        for file in files:
            for batch in file.iter_batches(
                batch_size=sizes.TALLY_ROWS, columns=list(columns) if columns else None
            ):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                yield frame
    finally:
        for file in files:
            file.close()


class _Current:
    """Figures over the rows' current results, added up window by window."""

    def __init__(self, requested_model: str) -> None:
        attempts, model = pl.col("attempts").cast(pl.Int64), pl.col("response_model")
        # Counts and sums, added across windows; then the lowest and highest of a column.
        self._sums = {
            "rows": pl.len(),
            "ok": OK.sum(),
            "failed": (pl.col("status") == "failed").sum(),
            "spend": pl.col("cost_usd").sum(),
            "attempts": attempts.sum(),
            "rows_retried": (attempts > 1).sum(),
            "extra_attempts": (attempts - 1).clip(lower_bound=0).sum(),
            "length": (pl.col("finish_reason") == "length").sum(),
            "estimated": pl.col("usage_estimated").sum(),
            "other_model": (model.is_not_null() & (model != requested_model)).sum(),
            **{f"{kind}_tokens": pl.col(f"{kind}_tokens").sum() for kind in TOKEN_KINDS},
        }
        self._lows = {"first": pl.col(FINISHED_AT).min(), "latency_min": _ok("latency").min()}
        self._highs = {"last": pl.col(FINISHED_AT).max(), "latency_max": _ok("latency").max()}
        self._totals: dict[str, Any] = dict.fromkeys(self._sums, 0)
        self._totals.update(dict.fromkeys([*self._lows, *self._highs]))
        self.reasons: Counter[str] = Counter()  # rows per finish reason
        # Per error class: failed rows, and the first message in position order.
        self.errors: dict[str, tuple[int, str | None]] = {}
        self.length_keys: list[str] = []  # the first row keys cut by max_tokens
        self.durations = {name: Quantiles([q / 100 for q in PERCENTILES]) for name in DURATIONS}
        self.endpoints: dict[str | None, dict[str, Any]] = {}

    def add(self, window: pl.DataFrame) -> None:
        """Count in one window of current results (sorted by position)."""
        row = window.select(**self._sums, **self._lows, **self._highs).row(0, named=True)
        for name in self._sums:
            self._totals[name] += row[name] or 0
        for names, pick in ((self._lows, min), (self._highs, max)):
            for name in names:
                found = [v for v in (self._totals[name], row[name]) if v is not None]
                self._totals[name] = pick(found) if found else None
        # Each query selects its few columns first: filtering a whole window copies it.
        reasons = window["finish_reason"].drop_nulls().value_counts()
        self.reasons.update(dict(reasons.iter_rows()))
        errors = (
            window.select("status", "error", "error_message")
            .filter(pl.col("status") == "failed")
            .group_by(error=pl.col("error").fill_null(UNKNOWN))
            .agg(rows=pl.len(), example=pl.col("error_message").drop_nulls().first())
        )
        for error, rows, example in errors.iter_rows():
            seen, first = self.errors.get(error, (0, None))
            self.errors[error] = (seen + rows, first if first is not None else example)
        wanted = LENGTH_EXAMPLES - len(self.length_keys)
        if wanted > 0:
            cut = window.select(KEY, "finish_reason").filter(pl.col("finish_reason") == "length")
            self.length_keys += cut[KEY].head(wanted).to_list()
        ok = window["status"] == "ok"
        for name, quantiles in self.durations.items():
            quantiles.feed(window[f"{name}_s"].filter(ok))
        self._add_endpoints(window)

    def _add_endpoints(self, window: pl.DataFrame) -> None:
        """Add the window's rows to their endpoints' figures."""
        columns = window.select("endpoint", "status", "cost_usd", "latency_s", "error")
        for row in columns.group_by("endpoint").agg(**ENDPOINT_SUMS).iter_rows(named=True):
            name = row.pop("endpoint")
            figures = self.endpoints.setdefault(name, {"errors": Counter(), "latency_max": None})
            for key, value in row.items():
                if key == "latency_max":
                    known = [v for v in (figures[key], value) if v is not None]
                    figures[key] = max(known) if known else None
                else:
                    figures[key] = figures.get(key, 0) + (value or 0)
        failed = columns.filter(pl.col("status") == "failed")
        if failed.height:
            per_error = failed.group_by("endpoint", pl.col("error").fill_null(UNKNOWN)).len()
            for name, error, rows in per_error.iter_rows():
                self.endpoints[name]["errors"][error] += rows

    def totals(self) -> dict[str, Any]:
        """The counts, sums, lows and highs of every window added."""
        return dict(self._totals)


def _ok(name: str) -> pl.Expr:
    return pl.col(f"{name}_s").filter(OK)


def _narrow(durations: dict[str, Quantiles], frames: Callable[[], Iterator[pl.DataFrame]]) -> None:
    """Close the first pass over the durations, and read `frames()` again until their
    percentiles are found."""
    for quantiles in durations.values():
        quantiles.end_pass()
    while searched := [(name, q) for name, q in durations.items() if not q.done]:
        for frame in frames():
            ok = frame.filter(OK)
            for name, quantiles in searched:
                quantiles.feed(ok[f"{name}_s"])
        for _, quantiles in searched:
            quantiles.end_pass()


def _every(segments: Sequence[Path]) -> tuple[dict[str, Any], dict[str, ModelSpend]]:
    """Results, spend and requests sent over every committed result, and spend per response
    model over those that carry usage."""
    totals: dict[str, Any] = {"results": 0, "spend": 0.0, "sent": 0}
    models: dict[str, ModelSpend] = {}
    for frame in _batches(segments, EVERY_COLUMNS):
        row = frame.select(
            results=pl.len(),
            spend=pl.col("cost_usd").sum(),
            sent=pl.col("attempts").cast(pl.Int64).sum(),
        ).row(0, named=True)
        for name, value in row.items():
            totals[name] += value or 0
        per_model = (
            frame.filter(pl.col("total_tokens").is_not_null())
            .group_by(model=pl.col("response_model").fill_null(UNKNOWN))
            .agg(
                answers=pl.len(),
                cost_usd=pl.col("cost_usd").sum(),
                no_price=pl.col("cost_usd").is_null().sum(),
            )
        )
        for model, answers, cost, no_price in per_model.iter_rows():
            before = models.get(model, (0, 0.0, 0))
            models[model] = (before[0] + answers, before[1] + cost, before[2] + no_price)
    return totals, models


def _series(
    frames: Iterator[pl.DataFrame], totals: dict[str, Any], latency: tuple[float, ...] | None
) -> tuple[Counter[int], list[BucketCounts]]:
    """Ok rows per latency histogram bin (from the fastest to p99), and the throughput
    buckets."""
    per_bin: Counter[int] = Counter()
    if not totals["rows"]:
        return per_bin, []
    lo = totals["latency_min"]
    hi = latency[PERCENTILES.index(99)] if latency is not None else None
    size = _bucket_size(totals["last"] - totals["first"])
    origin = math.floor(totals["first"] / size) * size
    per_bucket: dict[int, tuple[int, int]] = {}
    for frame in frames:
        for i, ok, failed in _bucket_counts(frame, origin, size).iter_rows():
            before = per_bucket.get(i, (0, 0))
            per_bucket[i] = (before[0] + ok, before[1] + failed)
        if lo is not None and hi is not None:
            per_bin.update(dict(_bin_counts(frame, lo, hi).iter_rows()))
    count = int((totals["last"] - origin) // size) + 1
    buckets = [(origin + i * size, float(size), *per_bucket.get(i, (0, 0))) for i in range(count)]
    return per_bin, buckets


def _bucket_size(span: float) -> float:
    """The smallest bucket size that cuts `span` seconds into fewer than MAX_BUCKETS."""
    for size in BUCKET_SIZES:
        if span / size < MAX_BUCKETS:
            return float(size)
    return math.ceil(span / MAX_BUCKETS / 86400) * 86400.0


def _bucket_counts(frame: pl.DataFrame, origin: float, size: float) -> pl.DataFrame:
    """Rows ok and failed per bucket index, counted from `origin`."""
    index = ((pl.col(FINISHED_AT) - origin) / size).floor().cast(pl.Int64)
    return frame.group_by(bucket=index).agg(
        ok=(pl.col("status") == "ok").sum(), failed=(pl.col("status") == "failed").sum()
    )


def _bin_counts(frame: pl.DataFrame, lo: float, hi: float) -> pl.DataFrame:
    """Ok rows per histogram bin over [lo, hi]; slower rows go to the last bin."""
    width = (hi - lo) / HISTOGRAM_BINS or 1.0
    index = ((pl.col("latency_s") - lo) / width).floor().cast(pl.Int64)
    return (
        frame.filter(OK & pl.col("latency_s").is_not_null())
        .group_by(bin=index.clip(0, HISTOGRAM_BINS - 1))
        .agg(rows=pl.len())
    )
