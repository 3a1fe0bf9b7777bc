"""Committing a run's results, and waiting out a full disk or S3 out of reach.

Finished results wait in a buffer until a flush commits them as one checkpoint segment
(`Commits.flush`). While the disk is full, or S3 does not answer, the gate (`space`) is
closed: no request starts, the results stay in the buffer with those that keep coming
back, and the commit is tried again, every RETRY_S for the disk, with a growing backoff for
S3, until it passes or `disk_wait_s` (`storage_wait_s`) is over; then the run stops saying
how many answers could not be saved (see `batchrun.storage.space`). Writing and uploading
the output wait the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from ..checkpoint.folder import Checkpoint
from ..config.job import Job
from ..core import sizes
from ..errors import BatchrunError, DiskFull, StoreFailed
from ..protocol.result import RowResult
from ..rows import sink
from ..storage.space import RETRY_S, SpaceGate, disk_full, store_backoff, what_is_full
from ..storage.store import S3Error
from .pacing import Sleep


class Commits:
    """A run's commit buffer and its waits for space and for S3; see the module docstring."""

    def __init__(
        self,
        job: Job,
        checkpoint: Checkpoint,
        *,
        clock: Callable[[], float],
        nap: Sleep,
        note: Callable[[str], None],
        halt: Callable[[BatchrunError], None],
        stopped: Callable[[], bool],
        cause_only: bool = False,
    ) -> None:
        """`nap` is a sleep the run's stop cuts short; `note` says a line to the user; `halt`
        stops the run and `stopped` says whether it has stopped. With `cause_only` (a Ray
        worker's), a stop on S3 gives its cause alone: the driver counts the answers no
        worker could commit and says where the output is."""
        self._job = job
        self._checkpoint = checkpoint
        self._nap = nap
        self._note = note
        self._halt = halt
        self._stopped = stopped
        self._cause_only = cause_only
        self.space = SpaceGate(job.limits.disk_wait_s, clock)  # closed while waiting
        self._buffer: list[RowResult] = []  # finished results not yet committed
        self._lock = asyncio.Lock()  # one segment write at a time
        self._last_flush = time.monotonic()
        self._full = (checkpoint.folder, "full")  # the folder a shortage stopped on, and how
        self._shortage = "disk"  # what the gate waits for while closed: "disk" or "store"
        self._store_tries = 0  # tries at S3 that failed in the current outage
        # The S3 failure the run stopped on (or gave up uploading on): the error, whether
        # it was waited out for storage_wait_s (else S3 refused), "commit" or "upload".
        self._store_failure: tuple[S3Error, bool, str] | None = None
        self.not_uploaded: str | None = None  # the output's S3 URL, when it did not get there

    @property
    def uncommitted(self) -> int:
        """Results finished and not committed (yet, or ever: the run stopped on them)."""
        return len(self._buffer)

    def add(self, result: RowResult) -> None:
        """Buffer a finished result, for the next flush."""
        self._buffer.append(result)

    async def flush_if_full(self) -> None:
        """Flush at once a buffer of COMMIT_ROWS results, without waiting for the ticker."""
        if len(self._buffer) >= sizes.COMMIT_ROWS:
            await self.flush()

    def due(self, interval_s: float) -> bool:
        """Whether results have waited `interval_s` since the last flush began, and no
        flush is under way (one may be waiting for space)."""
        return (
            bool(self._buffer)
            and not self._lock.locked()
            and time.monotonic() - self._last_flush >= interval_s
        )

    async def flush(self) -> None:
        """Commit the buffered results as one segment; on a full disk, wait for space, and
        with S3 out of reach, for S3 (see the module docstring).

        The write runs in a thread; if the awaiting task is cancelled (a second Ctrl-C), the
        write is still waited for, so that no commit is under way once the run moves on.
        """
        async with self._lock:
            while self._buffer:
                batch, self._buffer = self._buffer, []
                self._last_flush = time.monotonic()
                writing = asyncio.ensure_future(asyncio.to_thread(self._checkpoint.commit, batch))
                try:
                    await asyncio.shield(writing)
                except asyncio.CancelledError:
                    with contextlib.suppress(OSError):
                        await writing
                    raise
                except BatchrunError as exc:  # the checkpoint on S3 is lost or unreachable
                    self._buffer = batch + self._buffer
                    self._halt(exc)
                    return
                except OSError as exc:
                    if not (disk_full(exc) or isinstance(exc, S3Error)):
                        raise
                    self._buffer = batch + self._buffer
                    if isinstance(exc, S3Error):
                        waiting = await self._wait_for_store(exc, "commit")
                    else:
                        waiting = await self._wait_for_space(exc, self._checkpoint.folder)
                    if not waiting:
                        return
                    continue
                if self.space.succeeded():
                    again = (
                        "S3 answers again"
                        if self._shortage == "store"
                        else f"there is space again in {self._checkpoint.folder}"
                    )
                    self._note(
                        f"batchrun: {again}: {len(batch):,} answers kept meanwhile are "
                        f"committed; going on."
                    )
                return  # what came back during the write waits for the next flush

    async def _wait_for_space(self, exc: OSError, folder: Path) -> bool:
        """A write into `folder` failed for lack of space: close the gate, say so once, and
        wait RETRY_S; False when it is not to be tried again (time is up, or the run is
        stopping), the run then stopped with what could not be saved."""
        what = what_is_full(exc)
        wait_s = self._job.limits.disk_wait_s
        if self.space.gave_up:
            return False
        if self.space.failed():
            self._shortage = "disk"
            self._note(
                f"batchrun: the disk holding {folder} is {what}: no request starts until "
                f"there is space; {len(self._buffer):,} answers are kept in memory meanwhile, "
                f"and the run waits up to {wait_s:g} s (limits.disk_wait_s)."
            )
        left = self.space.left()
        if left <= 0 or self._stopped():
            self.space.give_up()
            if not self._stopped():
                self._full = (folder, what)
                self._halt(self.disk_full_stop())
            return False
        await self._nap(min(RETRY_S, left))
        return True

    def disk_full_stop(self) -> DiskFull:
        """The stop for a disk that stayed full, counting the answers not saved now."""
        folder, what = self._full
        return DiskFull(
            f"The disk holding {folder} stayed {what} for {self._job.limits.disk_wait_s:g} s: "
            f"{len(self._buffer):,} answers could not be saved and will be asked again; free "
            f"some space and run the same command to resume (every other answer is committed)."
        )

    async def _wait_for_store(self, exc: S3Error, what: str) -> bool:
        """A write to S3 (a `what`: "commit" or "upload") failed. Where the failure passes,
        close the gate, say so once, and wait a growing backoff: True, to try again. False
        when it is not to be tried again (S3 refused it, time is up, or the run is
        stopping): the run then stopped, unless it already had, saying what was not saved.
        A merge and the lease's renewals wait on their own (see `batchrun.checkpoint.folder`);
        while S3 is out of reach, the renewals fail, and the first commit after renews the
        lease before anything is written."""
        wait_s = self._job.limits.storage_wait_s
        if exc.transient and not self.space.gave_up:
            if self.space.failed(wait_s):
                self._shortage = "store"
                self._store_tries = 0
                self._note(
                    f"batchrun: S3 cannot be reached ({exc.why}): no request starts until it "
                    f"answers; {len(self._buffer):,} answers are kept in memory meanwhile, and "
                    f"the run waits up to {wait_s:g} s (limits.storage_wait_s)."
                )
            left = self.space.left()
            if left > 0 and not self._stopped():
                await self._nap(min(store_backoff(self._store_tries), left))
                self._store_tries += 1
                return True
        self.space.give_up()
        if self._store_failure is None:
            self._store_failure = (exc, exc.transient, what)
        if not self._stopped():
            self._halt(self.store_stop())
        return False

    def store_stop(self, written: bool | None = None) -> StoreFailed:
        """The stop for S3 out of reach past storage_wait_s, or refusing a write, counting
        the answers not committed now; with `written` (the run's end: whether the output
        was written), where the rows committed so far are."""
        if self._cause_only:
            return StoreFailed(self.store_cause())
        assert self._store_failure is not None
        _, waited, what = self._store_failure
        where = None if written is None else output_words(self._job, written, self.not_uploaded)
        return StoreFailed(
            store_sentence(self.store_cause(), len(self._buffer), where, waited, what)
        )

    def store_cause(self) -> str:
        """What S3 did that stopped the run, in a few words."""
        assert self._store_failure is not None
        exc, waited, what = self._store_failure
        where = self._checkpoint.remote_url if what == "commit" else self._job.output_url
        return store_cause(exc, waited, what, self._job.limits.storage_wait_s, where or "")

    def settled_stop(self, stop: BatchrunError | None, written: bool) -> BatchrunError | None:
        """Once the run ended, `stop` saying what is so now. A stop on S3 counts the answers
        not committed and says where the output is; any other stop that left answers
        uncommitted (S3 was out of reach when it came) says how many."""
        lost = len(self._buffer)
        if isinstance(stop, StoreFailed) and self._store_failure is not None:
            return self.store_stop(written)
        if stop is not None and lost and not isinstance(stop, DiskFull):
            if self._checkpoint.lease_lost is not None:
                why = "a run that lost its lease writes nothing more"
            elif self._store_failure is not None:
                why = self._store_failure[0].why
            else:
                why = "the commit failed"
            return with_uncommitted(stop, lost, why)
        return stop

    async def publish_output(self) -> bool:
        """Upload the written output to S3 (nothing for a local one), waiting S3 out as a
        commit does; False, with `not_uploaded` set, when it could not be uploaded."""
        remote = self._job.output_remote
        if remote is None:
            return True
        while True:
            try:
                await asyncio.to_thread(sink.upload, self._job.output_path, remote)
            except S3Error as exc:
                if await self._wait_for_store(exc, "upload"):
                    continue
                self.not_uploaded = remote.url
                return False
            if self.space.succeeded():
                self._note("batchrun: S3 answers again: the output is uploaded.")
            return True

    async def write_output(self, write: Callable[[], sink.Written]) -> sink.Written | None:
        """Write the output; on a full disk, wait for space as a commit does (unless the
        run already gave up on it). None when it could not be written."""
        while True:
            try:
                written = await asyncio.to_thread(write)
            except OSError as exc:
                if not disk_full(exc):
                    raise
                folder = self._job.output_path.parent
                if not await self._wait_for_space(exc, folder):
                    self._note(
                        f"batchrun: the output {self._job.output_path} could not be written "
                        f"(the disk is {what_is_full(exc)}); every answer it would hold is "
                        f"committed: run the same command once there is space to write it."
                    )
                    return None
                continue
            self.space.succeeded()
            return written


