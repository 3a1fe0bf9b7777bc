"""The checkpoint's segment files: their names, which of them a reader reads, damage and
quarantine, how one is written, and the upgrade of batchrun 0.1's layout.

A segment is named after the commits it holds, `seg-<first>-<last>.parquet` (see the rules
in `batchrun.checkpoint.folder`): a commit writes `seg-n-n`, a merge of consecutive segments
one named for all of them. A segment whose commits another one holds too is superseded, and
`current_segments` leaves it out.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import sizes
from ..core.messages import first_line
from ..protocol.result import ADDED_COLUMNS, CHECKPOINT_SCHEMA, FINISHED_AT, KEY, POSITION
from ..storage.files import atomic_file, fsync_dir

SEGMENT_GLOB = "seg-*.parquet"
QUARANTINE = "quarantine"  # in the folder: damaged segments, moved aside by a run
_NAME = re.compile(r"seg-(\d{12})-(\d{12})\.parquet")
_OLD_NAME = re.compile(r"seg-(\d{12})(\.m)?\.parquet")  # before segments were sorted
# How segments are written: statistics for the position alone, which the walks use to pass
# over row groups; those of every column made a five-million-row segment's footer 4 MB,
# parsed whole by every reader of it.
SEGMENT_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_statistics": [POSITION]}
# A reader racing a merge may find a listed segment gone: it lists again this many times.
READ_TRIES = 8

T = TypeVar("T")


def segment_name(first: int, last: int) -> str:
    return f"seg-{first:012d}-{last:012d}.parquet"


def span(path: Path) -> tuple[int, int] | None:
    """The first and last commits a segment holds, from its name; None for another file."""
    match = _NAME.fullmatch(path.name)
    return (int(match[1]), int(match[2])) if match else None


def spanned(segments: list[Path]) -> tuple[int, int]:
    """The first and last commits that consecutive `segments` hold between them."""
    spans = [span(path) for path in segments]
    return min(s[0] for s in spans if s), max(s[1] for s in spans if s)


def current_segments(folder: Path) -> list[Path]:
    """The segments a reader reads, oldest first: every one not superseded by a merge."""
    spans = sorted(
        ((found, path) for path in folder.glob(SEGMENT_GLOB) if (found := span(path))),
        key=lambda item: (item[0][0], -item[0][1]),
    )
    kept: list[Path] = []
    reach = 0  # the last commit held by the segments kept so far
    for (_, last), path in spans:
        if last > reach:  # merges only join neighbours, so spans nest or stand apart
            kept.append(path)
            reach = last
    return kept


def size_class(rows: int) -> int:
    """A segment's tier for the merger: FANOUT neighbours of one class become one."""
    return (
        int(math.log(max(rows, 1) / sizes.SMALLEST, sizes.FANOUT)) if rows > sizes.SMALLEST else 0
    )


# -- damage ---------------------------------------------------------------------------------


