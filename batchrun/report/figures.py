"""The run report: what a job's checkpoint says about rows, usage, cost, errors, latency and pace.

`build_report` reads the checkpoint beside the job's output, so it works after a run and
during one: it needs no lock, and every segment it can see is complete (they are written
atomically). (With `[eval]`, if rows moved in the input and no run holds the lock, it first
realigns the checkpoint to the input, as `status` does.) A row's current result is its last
committed one; spend counts every committed result, superseded attempts included, because
their money was spent.

The figures are added up in a few passes that stream the checkpoint, in memory that follows
the window and row group sizes, never the number of rows (`batchrun.report.tally`); the
percentiles are exact. The terminal rendering is `batchrun.report.text`; the HTML page is
`batchrun.report.html`.

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
  the first `error_message` in input order
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
  "counts"}}` (see `batchrun.report.evaluation`)
- `"rate_limits"`: null unless a run was rate-limited; else, from the last such run,
  `{"allowed_rpm", "rate_limited", "requests_per_minute"}`: what got through a minute, the
  429s, and the job's limit then
- `"endpoints"`: `[]` for a job with one `[endpoint]`; with `[[endpoints]]`, one entry per
  endpoint in the job's order (then any that gave results and is no longer named):
  `{"name", "rows", "ok", "failed", "cost_usd", "latency_mean_s", "latency_max_s",
  "errors": {error: failed rows}}` over current results, and from the last run that
  used it (null before one) `"last_run": {"requests", "answers", "errors" (failed attempts
  by kind: the output's error values, and `quota_exhausted`, `bad_key`), "rate_limited",
  "allowed_rpm", "requests_per_minute", "circuit_opened", "out", "state"}` (`state`:
  serving, paused, open or out when that run ended; `out`: why)
- `"batch_lane"`: null unless the job's batch endpoint has submitted a file; else, from its
  ledger (`batchrun.checkpoint.batches`), `{"endpoint", "files", "batches" (created at the
  provider, those refused for its enqueued-token limit included), "rows" (in every file, a
  row sent again counted again), "ok", "failed", "pending": {why: lines a batch left
  unanswered}, "in_flight": {"files", "rows"} (not collected yet), "handed_over_rows" (sent
  direct at the deadline), "submission_to_answer_s": {"p50", "max"} (from a batch's
  creation to its end, over the ended ones; null before one), "cost_usd", "paid_twice_usd"
  (answers a batch gave after their rows were handed over and answered direct)}`
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..checkpoint.batches import Intent, read_intents
from ..checkpoint.folder import checkpoint_dir
from ..checkpoint.notes import ENDPOINTS_NOTE, GATEWAY_NOTE, load_note
from ..checkpoint.remote import refresh_copy
from ..checkpoint.segments import current_segments, reading
from ..config.job import Job
from .evaluation import Evaluation, build_evaluation, evaluation_json
from .tally import HISTOGRAM_BINS, TOKEN_KINDS, Tally, tally


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
class EndpointFigures:
    """One endpoint's share of the current results, and what it did in its last run."""

    name: str
    rows: int = 0
    ok: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    latency_mean_s: float | None = None
    latency_max_s: float | None = None
    errors: tuple[tuple[str, int], ...] = ()  # failed rows per error, most first
    last_run: dict[str, Any] | None = None  # see `batchrun.engine.local.lane_figures`


@dataclass(frozen=True)
class BatchLaneFigures:
    """What the batch lane's files and batches did, from its ledger."""

    endpoint: str
    files: int
    batches: int  # created at the provider, refused ones included
    rows: int  # in every file: a row sent in two files counts twice
    ok: int
    failed: int
    pending: tuple[tuple[str, int], ...]  # lines a batch left unanswered, by why, most first
    in_flight_files: int  # not collected yet
    in_flight_rows: int
    handed_over_rows: int  # sent direct at the deadline
    answer_p50_s: float | None  # from a batch's creation to its end, over the ended ones
    answer_max_s: float | None
    cost_usd: float
    paid_twice_usd: float  # answers that came after their rows were answered direct


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
    # When the last rate-limited run ended: what got through, a minute, and how many 429s.
    allowed_rpm: float | None = None
    rate_limited: int = 0
    configured_rpm: float | None = None
    endpoints: tuple[EndpointFigures, ...] = ()  # with [[endpoints]]
    batch_lane: BatchLaneFigures | None = None  # once a batch endpoint submitted a file


