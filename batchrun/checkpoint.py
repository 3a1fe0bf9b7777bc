"""Committed results: the checkpoint folder beside the output, and atomic file writes.

Exactly-once rests on three rules:

1. A result is committed by writing a whole segment file under a temporary name, fsyncing
   it, renaming it into place and fsyncing the folder. A rename is atomic, so every
   `seg-*.parquet` a reader can see is complete; a kill leaves at most a `*.tmp` that the
   next open deletes. Nothing half-written is ever visible.
2. Segments are only added (and, when many, merged into one by the same atomic write before
   the merged ones are removed). A row may appear in several segments (a retried failure, a
   changed request); the last one in file-name order is the row's result.
3. A row's identity is its key (the id as text) and the fingerprint of its request body: the
   engine skips a row only if the latest result has the same fingerprint.

One run at a time holds the folder's lock, so two runs of the same job cannot interleave.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .columns import CHECKPOINT_SCHEMA, FINGERPRINT, FINISHED_AT, KEY, RowResult
from .errors import UserError

SEGMENT_GLOB = "seg-*.parquet"
# More segments than this are merged into one when a checkpoint is opened or closed.
MERGE_ABOVE = 64
# While a run goes, this many new segments are merged into one, so a long run leaves few files.
MERGE_NEW = 128


# In the index, a failed row's fingerprint carries this mark in front.
FAILED_MARK = "!"


def settled(prior: str | None, fingerprint: str, *, retry_failed: bool, sendable: bool) -> bool:
    """Whether a row's latest committed result (`prior`, as `index()` gives it) settles the
    row for the request `fingerprint`: an answer to that very request, or a failure of it
    that is not to be sent again (with `retry_failed`, rows that can be sent are)."""
    if prior == fingerprint:
        return True
    return prior == FAILED_MARK + fingerprint and (not retry_failed or not sendable)


def checkpoint_dir(output_path: Path) -> Path:
    """The checkpoint folder that belongs to an output file."""
    return output_path.with_name(output_path.name + ".checkpoint")


class Checkpoint:
    """The folder of committed segments for one job's output."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock_file: int | None = None  # fd holding the exclusive lock while open
        self._next = 0  # sequence number of the next segment
        self._writing = threading.Lock()  # commits come from worker threads, one at a time
        self._new: list[Path] = []  # segments written since the last merge, oldest first

    def open(self, *, fresh: bool = False) -> Checkpoint:
        """Lock the folder, clear what a kill left behind, and (with fresh) forget results."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"Another batchrun run is using {self.folder}: wait for it to finish or stop it."
            ) from None
        self._lock_file = fd
        for tmp in self.folder.glob("*.tmp"):
            tmp.unlink()
        if fresh:
            for seg in self.segments():
                seg.unlink()
            fsync_dir(self.folder)
        segments = self.segments()
        self._next = (_sequence(segments[-1])[0] + 1) if segments else 1
        if len(segments) > MERGE_ABOVE:
            self.merge()
        return self

    def close(self) -> None:
        if self._lock_file is not None:
            if len(self.segments()) > MERGE_ABOVE:
                self.merge()
            os.close(self._lock_file)
            self._lock_file = None

    def segments(self) -> list[Path]:
        """Committed segment files, oldest first."""
        return sorted(self.folder.glob(SEGMENT_GLOB), key=_sequence)

    def index(self) -> dict[str, str]:
        """The latest committed result of every row: key -> fingerprint, marked if failed."""
        segments = self.segments()
        if not segments:
            return {}
        ok = pl.col("status") == "ok"
        marked = pl.when(ok).then(pl.col(FINGERPRINT)).otherwise(FAILED_MARK + pl.col(FINGERPRINT))
        table = pl.scan_parquet([str(s) for s in segments]).select(KEY, marked.alias("fp"))
        frame = table.collect()
        return dict(zip(frame[KEY].to_list(), frame["fp"].to_list(), strict=True))

    def commit(self, results: Iterable[RowResult]) -> int:
        """Durably add results as one new segment; returns how many were written."""
        records = [r.as_record() for r in results]
        if not records:
            return 0
        table = pa.Table.from_pylist(records, schema=CHECKPOINT_SCHEMA)
        with self._writing:
            path = self.folder / f"seg-{self._next:012d}.parquet"
            self._next += 1
            write_atomic_table(table, path)
            self._new.append(path)
            if len(self._new) >= MERGE_NEW:
                self._merge(self._new)
                self._new = []
        return len(records)

    def merge(self) -> None:
        """Merge every segment into one, atomically, keeping every row (spend stays whole)."""
        with self._writing:
            self._merge(self.segments())
            self._new = []

    def _merge(self, segments: list[Path]) -> None:
        """Merge the newest consecutive `segments` into one file that sorts where they did."""
        if len(segments) < 2:
            return
        table = pq.read_table([str(s) for s in segments], schema=CHECKPOINT_SCHEMA)
        # The merged file sorts right after the newest segment it replaces and before any
        # segment written later, so "last one wins" still holds if we die mid-merge.
        target = segments[-1].with_name(f"seg-{_sequence(segments[-1])[0]:012d}.m.parquet")
        write_atomic_table(table, target)
        for seg in segments:
            if seg != target:
                seg.unlink()
        fsync_dir(self.folder)

    def spend(self) -> float:
        """Every committed row's cost, superseded attempts included: money already spent."""
        segments = self.segments()
        if not segments:
            return 0.0
        # A merge cut short by a kill leaves rows twice; a commit is unique by key and time.
        rows = pl.scan_parquet([str(s) for s in segments]).select(KEY, FINISHED_AT, "cost_usd")
        total = rows.unique(subset=[KEY, FINISHED_AT]).select(pl.col("cost_usd").sum())
        return float(total.collect().item() or 0.0)


def _sequence(path: Path) -> tuple[int, int]:
    stem = path.name.removeprefix("seg-").removesuffix(".parquet")
    number, _, merged = stem.partition(".")
    return int(number), 1 if merged else 0


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path to write; then fsync it, rename it to `path` and fsync
    the folder, so that `path` is either absent (or as before) or complete, never torn.
    The temporary is `.<name>.<pid>.<ns>.tmp`: what a kill leaves is recognisable."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically (see `atomic_file`)."""
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
