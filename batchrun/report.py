"""The run report: what a job's checkpoint says about rows, usage, cost, errors, latency and pace.

`build_report` reads the checkpoint beside the job's output, so it works after a run and
during one: it takes no lock, and every segment it can see is complete (they are written
atomically). A row's current result is its last committed one; spend counts every committed
result, superseded attempts included, because their money was spent. Everything is computed
lazily with polars over the columns it needs, so a million rows read fine. The terminal
rendering is here; the HTML page is `batchrun.report_html`.

`report_json` gives a dict with these keys, which scripts may rely on:

- `"job"`, `"output"`, `"requested_model"`: the job's name, output path and `request.model`
- `"rows"`: `{"committed", "ok", "failed"}`, counted over current results
- `"tokens"`: `{"prompt", "completion", "total", "cached", "reasoning"}`, summed over current
  results
- `"spend_usd"`: `{"all", "current"}`: every committed result's cost (superseded attempts
  included), and the current results' cost
- `"cost_by_model"`: `[{"model", "answers", "cost_usd", "no_price"}]`, over every committed
  result that carries usage; a null model is `"(unknown)"`, `no_price` counts null costs
- `"finish_reasons"`: `{reason: rows}` of the current results that have one
- `"errors"`: `[{"error", "rows", "example"}]`, the failed current results by class, with
  one `error_message`
- `"retries"`: `{"attempts", "rows_retried", "extra_attempts", "superseded_results",
  "requests_sent"}`: attempts of current results, rows with more than one, attempts beyond
  the first, committed results since replaced, and attempts of every committed result
- `"latency_s"`, `"ttft_s"`: `{"p50", "p90", "p99"}` over ok rows, or null when none (ttft:
  when none streamed)
- `"latency_histogram"`: `[{"from_s", "to_s", "rows"}]` from the fastest ok row to p99; the
  last bin also holds everything slower, up to the slowest
- `"throughput"`: `{"rows_per_s", "first_finished_at", "last_finished_at", "bucket_s",
  "buckets": [{"start", "ok", "failed"}]}`, unix times; buckets are aligned to the clock
- `"length"`: `{"rows", "max_tokens", "examples"}`: answers cut by `max_tokens`
  (`finish_reason` `length`), the job's limit, and the first row keys in input order
- `"usage_estimated"`: rows whose tokens were counted locally
- `"other_model_rows"`: rows answered by another model than the one requested
- `"evaluation"`: null without `[parse]` and `[eval]`; else `{"unavailable" (null, or why
  there are no figures: the input cannot be read), "answered", "parse": {"format",
  "parsed", "errors": [{"error", "rows"}]}, "scorer", "expected_column", "accuracy":
  {"scored", "correct", "accuracy", "low", "high"} (a 95% Wilson interval), "unscored",
  "groups": [{"column", "value", "scored", ...}], "confusion": {"expected", "answered",
  "counts"}}` (see `batchrun.evaluation`)
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from .checkpoint import Checkpoint, checkpoint_dir
from .columns import FINISHED_AT, KEY, POSITION
from .evaluation import (
    Evaluation,
    build_evaluation,
    evaluation_json,
    evaluation_summary,
    evaluation_tables,
)
from .job import Job

UNKNOWN = "(unknown)"
TOKEN_KINDS = ("prompt", "completion", "total", "cached", "reasoning")
PERCENTILES = (50, 90, 99)
HISTOGRAM_BINS = 20
# Throughput bucket sizes in seconds, smallest first; the first giving fewer than
# MAX_BUCKETS buckets over the run's span is used (beyond the last: whole days).
BUCKET_SIZES = (1, 10, 60, 600, 3600, 6 * 3600, 86400)
MAX_BUCKETS = 60
LENGTH_EXAMPLES = 10
# A running job may merge segments away between listing and reading them: list again.
READ_TRIES = 5
# The checkpoint columns the report needs; answers and ids are never read.
COLUMNS = (
    KEY,
    POSITION,
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
)


@dataclass(frozen=True)
class Percentiles:
    """p50, p90 and p99 of a duration, in seconds."""

    p50: float
    p90: float
    p99: float


@dataclass(frozen=True)
class ModelCost:
    """What the answers of one response model cost."""

    model: str
    answers: int
    cost_usd: float
    no_price: int


@dataclass(frozen=True)
class ErrorClass:
    """The failed rows of one error class, with one provider message."""

    error: str
    rows: int
    example: str | None


@dataclass(frozen=True)
class Bin:
    """One bar of the latency histogram."""

    from_s: float
    to_s: float
    rows: int


@dataclass(frozen=True)
class Bucket:
    """Rows that finished in one time bucket starting at `start` (unix time)."""

    start: float
    ok: int
    failed: int


@dataclass(frozen=True)
class Report:
    """Every figure of the report; built by `build_report`, shown by the renderers."""

    job: str
    output: Path
    requested_model: str
    max_tokens: int | None
    committed: int = 0
    ok: int = 0
    failed: int = 0
    tokens: tuple[tuple[str, int], ...] = tuple((kind, 0) for kind in TOKEN_KINDS)
    spend_usd: float = 0.0
    current_spend_usd: float = 0.0
    cost_by_model: tuple[ModelCost, ...] = ()
    finish_reasons: tuple[tuple[str, int], ...] = ()
    errors: tuple[ErrorClass, ...] = ()
    attempts: int = 0
    rows_retried: int = 0
    extra_attempts: int = 0
    superseded_results: int = 0
    requests_sent: int = 0
    latency: Percentiles | None = None
    ttft: Percentiles | None = None
    histogram: tuple[Bin, ...] = ()
    first_finished_at: float | None = None
    last_finished_at: float | None = None
    rows_per_s: float | None = None
    bucket_s: float | None = None
    buckets: tuple[Bucket, ...] = ()
    length_rows: int = 0
    length_examples: tuple[str, ...] = ()
    usage_estimated: int = 0
    other_model_rows: int = 0
    evaluation: Evaluation | None = None  # with [parse] or [eval]


# -- building -------------------------------------------------------------------------------


def build_report(job: Job) -> Report:
    """The report of the job's checkpoint as it is now (during a run too)."""
    checkpoint = Checkpoint(checkpoint_dir(job.output_path))
    for attempt in range(READ_TRIES):
        segments = checkpoint.segments()
        if not segments:
            return _heading(job)
        try:
            return _build(job, segments)
        except FileNotFoundError:
            if attempt == READ_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _heading(job: Job) -> Report:
    """An empty report: the job's identity and nothing run yet."""
    limit = job.request.get("max_tokens", job.request.get("max_completion_tokens"))
    return Report(
        job=job.name,
        output=job.output_path,
        requested_model=str(job.request["model"]),
        max_tokens=limit if isinstance(limit, int) else None,
    )


