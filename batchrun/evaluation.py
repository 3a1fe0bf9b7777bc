"""How well the answers did: parse success, accuracy with its interval, by group, and the
confusion matrix of a label job. Part of `batchrun report`.

The figures come from the checkpoint's current results joined with the input's expected and
group columns, parsed and scored by the same `Annotator` that writes the output, so the
report and the output's `score` column always agree, during a run too.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from .columns import KEY
from .errors import InputError
from .job import Job
from .parse import PARSE_ERROR, PARSED
from .plan import check_eval_columns
from .scoring import SCORE, Annotator, job_annotator
from .source import ROW_KEY, open_source
from .stats import Accuracy

UNPARSED = "(unparsed)"
ERROR_KINDS = 5  # parse errors shown, the most frequent first
MAX_GROUPS = 50  # groups shown per group_by column, the largest first


@dataclass(frozen=True)
class Group:
    """The accuracy of the rows sharing one value of a group_by column."""

    column: str
    value: str
    accuracy: Accuracy


@dataclass(frozen=True)
class Evaluation:
    """Parsing and scoring figures over the current results that have an answer."""

    answered: int  # ok rows
    parse_format: str | None
    parsed: int = 0
    parse_errors: tuple[tuple[str, int], ...] = ()  # (kind of error, rows), most frequent first
    scorer: str | None = None
    expected_column: str | None = None
    overall: Accuracy | None = None
    unscored: int = 0  # ok rows without a score (no expected value)
    groups: tuple[Group, ...] = ()
    expected_labels: tuple[str, ...] = ()  # the confusion matrix's rows
    answer_labels: tuple[str, ...] = ()  # its columns: the label set, then UNPARSED
    confusion: tuple[tuple[int, ...], ...] = ()  # counts of (expected, answer)
    unavailable: str | None = None  # why there are no figures (the input cannot be read)


def build_evaluation(job: Job, segments: Sequence[Path]) -> Evaluation | None:
    """The evaluation of the job's current results, or None without [parse] and [eval]."""
    annotator = job_annotator(job)
    if annotator is None:
        return None
    parse_format = job.parse.format if job.parse is not None else None
    try:
        frame = _answered(job, segments, annotator)
    except InputError as exc:  # the input moved since the run: the rest of the report stands
        return Evaluation(answered=0, parse_format=parse_format, unavailable=str(exc))
    parser, scorer = annotator.parser, annotator.scorer
    evaluation = Evaluation(answered=len(frame), parse_format=parse_format)
    if parser is not None:
        errors = (
            frame.filter(pl.col(PARSE_ERROR).is_not_null())
            .group_by(kind=pl.col(PARSE_ERROR).str.extract(r"^([^(:']*)").str.strip_chars())
            .len()
            .sort(["len", "kind"], descending=[True, False])
        )
        evaluation = replace(
            evaluation,
            parsed=int(frame[PARSED].is_not_null().sum()),
            parse_errors=tuple(errors.head(ERROR_KINDS).iter_rows()),
        )
    if scorer is None or job.eval is None:
        return evaluation
    scored = frame.filter(pl.col(SCORE).is_not_null())
    groups = tuple(
        Group(column, str(value), _accuracy(part[SCORE]))
        for column in job.eval.group_by
        for (value,), part in sorted(
            scored.group_by(column), key=lambda item: (-len(item[1]), str(item[0][0]))
        )[:MAX_GROUPS]
    )
    evaluation = replace(
        evaluation,
        scorer=job.eval.scorer,
        expected_column=job.eval.expected_column,
        overall=_accuracy(scored[SCORE]) if len(scored) else None,
        unscored=len(frame) - len(scored),
        groups=groups,
    )
    if parser is not None and job.parse is not None and job.parse.format == "label":
        rows, columns, matrix = _confusion(scored, annotator, job.eval.expected_column)
        evaluation = replace(
            evaluation, expected_labels=rows, answer_labels=columns, confusion=matrix
        )
    return evaluation


def _answered(job: Job, segments: Sequence[Path], annotator: Annotator) -> pl.DataFrame:
    """The ok current results with the input's expected and group columns, annotated."""
    results = (
        pl.scan_parquet([str(s) for s in segments])
        .select(KEY, "status", "response", "tool_calls")
        .unique(subset=KEY, keep="last")
        .filter(pl.col("status") == "ok")
    )
    wanted = [job.eval.expected_column, *job.eval.group_by] if job.eval else []
    if wanted:
        source = open_source(job.input_path, job.input.id_column)
        check_eval_columns(job, source.columns)
        inputs = source.keyed().select(ROW_KEY, *dict.fromkeys(wanted))
        results = results.join(inputs, left_on=KEY, right_on=ROW_KEY, how="left")
    return annotator(results.collect())


