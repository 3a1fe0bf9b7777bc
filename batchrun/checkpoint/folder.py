"""Committed results: the checkpoint folder beside the output.

Exactly-once rests on these rules:

1. A result is committed by writing a whole segment file under a temporary name, fsyncing
   it, renaming it into place and fsyncing the folder. A rename is atomic, so every segment
   a reader can see is complete; a kill leaves at most a `*.tmp` that the next open deletes.
   Nothing half-written is ever visible.
2. Commits are numbered. A segment is named after the commits it holds,
   `seg-<first>-<last>.parquet`: a commit writes `seg-n-n`, and a merge of consecutive
   segments writes one segment named for all of them before it removes them. A segment whose
   commits another one holds too is superseded and read by nobody (a kill mid-merge leaves
   both; the next open removes the superseded one), so no row is ever counted twice.
3. Rows in a segment are sorted by their input position, and rows at one position keep the
   order they were committed in. A row's results all stand at one position (the row's
   position in the input as it is now: see `batchrun.rows.anchor`), so a row's latest result is
   the last one at its position in segment then row order, and input batches and their
   results are walked together in bounded memory (`batchrun.checkpoint.walk`).
4. A row's identity is its key (the id as text) and the fingerprint of its request body: the
   engine skips a row only if the latest result has the same fingerprint.

One run at a time holds the folder's lock, so two runs of the same job cannot interleave.

The pieces: `segments` (names, damage, quarantine, writing one), `merger` (merges in the
background, in tiers), `remote` (a checkpoint on S3, of which the folder is this machine's
copy, and the run's lease on it), `notes` (figures kept beside the segments).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RunStopped, UserError
from ..protocol.result import CHECKPOINT_SCHEMA, ENDPOINT_COLUMN, RowResult
from ..storage.files import fsync_dir, remove_tree
from ..storage.store import Remote
from .merger import Merger
from .remote import RemoteCopy
from .segments import (
    SEGMENT_GLOB,
    current_segments,
    damaged,
    quarantine,
    reading,
    segment_name,
    span,
    spanned,
    upgrade,
    write_atomic_table,
    write_segment,
)
from .walk import Positions, Walk, sort_positions


def checkpoint_dir(output_path: Path) -> Path:
    """The checkpoint folder that belongs to an output file."""
    return output_path.with_name(output_path.name + ".checkpoint")


def _lock(folder: Path) -> int:
    """Take the folder's lock (one run at a time): the fd that holds it until closed."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"Another batchrun run is using {folder}: wait for it to finish or stop it."
        ) from None
    return fd


