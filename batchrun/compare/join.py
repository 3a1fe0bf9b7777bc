"""The join under `batchrun compare`: two outputs matched row by row in bounded memory.

Memory follows a part, not the row count. `join` is an external hash join in four steps,
each holding at most a batch, a pair of parts or a range of rows at a time:

1. Spread (`_spread`). Each file is read once, a batch of the needed columns at a time
   (`Reader.batches`: a row group at a time, at most `sizes.COMPARE_BATCH_ROWS` rows or
   `COMPARE_BATCH_BYTES`), and each row goes by a hash of its key into one of `parts`
   temporary files, in the file's order; equal keys of both files thus land in the same pair
   of parts. There are enough parts for one to hold about `sizes.COMPARE_PART_ROWS` rows of
   the larger file and `COMPARE_PART_BYTES` of the needed columns of both, and at most
   `COMPARE_MAX_PARTS` of them, so that the files open at once stay under the usual limit of
   1,024 (beyond it, parts grow instead).
2. Join (`_join_parts`). The pairs of parts are joined one at a time in memory, in A's
   order within a part. Every figure of a part is a sum or a count (`_sums`, `_tallies`),
   added up over the parts. A part's keys are checked unique: equal keys share a part, so
   the check covers the whole file. The sample is a running pick of the first SAMPLE_ROWS
   disagreements by A's row number.
3. Order statistics (`_percentiles`). Percentiles, unlike sums, do not add up over parts:
   each side's latencies over the joined rows are spilled to one more file, and p50 and p95
   are selected from it exactly, polars' to the bit, by `batchrun.core.quantiles` (a radix
   selection over a few passes of the spill).
4. `--out` (`_write_disagreements`). Disagreements turn up in hash order but are written
   in A's: each part's are spread again into `parts` ranges of A's row numbers, and the
   ranges are read back in turn, each sorted on its own, and appended to the output.

Temporary files are Arrow IPC streams compressed with LZ4 (`_Spill`), several times faster
to write than Parquet for data read once, in a temporary folder (TMPDIR) that is removed at
the end, after errors too. Two outputs of 5 million rows in different orders took 52 s and
0.3 GB here (the whole-file join before: 73 s and 1.7 GB), with 80 MB of temporary files a
million rows (benchmarks/compare_scale.py).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..core import sizes
from ..core.quantiles import Quantiles
from ..errors import InputError, UserError
from ..storage.files import atomic_file

TOKENS = ("prompt", "completion", "total")
SAMPLE_ROWS = 10
RIGHT = 0.5  # a score at or above this counts as a right answer
# Each disagreeing row's columns after its id, in the --out file and the sample.
PAIR_COLUMNS = ("answer_a", "answer_b", "score_a", "score_b", "status_a", "status_b")
# Names inside the joined frames, out of the way of any column a file may have.
KEY, ORDER, PART = "__batchrun_key", "__batchrun_order", "__batchrun_part"
# The per-row columns the comparison reads from each side, with their types.
NUMBERS: dict[str, pl.DataType] = {
    **{f"{kind}_tokens": pl.Int64() for kind in TOKENS},
    "cost_usd": pl.Float64(),
    "latency_s": pl.Float64(),
}
PERCENTILES = {"p50": 0.5, "p95": 0.95}


@dataclass(frozen=True)
class OutputFile:
    """A Parquet file to compare: its columns and what batchrun wrote about it."""

    path: Path
    schema: pa.Schema
    rows: int
    metadata: dict[str, Any]  # the batchrun metadata; empty when the file has none
    sizes: dict[str, int]  # uncompressed bytes of each top-level column

    def has(self, column: str) -> bool:
        return column in self.schema.names


@dataclass(frozen=True)
class Reader:
    """What the comparison reads from one file, and how it keys the rows."""

    file: OutputFile
    key: str | None  # the column holding each row's key; None: its position in the file
    key_type: pl.DataType | None  # cast to this, so both sides' keys hash alike; None: as is
    answer: str
    scored: bool
    suffix: str  # "_a" or "_b"; A's rows also carry their position (ORDER)
    count_models: bool  # whether to count `response_model` (the metadata names no model)

    @property
    def columns(self) -> list[str]:
        wanted = [self.key, self.answer, "status", "score", *NUMBERS]
        wanted += ["response_model"] if self.count_models else []
        return [c for c in dict.fromkeys(wanted) if c is not None and self.file.has(c)]

    def frame(self, batch: pl.DataFrame, offset: int) -> pl.DataFrame:
        """A batch of the file's rows, from row `offset` on, as the comparison's columns."""
        order = pl.int_range(offset, offset + batch.height, dtype=pl.Int64)
        key = order if self.key is None else pl.col(self.key)
        s = self.suffix
        columns = [
            (key if self.key_type is None else key.cast(self.key_type)).alias(KEY),
            pl.col(self.answer).cast(pl.String).alias(f"answer{s}"),
            pl.col("status").cast(pl.String).alias(f"status{s}"),
            self._column("score", pl.Float64(), self.scored),
            *(self._column(name, dtype) for name, dtype in NUMBERS.items()),
        ]
        return batch.select(*columns, *([order.alias(ORDER)] if s == "_a" else []))

    def _column(self, name: str, dtype: pl.DataType, wanted: bool = True) -> pl.Expr:
        """A column of the file, or nulls when the file lacks it (or it is not `wanted`)."""
        if wanted and self.file.has(name):
            return pl.col(name).cast(dtype, strict=False).alias(f"{name}{self.suffix}")
        return pl.lit(None, dtype).alias(f"{name}{self.suffix}")

    def batches(self) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        """The file once, a bounded batch at a time: the raw columns and `frame`."""
        size = sum(self.file.sizes.get(c, 0) for c in self.columns)
        per_row = max(1, size // max(1, self.file.rows))
        rows = max(1_000, min(sizes.COMPARE_BATCH_ROWS, sizes.COMPARE_BATCH_BYTES // per_row))
        offset, parquet = 0, pq.ParquetFile(self.file.path)
        # A row group at a time: over the whole file at once, iter_batches' memory grew with
        # the file (by 15 MB a million rows here).
        for group in range(parquet.num_row_groups):
            for batch in parquet.iter_batches(rows, row_groups=[group], columns=self.columns):
                raw = pl.from_arrow(batch)
                assert isinstance(raw, pl.DataFrame)
                yield raw, self.frame(raw, offset)
                offset += raw.height

    def empty(self) -> pl.DataFrame:
        """No rows, with the columns and types of `frame`."""
        schema = pa.schema([self.file.schema.field(c) for c in self.columns])
        raw = pl.from_arrow(pa.Table.from_batches([], schema))  # not empty_table: imports pandas
        assert isinstance(raw, pl.DataFrame)
        return self.frame(raw, 0)


@dataclass(frozen=True)
class Joined:
    """What the join of two files gives the figures."""

    totals: Counter[str]  # sums over the rows in both (the keys of `_sums` and `_tallies`)
    models: dict[str, Counter[str]]  # by suffix: `response_model` counts over the whole file
    sample: pl.DataFrame  # the first disagreements in A's order: KEY, *PAIR_COLUMNS, ORDER
    latency: dict[str, dict[str, float]]  # by suffix: PERCENTILES; empty without latencies


def join(a: Reader, b: Reader, out: Path | None, out_key: str) -> Joined:
    """Join two files on their keys in bounded memory (see the module docstring); with
    `out`, write every disagreeing row there, its key column called `out_key`."""
    with tempfile.TemporaryDirectory(prefix="batchrun-compare-") as folder:
        parts = _join_parts(a, b, Path(folder), out is not None)
        if out is not None:
            _write_disagreements(parts, out, out_key)
        latency = {s: _percentiles(spill) for s, spill in parts.latency.items()}
    return Joined(parts.totals, parts.models, parts.sample, latency)


# -- the parts ------------------------------------------------------------------------------


@dataclass
class _Parts:
    """What joining the parts leaves: summed figures, a sample, and spilled rows."""

    sides: dict[str, Reader]  # by suffix
    parts: int  # how many parts each file is spread into
    totals: Counter[str] = field(default_factory=Counter)  # sums over the rows in both
    models: dict[str, Counter[str]] = field(default_factory=dict)  # response_model counts
    sample: pl.DataFrame = field(default_factory=pl.DataFrame)  # the first disagreements
    latency: dict[str, _Spill] = field(default_factory=dict)  # the rows' latencies, by side
    ranges: list[_Spill] = field(default_factory=list)  # disagreements by A's row number
    empty: pl.DataFrame = field(default_factory=pl.DataFrame)  # the --out columns, no rows


def _join_parts(a: Reader, b: Reader, folder: Path, keep: bool) -> _Parts:
    """Join the files part by part: each is spread into parts by a hash of its key, so that
    equal keys meet in the same part, and each pair of parts is joined in memory. With
    `keep`, the disagreements are spread into ranges of A's row numbers (`_write_ranges`)."""
    rows = max(a.file.rows, b.file.rows)
    size = sum(r.file.sizes.get(c, 0) for r in (a, b) for c in r.columns)
    parts = max(
        1,
        min(
            sizes.COMPARE_MAX_PARTS,
            max(-(-rows // sizes.COMPARE_PART_ROWS), -(-size // sizes.COMPARE_PART_BYTES)),
        ),
    )
    j = _Parts({"_a": a, "_b": b}, parts)
    spills = {s: _spread(r, folder, j) for s, r in j.sides.items()}
    no_pairs = a.empty().join(b.empty(), on=KEY)
    j.empty = no_pairs.select(KEY, *PAIR_COLUMNS)
    j.sample = no_pairs.select(KEY, *PAIR_COLUMNS, ORDER)
    j.latency = {s: _Spill(folder / f"latency{s}.arrows") for s in j.sides}
    j.ranges = [_Spill(folder / f"range-{i}.arrows") for i in range(j.parts)] if keep else []
    differ = _answers_differ() | _scores_differ()
    for part in range(j.parts):
        a_part, b_part = (_read_part(spills[s][part], r) for s, r in j.sides.items())
        pairs = a_part.join(b_part, on=KEY, how="inner", maintain_order="left")
        j.totals.update(pairs.select(**_sums("_a"), **_sums("_b"), **_tallies()).row(0, named=True))
        for s, spill in j.latency.items():
            # Nulls too: they count in polars' quantile index (see `batchrun.core.quantiles`).
            spill.write(pairs.select(pl.col(f"latency_s{s}")))
        found = pairs.filter(differ).select(KEY, *PAIR_COLUMNS, ORDER).sort(ORDER)
        j.sample = pl.concat([j.sample, found.head(SAMPLE_ROWS)]).sort(ORDER).head(SAMPLE_ROWS)
        if j.ranges:
            _write_ranges(found, j.ranges, a.file.rows)
    for spill in [*j.latency.values(), *j.ranges]:
        spill.close()
    return j


def _spread(r: Reader, folder: Path, j: _Parts) -> list[_Spill]:
    """Read one file once and spread its rows into `j.parts` files by a hash of their key
    (within a part, in the file's order); check that keys are present, and count models."""
    spills = [_Spill(folder / f"part{r.suffix}-{i}.arrows") for i in range(j.parts)]
    nulls, models = 0, Counter[str]()
    for raw, batch in r.batches():
        nulls += batch[KEY].null_count()
        if r.count_models:
            named = raw["response_model"].cast(pl.String).drop_nulls().value_counts()
            models.update(dict(named.iter_rows()))
        part = pl.col(KEY).hash() % j.parts if j.parts > 1 else pl.lit(0, pl.UInt64)
        spread = batch.with_columns(part.alias(PART)).partition_by(PART, as_dict=True)
        for (i, *_), rows in spread.items():
            spills[int(i)].write(rows.drop(PART))
    for spill in spills:
        spill.close()
    if nulls:
        raise InputError(
            f"{r.file.path} has {nulls:,} rows without a value in {r.key!r}: ids must be "
            f"present to match rows; pass --id with another column."
        )
    j.models[r.suffix] = models
    return spills


def _read_part(spill: _Spill, r: Reader) -> pl.DataFrame:
    """One part of a file, its keys checked unique (equal keys share a part)."""
    part = spill.read(r.empty())
    keys = part[KEY]
    # Distinct hashes prove distinct keys, and are four times faster to count.
    if keys.hash().n_unique() < part.height and keys.n_unique() < part.height:
        example = part.filter(pl.col(KEY).is_duplicated())[KEY].cast(pl.String)[0]
        raise InputError(
            f"{r.file.path} has duplicate ids in {r.key!r} (e.g. {example!r}): ids must be "
            f"unique to match rows; pass --id with a unique column."
        )
    return part


def _answers_differ() -> pl.Expr:
    return pl.col("answer_a").ne_missing(pl.col("answer_b"))


def _scores_differ() -> pl.Expr:
    return pl.col("score_a").ne_missing(pl.col("score_b"))


def _sums(suffix: str) -> dict[str, pl.Expr]:
    """One side's sums and counts over a part's joined rows."""
    score, cost = pl.col(f"score{suffix}"), pl.col(f"cost_usd{suffix}")
    latency = pl.col(f"latency_s{suffix}")
    return {
        f"ok{suffix}": (pl.col(f"status{suffix}") == "ok").sum(),
        f"failed{suffix}": (pl.col(f"status{suffix}") == "failed").sum(),
        f"scored{suffix}": score.count(),
        f"correct{suffix}": score.sum(),
        f"cost{suffix}": cost.sum(),
        f"no_cost{suffix}": cost.null_count(),
        **{f"{k}{suffix}": pl.col(f"{k}_tokens{suffix}").sum() for k in TOKENS},
        f"latency_n{suffix}": latency.count(),
        f"latency_sum{suffix}": latency.sum(),
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


def _percentiles(spill: _Spill) -> dict[str, float]:
    """PERCENTILES of a side's latencies over the rows in both, as polars' `quantile(q,
    "linear")` gives them, to the bit: a pass over the spill at a time until found."""
    found = Quantiles(tuple(PERCENTILES.values()))
    while not found.done:
        for batch in spill.batches():
            # Through a record batch: polars imports pyarrow.compute (0.2 s) for a bare array.
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            found.feed(frame.to_series())
        found.end_pass()
    values = found.result()
    return {} if values is None else dict(zip(PERCENTILES, values, strict=True))


# -- the --out file -------------------------------------------------------------------------


def _write_ranges(found: pl.DataFrame, ranges: list[_Spill], rows: int) -> None:
    """A part's disagreements, each into the spill of its range of A's row numbers: the
    ranges in turn, each sorted, give every disagreement in A's order."""
    which = (pl.col(ORDER) * len(ranges) // rows).alias(PART)
    for (i, *_), chunk in found.with_columns(which).partition_by(PART, as_dict=True).items():
        ranges[int(i)].write(chunk.drop(PART))


def _write_disagreements(j: _Parts, out: Path, name: str) -> None:
    """Every disagreeing row, in A's order, as Parquet (or CSV for a .csv path), atomically;
    the id column is called `name`."""
    empty = j.empty.rename({KEY: name})
    in_order = (
        spill.read(j.sample.clear()).sort(ORDER).select(pl.col(KEY).alias(name), *PAIR_COLUMNS)
        for spill in j.ranges
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as tmp:
            if out.suffix.lower() == ".csv":
                with open(tmp, "wb") as handle:
                    empty.write_csv(handle)
                    for rows in in_order:
                        rows.write_csv(handle, include_header=False)
            else:
                schema = empty.to_arrow().schema
                with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                    for rows in in_order:
                        writer.write_table(_conform(rows.to_arrow(), schema))
    except OSError as exc:
        raise UserError(
            f"Cannot write {out} ({exc.strerror or exc}): choose another path."
        ) from None


# -- temporary files ------------------------------------------------------------------------


class _Spill:
    """A temporary file of rows: an Arrow IPC stream (LZ4), written a frame at a time and
    read back whole or a batch at a time; no file until the first frame. Writing it is
    several times faster than Parquet's encoding, for data read once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Any = None  # the stream's writer, from the first frame on
        self._schema: pa.Schema | None = None  # the stream's, from its first frame

    def write(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        with self._translated():
            if self._schema is None:
                self._schema, options = table.schema, pa.ipc.IpcWriteOptions(compression="lz4")
                self._writer = pa.ipc.new_stream(self.path, table.schema, options=options)
            self._writer.write_table(_conform(table, self._schema))

    def close(self) -> None:
        if self._writer is not None:
            with self._translated():
                self._writer.close()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """The temporary folder's disk refusing, as one sentence."""
        try:
            yield
        except OSError as exc:
            raise UserError(
                f"Cannot write temporary files in {self.path.parent.parent} "
                f"({exc.strerror or exc}): free some space there, or set TMPDIR to a folder "
                f"with more room."
            ) from None

    def read(self, empty: pl.DataFrame) -> pl.DataFrame:
        """The rows written, or `empty` when there are none."""
        return pl.read_ipc_stream(self.path) if self.path.exists() else empty

    def batches(self) -> Iterator[pa.RecordBatch]:
        if self.path.exists():
            with pa.ipc.open_stream(self.path) as reader:
                yield from reader


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    # Only when needed: Table.cast imports pyarrow.compute, 0.2 s.
    return table if table.schema.equals(schema) else table.cast(schema)