def _build(job: Job, segments: Sequence[Path]) -> Report:
    """Read the segments and compute every figure."""
    committed = pl.scan_parquet([str(s) for s in segments]).select(COLUMNS)
    # A merge cut short by a kill leaves a commit twice; a commit is unique by key and time.
    every = committed.unique(subset=[KEY, FINISHED_AT], keep="first")
    current = committed.unique(subset=KEY, keep="last", maintain_order=True)
    head = _heading(job)
    frames = pl.collect_all(
        [
            _current_totals(current, head.requested_model),
            every.select(
                results=pl.len(),
                spend=pl.col("cost_usd").sum(),
                sent=pl.col("attempts").cast(pl.Int64).sum(),
            ),
            _by_model(every),
            _finish_reasons(current),
            _errors(current),
            current.filter(pl.col("finish_reason") == "length")
            .sort(POSITION)
            .head(LENGTH_EXAMPLES)
            .select(KEY),
        ]
    )
    totals, spent, models, reasons, errors, length = frames
    t = totals.row(0, named=True)
    s = spent.row(0, named=True)
    histogram, buckets = _series(current, t)
    span = (t["last"] - t["first"]) if t["rows"] else 0.0
    return Report(
        job=head.job,
        output=head.output,
        requested_model=head.requested_model,
        max_tokens=head.max_tokens,
        committed=t["rows"],
        ok=t["ok"],
        failed=t["failed"],
        tokens=tuple((kind, int(t[f"{kind}_tokens"] or 0)) for kind in TOKEN_KINDS),
        spend_usd=_money(s["spend"]),
        current_spend_usd=_money(t["spend"]),
        cost_by_model=tuple(
            ModelCost(**{**row, "cost_usd": _money(row["cost_usd"])})
            for row in models.iter_rows(named=True)
        ),
        finish_reasons=tuple((r, n) for r, n in reasons.iter_rows()),
        errors=tuple(ErrorClass(**row) for row in errors.iter_rows(named=True)),
        attempts=int(t["attempts"] or 0),
        rows_retried=t["rows_retried"],
        extra_attempts=int(t["extra_attempts"] or 0),
        superseded_results=s["results"] - t["rows"],
        requests_sent=int(s["sent"] or 0),
        latency=_percentiles(t, "latency"),
        ttft=_percentiles(t, "ttft"),
        histogram=histogram,
        first_finished_at=t["first"],
        last_finished_at=t["last"],
        rows_per_s=t["rows"] / span if span > 0 else None,
        bucket_s=buckets[0][1] if buckets else None,
        buckets=tuple(Bucket(start, ok, failed) for start, _, ok, failed in buckets),
        length_rows=t["length"],
        length_examples=tuple(length[KEY].to_list()),
        usage_estimated=t["estimated"],
        other_model_rows=t["other_model"],
        evaluation=build_evaluation(job, segments),
    )


