"""`batchrun compare A B`: two runs over the same rows, side by side, and where they differ.

Rows are joined by id: `--id COLUMN`, else the `id_column` both files' batchrun metadata
names (a file without metadata takes the other's), else by position, which needs equal row
counts. Every figure is over the rows in both files. The answer is the `parsed` column when
both files have one, else `response`; two rows disagree when their answers differ or their
scores do (a null differs from a value, two nulls agree). With a `score` column in both,
accuracy is compared on the rows scored in both: a score of 0.5 or more counts as right
(scores are 1.0 or 0.0 today), b counts rows A got right and B wrong, c the reverse, and
McNemar's exact test says whether b and c differ by more than chance.

Only the columns needed are read, and the join and sums run in polars' streaming engine: a
pair of million-row files (ids in different orders) took 4 s and 0.7 GB of memory here.

`Comparison.as_dict` gives, for scripts (differences are B − A, null where a side has none):

- `"a"`, `"b"`: `{"path", "job", "model", "rows", "ok", "failed", "accuracy", "cost_usd",
  "no_cost", "tokens": {"prompt", "completion", "total"}, "latency_s": {"mean", "p50",
  "p95"}}`; `rows` counts the whole file, the rest the rows in both; `accuracy` is null or
  `{"scored", "correct", "accuracy", "low", "high"}` (95% Wilson interval, as in the report);
  `cost_usd` is null when the file has no cost column, and `no_cost` counts rows without a
  cost; `model` is the metadata's requested model, else the commonest `response_model`
- `"difference"`: `{"ok", "failed", "accuracy", "cost_usd", "tokens", "latency_s"}`
- `"join"`: `{"column", "from"}`: the id column (null: by position) and `"--id"`,
  `"metadata"` or `"position"`; `"answer_column"`: `"parsed"` or `"response"`
- `"rows"`: `{"both", "only_a", "only_b"}`
- `"disagreements"`: `{"rows", "answers_differ", "scores_differ", "sample": [{"id",
  "answer_a", "answer_b", "score_a", "score_b", "status_a", "status_b"}], "out"}`: the
  first rows in A's order, and the file every disagreeing row was written to (or null)
- `"paired"`: null without a score column in both, else `{"rows", "both_right", "b", "c",
  "both_wrong", "difference", "low", "high", "p_value", "significant"}`: rows scored in
  both, B's accuracy minus A's on them with Newcombe's 95% interval, McNemar's exact p, and
  whether p < 0.05
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .checkpoint import atomic_file
from .errors import InputError, UserError
from .report import secs, text_table, usd
from .stats import Accuracy, mcnemar_exact, paired_difference_interval

METADATA_KEY = b"batchrun"  # the Parquet key-value metadata batchrun writes into its output
REQUIRED = ("response", "status")
TOKENS = ("prompt", "completion", "total")
SAMPLE_ROWS = 10
TEXT_WIDTH = 40  # characters of an answer shown in the terminal
RIGHT = 0.5  # a score at or above this counts as a right answer
ALPHA = 0.05
POSITION = "position"  # the key's name in --out when rows are matched by position
# Each disagreeing row's columns after its id, in the --out file and the sample.
PAIR_COLUMNS = ("answer_a", "answer_b", "score_a", "score_b", "status_a", "status_b")
# Names inside the joined frame, out of the way of any column a file may have.
KEY, ORDER = "__batchrun_key", "__batchrun_order"
# The per-row columns the comparison reads from each side, with their types.
NUMBERS: dict[str, pl.DataType] = {
    **{f"{kind}_tokens": pl.Int64() for kind in TOKENS},
    "cost_usd": pl.Float64(),
    "latency_s": pl.Float64(),
}


@dataclass(frozen=True)
class Side:
    """One file: who wrote it, and its figures over the rows in both files."""

    path: Path
    job: str | None
    model: str | None
    rows: int  # in the whole file
    ok: int = 0
    failed: int = 0
    accuracy: Accuracy | None = None
    cost_usd: float | None = None  # None: the file has no cost column
    no_cost: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    latency_mean: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The side's identity and figures, as in `Comparison.as_dict`."""
        accuracy = self.accuracy
        return {
            "path": str(self.path),
            "job": self.job,
            "model": self.model,
            "rows": self.rows,
            "ok": self.ok,
            "failed": self.failed,
            "accuracy": None if accuracy is None else _fields(accuracy),
            "cost_usd": self.cost_usd,
            "no_cost": self.no_cost,
            "tokens": {kind: getattr(self, f"{kind}_tokens") for kind in TOKENS},
            "latency_s": {
                "mean": self.latency_mean,
                "p50": self.latency_p50,
                "p95": self.latency_p95,
            },
        }


