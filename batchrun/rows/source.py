"""Reading the input table in batches: a Parquet or CSV file, a glob, or a folder of parts.

Nothing here loads the whole input: polars scans the files lazily and hands out batches.
CSV columns are read as text, exactly as written in the file, so that ids such as `00123`
and values such as `1e5` reach the output unchanged.
"""

from __future__ import annotations

import glob
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from ..core.messages import first_line
from ..errors import InputError

POSITION = "__batchrun_pos"
ROW_KEY = "__batchrun_key"
_KINDS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Source:
    """An input table: its files, their kind, and its columns."""

    files: tuple[Path, ...]
    kind: str
    id_column: str | None
    columns: tuple[str, ...]

    def scan(self) -> pl.LazyFrame:
        """The whole input as a lazy frame, in file then row order."""
        paths = [str(p) for p in self.files]
        if self.kind == "csv":
            return pl.scan_csv(paths, infer_schema=False, encoding="utf8", raise_if_empty=False)
        return pl.scan_parquet(paths)

    def keyed(self, limit: int | None = None) -> pl.LazyFrame:
        """The input with its position and its row key (the id as text) as extra columns."""
        frame = self.scan()
        if limit is not None:
            frame = frame.head(limit)
        frame = frame.with_row_index(POSITION)
        key = pl.col(self.id_column) if self.id_column else pl.col(POSITION)
        return frame.with_columns(key.cast(pl.String).alias(ROW_KEY))

    def batches(
        self,
        columns: Sequence[str],
        size: int,
        limit: int | None = None,
        *,
        start: int = 0,
        end: int | None = None,
    ) -> Generator[pl.DataFrame, None, None]:
        """Batches of `columns` plus position and key, streamed from disk: the rows at
        positions `start` to `end` (a shard of the input) of the first `limit`."""
        if end is not None:
            limit = end if limit is None else min(limit, end)
        with _reading(self):
            if self.kind == "parquet":
                yield from self._parquet_batches(columns, size, limit, start)
            else:
                frame = self.keyed(limit).select(POSITION, ROW_KEY, *columns)
                if start:
                    frame = frame.slice(start)
                yield from frame.collect_batches(chunk_size=size)

    def _parquet_batches(
        self, columns: Sequence[str], size: int, limit: int | None, start: int = 0
    ) -> Generator[pl.DataFrame, None, None]:
        """Parquet through pyarrow's batch reader: memory stays flat whatever the input's
        size (polars' streaming collect held 150 MB more on a million rows). Files and row
        groups wholly before `start` are passed over by their footers, unread."""
        wanted = list(dict.fromkeys([*columns, *([self.id_column] if self.id_column else [])]))
        position = 0
        for path in self.files:
            left = None if limit is None else limit - position
            if left is not None and left <= 0:
                return
            # Without pre-buffering: with it, pyarrow reads row groups ahead of the batches
            # asked for, and held more the more row groups the file had (a 5M-row input in
            # 50 row groups: 190 MB read whole where 1M rows took 145; without: 128 at
            # both, as fast).
            reader = pq.ParquetFile(path, pre_buffer=False)
            try:
                groups = list(range(reader.metadata.num_row_groups))
                while groups and position + reader.metadata.row_group(groups[0]).num_rows <= start:
                    skipped = reader.metadata.row_group(groups.pop(0)).num_rows
                    position += skipped
                    if left is not None:
                        left -= skipped
                if left is not None and left <= 0:
                    return
                for record_batch in reader.iter_batches(
                    batch_size=size, columns=wanted, row_groups=groups
                ):
                    frame = pl.from_arrow(record_batch)
                    assert isinstance(frame, pl.DataFrame)
                    if position < start:  # the first rows of a row group that `start` cuts
                        cut = min(start - position, frame.height)
                        frame = frame.slice(cut)
                        position += cut
                        if left is not None:
                            left -= cut
                    if left is not None:
                        frame = frame.head(left)
                        left -= frame.height
                    rows = frame.height
                    if not rows:
                        continue
                    key = pl.col(self.id_column) if self.id_column else pl.col(POSITION)
                    frame = frame.with_columns(
                        pl.int_range(position, position + rows, dtype=pl.UInt32).alias(POSITION)
                    ).with_columns(key.cast(pl.String).alias(ROW_KEY))
                    position += rows
                    yield frame.select(POSITION, ROW_KEY, *columns)
                    if left is not None and left <= 0:
                        return
            finally:
                reader.close()

    def check(self, limit: int | None = None) -> int:
        """Read the whole input once: count rows, reject bad text and duplicate ids."""
        frame = self.scan() if limit is None else self.scan().head(limit)
        with _reading(self):
            if self.kind == "csv":
                # Touch every column so invalid UTF-8 or a ragged line is found before sending.
                stats = frame.select(
                    pl.len(), *(pl.col(c).str.len_bytes().sum() for c in self.columns)
                )
                rows = int(stats.collect().item(0, 0))
            else:
                rows = int(frame.select(pl.len()).collect().item())
            if self.id_column:
                self._check_ids(frame)
        return rows

    def _check_ids(self, frame: pl.LazyFrame) -> None:
        assert self.id_column is not None
        col = pl.col(self.id_column)
        nulls = frame.select(col.null_count()).collect().item()
        if nulls:
            raise InputError(
                f"The id column {self.id_column!r} is empty in {nulls} row(s): give every row an "
                f"id, or remove id_column to use row positions."
            )
        # Sort 32-bit hashes of the ids rather than group the ids: 4 bytes a row (twice,
        # while sorting), where a hash table of 5 million text ids took 350 MB. A hash seen
        # twice is only a candidate (5 million ids give a few thousand by chance); the ids
        # behind the candidates are then compared exactly.
        short = (col.hash(seed=0) % (1 << 32)).cast(pl.UInt32)
        hashes = frame.select(short.alias("h")).collect(engine="streaming")["h"]
        hashes = hashes.sort()
        candidates = hashes.filter(hashes == hashes.shift(1))
        del hashes
        if not candidates.len():
            return
        dup = (
            frame.filter(short.is_in(candidates.implode()))
            .group_by(col)
            .len()
            .filter(pl.col("len") > 1)
            .head(1)
            .collect()
        )
        if dup.height:
            value, count = dup.row(0)
            raise InputError(
                f"The id column {self.id_column!r} has duplicates ({value!r} appears {count} "
                f"times): ids must be unique, or remove id_column to use row positions."
            )


