"""Committed results: the checkpoint folder beside the output, and atomic file writes.

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

Segments are merged as they come, in the background, in tiers: FANOUT neighbouring
segments of one size class become one. A five-million-row job
so keeps a few dozen files at most, and each row is rewritten a handful of times.

One run at a time holds the folder's lock, so two runs of the same job cannot interleave.

A checkpoint on S3 (`remote`) keeps the same rules, with the folder as this machine's copy
of it: the lock is a lease object there as well (`batchrun.storage.runlock.RunLock`), a commit's
segment is uploaded whole in one PUT before it is written to the copy and counted, a
merge's segment is uploaded before it is renamed into the copy and before its inputs are
deleted on S3, and the copy is made the remote's (`pull`) when a run opens it and before
a reader reads it. Nothing is renamed on S3.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import sizes
from ..core.messages import first_line
from ..errors import RunStopped, UserError
from ..protocol.result import (
    ADDED_COLUMNS,
    CHECKPOINT_SCHEMA,
    ENDPOINT_COLUMN,
    FINISHED_AT,
    KEY,
    POSITION,
    RowResult,
)
from ..storage.files import atomic_file, fsync_dir, remove_tree
from ..storage.runlock import RunLock
from ..storage.space import disk_full
from ..storage.store import (
    Remote,
    S3Error,
    download_file,
    pull,
    put_whole,
    remove,
    upload_file,
)
from .walk import Positions, Stopped, Walk, merge_segments, sort_positions

log = logging.getLogger("batchrun")

SEGMENT_GLOB = "seg-*.parquet"
QUARANTINE = "quarantine"  # in the folder: damaged segments, moved aside by a run
GATEWAY_NOTE = "gateway.json"  # what rate the gateway let through when it rate-limited a run
ENDPOINTS_NOTE = "endpoints.json"  # what each of several endpoints did in the last run
MERGE_RETRY_S = 10.0  # a merge that failed for lack of space, or S3, is tried again after this
_NAME = re.compile(r"seg-(\d{12})-(\d{12})\.parquet")
_OLD_NAME = re.compile(r"seg-(\d{12})(\.m)?\.parquet")  # before segments were sorted
# How segments are written: statistics for the position alone, which the walks use to pass
# over row groups; those of every column made a five-million-row segment's footer 4 MB,
# parsed whole by every reader of it.
SEGMENT_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_statistics": [POSITION]}
# A reader racing a merge may find a listed segment gone: it lists again this many times.
READ_TRIES = 8
LEASE = "lease.json"  # on S3, beside the segments: who runs the job (see `batchrun.storage.store`)
RENEWALS = 4  # a run renews its lease this many times in the lease's time ([storage] lease_s)
PULL_LOCK = "pull.lock"  # in a local copy: one pull from S3 at a time

# In a row's latest result as the walks give it, a failed row's fingerprint carries this
# mark in front (see `marked_fingerprint` and `batchrun.rows.plan.settles`).
FAILED_MARK = "!"

T = TypeVar("T")


def marked_fingerprint() -> pl.Expr:
    """A result's fingerprint, marked with FAILED_MARK when the result is a failure."""
    ok = pl.col("status") == "ok"
    return pl.when(ok).then(pl.col("fingerprint")).otherwise(FAILED_MARK + pl.col("fingerprint"))


def checkpoint_dir(output_path: Path) -> Path:
    """The checkpoint folder that belongs to an output file."""
    return output_path.with_name(output_path.name + ".checkpoint")


def segment_name(first: int, last: int) -> str:
    return f"seg-{first:012d}-{last:012d}.parquet"


def _span(path: Path) -> tuple[int, int] | None:
    match = _NAME.fullmatch(path.name)
    return (int(match[1]), int(match[2])) if match else None


def current_segments(folder: Path) -> list[Path]:
    """The segments a reader reads, oldest first: every one not superseded by a merge."""
    spans = sorted(
        ((span, path) for path in folder.glob(SEGMENT_GLOB) if (span := _span(path))),
        key=lambda item: (item[0][0], -item[0][1]),
    )
    kept: list[Path] = []
    reach = 0  # the last commit held by the segments kept so far
    for (_, last), path in spans:
        if last > reach:  # merges only join neighbours, so spans nest or stand apart
            kept.append(path)
            reach = last
    return kept


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


def sound_segments(folder: Path) -> list[Path]:
    """The current segments but the damaged ones: what every reader reads."""
    current = current_segments(folder)
    bad = {path for path, _ in damaged(current)}
    return [path for path in current if path not in bad]