@dataclass(frozen=True)
class Paired:
    """The rows scored in both files, by who got them right: the McNemar table."""

    both_right: int
    b: int  # A right, B wrong
    c: int  # A wrong, B right
    both_wrong: int

    @property
    def rows(self) -> int:
        """Rows scored in both files."""
        return self.both_right + self.b + self.c + self.both_wrong

    @property
    def difference(self) -> float:
        """B's accuracy minus A's on these rows."""
        return (self.c - self.b) / self.rows if self.rows else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """Newcombe's 95% interval for `difference`."""
        return paired_difference_interval(self.both_right, self.b, self.c, self.both_wrong)

    @property
    def p_value(self) -> float:
        """McNemar's exact two-sided p-value."""
        return mcnemar_exact(self.b, self.c)

    def as_dict(self) -> dict[str, Any]:
        """The table, the difference with its interval, and the test, for scripts."""
        low, high = self.interval
        return {
            **_fields(self),
            "rows": self.rows,
            "difference": self.difference,
            "low": low,
            "high": high,
            "p_value": self.p_value,
            "significant": self.p_value < ALPHA,
        }


@dataclass(frozen=True)
class Disagreement:
    """One row where the two files' answers or scores differ."""

    id: Any  # the id column's value, or the row's position
    answer_a: str | None
    answer_b: str | None
    score_a: float | None
    score_b: float | None
    status_a: str | None
    status_b: str | None


@dataclass(frozen=True)
class Comparison:
    """Everything `batchrun compare` says; built by `compare`, shown by `render_text`."""

    a: Side
    b: Side
    join_column: str | None  # None: rows matched by position
    join_from: str  # "--id", "metadata" or "position"
    answer_column: str
    both: int  # rows in both files
    disagreements: int
    answers_differ: int
    scores_differ: int
    sample: tuple[Disagreement, ...]
    paired: Paired | None  # None unless both files have a score column
    out: Path | None = None

    @property
    def only_a(self) -> int:
        """Rows of A that B lacks."""
        return self.a.rows - self.both

    @property
    def only_b(self) -> int:
        """Rows of B that A lacks."""
        return self.b.rows - self.both

    def as_dict(self) -> dict[str, Any]:
        """The comparison for scripts: numbers as numbers, nulls as null (keys above)."""
        return {
            "a": self.a.as_dict(),
            "b": self.b.as_dict(),
            "difference": _differences(self.a, self.b),
            "join": {"column": self.join_column, "from": self.join_from},
            "answer_column": self.answer_column,
            "rows": {"both": self.both, "only_a": self.only_a, "only_b": self.only_b},
            "disagreements": {
                "rows": self.disagreements,
                "answers_differ": self.answers_differ,
                "scores_differ": self.scores_differ,
                "sample": [_fields(d) for d in self.sample],
                "out": None if self.out is None else str(self.out),
            },
            "paired": None if self.paired is None else self.paired.as_dict(),
        }


def _fields(item: Accuracy | Paired | Disagreement) -> dict[str, Any]:
    return {name: getattr(item, name) for name in item.__dataclass_fields__}


