"""Reading the input table in batches: a Parquet, CSV, JSON Lines or Excel file, a glob, or
a folder of parts.

Nothing here loads the whole input, but for an Excel sheet (a million rows at most): polars
scans the files lazily and hands out batches; a CSV in an encoding other than UTF-8 and an
Excel sheet are lazy frames too (`batchrun.rows.readers`). CSV and Excel columns are read
as text, exactly as written in the file, so that ids such as `00123` and values such as
`1e5` reach the output unchanged; JSON Lines keep their JSON types, nested fields as
structs and lists. A row's position is its place among the decoded rows, whatever the kind.
"""

from __future__ import annotations

import codecs
import glob
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from fastexcel import FastExcelError

from ..config.job import Job
from ..core.messages import first_line
from ..errors import InputError
from . import readers
from .encodings import first_bad_utf8, likely_encoding

POSITION = "__batchrun_pos"
ROW_KEY = "__batchrun_key"
# A file's kind by the end of its name; "csv" and "tsv" are both delimited text, a comma
# and a tab their separators unless the job gives one.
_KINDS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",  # Excel's "Unicode text" export: UTF-16, tab-separated
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson.gz": "jsonl",
    ".xlsx": "xlsx",
}
_TEXT = ("csv", "tsv")
_UTF8 = ("utf-8", "utf-8-sig")  # what polars' own CSV reader reads (a BOM is skipped)
_KNOWN = ".parquet nor .csv (nor .tsv, .jsonl, .ndjson, their .gz, or .xlsx)"


@dataclass(frozen=True)
class Source:
    """An input table: its files, their kind, and its columns."""

    files: tuple[Path, ...]
    kind: str  # "parquet", "csv", "tsv", "jsonl" or "xlsx"
    id_column: str | None
    columns: tuple[str, ...]
    encoding: str = "utf-8"  # a CSV's, as Python names the codec
    separator: str = ","  # a CSV's
    sheet: str | None = None  # an Excel input's; None: the first
    # JSON Lines' columns and types, inferred from every line once: a key that first
    # appears late is a column, and a field that is a number here and text there is text
    schema: Mapping[str, pl.DataType] | None = None

    def scan(self) -> pl.LazyFrame:
        """The whole input as a lazy frame, in file then row order."""
        paths = [str(p) for p in self.files]
        if self.kind in _TEXT and self.encoding in _UTF8:
            return pl.scan_csv(
                paths,
                infer_schema=False,
                encoding="utf8",
                raise_if_empty=False,
                separator=self.separator,
            )
        reader = self._reader()
        if reader is not None:
            return reader.scan()
        if self.kind == "jsonl":
            return pl.scan_ndjson(paths, schema=self.schema, infer_schema_length=None)
        return pl.scan_parquet(paths)

    def _reader(self) -> readers.Reader | None:
        """How Python reads this input, where polars does not read it itself."""
        if self.kind in _TEXT and self.encoding not in _UTF8:
            return readers.encoded_csv(self.files, self.encoding, self.separator)
        if self.kind == "xlsx":
            return readers.excel(self.files, self.sheet)
        return None

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
            reader = self._reader()
            if self.kind == "parquet":
                yield from self._parquet_batches(columns, size, limit, start)
            elif reader is not None:
                yield from self._read_batches(reader, columns, size, limit, start)
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

    def _read_batches(
        self,
        reader: readers.Reader,
        columns: Sequence[str],
        size: int,
        limit: int | None,
        start: int,
    ) -> Generator[pl.DataFrame, None, None]:
        """A Python-read input's rows at positions `start` to `limit`, in batches of `size`."""
        wanted = list(dict.fromkeys([*columns, *([self.id_column] if self.id_column else [])]))
        key = pl.col(self.id_column) if self.id_column else pl.col(POSITION)
        for batch in _rechunked(_numbered(reader.pieces(wanted), start, limit), size):
            yield batch.with_columns(key.cast(pl.String).alias(ROW_KEY)).select(
                POSITION, ROW_KEY, *columns
            )

    def check(self, limit: int | None = None) -> int:
        """Read the whole input once: count rows, reject bad text and duplicate ids."""
        frame = self.scan() if limit is None else self.scan().head(limit)
        with _reading(self):
            if self.kind in _TEXT:
                # Touch every column so invalid text or a ragged line is found before sending.
                stats = frame.select(
                    pl.len(), *(pl.col(c).str.len_bytes().sum() for c in self.columns)
                )
                rows = int(stats.collect().item(0, 0))
            elif self.kind == "jsonl":
                # Parse every field so a line that is not JSON is found before sending.
                stats = frame.select(pl.len(), *(pl.col(c).null_count() for c in self.columns))
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


def _numbered(
    pieces: Iterator[pl.DataFrame], start: int, limit: int | None
) -> Iterator[pl.DataFrame]:
    """The rows of `pieces` at positions `start` to `limit` (None: the end), each with its
    position."""
    position = 0  # of the next piece's first row
    for piece in pieces:
        first, end = max(position, start), position + piece.height
        if limit is not None:
            end = min(end, limit)
        if end > first:
            rows = piece.slice(first - position, end - first)
            yield rows.with_columns(pl.int_range(first, end, dtype=pl.UInt32).alias(POSITION))
        position += piece.height
        if limit is not None and position >= limit:
            return


def _rechunked(frames: Iterator[pl.DataFrame], size: int) -> Iterator[pl.DataFrame]:
    """`frames` as frames of `size` rows, the last one shorter."""
    held: list[pl.DataFrame] = []  # rows taken and not yet handed out, in order
    count = 0  # how many
    for frame in frames:
        held.append(frame)
        count += frame.height
        if count >= size:
            rows = pl.concat(held)
            whole = rows.height - rows.height % size
            for at in range(0, whole, size):
                yield rows.slice(at, size)
            held, count = [rows.slice(whole)], rows.height - whole
    if count:
        yield pl.concat(held)


