"""How well the answers did: parse success, accuracy with its interval, by group, and the
confusion matrix of a label job. Part of `batchrun report`.

The figures come from the checkpoint's current results joined with the input's expected and
group columns, parsed and scored by the same `Annotator` that writes the output, so the
report and the output's `score` column always agree, during a run too. The input and the
checkpoint are walked together a batch of positions at a time (their positions are those of
the input: `batchrun.rows.anchor`), and the counts of each batch are added up, so memory follows
the batch size and the number of distinct groups, never the number of rows. The report's
text and page (`batchrun.report.text`, `batchrun.report.html`) show the figures.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from ..checkpoint.segments import reading
from ..checkpoint.walk import Walk
from ..config.job import Job
from ..core import sizes
from ..core.stats import Accuracy
from ..errors import InputError
from ..protocol.result import KEY
from ..rows.anchor import settle_positions
from ..rows.parse import PARSE_ERROR, PARSED
from ..rows.plan import check_eval_columns
from ..rows.scoring import SCORE, Annotator, job_annotator
from ..rows.source import POSITION, ROW_KEY, Source, open_job_input

UNPARSED = "(unparsed)"
ERROR_KINDS = 5  # parse errors shown, the most frequent first
MAX_GROUPS = 50  # groups shown per group_by column, the largest first
ANSWER_COLUMNS = ("status", "response", "tool_calls")  # what the annotator reads of a result


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


def build_evaluation(job: Job, folder: Path) -> Evaluation | None:
    """The evaluation of the current results in the checkpoint `folder`, or None without
    [parse] and [eval]."""
    annotator = job_annotator(job)
    if annotator is None:
        return None
    parse_format = job.parse.format if job.parse is not None else None
    try:
        tally = _count(job, folder, annotator)
    except InputError as exc:  # the input moved since the run: the rest of the report stands
        return Evaluation(answered=0, parse_format=parse_format, unavailable=str(exc))
    parser, scorer = annotator.parser, annotator.scorer
    evaluation = Evaluation(answered=tally.answered, parse_format=parse_format)
    if parser is not None:
        errors = sorted(tally.parse_errors.items(), key=lambda item: (-item[1], item[0]))
        evaluation = replace(
            evaluation, parsed=tally.parsed, parse_errors=tuple(errors[:ERROR_KINDS])
        )
    if scorer is None or job.eval is None:
        return evaluation
    groups = tuple(
        Group(column, str(value), Accuracy.of(correct, scored))
        for column in job.eval.group_by
        for value, scored, correct in sorted(
            tally.groups[column].result().iter_rows(), key=lambda g: (-g[1], str(g[0]))
        )[:MAX_GROUPS]
    )
    evaluation = replace(
        evaluation,
        scorer=job.eval.scorer,
        expected_column=job.eval.expected_column,
        overall=Accuracy.of(tally.correct, tally.scored) if tally.scored else None,
        unscored=tally.answered - tally.scored,
        groups=groups,
    )
    if tally.pairs is not None:
        rows, columns, matrix = _confusion(tally.pairs.result(), annotator)
        evaluation = replace(
            evaluation, expected_labels=rows, answer_labels=columns, confusion=matrix
        )
    return evaluation


def _count(job: Job, folder: Path, annotator: Annotator) -> _Tally:
    """Parse and score the ok current results batch by batch, and count what came out.

    With [eval] the results are joined with the input's expected and group columns; a
    result whose row is no longer in the input has none (it is counted, unscored)."""
    wanted = list(dict.fromkeys([job.eval.expected_column, *job.eval.group_by])) if job.eval else []
    if not wanted:
        return reading(folder, lambda segments: _count_results(segments, annotator, job))
    source = open_job_input(job)
    check_eval_columns(job, source.columns)
    settle_positions(folder, source, job.checkpoint_remote)
    return reading(
        folder, lambda segments: _count_with_input(segments, source, wanted, annotator, job)
    )


def _count_results(segments: Sequence[Path], annotator: Annotator, job: Job) -> _Tally:
    """The counts of every window of current results (no input read: [parse] alone)."""
    tally = _Tally(job)
    with Walk(segments, ANSWER_COLUMNS) as walk:
        for window in walk.windows():
            tally.add(annotator(window.filter(pl.col("status") == "ok")))
    return tally


def _count_with_input(
    segments: Sequence[Path],
    source: Source,
    wanted: Sequence[str],
    annotator: Annotator,
    job: Job,
) -> _Tally:
    """The counts of the input walked batch by batch with the results of its positions."""
    tally = _Tally(job)
    with Walk(segments, ANSWER_COLUMNS) as walk:
        batches = source.batches(wanted, sizes.WALK_ROWS)
        with contextlib.closing(batches):
            inputs = None
            for inputs in batches:
                end = int(inputs[POSITION][-1]) + 1 if inputs.height else 0
                tally.add(annotator(_joined(walk.until(end), inputs, wanted)))
        # Results past the input's end (rows no longer in an input without ids).
        rest = walk.until(None)
        if inputs is None:
            tally.add(annotator(_joined(rest, None, wanted)))
        else:
            tally.add(annotator(_joined(rest, inputs.clear(), wanted)))
    return tally


def _joined(
    results: pl.DataFrame, inputs: pl.DataFrame | None, wanted: Sequence[str]
) -> pl.DataFrame:
    """The ok results with their rows' `wanted` input columns (null where a row is gone)."""
    answered = results.filter(pl.col("status") == "ok")
    if inputs is None:
        return answered.with_columns(pl.lit(None).alias(name) for name in wanted)
    columns = inputs.select(ROW_KEY, *wanted)
    return answered.join(columns, left_on=KEY, right_on=ROW_KEY, how="left", maintain_order="left")