def output_line(path: Path) -> str | None:
    """One line for the end of a run: how many answers did not parse, and the accuracy."""
    columns = pl.read_parquet_schema(path)
    figures = []
    if PARSE_ERROR in columns:
        figures.append(pl.col(PARSE_ERROR).is_not_null().sum().alias("unparsed"))
    if SCORE in columns:
        figures += [pl.col(SCORE).count().alias("scored"), pl.col(SCORE).sum().alias("right")]
    if not figures:
        return None
    row = pl.scan_parquet(path).select(figures).collect().row(0, named=True)
    parts = []
    if row.get("unparsed"):
        parts.append(f"unparsed answers: {row['unparsed']:,} (see parse_error)")
    if row.get("scored"):
        parts.append(f"accuracy {_interval(Accuracy.of(row['right'], row['scored']))} 95% CI")
        parts[-1] += f" over {row['scored']:,} scored rows"
    return "; ".join(parts) if parts else None


def _accuracy(scores: pl.Series) -> Accuracy:
    return Accuracy.of(float(scores.sum()), len(scores))


def _confusion(
    scored: pl.DataFrame, annotator: Annotator, expected: str
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """Counts of (expected label, answered label); gold values outside the set get a row."""
    assert annotator.parser is not None
    labels = annotator.parser.labels
    match = annotator.parser.match_label
    gold = [match(str(v)) or str(v) for v in scored[expected]]
    rows = list(dict.fromkeys([*labels, *sorted(set(gold) - set(labels))]))
    columns = [*labels, UNPARSED]
    index = {label: i for i, label in enumerate(columns)}
    counts = [[0] * len(columns) for _ in rows]
    row_of = {label: i for i, label in enumerate(rows)}
    for truth, answer in zip(gold, scored[PARSED], strict=True):
        counts[row_of[truth]][index[answer if answer is not None else UNPARSED]] += 1
    return tuple(rows), tuple(columns), tuple(tuple(r) for r in counts)


# -- showing it -----------------------------------------------------------------------------


def _percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def _interval(a: Accuracy) -> str:
    return f"{_percent(a.accuracy)} ({_percent(a.low)}–{_percent(a.high)})"


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
            text = f"{_interval(a)} 95% CI, {a.correct:,.0f} of {a.scored:,} scored rows right"
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
                [g.column, g.value, f"{g.accuracy.scored:,}", _interval(g.accuracy)]
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


def evaluation_json(ev: Evaluation) -> dict[str, Any]:
    """The evaluation as a JSON-able dict (the report's `evaluation` key)."""
    return {
        "unavailable": ev.unavailable,
        "answered": ev.answered,
        "parse": {
            "format": ev.parse_format,
            "parsed": ev.parsed,
            "errors": [{"error": kind, "rows": n} for kind, n in ev.parse_errors],
        },
        "scorer": ev.scorer,
        "expected_column": ev.expected_column,
        "accuracy": asdict(ev.overall) if ev.overall else None,
        "unscored": ev.unscored,
        "groups": [{"column": g.column, "value": g.value, **asdict(g.accuracy)} for g in ev.groups],
        "confusion": {
            "expected": list(ev.expected_labels),
            "answered": list(ev.answer_labels),
            "counts": [list(row) for row in ev.confusion],
        }
        if ev.confusion
        else None,
    }


def confusion_svg(ev: Evaluation) -> str:
    """The confusion matrix as an SVG heat map: each row shaded by its share of the row."""
    if not ev.confusion:
        return ""
    answers = ev.answer_labels
    cell, left, top = 64, 150, 70
    width = left + cell * len(answers) + 16
    height = top + cell * len(ev.expected_labels) + 16
    title = f"Confusion matrix: {ev.expected_column} (rows) against the parsed answer (columns)"
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'style="max-width: {width}px" role="img" '
        f'aria-label="{_e(title)}"><title>{_e(title)}</title>',
        f'<text x="{left}" y="16" class="legend">parsed answer →</text>',
        f'<text x="8" y="{top - 8}" class="legend">{_e(ev.expected_column)} ↓</text>',
    ]
    for j, answer in enumerate(answers):
        x = left + j * cell + cell / 2
        parts.append(f'<text x="{x:.0f}" y="{top - 10}" text-anchor="middle">{_e(answer)}</text>')
    for i, (truth, row) in enumerate(zip(ev.expected_labels, ev.confusion, strict=True)):
        y = top + i * cell
        parts.append(
            f'<text x="{left - 8}" y="{y + cell / 2 + 4:.0f}" text-anchor="end">{_e(truth)}</text>'
        )
        total = sum(row) or 1
        for j, count in enumerate(row):
            share = count / total
            right = answers[j] == truth
            colour = f"rgba(89,161,79,{share:.3f})" if right else f"rgba(225,87,89,{share:.3f})"
            tip = f"{truth} answered {answers[j]}: {count:,} ({_percent(share)} of the row)"
            parts += [
                f'<rect x="{left + j * cell}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
                f'fill="{colour}" stroke="#d1d9e0"><title>{_e(tip)}</title></rect>',
                f'<text x="{left + j * cell + cell / 2 - 1:.0f}" y="{y + cell / 2 + 4:.0f}" '
                f'text-anchor="middle">{count:,}</text>',
            ]
    return "".join(parts) + "</svg>"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