def _money(total: float | None) -> float:
    """A sum of costs without float noise, so equal spends read equal whatever the order."""
    return round(float(total or 0.0), 10)


def _current_totals(current: pl.LazyFrame, requested_model: str) -> pl.LazyFrame:
    """One row of counts, sums and percentiles over the current results."""
    ok = pl.col("status") == "ok"
    attempts = pl.col("attempts").cast(pl.Int64)
    model = pl.col("response_model")
    stats: dict[str, pl.Expr] = {}
    for name in ("latency", "ttft"):
        values = pl.col(f"{name}_s").filter(ok)
        stats[f"{name}_min"], stats[f"{name}_max"] = values.min(), values.max()
        for q in PERCENTILES:
            stats[f"{name}_p{q}"] = values.quantile(q / 100, "linear")
    return current.select(
        rows=pl.len(),
        ok=ok.sum(),
        failed=(pl.col("status") == "failed").sum(),
        spend=pl.col("cost_usd").sum(),
        attempts=attempts.sum(),
        rows_retried=(attempts > 1).sum(),
        extra_attempts=(attempts - 1).clip(lower_bound=0).sum(),
        length=(pl.col("finish_reason") == "length").sum(),
        estimated=pl.col("usage_estimated").sum(),
        other_model=(model.is_not_null() & (model != requested_model)).sum(),
        first=pl.col(FINISHED_AT).min(),
        last=pl.col(FINISHED_AT).max(),
        **{f"{kind}_tokens": pl.col(f"{kind}_tokens").sum() for kind in TOKEN_KINDS},
        **stats,
    )


def _by_model(every: pl.LazyFrame) -> pl.LazyFrame:
    """Spend per response model, over every committed result that carries usage."""
    return (
        every.filter(pl.col("total_tokens").is_not_null())
        .group_by(model=pl.col("response_model").fill_null(UNKNOWN))
        .agg(
            answers=pl.len(),
            cost_usd=pl.col("cost_usd").sum(),
            no_price=pl.col("cost_usd").is_null().sum(),
        )
        .sort(["cost_usd", "answers", "model"], descending=[True, True, False])
    )


def _finish_reasons(current: pl.LazyFrame) -> pl.LazyFrame:
    """Rows per finish reason, most frequent first."""
    return (
        current.filter(pl.col("finish_reason").is_not_null())
        .group_by("finish_reason")
        .agg(rows=pl.len())
        .sort(["rows", "finish_reason"], descending=[True, False])
    )


def _errors(current: pl.LazyFrame) -> pl.LazyFrame:
    """Failed rows per error class, with the first provider message seen."""
    return (
        current.filter(pl.col("status") == "failed")
        .group_by(error=pl.col("error").fill_null(UNKNOWN))
        .agg(rows=pl.len(), example=pl.col("error_message").drop_nulls().first())
        .sort(["rows", "error"], descending=[True, False])
    )


def _percentiles(totals: dict[str, Any], name: str) -> Percentiles | None:
    """The p50/p90/p99 a totals row holds for `name`, or None when there were no values."""
    if totals[f"{name}_p50"] is None:
        return None
    return Percentiles(*(float(totals[f"{name}_p{q}"]) for q in PERCENTILES))


