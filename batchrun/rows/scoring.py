"""Scoring answers against the input's gold column (`[eval]`), and the columns parsing and
scoring add to the output.

`score` is 1.0 for a right answer and 0.0 for a wrong one, an answer that does not parse
included; it is null where nothing can be scored: a failed row (no answer) or a null
expected value. Every scorer is deterministic and runs on committed answers when the output
is written, so changing `[eval]` rescores a finished job without sending anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import orjson
import polars as pl

from ..config.job import EvalSpec, Job
from .parse import MISSING, PARSE_ERROR, PARSED, Parsed, Parser, lookup, normalize

SCORE = "score"
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


class Scorer:
    """The job's `[eval]`: an answer and its expected value in, a score out."""

    def __init__(self, spec: EvalSpec, parser: Parser | None) -> None:
        self.spec = spec
        self.parser = parser
        self._patterns: dict[str, re.Pattern[str] | None] = {}  # regex scorer, by pattern
        self._compare: Callable[[str, Parsed | None, Any], bool | None] = getattr(
            self, f"_{spec.scorer}"
        )

    def score(self, response: str | None, parsed: Parsed | None, expected: Any) -> float | None:
        """1.0 right, 0.0 wrong, None when there is nothing to score."""
        if response is None and parsed is None:
            return None
        if expected is None or (isinstance(expected, float) and math.isnan(expected)):
            return None
        if parsed is not None and parsed.value is None:
            return 0.0  # an answer that does not parse is a wrong answer
        answer = parsed.value if parsed is not None else response
        verdict = self._compare(answer or "", parsed, expected)
        return None if verdict is None else float(verdict)

    def _exact(self, answer: str, parsed: Parsed | None, expected: Any) -> bool:
        return answer.strip() == _text(expected).strip()

    def _normalized(self, answer: str, parsed: Parsed | None, expected: Any) -> bool:
        return normalize(answer) == normalize(_text(expected))

    def _contains(self, answer: str, parsed: Parsed | None, expected: Any) -> bool:
        return normalize(_text(expected)) in normalize(answer)

    def _regex(self, answer: str, parsed: Parsed | None, expected: Any) -> bool | None:
        pattern = _text(expected)
        if pattern not in self._patterns:
            try:
                self._patterns[pattern] = re.compile(pattern)
            except re.error:
                self._patterns[pattern] = None
        compiled = self._patterns[pattern]
        return None if compiled is None else compiled.search(answer) is not None

    def _numeric(self, answer: str, parsed: Parsed | None, expected: Any) -> bool | None:
        want = _number(expected)
        if want is None:
            return None
        found = _NUMBER.search(answer)
        return found is not None and self._close(float(found.group().replace(",", "")), want)

    def _json_field(self, answer: str, parsed: Parsed | None, expected: Any) -> bool | None:
        assert parsed is not None and self.spec.field is not None
        value = lookup(parsed.document, self.spec.field)
        if value is MISSING or value is None:
            return False
        want = _number(expected)
        if want is not None and isinstance(value, int | float) and not isinstance(value, bool):
            return self._close(float(value), want)
        if isinstance(value, bool):
            return _text(expected).strip().casefold() == _text(value)
        shown = value if isinstance(value, str) else orjson.dumps(value).decode()
        return normalize(shown) == normalize(_text(expected))

    def _label(self, answer: str, parsed: Parsed | None, expected: Any) -> bool:
        assert self.parser is not None
        gold = self.parser.match_label(_text(expected))
        return gold is not None and answer == gold

    def _close(self, got: float, want: float) -> bool:
        return abs(got - want) <= self.spec.tolerance + 1e-9 * max(1.0, abs(want))


class Annotator:
    """What `[parse]` and `[eval]` add to output rows: parsed, parse_error, fields, score."""

    def __init__(self, parser: Parser | None, scorer: Scorer | None) -> None:
        self.parser = parser
        self.scorer = scorer
        self.expected = scorer.spec.expected_column if scorer is not None else None

    @property
    def columns(self) -> dict[str, pl.DataType]:
        """The columns added, in output order, with their types."""
        added = dict(self.parser.columns) if self.parser is not None else {}
        if self.scorer is not None:
            added[SCORE] = pl.Float64()
        return added

    def __call__(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` (with response, tool_calls, status and the expected column) annotated.

        Label jobs repeat a handful of answers millions of times: each distinct combination
        of answer and expected value is parsed and scored once and joined back.
        """
        inputs = ["response", "tool_calls", "status", *([self.expected] if self.expected else [])]
        distinct = frame.select(inputs).unique()
        if distinct.height * 2 <= frame.height:
            annotated = self._annotate(distinct)
            return frame.join(
                annotated, on=inputs, how="left", nulls_equal=True, maintain_order="left"
            )
        return frame.with_columns(self._annotate(frame.select(inputs)).drop(inputs))

    def _annotate(self, rows: pl.DataFrame) -> pl.DataFrame:
        """`rows` with the added columns, computed row by row."""
        added: dict[str, list[Any]] = {name: [] for name in self.columns}
        expected = rows[self.expected] if self.expected else [None] * rows.height
        cells = zip(rows["response"], rows["tool_calls"], rows["status"], expected, strict=True)
        for response, tool_calls, status, gold in cells:
            answered = status == "ok"
            parsed = None
            if self.parser is not None:
                parsed = self.parser.parse(response, tool_calls) if answered else None
                added[PARSED].append(parsed.value if parsed else None)
                added[PARSE_ERROR].append(parsed.error if parsed else None)
                values = (
                    self.parser.field_values(parsed) if parsed else [None] * len(self.parser.fields)
                )
                for name, value in zip(self.parser.fields, values, strict=True):
                    added[name].append(value)
            if self.scorer is not None:
                score = self.scorer.score(response, parsed, gold) if answered else None
                added[SCORE].append(score)
        return rows.with_columns(
            pl.Series(name, added[name], dtype=dtype) for name, dtype in self.columns.items()
        )


def job_annotator(job: Job) -> Annotator | None:
    """The job's annotator, or None when it has neither `[parse]` nor `[eval]`."""
    if job.parse is None and job.eval is None:
        return None
    parser = Parser(job.parse, job.request) if job.parse is not None else None
    scorer = Scorer(job.eval, parser) if job.eval is not None else None
    return Annotator(parser, scorer)


def _text(value: Any) -> str:
    """An expected value as text: a Parquet or pandas gold column may hold numbers or bools
    (a pandas int column with a gap is float: 3 arrives as 3.0)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip().replace(",", ""))
    except ValueError:
        return None
