"""The run report in the terminal: the headline figures and plain-text tables.

The figures are `batchrun.report.figures`'s; the wording here (dollars, durations, periods, times,
provider messages on one line) is shared with the HTML page, `batchrun.report.html`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from datetime import UTC, datetime

from .evaluation import Evaluation, interval
from .figures import TOKEN_KINDS, BatchLaneFigures, EndpointFigures, Report

# -- wording, shared with the page ------------------------------------------------------------


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


# -- figures as lines and tables -------------------------------------------------------------


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
        *(
            [
                (
                    "rate limits",
                    allowed_rate_line(
                        report.allowed_rpm, report.rate_limited, report.configured_rpm or 0
                    ),
                )
            ]
            if report.allowed_rpm is not None
            else []
        ),
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
            "Endpoints",
            ["endpoint", "rows", "ok", "failed", "cost", "latency mean", "max", "errors"],
            [
                [
                    e.name,
                    f"{e.rows:,}",
                    f"{e.ok:,}",
                    f"{e.failed:,}",
                    usd(e.cost_usd),
                    secs(e.latency_mean_s),
                    secs(e.latency_max_s),
                    ", ".join(f"{error} {rows:,}" for error, rows in e.errors) or "-",
                ]
                for e in report.endpoints
            ],
            {1, 2, 3, 4, 5, 6},
        ),
        (
            "Endpoints in the last run",
            ["endpoint", "requests", "answers", "failed attempts", "429s", "allowed/min", "state"],
            [_last_run(e) for e in report.endpoints if e.last_run is not None],
            {1, 2, 4, 5},
        ),
        (
            f"Rows finished per {period(report.bucket_s)} (UTC)",
            ["from", "ok", "failed"],
            [[when(b.start), f"{b.ok:,}", f"{b.failed:,}"] for b in report.buckets],
            {1, 2},
        ),
    ]
    if report.evaluation is not None:
        tables = evaluation_tables(report.evaluation) + tables
    return [table for table in tables if table[2]] + batch_lane_tables(report)


def batch_lane_tables(report: Report) -> list[tuple[str, list[str], list[list[str]], set[int]]]:
    """The batch lane's tables (none without one): its files and batches, and the lines its
    batches left pending."""
    lane = report.batch_lane
    if lane is None:
        return []
    tables = [
        (
            f"Batch lane at {lane.endpoint}",
            [
                "files",
                "batches",
                "rows",
                "ok",
                "failed",
                "in flight",
                "handed over",
                "to answer p50",
                "max",
                "cost",
                "paid twice",
            ],
            [_batch_lane_row(lane)],
            set(range(11)),
        ),
        (
            "Batch lines left pending",
            ["why", "lines"],
            [[why, f"{n:,}"] for why, n in lane.pending],
            {1},
        ),
    ]
    return [table for table in tables if table[2]]


def _batch_lane_row(lane: BatchLaneFigures) -> list[str]:
    return [
        f"{lane.files:,}",
        f"{lane.batches:,}",
        f"{lane.rows:,}",
        f"{lane.ok:,}",
        f"{lane.failed:,}",
        f"{lane.in_flight_rows:,} rows, {lane.in_flight_files:,} files"
        if lane.in_flight_files
        else "-",
        f"{lane.handed_over_rows:,}",
        secs(lane.answer_p50_s),
        secs(lane.answer_max_s),
        usd(lane.cost_usd),
        usd(lane.paid_twice_usd),
    ]


def _last_run(e: EndpointFigures) -> list[str]:
    run = e.last_run or {}
    allowed = run.get("allowed_rpm")
    limit = run.get("requests_per_minute")
    errors = run.get("errors") or {}
    return [
        e.name,
        f"{run.get('requests', 0):,}",
        f"{run.get('answers', 0):,}",
        ", ".join(f"{kind} {n:,}" for kind, n in sorted(errors.items())) or "-",
        f"{run.get('rate_limited', 0):,}",
        f"{allowed:,.0f} of {limit:,.0f}" if allowed is not None and limit else "-",
        f"out: {run['out']}" if run.get("out") else run.get("state", "serving"),
    ]


def _latency_rows(report: Report) -> list[list[str]]:
    rows = []
    for name, p in (("latency", report.latency), ("time to first token", report.ttft)):
        if p is not None:
            rows.append([name, secs(p.p50), secs(p.p90), secs(p.p99)])
    return rows


# -- the evaluation --------------------------------------------------------------------------


def evaluation_summary(ev: Evaluation) -> list[tuple[str, str]]:
    """Summary lines: parsing, and accuracy with its interval."""
    if ev.unavailable is not None:
        return [("evaluation", f"not available: {ev.unavailable}")]
    lines = []
    if ev.parse_format is not None:
        unparsed = ev.answered - ev.parsed
        lines.append(
            (
                f"parsed ({ev.parse_format})",
                f"{ev.parsed:,} of {ev.answered:,} answers; {unparsed:,} did not parse",
            )
        )
    if ev.scorer is not None:
        how = f"{ev.scorer} against {ev.expected_column}"
        if ev.overall is None:
            lines.append((f"accuracy ({how})", "no scored rows yet"))
        else:
            a = ev.overall
            text = f"{interval(a)} 95% CI, {a.correct:,.0f} of {a.scored:,} scored rows right"
            if ev.unscored:
                text += f"; {ev.unscored:,} without an expected value"
            lines.append((f"accuracy ({how})", text))
    return lines


def evaluation_tables(ev: Evaluation) -> list[tuple[str, list[str], list[list[str]], set[int]]]:
    """The evaluation's tables: (title, header, rows, right-aligned columns)."""
    tables = [
        (
            "Parse errors",
            ["error", "rows"],
            [[kind or "(other)", f"{n:,}"] for kind, n in ev.parse_errors],
            {1},
        ),
        (
            "Accuracy by group (95% CI)",
            ["column", "value", "rows", "accuracy"],
            [
                [g.column, g.value, f"{g.accuracy.scored:,}", interval(g.accuracy)]
                for g in ev.groups
            ],
            {2, 3},
        ),
        (
            f"Confusion matrix (rows: {ev.expected_column}; columns: parsed answer)",
            ["", *ev.answer_labels],
            [
                [label, *(f"{n:,}" for n in row)]
                for label, row in zip(ev.expected_labels, ev.confusion, strict=True)
            ],
            set(range(1, len(ev.answer_labels) + 1)),
        ),
    ]
    return [table for table in tables if table[2]]


# -- terminal ---------------------------------------------------------------------------------


def render_text(report: Report) -> str:
    """The report as plain-text tables for the terminal."""
    title = f"batchrun report: {report.job} ({report.output})"
    if not report.committed:
        lines = [title, "", nothing_yet(report)]
        shown = batch_lane_tables(report)
    else:
        width = max(len(label) for label, _ in summary_lines(report))
        lines = [title, ""]
        lines += [f"{label.ljust(width)}  {value}" for label, value in summary_lines(report)]
        shown = tables(report)
    for heading, header, rows, right in shown:
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


def allowed_rate_line(allowed_rpm: float, rate_limited: int, configured_rpm: float) -> str:
    """What a rate-limited run says at its end (under "rate limits"), so that the next one
    starts there."""
    shown = round(allowed_rpm, -1) if allowed_rpm >= 100 else round(allowed_rpm, 1)
    return (
        f"the gateway answered 429 {rate_limited:,} "
        f"time{'s' if rate_limited != 1 else ''} below the job's "
        f"{configured_rpm:,g} requests a minute; about {shown:,g} requests a minute got "
        f"through: set limits.requests_per_minute to that."
    )
