"""The checkpoint's merger: a background thread that keeps a folder's segments few.

Segments are merged as they come, in tiers: FANOUT neighbouring segments of one size class
become one. A five-million-row job so keeps a few dozen files at most, and each row is
rewritten a handful of times. A merge writes its segment before it removes its inputs (see
the rules in `batchrun.checkpoint.folder`), so a merge stopped anywhere leaves the folder
whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pyarrow.parquet as pq

from ..core import sizes
from ..storage.files import fsync_dir
from ..storage.space import disk_full
from ..storage.store import S3Error
from .segments import current_segments, segment_name, size_class, span, spanned
from .walk import Stopped, merge_segments

MERGE_RETRY_S = 10.0  # a merge that failed for lack of space, or S3, is tried again after this

# Writes a segment through a ParquetWriter (and on S3 publishes it); returns its rows.
SegmentWriter = Callable[[Path, Callable[[pq.ParquetWriter], int]], int]


class Merger:
    """Merges a checkpoint folder's segments, in a thread of its own between `start` and
    `stop`, or a step at a time (`due`, then `merge`)."""

    def __init__(
        self,
        folder: Path,
        writing: threading.Lock,
        write_segment: SegmentWriter,
        remove: Callable[[Path], None],
    ) -> None:
        self._folder = folder
        self._writing = writing  # the checkpoint's: held while the folder's segments change
        self._write_segment = write_segment  # how a merged segment is written (and published)
        self._remove = remove  # removes a merged-away segment (from S3 too, if on S3)
        self._rows: dict[Path, int] = {}  # rows of each current segment (under `writing`)
        self._wake = threading.Condition()  # tells the thread a segment was added
        self._thread: threading.Thread | None = None  # merges in the background while started
        self._closing = False  # asks the thread to stop
        self.error: BaseException | None = None  # what stopped the thread, if anything

    def count(self, path: Path, rows: int) -> None:
        """Note a segment the checkpoint wrote and its rows; the caller holds `writing`."""
        self._rows[path] = rows

    def recount(self, rows: Mapping[Path, int]) -> None:
        """Take `rows` for the folder's segments as they now stand (opened, or replaced)."""
        self._rows = dict(rows)

    def wake(self) -> None:
        """Have the thread look at the segments again: one was added."""
        with self._wake:
            self._wake.notify()

    def start(self) -> None:
        """Merge segments in a background thread from now until `stop`."""
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="batchrun-merger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a merge under way is abandoned, leaving nothing behind."""
        if self._thread is not None:
            with self._wake:
                self._closing = True
                self._wake.notify()
            self._thread.join()
            self._thread = None
            self._closing = False  # asked of the thread alone: merges called here still run

    def _loop(self) -> None:
        resume_at = 0.0  # after a merge failed for lack of space, when to try again
        while True:
            with self._wake:
                while not self._closing and (time.monotonic() < resume_at or self.due() is None):
                    self._wake.wait(max(resume_at - time.monotonic(), 0.0) or None)
                if self._closing:
                    return
                due = self.due()
            if due is None:
                continue
            try:
                self.merge(due)
            except Stopped:
                return  # closing: the merge's temporary file is gone, its inputs stay
            except OSError as exc:
                if not disk_full(exc) and not (isinstance(exc, S3Error) and exc.transient):
                    self.error = exc
                    return
                # The merge's temporary file is gone and its inputs stay: merging is put
                # off, the run (which waits for space, or for S3, on its own commits) goes
                # on.
                resume_at = time.monotonic() + MERGE_RETRY_S
            except BaseException as exc:  # kept for the run to report; the folder stays valid
                self.error = exc
                return

    def due(self) -> list[Path] | None:
        """The segments to merge next: the oldest FANOUT of the first FANOUT or more
        neighbours of one size class. Never more at once: a merger that fell behind (an
        import commits fast) catches up in merges of FANOUT, each done in moments, where one
        merge of a 400-segment tail outlasted the import that made it.

        Neighbours must hold consecutive commits: where other processes commit into the
        folder (see `Checkpoint.attach`), a number may be given and its segment not yet in
        place, and a merge spanning it would supersede that segment when it lands."""
        with self._writing:
            current = current_segments(self._folder)
            for path in current:
                if path not in self._rows:  # committed by another process
                    try:
                        self._rows[path] = pq.read_metadata(path).num_rows
                    except FileNotFoundError:
                        return None  # merged away meanwhile: list again next time
            classes = [size_class(self._rows[path]) for path in current]
            spans = [span(path) for path in current]
        start = 0
        for i in range(1, len(current) + 1):
            gap = i < len(current) and spans[i][0] != spans[i - 1][1] + 1  # type: ignore[index]
            if i == len(current) or gap or classes[i] != classes[start]:
                if i - start >= sizes.FANOUT:
                    return current[start : start + sizes.FANOUT]
                start = i
        return None

    def merge(self, segments: list[Path]) -> None:
        """Merge consecutive `segments` into one named for all of them, then remove them."""
        target = self._folder / segment_name(*spanned(segments))

        def write(writer: pq.ParquetWriter) -> int:
            return merge_segments(segments, writer, stop=lambda: self._closing)

        rows = self._write_segment(target, write)
        with self._writing:
            self._rows[target] = rows
            for path in segments:
                self._remove(path)
                self._rows.pop(path, None)
            fsync_dir(self._folder)