def _minus(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _differences(a: Side, b: Side) -> dict[str, Any]:
    accuracy = None
    if a.accuracy is not None and b.accuracy is not None:
        accuracy = b.accuracy.accuracy - a.accuracy.accuracy
    return {
        "ok": b.ok - a.ok,
        "failed": b.failed - a.failed,
        "accuracy": accuracy,
        "cost_usd": _minus(b.cost_usd, a.cost_usd),
        "tokens": {
            kind: _minus(getattr(b, f"{kind}_tokens"), getattr(a, f"{kind}_tokens"))
            for kind in TOKENS
        },
        "latency_s": {
            stat: _minus(getattr(b, f"latency_{stat}"), getattr(a, f"latency_{stat}"))
            for stat in ("mean", "p50", "p95")
        },
    }


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    """A Parquet file to compare: its columns and what batchrun wrote about it."""

    path: Path
    schema: pa.Schema
    rows: int
    metadata: dict[str, Any]  # the batchrun metadata; empty when the file has none

    def has(self, column: str) -> bool:
        return column in self.schema.names


def _open(path: Path) -> _File:
    """Read a file's schema and row count; the rows are read later, column by column."""
    if path.is_dir():
        raise InputError(f"{path} is a folder: pass the output file of a batchrun run.")
    if not path.exists():
        raise InputError(f"{path} does not exist: check the path.")
    try:
        parquet = pq.ParquetFile(path)
    except OSError as exc:  # pyarrow's own errors are not OSErrors; this is the OS refusing
        reason = exc.strerror or "an I/O error"
        raise InputError(f"{path} cannot be read ({reason}): check the path.") from None
    except pa.ArrowException:
        raise InputError(
            f"{path} is not a Parquet file: pass the output of a batchrun run."
        ) from None
    schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise InputError(
            f"{path} has no {' or '.join(missing)} column: compare the outputs of batchrun runs."
        )
    # The file's key-value metadata, not the Arrow schema's: polars writes only the former.
    try:
        stored = json.loads((parquet.metadata.metadata or {}).get(METADATA_KEY, b"null"))
    except ValueError:
        stored = None  # unreadable metadata is no metadata: the join falls back on position
    return _File(path, schema, rows, stored if isinstance(stored, dict) else {})


def _join_column(a: _File, b: _File, id_column: str | None) -> tuple[str | None, str]:
    """The column both files are joined on (None: by position), and where it came from."""
    if id_column is not None:
        column, origin = id_column, "--id"
    else:
        declared, origin = _declared_id(a, b), "metadata"
        if declared is None:
            if a.rows != b.rows:
                raise InputError(
                    f"{a.path} has {a.rows:,} rows and {b.path} {b.rows:,}, and without an id "
                    f"column rows are matched by position: pass --id COLUMN."
                )
            for f in (a, b):
                # A run that stopped early leaves out the rows it did not finish, so its
                # positions are not the input's.
                total = f.metadata.get("input_rows")
                if isinstance(total, int) and total != f.rows:
                    raise InputError(
                        f"{f.path} holds {f.rows:,} of its job's {total:,} rows (the run did "
                        f"not finish), so its rows cannot be matched by position: finish the "
                        f"run, or pass --id COLUMN."
                    )
            return None, "position"
        column = declared
    for f in (a, b):
        if not f.has(column):
            named = "--id" if origin == "--id" else "the id column of the runs' metadata"
            raise InputError(
                f"{f.path} has no column {column!r} ({named}): pass --id with a column both "
                f"files have."
            )
    return column, origin


def _declared_id(a: _File, b: _File) -> str | None:
    """The id column the runs' metadata names (None: by position); a file without metadata
    goes along with the other, two that name different ones are an error."""
    declared = {
        f.path: value if isinstance(value := f.metadata["id_column"], str) else None
        for f in (a, b)
        if "id_column" in f.metadata
    }
    if len(set(declared.values())) > 1:
        said = " and ".join(
            f"{path} by {'position' if c is None else repr(c)}" for path, c in declared.items()
        )
        raise InputError(
            f"The runs identify rows differently ({said}): pass --id COLUMN to join on a column "
            f"both files have."
        )
    return next(iter(declared.values()), None)


def _check_ids(f: _File, column: str) -> None:
    """Ids must be present and unique for rows to be matched one to one."""
    key = pl.col(column)
    found = (
        pl.scan_parquet(f.path)
        .select(
            nulls=key.null_count(),
            duplicated=key.is_duplicated().sum(),
            example=key.filter(key.is_duplicated()).first().cast(pl.String),
        )
        .collect()
        .row(0, named=True)
    )
    if found["nulls"]:
        raise InputError(
            f"{f.path} has {found['nulls']:,} rows without a value in {column!r}: ids must "
            f"be present to match rows; pass --id with another column."
        )
    if found["duplicated"]:
        raise InputError(
            f"{f.path} has duplicate ids in {column!r} (e.g. {found['example']!r}): ids must "
            f"be unique to match rows; pass --id with a unique column."
        )


def _side(
    f: _File, column: str | None, answer: str, scored: bool, suffix: str, key: pl.DataType | None
) -> pl.LazyFrame:
    """The columns the comparison needs from one file, named with the side's suffix; A's
    also carry its row order. `key` is the type both ids are cast to when theirs differ."""
    ids = pl.col(ORDER if column is None else column)
    columns = [
        (ids if key is None else ids.cast(key)).alias(KEY),
        pl.col(answer).cast(pl.String).alias(f"answer{suffix}"),
        pl.col("status").cast(pl.String).alias(f"status{suffix}"),
        _column(f, "score", pl.Float64(), suffix, scored),
        *(_column(f, name, dtype, suffix) for name, dtype in NUMBERS.items()),
    ]
    if suffix == "_a":
        columns.append(pl.col(ORDER))
    return pl.scan_parquet(f.path, row_index_name=ORDER).select(columns)


def _column(f: _File, name: str, dtype: pl.DataType, suffix: str, wanted: bool = True) -> pl.Expr:
    """A column of the file, or nulls when the file lacks it (or it is not `wanted`)."""
    if wanted and f.has(name):
        return pl.col(name).cast(dtype, strict=False).alias(f"{name}{suffix}")
    return pl.lit(None, dtype).alias(f"{name}{suffix}")


# -- comparing ------------------------------------------------------------------------------


def compare(
    path_a: Path, path_b: Path, *, id_column: str | None = None, out: Path | None = None
) -> Comparison:
    """Compare two outputs over their shared rows; with `out`, write every disagreeing row."""
    try:
        return _compare(path_a, path_b, id_column, out)
    except pl.exceptions.PolarsError as exc:  # what the checks above it could not foresee
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{path_a} and {path_b} cannot be compared ({reason}): check that both are "
            f"batchrun outputs and that the --id column holds plain ids."
        ) from None