# -- building -------------------------------------------------------------------------------


def build_report(job: Job) -> Report:
    """The report of the job's checkpoint as it is now (during a run too)."""
    folder = checkpoint_dir(job.output_path)
    refresh_copy(folder, job.checkpoint_remote)
    head = replace(_heading(job), batch_lane=_batch_lane(read_intents(folder)))
    if not current_segments(folder):
        return head
    # First, for it may realign the checkpoint's positions to the input it reads beside.
    evaluation = build_evaluation(job, folder)
    found = reading(folder, lambda segments: tally(segments, head.requested_model))
    if not found.totals["rows"]:
        return head
    gateway = load_note(folder, GATEWAY_NOTE) or {}
    return replace(
        _records(head, found),
        endpoints=_endpoints(job, found, load_note(folder, ENDPOINTS_NOTE) or {}),
        evaluation=evaluation,
        allowed_rpm=gateway.get("allowed_rpm"),
        rate_limited=int(gateway.get("rate_limited") or 0),
        configured_rpm=gateway.get("requests_per_minute"),
    )


def _endpoints(job: Job, found: Tally, note: dict[str, Any]) -> tuple[EndpointFigures, ...]:
    """Each endpoint's figures, in the job's order; none for a job with one [endpoint]."""
    if not job.pooled:
        return ()
    runs = note.get("endpoints") or {}
    names: list[str | None] = [e.name for e in job.endpoints]
    names += sorted((n for n in found.endpoints if n not in names), key=lambda n: n or "")
    figures = []
    for name in names:
        got = found.endpoints.get(name, {})
        n = got.get("latency_n", 0)
        errors = sorted(got.get("errors", {}).items(), key=lambda e: (-e[1], e[0]))
        figures.append(
            EndpointFigures(
                name=name if name is not None else "(unnamed)",
                rows=got.get("rows", 0),
                ok=got.get("ok", 0),
                failed=got.get("failed", 0),
                cost_usd=_money(got.get("cost_usd")),
                latency_mean_s=got["latency_sum"] / n if n else None,
                latency_max_s=got.get("latency_max"),
                errors=tuple(errors),
                last_run=runs.get(name) if name is not None else None,
            )
        )
    return tuple(figures)


def _batch_lane(intents: list[Intent]) -> BatchLaneFigures | None:
    """The batch lane's figures from its ledger's intents; None when it has none."""
    if not intents:
        return None
    pending: Counter[str] = Counter()
    for intent in intents:
        pending.update(intent.collected.get("pending") or {})
    waits = [
        i.finished_at - i.submitted_at
        for i in intents
        if i.finished_at is not None and i.submitted_at is not None
    ]
    in_flight = [i for i in intents if i.open]

    def collected(name: str) -> float:
        return sum(i.collected.get(name) or 0 for i in intents)

    return BatchLaneFigures(
        endpoint=intents[-1].endpoint,
        files=len(intents),
        batches=sum((i.batch_id is not None) + len(i.refused) for i in intents),
        rows=sum(i.rows for i in intents),
        ok=int(collected("ok")),
        failed=int(collected("failed")),
        pending=tuple(sorted(pending.items(), key=lambda p: (-p[1], p[0]))),
        in_flight_files=len(in_flight),
        in_flight_rows=sum(i.rows for i in in_flight),
        handed_over_rows=sum(i.rows for i in intents if i.handed_over_at is not None),
        answer_p50_s=statistics.median(waits) if waits else None,
        answer_max_s=max(waits) if waits else None,
        cost_usd=_money(collected("cost")),
        paid_twice_usd=_money(collected("late_cost")),
    )