def refresh_copy(folder: Path, remote: Remote | None) -> None:
    """For a command that reads a checkpoint on S3 (status, report, estimate,
    export-batch): bring its local copy up to date first. Nothing for a local one."""
    if remote is None:
        return
    try:
        _pull(folder, remote)
    except OSError as exc:
        raise UserError(
            f"The checkpoint {remote.url} cannot be read ({first_line(exc, 160)}): "
            f"check the bucket, the credentials and the endpoint."
        ) from None


def _pull(folder: Path, remote: Remote) -> bool:
    """`store.pull` of the segments into `folder`, one pull at a time on this machine,
    listed again when a merge elsewhere removed a segment between listing and download."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / PULL_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for attempt in range(READ_TRIES):
            try:
                return pull(remote, folder, SEGMENT_GLOB)
            except FileNotFoundError:
                if attempt == READ_TRIES - 1:
                    raise
        raise AssertionError("unreachable")
    finally:
        os.close(fd)


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


class Checkpoint:
    """The folder of committed segments for one job's output."""

    def __init__(self, folder: Path, remote: Remote | None = None) -> None:
        self.folder = folder
        # On S3: the checkpoint itself, of which `folder` is this machine's copy. Every
        # segment goes up whole before its commit counts (`commit`), merges go up before
        # their inputs are removed, and the copy is made the remote's when opened.
        self.remote = remote
        self._lease: RunLock | None = None
        self._renewer: threading.Thread | None = None
        self._renewing = threading.Event()  # set: stop renewing
        self.lease_lost: RunStopped | None = None  # another run took the lease over
        self._renewal = threading.Lock()  # one renewal at a time (the renewer, a writer)
        self._lock_file: int | None = None  # fd holding the exclusive lock while open
        self._next = 1  # number of the next commit
        self._writing = threading.Lock()  # commits come from worker threads, one at a time
        self._rows: dict[Path, int] = {}  # rows of each current segment (lock holder only)
        self._wake = threading.Condition()  # tells the merger a segment was added
        self._merger: threading.Thread | None = None  # merges in the background while open
        self._closing = False  # asks the merger to stop
        self.merge_error: BaseException | None = None  # what stopped the merger, if anything
        self.quarantined: list[str] = []  # warnings for the damaged segments `open` moved aside
        # Where commit numbers come from when other processes commit into the folder too
        # (the workers of a Ray run): each number is given once, cluster-wide.
        self._allocate: Callable[[], int] | None = None

    # -- opening and closing ---------------------------------------------------------------

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
        try:
            self._hold_remote()
        except BaseException:
            self.close()
            raise
        for tmp in self.folder.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        remove_tree(self.folder / "anchor.tmp")
        if fresh:
            for seg in self.folder.glob(SEGMENT_GLOB):
                self._unpublish(seg)
                seg.unlink(missing_ok=True)
            fsync_dir(self.folder)
        _upgrade(self.folder)
        spans = [span for path in self.folder.glob(SEGMENT_GLOB) if (span := _span(path))]
        self._next = max((last for _, last in spans), default=0) + 1
        current = current_segments(self.folder)
        for path in set(self.folder.glob(SEGMENT_GLOB)) - set(current):
            self._unpublish(path)
            path.unlink(missing_ok=True)  # superseded: a kill came between a merge and its clean-up
        bad = damaged(current)
        if bad and self.remote is not None:
            bad = self._fetch_again(bad)
        self.quarantined = [self._quarantine(path, why) for path, why in bad]
        fsync_dir(self.folder)
        current = current_segments(self.folder)
        self._rows = {path: pq.read_metadata(path).num_rows for path in current}
        return self

    def _hold_remote(self) -> None:
        """On S3: take the job's lease (one run at a time, across machines), keep it
        renewed, and make the local copy the remote's."""
        if self.remote is None:
            return
        holder = f"{socket.gethostname()} pid {os.getpid()}"
        ttl = self.remote.spec.lease_s
        lease = RunLock(self.remote.fs, self.remote.child(LEASE), holder, ttl)
        try:
            lease.acquire()
        except OSError as exc:
            raise UserError(
                f"The checkpoint {self.remote.url} cannot be reached "
                f"({first_line(exc, 160)}): check the bucket, the credentials and "
                f"the endpoint."
            ) from None
        self._lease = lease
        self._renewing.clear()
        self._renewer = threading.Thread(target=self._renew, name="batchrun-lease", daemon=True)
        self._renewer.start()
        try:
            _pull(self.folder, self.remote)
        except S3Error as exc:  # nothing was sent yet: as for the lease
            raise UserError(
                f"The checkpoint {self.remote.url} cannot be read ({exc.why}): check the "
                f"bucket, the credentials and the endpoint."
            ) from None

    def _renew(self) -> None:
        """The renewer thread: renew the lease RENEWALS times in its ttl until closed. While
        S3 cannot be reached it keeps trying; the lease may lapse meanwhile, and then no
        write goes to S3 until it is renewed (see `_hold_lease`)."""
        assert self._lease is not None
        lease = self._lease
        while not self._renewing.wait(lease.ttl_s / RENEWALS):
            try:
                self._renew_lease(lease)
            except RunStopped:
                return
            except OSError as exc:  # S3 out of reach, or refusing: the writes say which
                log.debug("renewing the lease on %s failed: %s", self.remote_url, exc)

    def _renew_lease(self, lease: RunLock) -> None:
        """Renew the lease: a conditional replace on the etag this run last wrote, which
        succeeds where the lease lapsed but nobody took it. RunStopped (kept in
        `lease_lost`) where another run took it over; S3Error where S3 cannot say."""
        with self._renewal:
            if self.lease_lost is not None:
                raise self.lease_lost
            try:
                lease.renew()
            except RunStopped as exc:
                self.lease_lost = exc
                raise

    def lease_sure_until(self) -> float | None:
        """Wall-clock time until which this run surely holds its lease (its last renewal
        plus 3/4 of its ttl; 0 once lost), for writers in other processes (a Ray run's
        workers); None without a lease."""
        if self.lease_lost is not None:
            return 0.0
        lease = self._lease
        if lease is None:
            return None
        return (
            time.time() + lease.ttl_s * (1 - 1 / RENEWALS) - (time.monotonic() - lease.renewed_at)
        )

    def _hold_lease(self) -> None:
        """Before anything is written to S3: make sure this run still holds its lease.
        One renewed less than 3/4 of its ttl ago cannot have lapsed yet; an older one (the
        renewals failed while S3 was out of reach) is renewed first, so that a write never
        goes out under a lease another run has taken over meanwhile. Raises the loss
        (RunStopped), or the S3Error that keeps the write waiting."""
        if self.lease_lost is not None:
            raise self.lease_lost
        lease = self._lease
        if lease is None:
            return  # a local folder, or a Ray worker's (the driver holds the lease)
        if time.monotonic() - lease.renewed_at > lease.ttl_s * (1 - 1 / RENEWALS):
            self._renew_lease(lease)

    def _fetch_again(self, bad: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
        """Download the copies found damaged once more (the damage may be this machine's
        alone); those the checkpoint on S3 holds damaged too."""
        assert self.remote is not None
        for path, _ in bad:
            download_file(self.remote.fs, self.remote.child(path.name), path)
            self._stamp(path)
        _damage.cache_clear()  # a copy fetched again may keep the size and time it had
        return damaged(path for path, _ in bad)

    @property
    def remote_url(self) -> str:
        return self.remote.url if self.remote is not None else str(self.folder)

    def refresh(self) -> bool:
        """Bring the local copy up to date with what other processes committed to S3 (the
        workers of a Ray run); whether anything changed. Nothing for a local folder."""
        if self.remote is None:
            return False
        with self._writing:
            changed = _pull(self.folder, self.remote)
        if changed:
            with self._wake:
                self._wake.notify()  # the merger has segments to look at
        return changed

    def _write_segment(self, target: Path, write: Callable[[pq.ParquetWriter], int]) -> int:
        """`write_segment`, on S3 uploaded (whole or not at all) from its temporary file
        before that is renamed into the copy: a segment appears in a copy only once it is
        in the checkpoint, so no pull (by a reader on this machine) can take it for one
        that a merge elsewhere removed."""
        if self.remote is None:
            return write_segment(target, write)
        remote = self.remote
        name = target.name

        def publish(tmp: Path) -> None:
            self._hold_lease()  # the job may be another run's by now
            upload_file(remote.fs, remote.child(name), tmp)

        rows = write_segment(target, write, publish)
        self._stamp(target)
        return rows

    def _put_commit(self, name: str, data: pa.Buffer) -> None:
        """Upload a commit's segment: the commit. An S3Error says it did not happen (the
        run waits a transient one out and tries the commit again), RunStopped that the
        lease is lost."""
        assert self.remote is not None
        self._hold_lease()
        put_whole(self.remote.fs, self.remote.child(name), data)

    def _stamp(self, path: Path) -> None:
        """Give the local copy the remote's modification time, which `pull` compares. A
        failure costs nothing but a download at the next pull."""
        assert self.remote is not None
        with contextlib.suppress(OSError):
            info = self.remote.fs.get_file_info(self.remote.child(path.name))
            if info.mtime_ns is not None:
                os.utime(path, ns=(info.mtime_ns, info.mtime_ns))

    def _unpublish(self, path: Path) -> None:
        if self.remote is not None:
            self._hold_lease()  # the job may be another run's by now
            remove(self.remote.fs, self.remote.child(path.name))

    @property
    def next_commit(self) -> int:
        """The number the next commit takes (for the allocator of a shared folder)."""
        return self._next

    def attach(self, allocate: Callable[[], int]) -> Checkpoint:
        """Commit into a folder that another process holds open (a Ray run's driver, which
        cleared it and merges it), numbering commits by `allocate`, which never gives a
        number twice. Such a writer neither locks nor merges."""
        self._allocate = allocate
        return self

    def _quarantine(self, path: Path, why: str) -> str:
        """Move a damaged segment into QUARANTINE (never deleted: its owner may want it);
        returns the warning that says so, with what it held where that can be read."""
        aside = self.folder / QUARANTINE
        aside.mkdir(exist_ok=True)
        target = aside / path.name
        while target.exists():
            target = target.with_name(f"{target.stem}.{time.time_ns()}{target.suffix}")
        held = _what_it_held(path)
        os.replace(path, target)
        fsync_dir(aside)
        self._unpublish(path)  # on S3 (damaged there too): the copy moved aside is kept
        return (
            f"batchrun: warning: the checkpoint segment {path.name} is damaged ({why}); it "
            f"was moved to {target}, and {held} is no longer counted: its rows will be sent "
            f"again."
        )

    def start_merging(self) -> None:
        """Merge segments in a background thread from now until `close`."""
        self._closing = False
        self._merger = threading.Thread(
            target=self._merge_loop, name="batchrun-merger", daemon=True
        )
        self._merger.start()

    def stop_merging(self) -> None:
        """Stop the merger; a merge under way is abandoned, leaving nothing behind."""
        if self._merger is not None:
            with self._wake:
                self._closing = True
                self._wake.notify()
            self._merger.join()
            self._merger = None
            self._closing = False  # asked of the merger alone: merges called here still run

    def close(self) -> None:
        """Stop merging and unlock (on S3: give the lease up)."""
        self.stop_merging()
        if self._renewer is not None:
            self._renewing.set()
            self._renewer.join()
            self._renewer = None
        if self._lease is not None:
            with contextlib.suppress(OSError):  # it lapses on its own
                self._lease.release()
            self._lease = None
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

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

        def total(segments: list[Path]) -> float:
            if not segments:
                return 0.0
            # Segments from before a column was added lack it: their schemas differ.
            scan = pl.scan_parquet(segments, missing_columns="insert", extra_columns="ignore")
            frame = scan.select(pl.col("cost_usd").sum()).collect()
            return float(frame.item() or 0.0)

        return reading(self.folder, total)

    def spend_by_endpoint(self) -> dict[str | None, float]:
        """`spend` by the endpoint that gave each result (None: results committed before
        results named their endpoint), one segment and row group at a time."""

        def totals(segments: list[Path]) -> dict[str | None, float]:
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

        return reading(self.folder, totals)

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
                self._write_commit(table, path)
            except BaseException:
                # A failed commit gives its number back (where this checkpoint numbers its
                # own), so that a full disk or an S3 outage leaves no gap, which merges do
                # not cross. The engine tries again with these results and those that came
                # since: on S3, a PUT that landed although its answer was lost is then
                # replaced by that superset, not doubled.
                if self._allocate is None and self._next == number + 1:
                    self._next = number
                raise
            self._rows[path] = table.num_rows
        with self._wake:
            self._wake.notify()
        return len(records)

    def _write_commit(self, table: pa.Table, path: Path) -> None:
        """Write a commit's segment: atomically into the folder; on S3, up whole in one PUT
        (the commit), between the copy's temporary file being written and its rename, so
        that a full local disk fails the commit before anything reached S3."""
        if self.remote is None:
            write_atomic_table(table, path)
            return
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=sizes.ROW_GROUP_ROWS, **SEGMENT_OPTIONS)
        data = sink.getvalue()
        with atomic_file(path, lambda _: self._put_commit(path.name, data)) as tmp:
            tmp.write_bytes(memoryview(data))
        self._stamp(path)

    def replace_all(self, write: Callable[[pq.ParquetWriter], int]) -> None:
        """Replace every segment by the one `write` writes (all rows, sorted): used when the
        input's positions moved. The merger must not be running."""
        with self._writing:
            current = self.segments()
            if not current:
                return
            first = min(_span(p)[0] for p in current)  # type: ignore[index]
            last = max(_span(p)[1] for p in current)  # type: ignore[index]
            target = self.folder / segment_name(first, last)
            rows = self._write_segment(target, write)
            for path in current:
                if path != target:
                    self._unpublish(path)
                    path.unlink(missing_ok=True)
            fsync_dir(self.folder)
            self._rows = {target: rows}

    # -- merging ---------------------------------------------------------------------------

    def _merge_loop(self) -> None:
        resume_at = 0.0  # after a merge failed for lack of space, when to try again
        while True:
            with self._wake:
                while not self._closing and (time.monotonic() < resume_at or self._due() is None):
                    self._wake.wait(max(resume_at - time.monotonic(), 0.0) or None)
                if self._closing:
                    return
                due = self._due()
            if due is None:
                continue
            try:
                self._merge(due)
            except Stopped:
                return  # closing: the merge's temporary file is gone, its inputs stay
            except OSError as exc:
                if not disk_full(exc) and not (isinstance(exc, S3Error) and exc.transient):
                    self.merge_error = exc
                    return
                # The merge's temporary file is gone and its inputs stay: merging is put
                # off, the run (which waits for space, or for S3, on its own commits) goes
                # on.
                resume_at = time.monotonic() + MERGE_RETRY_S
            except BaseException as exc:  # kept for the run to report; the folder stays valid
                self.merge_error = exc
                return

    def _due(self) -> list[Path] | None:
        """The segments to merge next: the oldest FANOUT of the first FANOUT or more
        neighbours of one size class. Never more at once: a merger that fell behind (an
        import commits fast) catches up in merges of FANOUT, each done in moments, where one
        merge of a 400-segment tail outlasted the import that made it.

        Neighbours must hold consecutive commits: where other processes commit into the
        folder (see `attach`), a number may be given and its segment not yet in place, and
        a merge spanning it would supersede that segment when it lands."""
        with self._writing:
            current = current_segments(self.folder)
            for path in current:
                if path not in self._rows:  # committed by another process
                    try:
                        self._rows[path] = pq.read_metadata(path).num_rows
                    except FileNotFoundError:
                        return None  # merged away meanwhile: list again next time
            classes = [_size_class(self._rows[path]) for path in current]
            spans = [_span(path) for path in current]
        start = 0
        for i in range(1, len(current) + 1):
            gap = i < len(current) and spans[i][0] != spans[i - 1][1] + 1  # type: ignore[index]
            if i == len(current) or gap or classes[i] != classes[start]:
                if i - start >= sizes.FANOUT:
                    return current[start : start + sizes.FANOUT]
                start = i
        return None

    def _merge(self, segments: list[Path]) -> None:
        """Merge consecutive `segments` into one named for all of them, then remove them."""
        first, last = _span(segments[0])[0], _span(segments[-1])[1]  # type: ignore[index]
        target = self.folder / segment_name(first, last)

        def write(writer: pq.ParquetWriter) -> int:
            return merge_segments(segments, writer, stop=lambda: self._closing)

        rows = self._write_segment(target, write)
        with self._writing:
            self._rows[target] = rows
            for path in segments:
                self._unpublish(path)
                path.unlink(missing_ok=True)  # a reader's pull may have removed it first
                self._rows.pop(path, None)
            fsync_dir(self.folder)


def _size_class(rows: int) -> int:
    return (
        int(math.log(max(rows, 1) / sizes.SMALLEST, sizes.FANOUT)) if rows > sizes.SMALLEST else 0
    )


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


def _upgrade(folder: Path) -> None:
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


def save_note(folder: Path, name: str, figures: Mapping[str, object]) -> None:
    """Keep a few figures about the job beside its segments (JSON, written atomically)."""
    with atomic_file(folder / name) as tmp:
        tmp.write_text(json.dumps(dict(figures)))


def load_note(folder: Path, name: str) -> dict[str, Any] | None:
    """The figures `save_note` kept, or None when there are none (or they cannot be read)."""
    try:
        figures = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None
    return figures if isinstance(figures, dict) else None


def write_atomic_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically (see `atomic_file`), in row groups a walk reads whole."""
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, row_group_size=sizes.ROW_GROUP_ROWS, **SEGMENT_OPTIONS)
