"""The input kinds polars does not stream itself, as lazy frames like the ones it does.

A CSV in an encoding other than UTF-8 (polars' CSV reader takes UTF-8 only) is read with
pyarrow's streaming CSV reader, which decodes while it reads, a block of about a megabyte
at a time: no transcoded copy of the file, in memory or on disk. An Excel sheet is read
whole (a sheet holds a million rows at most) by fastexcel. Each is wrapped as a polars IO
source (`register_io_source`), so that `Source` slices, checks and batches every kind
the same way; what polars projects, filters and limits is applied here, as that API asks.
Their batches are read from the pieces directly (`Reader.pieces`), not through polars'
streaming engine, which read ahead of a slow consumer: an estimate of a million GB18030 rows
peaked 50 to 170 MB higher, varying from run to run, that way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import fastexcel
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
from polars.io.plugins import register_io_source

from ..errors import InputError

_BLOCK_BYTES = 1 << 20  # what pyarrow decodes and parses at a time: about 10,000 short rows
_SHEET_ROWS = 10_000  # rows of a sheet handed out at a time


@dataclass(frozen=True)
class Reader:
    """An input that Python reads a piece at a time: its columns (all text), and a function
    giving the pieces of some of them, in order."""

    names: tuple[str, ...]
    pieces: Callable[[Sequence[str]], Iterator[pl.DataFrame]]

    def scan(self) -> pl.LazyFrame:
        """The input as a polars lazy frame (an IO source)."""

        def frames(
            with_columns: list[str] | None,
            predicate: pl.Expr | None,
            n_rows: int | None,
            batch_size: int | None,
        ) -> Iterator[pl.DataFrame]:
            wanted = with_columns if with_columns is not None else self.names
            yield from _limited(self.pieces(wanted), predicate, n_rows)

        return register_io_source(frames, schema=dict.fromkeys(self.names, pl.String))


def encoded_csv(files: Sequence[Path], encoding: str, separator: str) -> Reader:
    """CSV files in `encoding`, every column as text as CSV is read in UTF-8; the columns
    are the first file's header, and every file must have them."""
    names = tuple(csv_header(files[0], encoding, separator))
    parse = pacsv.ParseOptions(delimiter=separator, newlines_in_values=True)
    read = pacsv.ReadOptions(encoding=encoding, block_size=_BLOCK_BYTES)

    def pieces(columns: Sequence[str]) -> Iterator[pl.DataFrame]:
        # An empty field is null and a quoted empty one is "", as polars reads UTF-8 CSV.
        convert = pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            include_columns=list(columns),
        )
        for path in files:
            batches = pacsv.open_csv(
                path, read_options=read, parse_options=parse, convert_options=convert
            )
            for record_batch in batches:
                yield pl.DataFrame(record_batch)

    return Reader(names, pieces)


def csv_header(path: Path, encoding: str, separator: str) -> list[str]:
    """The column names of a CSV file in `encoding`, read from its first block."""
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(encoding=encoding, block_size=_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(delimiter=separator, newlines_in_values=True),
    )
    try:
        return list(reader.schema.names)
    finally:
        reader.close()


def excel(files: Sequence[Path], sheet: str | None) -> Reader:
    """The sheet named `sheet` (None: the first) of each workbook, every column as text
    (a number as Excel shows it: 2, not 2.0), as CSV columns are read."""
    which: str | int = sheet if sheet is not None else 0
    header = _workbook(files[0], sheet).load_sheet(which, n_rows=0)
    names = tuple(column.name for column in header.available_columns())

    def pieces(columns: Sequence[str]) -> Iterator[pl.DataFrame]:
        for path in files:
            loaded = _workbook(path, sheet).load_sheet(
                which, dtypes="string", use_columns=list(columns)
            )
            frame = loaded.to_polars()
            for at in range(0, frame.height, _SHEET_ROWS):
                yield frame.slice(at, _SHEET_ROWS)

    return Reader(names, pieces)


def _workbook(path: Path, sheet: str | None) -> fastexcel.ExcelReader:
    """The workbook at `path`, which must have the sheet named `sheet` (None: any first)."""
    workbook = fastexcel.read_excel(path)
    if sheet is not None and sheet not in workbook.sheet_names:
        raise InputError(
            f"The workbook {path} has no sheet named {sheet!r} (it has: "
            f"{', '.join(workbook.sheet_names)}): fix input.sheet."
        )
    return workbook


def _limited(
    pieces: Iterator[pl.DataFrame], predicate: pl.Expr | None, n_rows: int | None
) -> Iterator[pl.DataFrame]:
    """`pieces` filtered by `predicate`, ending after `n_rows` rows (None: all)."""
    for piece in pieces:
        if predicate is not None:
            piece = piece.filter(predicate)
        if n_rows is not None:
            piece = piece.head(n_rows)
            n_rows -= piece.height
        yield piece
        if n_rows is not None and n_rows <= 0:
            return