def _heading(job: Job) -> Report:
    """An empty report: the job's identity and nothing run yet."""
    limit = job.request.get("max_tokens", job.request.get("max_completion_tokens"))
    return Report(
        job=job.name,
        output=job.output_path,
        requested_model=str(job.request["model"]),
        max_tokens=limit if isinstance(limit, int) else None,
    )


def _records(head: Report, found: Tally) -> Report:
    """The report's records of what the passes found."""
    t, every = found.totals, found.every
    span = t["last"] - t["first"]
    models = sorted(found.models.items(), key=lambda m: (-m[1][1], -m[1][0], m[0]))
    errors = sorted(found.errors.items(), key=lambda e: (-e[1][0], e[0]))
    latency, ttft = (_percentiles(found.percentiles[name]) for name in ("latency", "ttft"))
    histogram: tuple[Bin, ...] = ()
    if latency is not None:
        histogram = _bins(found.bins, t["latency_min"], latency.p99, t["latency_max"])
    return replace(
        head,
        committed=t["rows"],
        ok=t["ok"],
        failed=t["failed"],
        tokens=tuple((kind, int(t[f"{kind}_tokens"])) for kind in TOKEN_KINDS),
        spend_usd=_money(every["spend"]),
        current_spend_usd=_money(t["spend"]),
        cost_by_model=tuple(
            ModelCost(model, answers, _money(cost), no_price)
            for model, (answers, cost, no_price) in models
        ),
        finish_reasons=tuple(sorted(found.reasons.items(), key=lambda r: (-r[1], r[0]))),
        errors=tuple(ErrorClass(error, rows, example) for error, (rows, example) in errors),
        attempts=int(t["attempts"]),
        rows_retried=t["rows_retried"],
        extra_attempts=int(t["extra_attempts"]),
        superseded_results=every["results"] - t["rows"],
        requests_sent=int(every["sent"]),
        latency=latency,
        ttft=ttft,
        histogram=histogram,
        first_finished_at=t["first"],
        last_finished_at=t["last"],
        rows_per_s=t["rows"] / span if span > 0 else None,
        bucket_s=found.buckets[0][1] if found.buckets else None,
        buckets=tuple(Bucket(start, ok, failed) for start, _, ok, failed in found.buckets),
        length_rows=t["length"],
        length_examples=tuple(found.length_keys),
        usage_estimated=t["estimated"],
        other_model_rows=t["other_model"],
    )


def _money(total: float | None) -> float:
    """A sum of costs without float noise, so equal spends read equal whatever the order."""
    return round(float(total or 0.0), 10)


def _percentiles(found: tuple[float, ...] | None) -> Percentiles | None:
    """p50, p90 and p99 of a duration, or None when it has no values."""
    return Percentiles(*found) if found is not None else None


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
        "rate_limits": None
        if report.allowed_rpm is None
        else {
            "allowed_rpm": report.allowed_rpm,
            "rate_limited": report.rate_limited,
            "requests_per_minute": report.configured_rpm,
        },
        "endpoints": [{**vars_of(e), "errors": dict(e.errors)} for e in report.endpoints],
        "batch_lane": _batch_lane_json(report.batch_lane) if report.batch_lane else None,
    }


def _batch_lane_json(lane: BatchLaneFigures) -> dict[str, Any]:
    return {
        "endpoint": lane.endpoint,
        "files": lane.files,
        "batches": lane.batches,
        "rows": lane.rows,
        "ok": lane.ok,
        "failed": lane.failed,
        "pending": dict(lane.pending),
        "in_flight": {"files": lane.in_flight_files, "rows": lane.in_flight_rows},
        "handed_over_rows": lane.handed_over_rows,
        "submission_to_answer_s": None
        if lane.answer_p50_s is None
        else {"p50": lane.answer_p50_s, "max": lane.answer_max_s},
        "cost_usd": lane.cost_usd,
        "paid_twice_usd": lane.paid_twice_usd,
    }


def vars_of(
    item: Percentiles | ModelCost | ErrorClass | Bin | Bucket | EndpointFigures,
) -> dict[str, Any]:
    """A report record's fields as a dict."""
    return {name: getattr(item, name) for name in item.__dataclass_fields__}
