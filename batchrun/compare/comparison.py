"""`batchrun compare A B`: two runs over the same rows, side by side, and where they differ.

Rows are joined by id: `--id COLUMN`, else the `id_column` both files' batchrun metadata
names (a file without metadata takes the other's), else `input_row` (the row's position in
the input, which batchrun writes when a job has no id column) when both files have it, else
by position (a file's `input_row` where one has it), which needs equal row counts and
finished runs. Every figure is over the rows in both files. The answer is the `parsed`
column when both files have one, else `response`; two rows disagree when their answers
differ or their scores do (a null differs from a value, two nulls agree). With a `score`
column in both, accuracy is compared on the rows scored in both: a score of 0.5 or more
counts as right (scores are 1.0 or 0.0 today), b counts rows A got right and B wrong, c the
reverse, and McNemar's exact test says whether b and c differ by more than chance. The text
for the terminal is in `compare_text.py`.

The rows are matched and every figure summed in bounded memory by `compare_join.py`, an
external hash join over temporary files; the latency percentiles are exact, polars' to the
bit.

`Comparison.as_dict` gives, for scripts (differences are B − A, null where a side has none):

- `"a"`, `"b"`: `{"path", "job", "model", "rows", "ok", "failed", "accuracy", "cost_usd",
  "no_cost", "tokens": {"prompt", "completion", "total"}, "latency_s": {"mean", "p50",
  "p95"}}`; `rows` counts the whole file, the rest the rows in both; `accuracy` is null or
  `{"scored", "correct", "accuracy", "low", "high"}` (95% Wilson interval, as in the report);
  `cost_usd` is null when the file has no cost column, and `no_cost` counts rows without a
  cost; `model` is the metadata's requested model, else the commonest `response_model`
- `"difference"`: `{"ok", "failed", "accuracy", "cost_usd", "tokens", "latency_s"}`
- `"join"`: `{"column", "from"}`: the id column (null: by position) and `"--id"`,
  `"metadata"`, `"input_row"` or `"position"`; `"answer_column"`: `"parsed"` or `"response"`
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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.messages import first_line
from ..core.stats import Accuracy, mcnemar_exact, paired_difference_interval
from ..errors import InputError, UserError
from ..protocol.result import INPUT_ROW
from .join import KEY, PAIR_COLUMNS, PERCENTILES, TOKENS, Joined, OutputFile, Reader, join

METADATA_KEY = b"batchrun"  # the Parquet key-value metadata batchrun writes into its output
REQUIRED = ("response", "status")
ALPHA = 0.05
POSITION = "position"  # the key's name in --out when rows are matched by position


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

    @property
    def significant(self) -> bool:
        """Whether the difference is unlikely to be chance at the 5% level."""
        return self.p_value < ALPHA

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
            "significant": self.significant,
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
    """Everything `batchrun compare` says; built by `compare`, shown by
    `compare_text.render_text`."""

    a: Side
    b: Side
    join_column: str | None  # None: rows matched by position
    join_from: str  # "--id", "metadata", "input_row" or "position"
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


def minus(b: float | None, a: float | None) -> float | None:
    """B − A, or None when a side has no value."""
    return None if a is None or b is None else b - a


def _differences(a: Side, b: Side) -> dict[str, Any]:
    accuracy = None
    if a.accuracy is not None and b.accuracy is not None:
        accuracy = b.accuracy.accuracy - a.accuracy.accuracy
    return {
        "ok": b.ok - a.ok,
        "failed": b.failed - a.failed,
        "accuracy": accuracy,
        "cost_usd": minus(b.cost_usd, a.cost_usd),
        "tokens": {
            kind: minus(getattr(b, f"{kind}_tokens"), getattr(a, f"{kind}_tokens"))
            for kind in TOKENS
        },
        "latency_s": {
            stat: minus(getattr(b, f"latency_{stat}"), getattr(a, f"latency_{stat}"))
            for stat in ("mean", *PERCENTILES)
        },
    }


# -- reading --------------------------------------------------------------------------------


def _open(path: Path) -> OutputFile:
    """Read a file's schema, row count and column sizes; the rows are read later."""
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
    schema, meta = parquet.schema_arrow, parquet.metadata
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise InputError(
            f"{path} has no {' or '.join(missing)} column: compare the outputs of batchrun runs."
        )
    sizes: Counter[str] = Counter()
    for group in range(meta.num_row_groups):
        chunks = meta.row_group(group)
        for i in range(chunks.num_columns):
            chunk = chunks.column(i)
            sizes[chunk.path_in_schema.split(".")[0]] += chunk.total_uncompressed_size
    # The file's key-value metadata, not the Arrow schema's: polars writes only the former.
    try:
        stored = json.loads((meta.metadata or {}).get(METADATA_KEY, b"null"))
    except ValueError:
        stored = None  # unreadable metadata is no metadata: the join falls back on position
    metadata = stored if isinstance(stored, dict) else {}
    return OutputFile(path, schema, meta.num_rows, metadata, dict(sizes))


def _join_column(a: OutputFile, b: OutputFile, id_column: str | None) -> tuple[str | None, str]:
    """The column both files are joined on (None: by position), and where it came from."""
    if id_column is not None:
        column, origin = id_column, "--id"
    elif (declared := _declared_id(a, b)) is not None:
        column, origin = declared, "metadata"
    elif a.has(INPUT_ROW) and b.has(INPUT_ROW):
        return INPUT_ROW, INPUT_ROW
    else:
        _check_positions(a, b)
        return None, POSITION
    for f in (a, b):
        if not f.has(column):
            named = "--id" if origin == "--id" else "the id column of the runs' metadata"
            raise InputError(
                f"{f.path} has no column {column!r} ({named}): pass --id with a column both "
                f"files have."
            )
    return column, origin


