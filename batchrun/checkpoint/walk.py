"""Walking the checkpoint's segments in position order, in memory bounded by row groups.

Every segment is sorted by input position (see `batchrun.checkpoint.folder`), so the results of
any range of positions can be had by reading each segment forward: a `_Cursor` holds one
segment's next rows, at most a row group beyond what was asked for. On that, two walks:

- `Walk` gives, window by window, each row's latest result (the last one in segment order,
  and within a segment in row order: the order they were committed in). An input batch and
  the results of its positions are then joined in memory the size of the batch.
- `Positions` gives only which positions hold a result: what a run needs to send the rows
  that have none without waiting on anything else.
- `merge_segments` writes several segments as one, every row kept, in position order and
  commit order within a position, row group by row group.

Neither ever holds a whole segment, let alone the checkpoint: memory follows the row group
size and the number of segments, never the number of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..core import sizes
from ..protocol.result import CHECKPOINT_SCHEMA, KEY, POSITION

# A window of positions the walks take at a time when nobody asks for a size.
WINDOW = 65_536

# In a row's latest result as the walks give it, a failed row's fingerprint carries this
# mark in front (see `marked_fingerprint` and `batchrun.rows.plan.settles`).
FAILED_MARK = "!"


def marked_fingerprint() -> pl.Expr:
    """A result's fingerprint, marked with FAILED_MARK when the result is a failure."""
    ok = pl.col("status") == "ok"
    return pl.when(ok).then(pl.col("fingerprint")).otherwise(FAILED_MARK + pl.col("fingerprint"))