def damage(path: Path) -> str | None:
    """Why a segment cannot be read (it is not Parquet, or not of the checkpoint's schema),
    in a few words; None when it is sound. Only its footer is read; the answer is kept for
    as long as the file keeps its size and modification time."""
    info = path.stat()
    return _damage(str(path), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _damage(path: str, size: int, mtime_ns: int) -> str | None:
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        return f"it is not readable Parquet: {first_line(exc, 120)}"
    for wanted in CHECKPOINT_SCHEMA:
        index = schema.get_field_index(wanted.name)
        if index < 0 and wanted.name in ADDED_COLUMNS:
            continue  # written before the column was: it reads as nulls
        if index < 0:
            return f"it has no {wanted.name!r} column: it is not a batchrun checkpoint segment"
        if not _compatible(schema.field(index).type, wanted.type):
            return (
                f"its {wanted.name!r} column is {schema.field(index).type}, not {wanted.type}: "
                f"it is not a batchrun checkpoint segment"
            )
    return None


def _compatible(found: pa.DataType, wanted: pa.DataType) -> bool:
    """Whether a column of type `found` reads as `wanted` (text is text, whatever its
    offsets: polars writes large strings, the readers cast)."""

    def text(t: pa.DataType) -> bool:
        return bool(pa.types.is_string(t) or pa.types.is_large_string(t))

    return found.equals(wanted) or (text(found) and text(wanted))


def damaged(segments: Iterable[Path]) -> list[tuple[Path, str]]:
    """The damaged ones among `segments`, each with why."""
    found = []
    for path in segments:
        with contextlib.suppress(FileNotFoundError):  # merged away meanwhile
            why = damage(path)
            if why is not None:
                found.append((path, why))
    return found


def damaged_afresh(segments: Iterable[Path]) -> list[tuple[Path, str]]:
    """`damaged`, forgetting what earlier looks found: a file written again (a copy
    downloaded once more) may keep the size and modification time it had."""
    _damage.cache_clear()
    return damaged(segments)


def skipped_notices(folder: Path) -> list[str]:
    """For a command that reads the checkpoint without holding it (status, report,
    estimate, export-batch): a warning for each damaged segment it skips."""
    if not folder.is_dir():
        return []
    return [
        f"batchrun: warning: skipped the damaged checkpoint segment {path} ({why}); "
        f"`batchrun run` moves it aside and sends its rows again."
        for path, why in damaged(current_segments(folder))
    ]


def quarantine(folder: Path, path: Path, why: str) -> str:
    """Move a damaged segment into QUARANTINE (never deleted: its owner may want it);
    returns the warning that says so, with what it held where that can be read."""
    aside = folder / QUARANTINE
    aside.mkdir(exist_ok=True)
    target = aside / path.name
    while target.exists():
        target = target.with_name(f"{target.stem}.{time.time_ns()}{target.suffix}")
    held = _what_it_held(path)
    os.replace(path, target)
    fsync_dir(aside)
    return (
        f"batchrun: warning: the checkpoint segment {path.name} is damaged ({why}); it "
        f"was moved to {target}, and {held} is no longer counted: its rows will be sent "
        f"again."
    )


def _what_it_held(path: Path) -> str:
    """ "the N rows it held, and $X spent on them", as far as a damaged file says."""
    try:
        rows = pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException):
        return "what it held (the file cannot be read to say how many rows, or what they cost)"
    try:
        cost = pq.read_table(path, columns=["cost_usd"]).column(0)
        spent = float(pc.sum(cost).as_py() or 0.0)
    except (OSError, pa.ArrowException, KeyError):
        return f"the {rows:,} results it held (what they cost cannot be read)"
    return f"the {rows:,} results it held, and ${spent:,.4f} spent on them,"


# -- reading --------------------------------------------------------------------------------


def sound_segments(folder: Path) -> list[Path]:
    """The current segments but the damaged ones: what every reader reads."""
    current = current_segments(folder)
    bad = {path for path, _ in damaged(current)}
    return [path for path in current if path not in bad]


def reading(folder: Path, read: Callable[[list[Path]], T]) -> T:
    """`read(segments)` of the sound segments, listed again if a merge removes one of them
    while it is opened."""
    for attempt in range(READ_TRIES):
        try:
            return read(sound_segments(folder))
        except FileNotFoundError:
            if attempt == READ_TRIES - 1:
                raise
    raise AssertionError("unreachable")


# -- writing --------------------------------------------------------------------------------


def write_segment(
    target: Path,
    write: Callable[[pq.ParquetWriter], int],
    publish: Callable[[Path], None] | None = None,
) -> int:
    """Write a segment through a ParquetWriter, atomically; returns its rows. `publish` is
    given the complete temporary file before it is renamed into place."""
    with atomic_file(target, publish) as tmp:
        writer = pq.ParquetWriter(tmp, CHECKPOINT_SCHEMA, **SEGMENT_OPTIONS)
        try:
            rows = write(writer)
        finally:
            writer.close()
    return rows


def write_atomic_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically (see `atomic_file`), in row groups a walk reads whole."""
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, row_group_size=sizes.ROW_GROUP_ROWS, **SEGMENT_OPTIONS)


def upgrade(folder: Path) -> None:
    """Rewrite segments of batchrun 0.1's layout (unsorted, `seg-N[.m].parquet`) as one
    sorted segment. Done once, in memory (those versions merged in memory too)."""
    old = [(m, p) for p in folder.glob(SEGMENT_GLOB) if (m := _OLD_NAME.fullmatch(p.name))]
    if not old:
        return
    old.sort(key=lambda item: (int(item[0][1]), 1 if item[0][2] else 0))
    paths = [p for _, p in old]
    table = pl.read_parquet(paths).unique(
        subset=[KEY, FINISHED_AT], keep="first", maintain_order=True
    )
    table = table.with_columns(pl.col(POSITION).cast(pl.Int64)).sort(POSITION, maintain_order=True)
    added = [pl.lit(None, pl.String).alias(c) for c in ADDED_COLUMNS if c not in table.columns]
    arrow = table.with_columns(added).select(CHECKPOINT_SCHEMA.names).to_arrow()
    arrow = arrow.cast(CHECKPOINT_SCHEMA)
    last = int(old[-1][0][1])
    write_segment(
        folder / segment_name(1, last),
        lambda writer: (
            writer.write_table(arrow, row_group_size=sizes.ROW_GROUP_ROWS) or arrow.num_rows
        ),
    )
    for path in paths:
        path.unlink()
    fsync_dir(folder)