class _Tally:
    """What the annotated batches hold, added up."""

    def __init__(self, job: Job) -> None:
        self.answered = 0  # ok rows
        self.parsed = 0
        self.parse_errors: Counter[str] = Counter()  # rows per kind of parse error
        self.scored = 0
        self.correct = 0.0
        group_by = job.eval.group_by if job.eval is not None else ()
        self._expected = job.eval.expected_column if job.eval is not None else None
        labels = job.parse is not None and job.parse.format == "label"
        # Scored rows and their sum of scores, per value of each group_by column, and (for
        # a label job) per expected value and parsed label: the confusion matrix, once the
        # expected values are matched to labels.
        self.groups = {column: _Sums([column]) for column in group_by}
        self.pairs = _Sums([self._expected, PARSED]) if labels and self._expected else None

    def add(self, frame: pl.DataFrame) -> None:
        self.answered += frame.height
        if PARSED in frame.columns:
            self.parsed += int(frame[PARSED].is_not_null().sum())
            kinds = (
                frame.filter(pl.col(PARSE_ERROR).is_not_null())
                .group_by(kind=pl.col(PARSE_ERROR).str.extract(r"^([^(:']*)").str.strip_chars())
                .len()
            )
            self.parse_errors.update(dict(kinds.iter_rows()))
        if SCORE not in frame.columns:
            return
        scored = frame.filter(pl.col(SCORE).is_not_null())
        self.scored += scored.height
        self.correct += float(scored[SCORE].sum())
        for column, sums in self.groups.items():
            sums.add(scored.group_by(column).agg(rows=pl.len(), correct=pl.col(SCORE).sum()))
        if self.pairs is not None and self._expected is not None:
            by_pair = scored.group_by(self._expected, PARSED)
            self.pairs.add(by_pair.agg(rows=pl.len(), correct=pl.col(SCORE).sum()))


class _Sums:
    """Rows and scores per key, added batch by batch. The batches' partial sums are summed
    again once they outgrow what was summed before, so adding n rows costs O(n log n)
    however many keys there are, and memory stays about twice the distinct keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = list(keys)
        self._parts: list[pl.DataFrame] = []  # partial sums not yet summed together
        self._rows = 0  # rows of the parts
        self._summed = 0  # rows of the last sum of them all

    def add(self, part: pl.DataFrame) -> None:
        self._parts.append(part)
        self._rows += part.height
        if self._rows > 2 * self._summed + 1024:
            self._sum()

    def _sum(self) -> None:
        if len(self._parts) > 1:
            frame = pl.concat(self._parts, how="vertical_relaxed")
            self._parts = [frame.group_by(self._keys).agg(pl.col("rows", "correct").sum())]
        self._rows = self._summed = sum(part.height for part in self._parts)

    def result(self) -> pl.DataFrame:
        """The keys, rows and sum of scores."""
        self._sum()
        if not self._parts:
            return pl.DataFrame(schema=[*self._keys, "rows", "correct"])
        return self._parts[0].select(*self._keys, "rows", "correct")


def _confusion(
    pairs: pl.DataFrame, annotator: Annotator
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """Counts of (expected label, answered label); gold values outside the set get a row."""
    assert annotator.parser is not None
    labels = annotator.parser.labels
    match = annotator.parser.match_label
    counted = [(match(str(v)) or str(v), answer, rows) for v, answer, rows, _ in pairs.iter_rows()]
    gold = {truth for truth, _, _ in counted}
    rows = list(dict.fromkeys([*labels, *sorted(gold - set(labels))]))
    columns = [*labels, UNPARSED]
    index = {label: i for i, label in enumerate(columns)}
    counts = [[0] * len(columns) for _ in rows]
    row_of = {label: i for i, label in enumerate(rows)}
    for truth, answer, n in counted:
        counts[row_of[truth]][index[answer if answer is not None else UNPARSED]] += n
    return tuple(rows), tuple(columns), tuple(tuple(r) for r in counts)


# -- the run's last line, and JSON -----------------------------------------------------------


def percent(share: float) -> str:
    """A share as a percentage with one decimal."""
    return f"{share * 100:.1f}%"


def interval(a: Accuracy) -> str:
    """An accuracy with its 95% interval, as the run's last line and the report show it."""
    return f"{percent(a.accuracy)} ({percent(a.low)}–{percent(a.high)})"


def output_line(path: Path) -> str | None:
    """One line for the end of a run: how many answers did not parse, and the accuracy.
    Read a row group at a time (polars' collect of two columns of five million rows held
    150 MB at the end of a run)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(path, pre_buffer=False)  # see Source._parquet_batches
    wanted = [c for c in (PARSE_ERROR, SCORE) if c in reader.schema_arrow.names]
    if not wanted:
        return None
    unparsed = scored = 0
    right: float = 0
    try:
        for batch in reader.iter_batches(columns=wanted, batch_size=65_536):
            if PARSE_ERROR in wanted:
                column = batch.column(PARSE_ERROR)
                unparsed += len(column) - column.null_count
            if SCORE in wanted:
                column = batch.column(SCORE)
                scored += len(column) - column.null_count
                right += pc.sum(column).as_py() or 0
    finally:
        reader.close()
    parts = []
    if unparsed:
        parts.append(f"unparsed answers: {unparsed:,} (see parse_error)")
    if scored:
        parts.append(f"accuracy {interval(Accuracy.of(right, scored))} 95% CI")
        parts[-1] += f" over {scored:,} scored rows"
    return "; ".join(parts) if parts else None


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