def _series(
    current: pl.LazyFrame, totals: dict[str, Any]
) -> tuple[tuple[Bin, ...], list[tuple[float, float, int, int]]]:
    """The latency histogram and the throughput buckets (start, size, ok, failed)."""
    if not totals["rows"]:
        return (), []
    lo, hi = totals["latency_min"], totals["latency_p99"]
    size = _bucket_size(totals["last"] - totals["first"])
    origin = math.floor(totals["first"] / size) * size
    queries = [_bucket_counts(current, origin, size)]
    if lo is not None:
        queries.append(_bin_counts(current, lo, hi))
    frames = pl.collect_all(queries)
    count = int((totals["last"] - origin) // size) + 1
    per_bucket = {i: (ok, failed) for i, ok, failed in frames[0].iter_rows()}
    buckets = [(origin + i * size, float(size), *per_bucket.get(i, (0, 0))) for i in range(count)]
    histogram: tuple[Bin, ...] = ()
    if lo is not None:
        histogram = _bins(dict(frames[1].iter_rows()), lo, hi, totals["latency_max"])
    return histogram, buckets


def _bucket_size(span: float) -> float:
    """The smallest bucket size that cuts `span` seconds into fewer than MAX_BUCKETS."""
    for size in BUCKET_SIZES:
        if span / size < MAX_BUCKETS:
            return float(size)
    return math.ceil(span / MAX_BUCKETS / 86400) * 86400.0


def _bucket_counts(current: pl.LazyFrame, origin: float, size: float) -> pl.LazyFrame:
    """Rows ok and failed per bucket index, counted from `origin`."""
    index = ((pl.col(FINISHED_AT) - origin) / size).floor().cast(pl.Int64)
    return current.group_by(bucket=index).agg(
        ok=(pl.col("status") == "ok").sum(), failed=(pl.col("status") == "failed").sum()
    )


def _bin_counts(current: pl.LazyFrame, lo: float, hi: float) -> pl.LazyFrame:
    """Ok rows per histogram bin over [lo, hi]; slower rows go to the last bin."""
    width = (hi - lo) / HISTOGRAM_BINS or 1.0
    index = ((pl.col("latency_s") - lo) / width).floor().cast(pl.Int64)
    return (
        current.filter((pl.col("status") == "ok") & pl.col("latency_s").is_not_null())
        .group_by(bin=index.clip(0, HISTOGRAM_BINS - 1))
        .agg(rows=pl.len())
    )


def _bins(counts: dict[int, int], lo: float, hi: float, slowest: float) -> tuple[Bin, ...]:
    """Every histogram bin, empty ones included."""
    width = (hi - lo) / HISTOGRAM_BINS
    if width <= 0:
        return (Bin(lo, slowest, sum(counts.values())),)
    edges = [lo + i * width for i in range(HISTOGRAM_BINS)] + [slowest]
    return tuple(Bin(edges[i], edges[i + 1], counts.get(i, 0)) for i in range(HISTOGRAM_BINS))


# -- JSON -------------------------------------------------------------------------------------


def report_json(report: Report) -> dict[str, Any]:
    """The report as a JSON-able dict, with the keys documented in this module's docstring."""
    return {
        "job": report.job,
        "output": str(report.output),
        "requested_model": report.requested_model,
        "rows": {"committed": report.committed, "ok": report.ok, "failed": report.failed},
        "tokens": dict(report.tokens),
        "spend_usd": {"all": report.spend_usd, "current": report.current_spend_usd},
        "cost_by_model": [vars_of(m) for m in report.cost_by_model],
        "finish_reasons": dict(report.finish_reasons),
        "errors": [vars_of(e) for e in report.errors],
        "retries": {
            "attempts": report.attempts,
            "rows_retried": report.rows_retried,
            "extra_attempts": report.extra_attempts,
            "superseded_results": report.superseded_results,
            "requests_sent": report.requests_sent,
        },
        "latency_s": vars_of(report.latency) if report.latency else None,
        "ttft_s": vars_of(report.ttft) if report.ttft else None,
        "latency_histogram": [vars_of(b) for b in report.histogram],
        "throughput": {
            "rows_per_s": report.rows_per_s,
            "first_finished_at": report.first_finished_at,
            "last_finished_at": report.last_finished_at,
            "bucket_s": report.bucket_s,
            "buckets": [vars_of(b) for b in report.buckets],
        },
        "length": {
            "rows": report.length_rows,
            "max_tokens": report.max_tokens,
            "examples": list(report.length_examples),
        },
        "usage_estimated": report.usage_estimated,
        "other_model_rows": report.other_model_rows,
        "evaluation": evaluation_json(report.evaluation) if report.evaluation else None,
    }


def vars_of(item: Percentiles | ModelCost | ErrorClass | Bin | Bucket) -> dict[str, Any]:
    """A report record's fields as a dict."""
    return {name: getattr(item, name) for name in item.__dataclass_fields__}


# -- shared wording ---------------------------------------------------------------------------


def usd(value: float | None) -> str:
    """Dollars as the report shows them: six decimals under a dollar, else cents."""
    if value is None:
        return "-"
    return f"${value:,.6f}" if abs(value) < 1 else f"${value:,.2f}"


def secs(value: float | None) -> str:
    """A duration as the report shows it (ms under a second)."""
    if value is None:
        return "-"
    return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.2f} s"