class _Cursor:
    """One segment read forward in position order, a row group at a time."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        # The file is opened now (a later merge may remove the path), but its reader, which
        # holds buffers of its own, only while row groups are being read from it.
        self._handle = pa.OSFile(str(path))
        self._reader: pq.ParquetFile | None = None
        self._columns = list(columns)
        self._next_group = 0  # the row group to read next
        self._buffer: pa.Table = CHECKPOINT_SCHEMA.empty_table().select(self._columns)
        self._positions = np.empty(0, dtype=np.int64)  # the buffer's positions, sorted
        # The lowest position of each row group, from the file's statistics (None where a
        # writer left none): a row group wholly past what is asked for is not read.
        metadata = pq.read_metadata(self._handle)
        schema = metadata.schema.to_arrow_schema()
        # Columns added to the checkpoint since the segment was written read as nulls.
        self._missing = [c for c in self._columns if schema.get_field_index(c) < 0]
        self._read = [c for c in self._columns if c not in self._missing]
        index = schema.get_field_index(POSITION)
        self._lows: list[int | None] = []
        for i in range(metadata.num_row_groups):
            stats = metadata.row_group(i).column(index).statistics
            self._lows.append(int(stats.min) if stats is not None and stats.has_min_max else None)

    @property
    def exhausted(self) -> bool:
        return self._next_group >= len(self._lows)

    @property
    def last(self) -> int | None:
        """The highest position buffered, or None when the buffer is empty."""
        return int(self._positions[-1]) if len(self._positions) else None

    @property
    def lowest(self) -> int | None:
        """The lowest position not yet taken, read or not; None when none is left."""
        if len(self._positions):
            return int(self._positions[0])
        if self.exhausted:
            return None
        low = self._lows[self._next_group]
        if low is None:
            self.prime()
            return self.lowest
        return low

    def fill(self, end: int | None) -> None:
        """Read row groups until every row before `end` is buffered (None: to the end)."""
        while not self.exhausted and (end is None or self.last is None or self.last < end):
            low = self._lows[self._next_group]
            if end is not None and low is not None and low >= end:
                return  # the next row group starts at `end` or later: nothing before it
            self.read_group()

    def prime(self) -> None:
        """Read a row group if nothing is buffered and the segment has more."""
        if self.last is None and not self.exhausted:
            self.read_group()

    @property
    def unread(self) -> int | None:
        """The lowest position the unread row groups may hold; None when all are read."""
        if self.exhausted:
            return None
        low = self._lows[self._next_group]
        if low is not None:
            return low
        return self.last if self.last is not None else -(2**62)

    def skip_before(self, start: int) -> None:
        """Pass over the unread row groups wholly below `start` without reading them: a
        row group's rows are at most the next one's lowest position."""
        if len(self._positions):
            return
        while self._next_group + 1 < len(self._lows):
            following = self._lows[self._next_group + 1]
            if following is None or following >= start:
                return
            self._next_group += 1

    def read_group(self) -> None:
        """Read the next row group into the buffer."""
        if self._reader is None:
            self._reader = pq.ParquetFile(self._handle)
        group = self._reader.read_row_group(self._next_group, columns=self._read)
        for name in self._missing:
            field = CHECKPOINT_SCHEMA.field(name)
            group = group.append_column(field, pa.nulls(group.num_rows, field.type))
        if self._missing:
            group = group.select(self._columns)
        self._next_group += 1
        if self.exhausted:
            self._close_reader()
        self._buffer = pa.concat_tables([self._buffer, group.cast(self._buffer.schema)])
        self._positions = self._buffer.column(POSITION).to_numpy()

    def take(self, end: int | None) -> pa.Table:
        """The buffered rows before `end` (None: all of them), removed from the buffer."""
        cut = len(self._positions) if end is None else int(np.searchsorted(self._positions, end))
        taken, self._buffer = self._buffer.slice(0, cut), self._buffer.slice(cut)
        self._positions = self._positions[cut:]
        return taken

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close(force=False)
            self._reader = None

    def close(self) -> None:
        self._close_reader()
        self._handle.close()


def open_cursors(segments: Sequence[Path], columns: Sequence[str]) -> list[_Cursor]:
    """A cursor on each segment, all opened before any is read (see `_Cursor`)."""
    wanted = list(dict.fromkeys([KEY, POSITION, *columns]))
    cursors: list[_Cursor] = []
    try:
        for path in segments:
            cursors.append(_Cursor(path, wanted))
    except BaseException:
        for cursor in cursors:
            cursor.close()
        raise
    return cursors


class Walk:
    """Each row's latest result, in position order, window by window.

    `until(end)` returns the latest result of every row whose position is below `end` and
    was not returned before, sorted by position, with `row_key`, `position` and the
    columns asked for. Ends must not decrease. A row's results all stand at one position
    (the checkpoint keeps them so), so the latest of a row is found within a window.
    """

    def __init__(self, segments: Sequence[Path], columns: Sequence[str] = ()) -> None:
        self.columns = list(dict.fromkeys([KEY, POSITION, *columns]))
        self._cursors = open_cursors(segments, self.columns)

    def until(self, end: int | None) -> pl.DataFrame:
        pieces = []
        for cursor in self._cursors:
            cursor.fill(end)
            pieces.append(cursor.take(end))
        return latest(pieces, self.columns)

    def seek(self, start: int) -> None:
        """Pass over every result below position `start` (a shard's walk), reading at most
        one row group of each segment to do so."""
        for cursor in self._cursors:
            cursor.skip_before(start)
        self.until(start)

    def windows(self, start: int | None = None, size: int = WINDOW) -> Iterator[pl.DataFrame]:
        """Every row's latest result from position `start` on (None: from the lowest, the
        results of rows no longer in the input included), a window of positions at a time."""
        if start is not None:
            self.until(start)
        while True:
            lows = [low for c in self._cursors if (low := c.lowest) is not None]
            if not lows:
                return
            frame = self.until(min(lows) + size)
            if frame.height:
                yield frame

    def close(self) -> None:
        for cursor in self._cursors:
            cursor.close()

    def __enter__(self) -> Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Positions:
    """The positions that hold a committed result, window by window: the cheapest walk,
    reading the position column alone (a run takes it for every input batch). `until(end)`
    returns the positions below `end` not returned before (a position twice when several
    results stand there); ends must not decrease."""

    def __init__(self, segments: Sequence[Path]) -> None:
        self._cursors: list[_Cursor] = []
        try:
            for path in segments:
                self._cursors.append(_Cursor(path, [POSITION]))
        except BaseException:
            self.close()
            raise

    def until(self, end: int | None) -> np.ndarray:
        pieces = []
        for cursor in self._cursors:
            cursor.fill(end)
            pieces.append(cursor.take(end).column(POSITION).to_numpy())
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)

    def seek(self, start: int) -> None:
        """Pass over every position below `start` (see `Walk.seek`)."""
        for cursor in self._cursors:
            cursor.skip_before(start)
        self.until(start)

    def close(self) -> None:
        for cursor in self._cursors:
            cursor.close()

    def __enter__(self) -> Positions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def latest(pieces: Sequence[pa.Table], columns: Sequence[str]) -> pl.DataFrame:
    """The last result of each row among `pieces` (given oldest segment first), by position."""
    frames = [_frame(p) for p in pieces if p.num_rows]
    if not frames:
        empty = pl.from_arrow(CHECKPOINT_SCHEMA.empty_table().select(list(columns)))
        assert isinstance(empty, pl.DataFrame)
        return empty
    frame = pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]
    if len(frames) > 1 or _repeats(frame):
        frame = frame.unique(subset=KEY, keep="last", maintain_order=True)
        frame = frame.sort(POSITION, maintain_order=True)
    return frame


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _repeats(frame: pl.DataFrame) -> bool:
    """Whether a sorted piece holds some row more than once (a position twice in a row)."""
    positions = frame[POSITION]
    return frame.height > 1 and bool((positions.diff().drop_nulls() == 0).any())


def sort_positions(table: pa.Table) -> pa.Table:
    """A table's rows in position order, rows at one position in their order."""
    return table.take(np.argsort(table.column(POSITION).to_numpy(), kind="stable"))