def _check_positions(a: OutputFile, b: OutputFile) -> None:
    """Rows can be matched by position only between equally long, finished outputs."""
    if a.rows != b.rows:
        raise InputError(
            f"{a.path} has {a.rows:,} rows and {b.path} {b.rows:,}, and without an id "
            f"column rows are matched by position: pass --id COLUMN."
        )
    for f in (a, b):
        # A run that stopped early leaves out the rows it did not finish, so its positions
        # are not the input's.
        total = f.metadata.get("input_rows")
        if isinstance(total, int) and total != f.rows:
            raise InputError(
                f"{f.path} holds {f.rows:,} of its job's {total:,} rows (the run did not "
                f"finish), so its rows cannot be matched by position: finish the run, or "
                f"pass --id COLUMN."
            )


def _declared_id(a: OutputFile, b: OutputFile) -> str | None:
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


def _key_type(a: OutputFile, b: OutputFile, column: str) -> pl.DataType | None:
    """The type both keys are cast to (None: as they are): numbers when both are numbers
    but differ, else text when they differ or are dictionary-encoded; nested ones refused."""
    types = a.schema.field(column).type, b.schema.field(column).type
    for f, t in zip((a, b), types, strict=True):
        if pa.types.is_nested(t):
            raise InputError(
                f"{f.path} holds {t} values in {column!r}, which cannot match rows: pass --id "
                f"with a column of plain ids."
            )
    if types[0] == types[1] and not pa.types.is_dictionary(types[0]):
        return None
    numbers = all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types)
    return pl.Float64() if numbers else pl.String()


# -- comparing ------------------------------------------------------------------------------


def compare(
    path_a: Path, path_b: Path, *, id_column: str | None = None, out: Path | None = None
) -> Comparison:
    """Compare two outputs over their shared rows; with `out`, write every disagreeing row."""
    try:
        return _compare(path_a, path_b, id_column, out)
    except (pl.exceptions.PolarsError, pa.ArrowException) as exc:  # what no check foresaw
        reason = first_line(exc, None)
        raise InputError(
            f"{path_a} and {path_b} cannot be compared ({reason}): check that both are "
            f"batchrun outputs and that the --id column holds plain ids."
        ) from None


def _compare(path_a: Path, path_b: Path, id_column: str | None, out: Path | None) -> Comparison:
    a, b = _open(path_a), _open(path_b)
    if out is not None and out.resolve() in (path_a.resolve(), path_b.resolve()):
        raise UserError(f"--out {out} would overwrite a file being compared: choose another path.")
    column, origin = _join_column(a, b, id_column)
    key_type = None if column is None else _key_type(a, b, column)
    answer = "parsed" if a.has("parsed") and b.has("parsed") else "response"
    scored = a.has("score") and b.has("score")

    def read(f: OutputFile, suffix: str) -> Reader:
        key, cast = column, key_type
        if column is None:
            # By position, a file that has `input_row` is keyed by it: the same as its
            # position in a finished run, and never wrong when its metadata is lost. Both
            # keys are Int64, so that they hash alike.
            key, cast = (INPUT_ROW if f.has(INPUT_ROW) else None), pl.Int64()
        models = f.metadata.get("model") is None and f.has("response_model")
        return Reader(f, key, cast, answer, scored, suffix, models)

    read_a, read_b = read(a, "_a"), read(b, "_b")
    j = join(read_a, read_b, out, column or POSITION)
    t = j.totals
    paired = None
    if scored:
        paired = Paired(t["both_right"], t["a_only_right"], t["b_only_right"], t["both_wrong"])
    return Comparison(
        a=_side_figures(j, read_a),
        b=_side_figures(j, read_b),
        join_column=column,
        join_from=origin,
        answer_column=answer,
        both=t["both"],
        disagreements=t["disagreements"],
        answers_differ=t["answers_differ"],
        scores_differ=t["scores_differ"],
        sample=tuple(
            Disagreement(row[KEY], **{name: row[name] for name in PAIR_COLUMNS})
            for row in j.sample.iter_rows(named=True)
        ),
        paired=paired,
        out=out,
    )


def _side_figures(j: Joined, r: Reader) -> Side:
    """One side's identity and its figures over the rows in both."""
    f, t, suffix = r.file, j.totals, r.suffix
    accuracy = None
    if r.scored and t[f"scored{suffix}"]:
        accuracy = Accuracy.of(float(t[f"correct{suffix}"]), t[f"scored{suffix}"])
    n = t[f"latency_n{suffix}"]
    return Side(
        path=f.path,
        job=_text(f.metadata.get("job")),
        model=_model(f, j.models[suffix]),
        rows=f.rows,
        ok=t[f"ok{suffix}"],
        failed=t[f"failed{suffix}"],
        accuracy=accuracy,
        cost_usd=round(float(t[f"cost{suffix}"]), 10) if f.has("cost_usd") else None,
        no_cost=t[f"no_cost{suffix}"],
        **{f"{k}_tokens": int(t[f"{k}{suffix}"]) if f.has(f"{k}_tokens") else None for k in TOKENS},
        latency_mean=t[f"latency_sum{suffix}"] / n if n else None,
        latency_p50=j.latency[suffix].get("p50"),
        latency_p95=j.latency[suffix].get("p95"),
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _model(f: OutputFile, counted: Counter[str]) -> str | None:
    """The model the run asked for, else the one that answered most of its rows."""
    if f.metadata.get("model") is not None:
        return _text(f.metadata["model"])
    commonest = sorted(counted.items(), key=lambda item: (-item[1], item[0]))
    return commonest[0][0] if commonest else None
