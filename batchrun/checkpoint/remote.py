"""A checkpoint on S3, worked through a local copy: the run's lease on it and the lease's
renewals, pulling the copy, and publishing what the run writes into it.

The folder keeps its rules on S3 (see `batchrun.checkpoint.folder`), with the folder as this
machine's copy: the lock is a lease object there (`batchrun.storage.runlock.RunLock`), a
commit's segment is uploaded whole in one PUT before it is written to the copy and counted,
a merge's segment is uploaded before it is renamed into the copy and before its inputs are
deleted on S3, and the copy is made the remote's (`pull`) when a run opens it and before a
reader reads it. Nothing is renamed on S3.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..core import sizes
from ..core.messages import first_line
from ..errors import RunStopped, UserError
from ..storage.files import atomic_file
from ..storage.runlock import RunLock
from ..storage.store import Remote, S3Error, download_file, pull, put_whole, remove, upload_file
from .segments import READ_TRIES, SEGMENT_GLOB, SEGMENT_OPTIONS, damaged_afresh, write_segment

log = logging.getLogger("batchrun")

LEASE = "lease.json"  # on S3, beside the segments: who runs the job (see `batchrun.storage.store`)
RENEWALS = 4  # a run renews its lease this many times in the lease's time ([storage] lease_s)
PULL_LOCK = "pull.lock"  # in a local copy: one pull from S3 at a time


def refresh_copy(folder: Path, remote: Remote | None) -> None:
    """For a command that reads a checkpoint on S3 (status, report, estimate,
    export-batch): bring its local copy up to date first. Nothing for a local one."""
    if remote is None:
        return
    try:
        pull_copy(folder, remote)
    except OSError as exc:
        raise UserError(
            f"The checkpoint {remote.url} cannot be read ({first_line(exc, 160)}): "
            f"check the bucket, the credentials and the endpoint."
        ) from None


def pull_copy(folder: Path, remote: Remote) -> bool:
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


class RemoteCopy:
    """The checkpoint on S3 that `folder` is this machine's copy of. Every segment goes up
    whole before its commit counts (`write_commit`), merges go up before their inputs are
    removed (`write_segment`, `unpublish`), and the copy is made the remote's when held."""

    def __init__(self, folder: Path, remote: Remote) -> None:
        self.folder = folder
        self.remote = remote
        self._lease: RunLock | None = None  # held between `hold` and `release`
        self._renewer: threading.Thread | None = None  # renews the lease while held
        self._renewing = threading.Event()  # set: stop renewing
        self._renewal = threading.Lock()  # one renewal at a time (the renewer, a writer)
        self.lease_lost: RunStopped | None = None  # another run took the lease over

    # -- the lease -------------------------------------------------------------------------

    def hold(self) -> None:
        """Take the job's lease (one run at a time, across machines), keep it renewed, and
        make the local copy the remote's."""
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
            pull_copy(self.folder, self.remote)
        except S3Error as exc:  # nothing was sent yet: as for the lease
            raise UserError(
                f"The checkpoint {self.remote.url} cannot be read ({exc.why}): check the "
                f"bucket, the credentials and the endpoint."
            ) from None

    def release(self) -> None:
        """Stop renewing the lease and give it up."""
        if self._renewer is not None:
            self._renewing.set()
            self._renewer.join()
            self._renewer = None
        if self._lease is not None:
            with contextlib.suppress(OSError):  # it lapses on its own
                self._lease.release()
            self._lease = None

    def _renew(self) -> None:
        """The renewer thread: renew the lease RENEWALS times in its ttl until released.
        While S3 cannot be reached it keeps trying; the lease may lapse meanwhile, and then
        no write goes to S3 until it is renewed (see `hold_lease`)."""
        assert self._lease is not None
        lease = self._lease
        while not self._renewing.wait(lease.ttl_s / RENEWALS):
            try:
                self._renew_lease(lease)
            except RunStopped:
                return
            except OSError as exc:  # S3 out of reach, or refusing: the writes say which
                log.debug("renewing the lease on %s failed: %s", self.remote.url, exc)

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

    def hold_lease(self) -> None:
        """Before anything is written to S3: make sure this run still holds its lease.
        One renewed less than 3/4 of its ttl ago cannot have lapsed yet; an older one (the
        renewals failed while S3 was out of reach) is renewed first, so that a write never
        goes out under a lease another run has taken over meanwhile. Raises the loss
        (RunStopped), or the S3Error that keeps the write waiting."""
        if self.lease_lost is not None:
            raise self.lease_lost
        lease = self._lease
        if lease is None:
            return  # a Ray worker's copy (the driver holds the lease)
        if time.monotonic() - lease.renewed_at > lease.ttl_s * (1 - 1 / RENEWALS):
            self._renew_lease(lease)

    # -- the copy --------------------------------------------------------------------------

    def pull(self) -> bool:
        """Make the copy the remote's; whether anything changed."""
        return pull_copy(self.folder, self.remote)

    def fetch_again(self, bad: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
        """Download the copies found damaged once more (the damage may be this machine's
        alone); those the checkpoint on S3 holds damaged too."""
        for path, _ in bad:
            download_file(self.remote.fs, self.remote.child(path.name), path)
            self._stamp(path)
        return damaged_afresh(path for path, _ in bad)

    def write_commit(self, table: pa.Table, path: Path) -> None:
        """Write a commit's segment up whole in one PUT (the commit), between the copy's
        temporary file being written and its rename, so that a full local disk fails the
        commit before anything reached S3."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=sizes.ROW_GROUP_ROWS, **SEGMENT_OPTIONS)
        data = sink.getvalue()
        with atomic_file(path, lambda _: self._put_commit(path.name, data)) as tmp:
            tmp.write_bytes(memoryview(data))
        self._stamp(path)

    def _put_commit(self, name: str, data: pa.Buffer) -> None:
        """Upload a commit's segment: the commit. An S3Error says it did not happen (the
        run waits a transient one out and tries the commit again), RunStopped that the
        lease is lost."""
        self.hold_lease()
        put_whole(self.remote.fs, self.remote.child(name), data)

    def write_segment(self, target: Path, write: Callable[[pq.ParquetWriter], int]) -> int:
        """`segments.write_segment`, uploaded (whole or not at all) from its temporary file
        before that is renamed into the copy: a segment appears in a copy only once it is
        in the checkpoint, so no pull (by a reader on this machine) can take it for one
        that a merge elsewhere removed."""
        remote = self.remote
        name = target.name

        def publish(tmp: Path) -> None:
            self.hold_lease()  # the job may be another run's by now
            upload_file(remote.fs, remote.child(name), tmp)

        rows = write_segment(target, write, publish)
        self._stamp(target)
        return rows

    def unpublish(self, path: Path) -> None:
        """Delete a segment of the copy's from S3 (the copy's own file is the caller's)."""
        self.hold_lease()  # the job may be another run's by now
        remove(self.remote.fs, self.remote.child(path.name))

    def _stamp(self, path: Path) -> None:
        """Give the local copy the remote's modification time, which `pull` compares. A
        failure costs nothing but a download at the next pull."""
        with contextlib.suppress(OSError):
            info = self.remote.info(self.remote.child(path.name))
            if info.mtime_ns is not None:
                os.utime(path, ns=(info.mtime_ns, info.mtime_ns))