def _compare(path_a: Path, path_b: Path, id_column: str | None, out: Path | None) -> Comparison:
    a, b = _open(path_a), _open(path_b)
    if out is not None and out.resolve() in (path_a.resolve(), path_b.resolve()):
        raise UserError(f"--out {out} would overwrite a file being compared: choose another path.")
    column, origin = _join_column(a, b, id_column)
    key_type: pl.DataType | None = None  # ids of different types: as numbers, else as text
    if column is not None:
        _check_ids(a, column)
        _check_ids(b, column)
        types = a.schema.field(column).type, b.schema.field(column).type
        if types[0] != types[1]:
            numbers = all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types)
            key_type = pl.Float64() if numbers else pl.String()
    answer = "parsed" if a.has("parsed") and b.has("parsed") else "response"
    scored = a.has("score") and b.has("score")
    pairs = _side(a, column, answer, scored, "_a", key_type).join(
        _side(b, column, answer, scored, "_b", key_type),
        on=KEY,
        how="inner",
        maintain_order="left",
    )
    differ = _answers_differ() | _scores_differ()
    figures, sample = pl.collect_all(
        [
            pairs.select(**_figures("_a"), **_figures("_b"), **_tallies()),
            pairs.filter(differ).sort(ORDER).head(SAMPLE_ROWS),
        ],
        engine="streaming",
    )
    t = figures.row(0, named=True)
    if out is not None:
        _write_disagreements(pairs.filter(differ).sort(ORDER), out, column)
    paired = None
    if scored:
        paired = Paired(t["both_right"], t["a_only_right"], t["b_only_right"], t["both_wrong"])
    return Comparison(
        a=_side_figures(a, t, "_a", scored),
        b=_side_figures(b, t, "_b", scored),
        join_column=column,
        join_from=origin,
        answer_column=answer,
        both=t["both"],
        disagreements=t["disagreements"],
        answers_differ=t["answers_differ"],
        scores_differ=t["scores_differ"],
        sample=tuple(
            Disagreement(row[KEY], **{name: row[name] for name in PAIR_COLUMNS})
            for row in sample.iter_rows(named=True)
        ),
        paired=paired,
        out=out,
    )


