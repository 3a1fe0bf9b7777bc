"""Keeping the checkpoint's positions those of the input, when rows move between runs.

The checkpoint keeps each row's results at the row's position in the input (see
`batchrun.checkpoint.folder`), which lets a run walk the input and its results together. When rows
are inserted, removed or reordered between two runs of a job with an `id_column`, a row's
results may stand at a position that now holds another row. Before anything is sent, the
lock holder checks that every committed result sits at a position holding its row
(`aligned`, one pass over the ids and the checkpoint's keys); if one does not, every result
is moved to its row's new position (`realign`). Results of rows no longer in the input are
kept (their spend stays counted) at negative positions, one per row, and found again if the
row comes back.

Realigning is an external hash join, in memory bounded by `sizes.ANCHOR_PART_ROWS`: the
input's keys and the checkpoint's rows are spread over parts by a hash of the key, each part
is joined and sorted alone, and the sorted parts are merged into one segment that replaces
the others. Without an `id_column` a row's key is its position, so nothing can move.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..checkpoint.folder import Checkpoint
from ..checkpoint.segments import current_segments, damaged
from ..checkpoint.walk import merge_segments, open_cursors
from ..core import sizes
from ..errors import InputError, UserError
from ..protocol.result import CHECKPOINT_SCHEMA, KEY, POSITION
from ..storage.files import atomic_file, remove_tree
from ..storage.store import Remote
from .source import POSITION as INPUT_POSITION
from .source import ROW_KEY, Source

_ORDER = "__order"  # a committed row's place in commit order, while realigning
_NEW = "__new"  # its new position


STAMP = "aligned.json"  # in the checkpoint: the input the results were last aligned with
_TAIL_BYTES = 1 << 16  # how much of each input file's end the stamp hashes


def anchor(checkpoint: Checkpoint, source: Source) -> int:
    """Make sure the checkpoint's results stand at their rows' positions in `source`;
    returns how many results had to move (0 when none did).

    The check reads every id and every committed key (a second a million rows), so its
    outcome is stamped with the input files it held for (path, size, modification time and
    a digest of their last 64 KiB, where a Parquet file keeps its footer); a run on the
    same files skips it. A stamp that matched files changed behind it would cost
    answers asked again, never a wrong row: results are only ever joined on their key.
    """
    if source.id_column is None:
        return 0
    stamp_path = checkpoint.folder / STAMP
    segments = checkpoint.segments()
    if not segments:
        stamp_path.unlink(missing_ok=True)  # the next results are aligned as they come
        return 0
    stamp = _stamp(source)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(stamp_path.read_text()) == stamp:
            return 0
    moved = 0 if aligned(segments, source) else realign(checkpoint, source)
    with atomic_file(stamp_path) as tmp:
        tmp.write_text(json.dumps(stamp))
    return moved


def _stamp(source: Source) -> dict[str, object]:
    """What identifies the input files as they are now."""
    files = []
    for path in source.files:
        info = path.stat()
        with open(path, "rb") as handle:
            handle.seek(max(info.st_size - _TAIL_BYTES, 0))
            tail = hashlib.sha256(handle.read()).hexdigest()
        files.append([str(path.resolve()), info.st_size, info.st_mtime_ns, tail])
    return {"id_column": source.id_column, "files": files}


def settle_positions(folder: Path, source: Source, remote: Remote | None = None) -> None:
    """For a command that reads a checkpoint beside the input (status, estimate, the
    report's evaluation): realign the checkpoint first if rows moved, unless a run holds the
    folder (a run that holds it has realigned it already)."""
    if source.id_column is None or not current_segments(folder):
        return
    if damaged(current_segments(folder)):
        return  # the next run moves the damaged segment aside first, then realigns
    try:
        with Checkpoint(folder, remote).open() as holder:
            anchor(holder, source)
    except InputError:
        raise  # the input cannot be read: the command says so
    except UserError:
        pass  # a run holds the folder's lock
    except OSError:
        pass  # a folder this user cannot write: read it as it stands


def aligned(segments: list[Path], source: Source) -> bool:
    """Whether every committed result stands at a position that holds its row's key, and
    no row of the input has results kept aside as gone."""
    cursors = open_cursors(segments, [KEY, POSITION])
    try:
        for cursor in cursors:
            cursor.fill(0)
        gone = [cursor.take(0) for cursor in cursors]  # rows no longer in the input
        gone_keys = _texts(pa.concat_tables(gone).column(KEY))
        start = 0
        for batch in source.batches([], sizes.CHECK_ROWS):
            end = start + batch.height
            keys = batch[ROW_KEY]
            if gone_keys.len() and keys.is_in(gone_keys.implode()).any():
                return False
            for cursor in cursors:
                cursor.fill(end)
                piece = cursor.take(end)
                if not piece.num_rows:
                    continue
                at = piece.column(POSITION).to_numpy() - start
                expected = keys.gather(pl.Series(at, dtype=pl.Int64))
                found = _texts(piece.column(KEY))
                if not bool((expected == found).all()):
                    return False
            start = end
        for cursor in cursors:
            cursor.fill(None)
            if cursor.take(None).num_rows:
                return False  # results at positions past the input's end
        return True
    finally:
        for cursor in cursors:
            cursor.close()


def _texts(column: pa.ChunkedArray) -> pl.Series:
    series = pl.from_arrow(column)
    assert isinstance(series, pl.Series)
    return series.cast(pl.String)


def realign(checkpoint: Checkpoint, source: Source) -> int:
    """Move every committed result to its row's position in `source` (see the docstring)."""
    segments = checkpoint.segments()
    committed = sum(pq.read_metadata(p).num_rows for p in segments)
    parts = max(1, math.ceil(committed / sizes.ANCHOR_PART_ROWS))
    scratch = checkpoint.folder / "anchor.tmp"
    remove_tree(scratch)
    scratch.mkdir()
    try:
        inputs = _Parts(scratch / "in", parts)
        for batch in source.batches([], sizes.CHECK_ROWS):
            inputs.add(
                batch.select(
                    pl.col(ROW_KEY).alias(KEY), pl.col(INPUT_POSITION).cast(pl.Int64).alias(_NEW)
                )
            )
        inputs.close()
        rows = _Parts(scratch / "cp", parts)
        merge_segments(segments, _Ordered(rows))
        rows.close()
        moved = 0
        sorted_parts = []
        for part in range(parts):
            frame = rows.read(part)
            if frame is None:
                continue
            places = inputs.read(part)
            if places is not None:
                frame = frame.join(places, on=KEY, how="left")
            else:
                frame = frame.with_columns(pl.lit(None, pl.Int64).alias(_NEW))
            gone = pl.col(_NEW).is_null()
            rank = pl.col(KEY).rank("dense").over(gone).cast(pl.Int64)
            new = pl.when(gone).then(-(1 + (rank - 1) * parts + part)).otherwise(pl.col(_NEW))
            frame = frame.with_columns(new.alias(_NEW))
            moved += frame.filter(pl.col(_NEW) != pl.col(POSITION)).height
            frame = frame.sort([_NEW, _ORDER]).with_columns(pl.col(_NEW).alias(POSITION))
            path = scratch / f"sorted-{part:05d}.parquet"
            table = frame.select(CHECKPOINT_SCHEMA.names).to_arrow().cast(CHECKPOINT_SCHEMA)
            pq.write_table(table, path, row_group_size=sizes.ROW_GROUP_ROWS, compression="zstd")
            sorted_parts.append(path)
            del frame, places, table
        checkpoint.replace_all(lambda writer: merge_segments(sorted_parts, writer))
        return moved
    finally:
        remove_tree(scratch)


class _Parts:
    """Frames spread over `count` Parquet files by a hash of their key."""

    def __init__(self, stem: Path, count: int) -> None:
        self._stem = stem
        self._count = count
        self._writers: dict[int, pq.ParquetWriter] = {}

    def _path(self, part: int) -> Path:
        return self._stem.with_name(f"{self._stem.name}-{part:05d}.parquet")

    def add(self, frame: pl.DataFrame) -> None:
        part = (pl.col(KEY).hash(seed=7) % self._count).alias("__part")
        for (number,), piece in (
            frame.with_columns(part).partition_by("__part", as_dict=True, include_key=False).items()
        ):
            table = piece.to_arrow()
            writer = self._writers.get(int(number))
            if writer is None:
                writer = pq.ParquetWriter(self._path(int(number)), table.schema)
                self._writers[int(number)] = writer
            writer.write_table(table.cast(writer.schema))

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()

    def read(self, part: int) -> pl.DataFrame | None:
        path = self._path(part)
        return pl.read_parquet(path) if path.exists() else None


class _Ordered:
    """A stand-in ParquetWriter for `merge_segments`: numbers the rows it is given in the
    order given (commit order within a position) and spreads them over parts."""

    def __init__(self, parts: _Parts) -> None:
        self._parts = parts
        self._count = 0

    def write_table(self, table: pa.Table, row_group_size: int | None = None) -> None:
        order = np.arange(self._count, self._count + table.num_rows, dtype=np.int64)
        self._count += table.num_rows
        frame = pl.from_arrow(table.append_column(_ORDER, pa.array(order)))
        assert isinstance(frame, pl.DataFrame)
        self._parts.add(frame)