def open_job_input(job: Job) -> Source:
    """The job's input, read as its `[input]` says."""
    spec = job.input
    return open_source(
        job.local_input(),
        spec.id_column,
        encoding=spec.encoding,
        separator=spec.separator,
        sheet=spec.sheet,
    )


def open_source(
    pattern: str,
    id_column: str | None,
    *,
    encoding: str = "utf-8",
    separator: str | None = None,
    sheet: str | None = None,
) -> Source:
    """Resolve the input's files and read its schema, or say clearly what is wrong.
    `encoding` and `separator` (None: a comma, a tab for .tsv and .txt) are a CSV's;
    `sheet` an Excel workbook's (None: its first)."""
    files = _resolve(pattern)
    kinds = {_kind(p) for p in files}
    if None in kinds:
        bad = next(p for p in files if _kind(p) is None)
        raise InputError(f"The input file {bad} is neither {_KNOWN}: convert it first.")
    if len(kinds) > 1:
        raise InputError(
            f"The input {pattern} mixes parts of several kinds "
            f"({', '.join(sorted(str(k) for k in kinds))}): use one format."
        )
    kind = kinds.pop() or "parquet"
    if separator is None:
        separator = "\t" if kind == "tsv" else ","
    source = Source(
        tuple(files), kind, id_column, (), codecs.lookup(encoding).name, separator, sheet
    )
    if is_utf8_text(source) and any(_starts_utf16(p) for p in files):
        raise not_utf8(source, "a UTF-16 byte order mark")  # polars would read it as garbage
    with _reading(source):
        if kind == "jsonl":
            source = replace(source, schema=_lines_schema(source.files))
        columns = tuple(source.scan().collect_schema().names())
    if id_column is not None and id_column not in columns:
        raise InputError(
            f"The id column {id_column!r} is not in the input (columns: {', '.join(columns)}): "
            f"fix input.id_column."
        )
    return replace(source, columns=columns)


def _lines_schema(files: Sequence[Path]) -> dict[str, pl.DataType]:
    """The columns and types of JSON Lines files: every key of every line of every file
    (polars infers a glob's from its first file alone), each with the type that holds all
    its values (a number in one file and text in another is text)."""
    each = [pl.scan_ndjson(path, infer_schema_length=None).collect_schema() for path in files]
    empty = [pl.DataFrame(schema=schema) for schema in each]
    return dict(pl.concat(empty, how="diagonal_relaxed").schema)


def _starts_utf16(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    return next((kind for end, kind in _KINDS.items() if name.endswith(end)), None)


def _resolve(pattern: str) -> list[Path]:
    path = Path(pattern)
    if any(ch in pattern for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"No input file matches {pattern}: check input.path.")
        return files
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
        if not files:
            raise InputError(
                f"The input folder {path} holds no .parquet or .csv files (nor .tsv, .jsonl, "
                f".ndjson or .xlsx)."
            )
        return files
    if not path.exists():
        raise InputError(f"The input file {path} does not exist: check input.path in the job.")
    return [path]


def is_utf8_text(source: Source) -> bool:
    """Whether `source` is CSV read as UTF-8 (by polars' own reader)."""
    return source.kind in _TEXT and source.encoding in _UTF8


def not_utf8(source: Source, detail: str) -> InputError:
    """The sentence for a CSV read as UTF-8 that is not: where, and what it more likely is
    (`detail`: what the reader said, for a file a plain decode finds no fault in)."""
    bad = first_bad_utf8(list(source.files))
    if bad is None:
        return InputError(
            f"The input {source.files[0]} cannot be read ({detail}): save it as UTF-8 and "
            f"run again."
        )
    where = f"byte 0x{bad.byte:02X} at offset {bad.offset:,} of {bad.path}"
    if bad.likely is None:
        fix = 'set encoding = "..." in [input] to its encoding (such as "gb18030" or "utf-16")'
    else:
        fix = f'it looks like {bad.likely}: set encoding = "{bad.likely}" in [input]'
    return InputError(
        f"The input {bad.path} is not UTF-8 ({where} is invalid); {fix}, or save it as "
        f"UTF-8, and run again."
    )


class _reading:
    """Translate polars', pyarrow's, fastexcel's and the OS's reading errors into one
    InputError sentence; a CSV that is not the encoding the job says gets the encoding it
    more likely is, and the key to set."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._where = source.files[0] if len(source.files) == 1 else source.files[0].parent

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None or isinstance(exc, InputError):
            return
        if isinstance(exc, UnicodeDecodeError):
            raise self._not_encoded(exc) from exc
        if isinstance(exc, pl.exceptions.PolarsError | OSError | pa.ArrowInvalid | FastExcelError):
            detail = first_line(exc, None)
            if "utf-8" in detail.lower() or "utf8" in detail.lower():
                if is_utf8_text(self._source):
                    raise not_utf8(self._source, detail) from exc
                hint = "save it as UTF-8 and run again"
            else:
                hint = "check that it is a valid table file"
            raise InputError(f"The input {self._where} cannot be read ({detail}): {hint}.") from exc

    def _not_encoded(self, exc: UnicodeDecodeError) -> InputError:
        """A CSV that is not the encoding the job gives: what it more likely is."""
        with open(self._source.files[0], "rb") as handle:
            likely = likely_encoding(handle.read(1 << 16))
        guess = f' (it looks like {likely}: set encoding = "{likely}")' if likely else ""
        return InputError(
            f"The input {self._where} is not valid {self._source.encoding} text "
            f"({exc.reason}){guess}: fix encoding in [input]."
        )