def store_cause(exc: S3Error, waited: bool, what: str, wait_s: float, where: str) -> str:
    """What S3 did to a `what` ("commit" or "upload") at `where`, in a few words: out of
    reach for `wait_s` (`waited`), or it refused."""
    if waited:
        return (
            f"S3 could not be reached for {wait_s:g} s (limits.storage_wait_s; the last try: "
            f"{exc.why})"
        )
    if what == "commit":
        return f"S3 refused a commit to {where} ({exc.why})"
    return f"S3 refused the output's upload to {where} ({exc.why})"


def with_uncommitted(stop: BatchrunError, lost: int, why: str) -> BatchrunError:
    """`stop`, its sentence saying too that up to `lost` answers could not be committed
    (up to: a commit whose answer S3 never gave may have landed; the next run finds it)."""
    return type(stop)(
        f"{stop} But up to {lost:,} answers could not be committed ({why}): those will be "
        f"asked (and paid for) again when the run resumes."
    )


def store_sentence(cause: str, lost: int, where: str | None, waited: bool, what: str) -> str:
    """The sentence of a stop on S3: its `cause`, the `lost` answers not committed, `where`
    the rows committed so far are (None: not known yet), and what to do."""
    if lost:
        # Up to: a commit whose answer S3 never gave may have landed (the next run finds
        # it, and asks its rows nothing).
        kept = (
            f"up to {lost:,} answers could not be committed; those will be asked (and paid "
            f"for) again when the run resumes"
        )
    else:
        kept = "every answer of this run is committed"
    parts = [f"{cause}: {kept}", *([where] if where is not None else [])]
    fix = (
        "run the same command again to upload it"
        if what == "upload" and not lost
        else "run the same command to resume"
    )
    check = (
        "once S3 answers"
        if waited
        else "once the bucket, the credentials and the endpoint are right"
    )
    parts.append(f"{fix} {check}")
    return "; ".join(parts) + "."


def output_words(job: Job, written: bool, not_uploaded: str | None) -> str:
    """Where the rows committed so far can be read, once a run ended."""
    if not written:
        return "the output was not rewritten"
    if not_uploaded is not None:
        return (
            f"the rows committed so far are in {job.output_path} (not uploaded to {not_uploaded})"
        )
    return f"the output {job.output_url or job.output_path} holds the rows committed so far"