def open_source(pattern: str, id_column: str | None) -> Source:
    """Resolve the input's files and read its schema, or say clearly what is wrong."""
    files = _resolve(pattern)
    kinds = {_KINDS.get(p.suffix.lower()) for p in files}
    if None in kinds:
        bad = next(p for p in files if p.suffix.lower() not in _KINDS)
        raise InputError(f"The input file {bad} is neither .parquet nor .csv: convert it first.")
    if len(kinds) > 1:
        raise InputError(f"The input {pattern} mixes CSV and Parquet parts: use one format.")
    source = Source(tuple(files), kinds.pop() or "parquet", id_column, ())
    with _reading(source):
        columns = tuple(source.scan().collect_schema().names())
    if id_column is not None and id_column not in columns:
        raise InputError(
            f"The id column {id_column!r} is not in the input (columns: {', '.join(columns)}): "
            f"fix input.id_column."
        )
    return Source(source.files, source.kind, id_column, columns)


def _resolve(pattern: str) -> list[Path]:
    path = Path(pattern)
    if any(ch in pattern for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"No input file matches {pattern}: check input.path.")
        return files
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _KINDS)
        if not files:
            raise InputError(f"The input folder {path} holds no .parquet or .csv files.")
        return files
    if not path.exists():
        raise InputError(f"The input file {path} does not exist: check input.path in the job.")
    return [path]


class _reading:
    """Translate polars' and the OS's reading errors into one InputError sentence."""

    def __init__(self, source: Source) -> None:
        self._where = source.files[0] if len(source.files) == 1 else source.files[0].parent

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None or isinstance(exc, InputError):
            return
        if isinstance(exc, pl.exceptions.PolarsError | OSError):
            detail = first_line(exc, None)
            if "utf-8" in detail.lower() or "utf8" in detail.lower():
                hint = "save it as UTF-8 and run again"
            else:
                hint = "check that it is a valid table file"
            raise InputError(f"The input {self._where} cannot be read ({detail}): {hint}.") from exc