def _answers_differ() -> pl.Expr:
    return pl.col("answer_a").ne_missing(pl.col("answer_b"))


def _scores_differ() -> pl.Expr:
    return pl.col("score_a").ne_missing(pl.col("score_b"))


def _figures(suffix: str) -> dict[str, pl.Expr]:
    """One side's sums, counts and latency figures over the joined rows."""
    latency = pl.col(f"latency_s{suffix}")
    score = pl.col(f"score{suffix}")
    cost = pl.col(f"cost_usd{suffix}")
    return {
        f"ok{suffix}": (pl.col(f"status{suffix}") == "ok").sum(),
        f"failed{suffix}": (pl.col(f"status{suffix}") == "failed").sum(),
        f"scored{suffix}": score.count(),
        f"correct{suffix}": score.sum(),
        f"cost{suffix}": cost.sum(),
        f"no_cost{suffix}": cost.null_count(),
        **{f"{k}{suffix}": pl.col(f"{k}_tokens{suffix}").sum() for k in TOKENS},
        f"latency_mean{suffix}": latency.mean(),
        f"latency_p50{suffix}": latency.quantile(0.5, "linear"),
        f"latency_p95{suffix}": latency.quantile(0.95, "linear"),
    }


def _tallies() -> dict[str, pl.Expr]:
    """Rows in both, disagreements, and the McNemar table of the rows scored in both."""
    a, b = pl.col("score_a"), pl.col("score_b")
    both = a.is_not_null() & b.is_not_null()
    right_a, right_b = a >= RIGHT, b >= RIGHT
    return {
        "both": pl.len(),
        "disagreements": (_answers_differ() | _scores_differ()).sum(),
        "answers_differ": _answers_differ().sum(),
        "scores_differ": _scores_differ().sum(),
        "both_right": (both & right_a & right_b).sum(),
        "a_only_right": (both & right_a & ~right_b).sum(),
        "b_only_right": (both & ~right_a & right_b).sum(),
        "both_wrong": (both & ~right_a & ~right_b).sum(),
    }