class Checkpoint:
    """The folder of committed segments for one job's output."""

    def __init__(self, folder: Path, remote: Remote | None = None) -> None:
        self.folder = folder
        self.remote = remote  # on S3: the checkpoint itself, of which `folder` is a copy
        self._copy = RemoteCopy(folder, remote) if remote is not None else None
        self._lock_file: int | None = None  # fd holding the exclusive lock while open
        self._next = 1  # number of the next commit
        self._writing = threading.Lock()  # commits (from worker threads) and merges, one at a time
        self.merger = Merger(folder, self._writing, self._write_segment, self._remove)
        self.quarantined: list[str] = []  # warnings for the damaged segments `open` moved aside
        # Where commit numbers come from when other processes commit into the folder too
        # (the workers of a Ray run): each number is given once, cluster-wide.
        self._allocate: Callable[[], int] | None = None

    @property
    def lease_lost(self) -> RunStopped | None:
        """On S3: why this run must stop, once another run took its lease over."""
        return self._copy.lease_lost if self._copy is not None else None

    @property
    def merge_error(self) -> BaseException | None:
        """What stopped the merger, if anything."""
        return self.merger.error

    @property
    def remote_url(self) -> str:
        return self.remote.url if self.remote is not None else str(self.folder)

    # -- opening and closing ---------------------------------------------------------------

    def open(self, *, fresh: bool = False) -> Checkpoint:
        """Lock the folder, clear what a kill left behind, and (with fresh) forget results."""
        self._lock_file = _lock(self.folder)
        try:
            if self._copy is not None:
                self._copy.hold()
        except BaseException:
            self.close()
            raise
        for tmp in self.folder.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        remove_tree(self.folder / "anchor.tmp")
        if fresh:
            for seg in self.folder.glob(SEGMENT_GLOB):
                self._remove(seg)
            fsync_dir(self.folder)
        upgrade(self.folder)
        spans = [found for path in self.folder.glob(SEGMENT_GLOB) if (found := span(path))]
        self._next = max((last for _, last in spans), default=0) + 1
        self._set_aside()
        self.merger.recount({path: pq.read_metadata(path).num_rows for path in self.segments()})
        return self

    def _set_aside(self) -> None:
        """Remove the segments superseded by a merge (a kill came between it and its
        clean-up), and quarantine the damaged ones (on S3: those damaged there too)."""
        current = current_segments(self.folder)
        for path in set(self.folder.glob(SEGMENT_GLOB)) - set(current):
            self._remove(path)
        bad = damaged(current)
        if bad and self._copy is not None:
            bad = self._copy.fetch_again(bad)
        self.quarantined = []
        for path, why in bad:
            self.quarantined.append(quarantine(self.folder, path, why))
            self._unpublish(path)  # on S3 (damaged there too): the copy moved aside is kept
        fsync_dir(self.folder)

    def attach(self, allocate: Callable[[], int]) -> Checkpoint:
        """Commit into a folder that another process holds open (a Ray run's driver, which
        cleared it and merges it), numbering commits by `allocate`, which never gives a
        number twice. Such a writer neither locks nor merges."""
        self._allocate = allocate
        return self

    @property
    def next_commit(self) -> int:
        """The number the next commit takes (for the allocator of a shared folder)."""
        return self._next

    def start_merging(self) -> None:
        """Merge segments in a background thread from now until `close`."""
        self.merger.start()

    def stop_merging(self) -> None:
        """Stop the merger; a merge under way is abandoned, leaving nothing behind."""
        self.merger.stop()

    def lease_sure_until(self) -> float | None:
        """See `RemoteCopy.lease_sure_until`; None for a local folder."""
        return self._copy.lease_sure_until() if self._copy is not None else None

    def close(self) -> None:
        """Stop merging and unlock (on S3: give the lease up)."""
        self.stop_merging()
        if self._copy is not None:
            self._copy.release()
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Bring the local copy up to date with what other processes committed to S3 (the
        workers of a Ray run); whether anything changed. Nothing for a local folder."""
        if self._copy is None:
            return False
        with self._writing:
            changed = self._copy.pull()
        if changed:
            self.merger.wake()  # it has segments to look at
        return changed

    def segments(self) -> list[Path]:
        """Current segment files, oldest first."""
        return current_segments(self.folder)

    def walk(self, columns: Iterable[str] = ()) -> Walk:
        """A walk over the rows' latest results (see `batchrun.checkpoint.walk.Walk`)."""
        wanted = list(columns)
        return reading(self.folder, lambda segments: Walk(segments, wanted))

    def positions(self) -> Positions:
        """A walk over the positions that hold results (see `walk.Positions`)."""
        return reading(self.folder, Positions)

    def spend(self) -> float:
        """Every committed row's cost, superseded attempts included: money already spent."""
        return reading(self.folder, _spent)

    def spend_by_endpoint(self) -> dict[str | None, float]:
        """`spend` by the endpoint that gave each result (None: results committed before
        results named their endpoint), one segment and row group at a time."""
        return reading(self.folder, _spent_by_endpoint)

    # -- writing ---------------------------------------------------------------------------

    def commit(self, results: Iterable[RowResult]) -> int:
        """Durably add results as one new segment; returns how many were written."""
        records = [r.as_record() for r in results]
        if not records:
            return 0
        table = sort_positions(pa.Table.from_pylist(records, schema=CHECKPOINT_SCHEMA))
        if self.lease_lost is not None:
            raise self.lease_lost
        with self._writing:
            number = self._allocate() if self._allocate is not None else self._next
            self._next = max(self._next, number + 1)
            path = self.folder / segment_name(number, number)
            try:
                if self._copy is None:
                    write_atomic_table(table, path)
                else:
                    self._copy.write_commit(table, path)
            except BaseException:
                # A failed commit gives its number back (where this checkpoint numbers its
                # own), so that a full disk or an S3 outage leaves no gap, which merges do
                # not cross. The engine tries again with these results and those that came
                # since: on S3, a PUT that landed although its answer was lost is then
                # replaced by that superset, not doubled.
                if self._allocate is None and self._next == number + 1:
                    self._next = number
                raise
            self.merger.count(path, table.num_rows)
        self.merger.wake()
        return len(records)

    def replace_all(self, write: Callable[[pq.ParquetWriter], int]) -> None:
        """Replace every segment by the one `write` writes (all rows, sorted): used when the
        input's positions moved. The merger must not be running."""
        with self._writing:
            current = self.segments()
            if not current:
                return
            target = self.folder / segment_name(*spanned(current))
            rows = self._write_segment(target, write)
            for path in current:
                if path != target:
                    self._remove(path)
            fsync_dir(self.folder)
            self.merger.recount({target: rows})

    def _write_segment(self, target: Path, write: Callable[[pq.ParquetWriter], int]) -> int:
        """`segments.write_segment`; on S3, published first (see `RemoteCopy.write_segment`)."""
        if self._copy is None:
            return write_segment(target, write)
        return self._copy.write_segment(target, write)

    def _unpublish(self, path: Path) -> None:
        if self._copy is not None:
            self._copy.unpublish(path)

    def _remove(self, path: Path) -> None:
        """Remove a segment from the checkpoint (on S3 first). The copy's file may be gone
        already: a reader's pull removes what a merge removed on S3."""
        self._unpublish(path)
        path.unlink(missing_ok=True)


def _spent(segments: list[Path]) -> float:
    """The cost of every row of `segments`."""
    if not segments:
        return 0.0
    # Segments from before a column was added lack it: their schemas differ.
    scan = pl.scan_parquet(segments, missing_columns="insert", extra_columns="ignore")
    frame = scan.select(pl.col("cost_usd").sum()).collect()
    return float(frame.item() or 0.0)


def _spent_by_endpoint(segments: list[Path]) -> dict[str | None, float]:
    """`_spent` by endpoint, one segment and row group at a time."""
    found: dict[str | None, float] = {}
    for path in segments:
        file = pq.ParquetFile(path, pre_buffer=False)  # see batchrun.rows.source
        try:
            named = file.schema_arrow.get_field_index(ENDPOINT_COLUMN) >= 0
            columns = ["cost_usd", *([ENDPOINT_COLUMN] if named else [])]
            for batch in file.iter_batches(columns=columns):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                if not named:
                    frame = frame.with_columns(pl.lit(None, pl.String).alias("endpoint"))
                sums = frame.group_by(ENDPOINT_COLUMN).agg(pl.col("cost_usd").sum())
                for name, cost in sums.iter_rows():
                    found[name] = found.get(name, 0.0) + float(cost or 0.0)
        finally:
            file.close()
    return found