class Stopped(Exception):
    """A merge was asked to stop before it was done."""


def merge_segments(
    segments: Sequence[Path],
    writer: pq.ParquetWriter,
    *,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Write every row of `segments` (oldest first) in position order, commit order within
    a position, through `writer`; returns the rows written. Raises `Stopped` when `stop()`
    turns true between two row groups."""
    cursors = open_cursors(segments, CHECKPOINT_SCHEMA.names)
    written = 0
    # Sorted rows not yet written: whole row groups of ROW_GROUP_ROWS go out at once, so
    # that a merged segment's row groups never shrink to its inputs' (a footer holds an
    # entry for every row group of every column, and every reader parses it whole).
    held: list[pa.Table] = []
    holding = 0

    def flush(rows: int) -> None:
        nonlocal held, holding, written
        table = pa.concat_tables(held)
        cut = table.num_rows if rows >= table.num_rows else rows
        writer.write_table(table.slice(0, cut), row_group_size=sizes.ROW_GROUP_ROWS)
        written += cut
        rest = table.slice(cut)
        held, holding = ([rest] if rest.num_rows else []), rest.num_rows

    try:
        while True:
            if stop():
                raise Stopped
            # Every row below the lowest position a segment's unread row groups may hold is
            # buffered: take those, in position then commit order.
            lows = [low for c in cursors if (low := c.unread) is not None]
            end = min(lows) if lows else None
            pieces = [cursor.take(end) for cursor in cursors]
            table = pa.concat_tables([p for p in pieces if p.num_rows] or [pieces[0]])
            if table.num_rows:
                held.append(sort_positions(table))
                holding += table.num_rows
                if holding >= sizes.ROW_GROUP_ROWS:
                    flush(holding - holding % sizes.ROW_GROUP_ROWS)
            if end is None:
                if holding:
                    flush(holding)
                return written
            for cursor in cursors:
                if cursor.unread == end:
                    cursor.read_group()  # the segment that held the others back moves on
    finally:
        for cursor in cursors:
            cursor.close()