def _side_figures(f: _File, t: dict[str, Any], suffix: str, scored: bool) -> Side:
    accuracy = None
    n = t[f"scored{suffix}"]
    if scored and n:
        correct = float(t[f"correct{suffix}"])
        accuracy = Accuracy.of(correct, n)
    return Side(
        path=f.path,
        job=_text(f.metadata.get("job")),
        model=_model(f),
        rows=f.rows,
        ok=t[f"ok{suffix}"],
        failed=t[f"failed{suffix}"],
        accuracy=accuracy,
        cost_usd=round(float(t[f"cost{suffix}"] or 0.0), 10) if f.has("cost_usd") else None,
        no_cost=t[f"no_cost{suffix}"],
        **{
            f"{k}_tokens": int(t[f"{k}{suffix}"] or 0) if f.has(f"{k}_tokens") else None
            for k in TOKENS
        },
        latency_mean=t[f"latency_mean{suffix}"],
        latency_p50=t[f"latency_p50{suffix}"],
        latency_p95=t[f"latency_p95{suffix}"],
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _model(f: _File) -> str | None:
    """The model the run asked for, else the one that answered most of its rows."""
    if f.metadata.get("model") is not None:
        return _text(f.metadata["model"])
    if not f.has("response_model"):
        return None
    answered = pl.scan_parquet(f.path).select(pl.col("response_model").cast(pl.String))
    counts = answered.drop_nulls().group_by("response_model").len()
    commonest = counts.sort(["len", "response_model"], descending=[True, False]).head(1)
    found = commonest.collect()["response_model"]
    return found[0] if len(found) else None


def _write_disagreements(rows: pl.LazyFrame, out: Path, column: str | None) -> None:
    """Every disagreeing row, in A's order, as Parquet (or CSV for a .csv path), atomically."""
    table = rows.select(pl.col(KEY).alias(column or POSITION), *PAIR_COLUMNS)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as tmp:
            if out.suffix.lower() == ".csv":
                table.sink_csv(tmp, engine="streaming")
            else:
                table.sink_parquet(tmp, compression="zstd", engine="streaming")
    except OSError as exc:
        raise UserError(
            f"Cannot write {out} ({exc.strerror or exc}): choose another path."
        ) from None


# -- terminal -------------------------------------------------------------------------------


def render_text(c: Comparison) -> str:
    """The comparison as plain text for the terminal."""
    lines = [
        "batchrun compare",
        *(f"  {name}  {_identity(side)}" for name, side in (("A", c.a), ("B", c.b))),
        "",
        f"rows: {c.both:,} in both, {c.only_a:,} only in A, {c.only_b:,} only in B; "
        f"{_joined(c)}; answers from {c.answer_column!r}",
        "",
    ]
    if not c.both:
        lines.append("No row is in both files: check that they cover the same rows, or pass --id.")
        return "\n".join(lines) + "\n"
    lines += [
        f"Side by side, over the {_n(c.both, 'row')} in both",
        *("  " + line for line in text_table(["", "A", "B", "B - A"], _rows(c), {1, 2, 3})),
        "",
        *_verdict(c),
        "",
        *_disagreement_lines(c),
    ]
    return "\n".join(lines) + "\n"


def _identity(side: Side) -> str:
    about = [_n(side.rows, "row")]
    if side.job is not None:
        about.insert(0, f"job {side.job}")
    if side.model is not None:
        about.insert(len(about) - 1, f"model {side.model}")
    return f"{side.path} ({', '.join(about)})"


def _joined(c: Comparison) -> str:
    if c.join_column is None:
        return "matched by position (no id column)"
    origin = "--id" if c.join_from == "--id" else "the runs' metadata"
    return f"joined on {c.join_column!r} (from {origin})"


def _rows(c: Comparison) -> list[list[str]]:
    """The side-by-side table: label, A, B, B − A."""
    a, b = c.a, c.b

    def count(name: str) -> list[str]:
        x, y = getattr(a, name), getattr(b, name)
        return [f"{x:,}", f"{y:,}", _signed(y - x, lambda v: f"{v:,}")]

    rows = [["ok", *count("ok")], ["failed", *count("failed")]]
    if a.accuracy is not None or b.accuracy is not None:
        acc_a, acc_b = a.accuracy, b.accuracy
        diff = None if acc_a is None or acc_b is None else acc_b.accuracy - acc_a.accuracy
        rows += [
            [
                "accuracy",
                *(_percent(x.accuracy if x else None) for x in (acc_a, acc_b)),
                _signed(None if diff is None else diff * 100, lambda v: f"{v:.1f} pts"),
            ],
            ["  95% interval", *(_range(x) for x in (acc_a, acc_b)), ""],
            ["  rows scored", *(f"{x.scored:,}" if x else "0" for x in (acc_a, acc_b)), ""],
        ]
    rows.append(
        ["cost", usd(a.cost_usd), usd(b.cost_usd), _signed(_minus(b.cost_usd, a.cost_usd), usd)]
    )
    if a.no_cost or b.no_cost:
        rows.append(["  rows without cost", f"{a.no_cost:,}", f"{b.no_cost:,}", ""])
    for kind in TOKENS:
        x, y = getattr(a, f"{kind}_tokens"), getattr(b, f"{kind}_tokens")
        rows.append(
            [f"{kind} tokens", _int(x), _int(y), _signed(_minus(y, x), lambda v: f"{v:,.0f}")]
        )
    for stat in ("mean", "p50", "p95"):
        x, y = getattr(a, f"latency_{stat}"), getattr(b, f"latency_{stat}")
        rows.append([f"latency {stat}", secs(x), secs(y), _signed(_minus(y, x), secs)])
    return rows


def _signed(value: float | None, show: Callable[[float], str]) -> str:
    """A difference with its sign: +2, -$0.0012, +15 ms; 0 without one."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return ("+" if value > 0 else "-") + show(abs(value))


def _n(count: int, noun: str) -> str:
    """A count with its noun: 1 row, 2 rows, 1,000 rows."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _range(accuracy: Accuracy | None) -> str:
    if accuracy is None:
        return "-"
    return f"{accuracy.low * 100:.1f}-{accuracy.high * 100:.1f}%"


def _verdict(c: Comparison) -> list[str]:
    """Which run is more accurate, by how much, and whether that could be chance."""
    p = c.paired
    if p is None:
        return ["Accuracy: not compared (a score column is needed in both files)."]
    if not p.rows:
        return ["Accuracy: no row is scored in both files, so there is nothing to test."]
    low, high = (x * 100 for x in p.interval)
    where = f"on the {_n(p.rows, 'row')} scored in both"
    interval = f"95% CI for B - A: {low:+.1f} to {high:+.1f} points, Newcombe"
    if p.b == p.c:
        lead = f"A and B are equally accurate {where} ({interval})."
    else:
        better, worse = ("B", "A") if p.c > p.b else ("A", "B")
        lead = (
            f"{better} is more accurate than {worse} by {abs(p.difference) * 100:.1f} points "
            f"{where} ({interval})."
        )
    chance = (
        "unlikely to be chance at the 5% level"
        if p.p_value < ALPHA
        else "not distinguishable from chance"
    )
    return [
        lead,
        f"A right and B wrong on {_n(p.b, 'row')}, A wrong and B right on {p.c:,}: "
        f"McNemar exact {_p(p.p_value)}, {chance}.",
    ]


def _p(value: float) -> str:
    """The p-value as "p = …": two decimals from 0.1 up, else three significant figures, so
    that a p just under 0.05 never prints as 0.05."""
    if value < 0.0001:
        return "p < 0.0001"
    return f"p = {value:.2f}" if value >= 0.1 else f"p = {value:.3g}"


def _disagreement_lines(c: Comparison) -> list[str]:
    if not c.disagreements:
        lines = [
            f"No disagreements: the {_n(c.both, 'row')} in both have the same answers and scores."
        ]
    else:
        parts = [f"answers differ in {c.answers_differ:,}"]
        if c.paired is not None:
            parts.append(f"scores in {c.scores_differ:,}")
        shown = len(c.sample)
        lines = [
            f"Disagreements: {_n(c.disagreements, 'row')} ({', '.join(parts)}); "
            + ("all of them:" if shown == c.disagreements else f"the first {shown} in A's order:"),
            *(
                "  " + line
                for line in text_table(
                    [c.join_column or POSITION, "A", "B", "score A", "score B"],
                    [_sample_row(d) for d in c.sample],
                    {3, 4},
                )
            ),
        ]
    if c.out is not None:
        lines.append(f"every disagreeing row ({c.disagreements:,}) written to {c.out}")
    return lines


def _sample_row(d: Disagreement) -> list[str]:
    return [
        _short(str(d.id)),
        _answer(d.answer_a, d.status_a),
        _answer(d.answer_b, d.status_b),
        *("-" if s is None else f"{s:g}" for s in (d.score_a, d.score_b)),
    ]


def _answer(text: str | None, status: str | None) -> str:
    if text is None:
        return "(failed)" if status == "failed" else "(none)"
    return _short(text)


def _short(text: str, limit: int = TEXT_WIDTH) -> str:
    """Text on one line, cut to `limit` characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