def period(seconds: float | None) -> str:
    """A bucket size as people say it: 10 s, 1 min, 6 h, 2 d."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def when(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S")


def one_line(text: str | None, limit: int = 80) -> str:
    """A provider message on one line, cut to `limit` characters."""
    if text is None:
        return "-"
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def nothing_yet(report: Report) -> str:
    return f"Nothing has run yet for {report.job}: no results are committed beside {report.output}."


def summary_lines(report: Report) -> list[tuple[str, str]]:
    """The headline figures as (label, value)."""
    tokens = dict(report.tokens)
    scoring = evaluation_summary(report.evaluation) if report.evaluation else []
    return [
        ("rows", f"{report.committed:,} committed, {report.ok:,} ok, {report.failed:,} failed"),
        *scoring,
        (
            "spend",
            f"{usd(report.spend_usd)} in all, superseded attempts included; "
            f"{usd(report.current_spend_usd)} for the current results",
        ),
        ("tokens", ", ".join(f"{kind} {tokens[kind]:,}" for kind in TOKEN_KINDS)),
        (
            "retries",
            f"{report.attempts:,} attempts, {report.rows_retried:,} rows retried, "
            f"{report.extra_attempts:,} extra attempts, {report.superseded_results:,} "
            f"superseded results, {report.requests_sent:,} requests sent in all",
        ),
        (
            "hit max_tokens",
            f"{report.length_rows:,} rows (max_tokens = {report.max_tokens or 'not set'})"
            + (f", e.g. {', '.join(report.length_examples)}" if report.length_examples else ""),
        ),
        ("usage estimated", f"{report.usage_estimated:,} rows counted locally"),
        (
            "other model",
            f"{report.other_model_rows:,} rows answered by another model than "
            f"{report.requested_model}",
        ),
        ("throughput", _throughput(report)),
    ]


def _throughput(report: Report) -> str:
    if report.rows_per_s is None:
        return "-"
    assert report.first_finished_at is not None and report.last_finished_at is not None
    span = report.last_finished_at - report.first_finished_at
    return (
        f"{report.rows_per_s:,.1f} rows/s over {secs(span)} "
        f"({when(report.first_finished_at)} to {when(report.last_finished_at)} UTC)"
    )


def tables(report: Report) -> list[tuple[str, list[str], list[list[str]], set[int]]]:
    """The report's tables: (title, header, rows, right-aligned columns)."""
    tables = [
        (
            "Cost by model",
            ["model", "answers", "cost", "no price"],
            [
                [m.model, f"{m.answers:,}", usd(m.cost_usd), f"{m.no_price:,}"]
                for m in report.cost_by_model
            ],
            {1, 2, 3},
        ),
        (
            "Finish reasons",
            ["finish_reason", "rows"],
            [[reason, f"{rows:,}"] for reason, rows in report.finish_reasons],
            {1},
        ),
        (
            "Errors",
            ["error", "rows", "example"],
            [[e.error, f"{e.rows:,}", one_line(e.example)] for e in report.errors],
            {1},
        ),
        ("Latency (ok rows)", ["", "p50", "p90", "p99"], _latency_rows(report), {1, 2, 3}),
        (
            f"Rows finished per {period(report.bucket_s)} (UTC)",
            ["from", "ok", "failed"],
            [[when(b.start), f"{b.ok:,}", f"{b.failed:,}"] for b in report.buckets],
            {1, 2},
        ),
    ]
    if report.evaluation is not None:
        tables = evaluation_tables(report.evaluation) + tables
    return [table for table in tables if table[2]]


def _latency_rows(report: Report) -> list[list[str]]:
    rows = []
    for name, p in (("latency", report.latency), ("time to first token", report.ttft)):
        if p is not None:
            rows.append([name, secs(p.p50), secs(p.p90), secs(p.p99)])
    return rows


# -- terminal ---------------------------------------------------------------------------------


def render_text(report: Report) -> str:
    """The report as plain-text tables for the terminal."""
    title = f"batchrun report: {report.job} ({report.output})"
    if not report.committed:
        return f"{title}\n\n{nothing_yet(report)}\n"
    width = max(len(label) for label, _ in summary_lines(report))
    lines = [title, ""]
    lines += [f"{label.ljust(width)}  {value}" for label, value in summary_lines(report)]
    for heading, header, rows, right in tables(report):
        lines += ["", heading, *("  " + line for line in text_table(header, rows, right))]
    return "\n".join(lines) + "\n"


def text_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int]
) -> list[str]:
    """Rows as aligned columns under a header and a rule."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
