"""Waiting out a write that fails for a reason that passes: a full disk (a commit or the
output that fails with ENOSPC, EDQUOT or EFBIG), or S3 out of reach (a commit, a merge, a
lease renewal or the output's upload that meets a refused or dropped connection, a
timeout, a 5xx, SlowDown: `batchrun.storage.store.S3Error.transient`).

Neither is the run's fault and both usually pass (a log rotated, a quota raised; a store
back up, a network healed), so they pause the run rather than end it: while the gate is
closed no request starts, the answers that come back are kept in memory, and the write is
tried again, every RETRY_S for a disk, with a backoff growing to STORE_RETRY_MAX_S for S3.
The first write that succeeds opens the gate; the shortage's `wait_s` (disk_wait_s,
storage_wait_s) after its first failure the run stops (exit 3) with what it could not
save. Time is the engine's injectable clock.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable

RETRY_S = 2.0  # how often a write is tried again while the disk is full
STORE_RETRY_S = 1.0  # S3 out of reach: the first retry after this, then twice as long...
STORE_RETRY_MAX_S = 8.0  # ... up to this
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the user's quota, or the file size limit) is full."""
    return isinstance(exc, OSError) and exc.errno in _FULL


def what_is_full(exc: OSError) -> str:
    """A few words for the user: which limit was hit."""
    if exc.errno == errno.EDQUOT:
        return "over its quota"
    if exc.errno == errno.EFBIG:
        return "past the file size limit (ulimit -f)"
    return "full"


def store_backoff(tries: int) -> float:
    """Seconds before the next try at S3 after `tries` failed ones in this outage."""
    return float(min(STORE_RETRY_S * 2 ** min(tries, 16), STORE_RETRY_MAX_S))


class SpaceGate:
    """The run-wide pause while writes fail for lack of space or of S3 (see the module
    docstring)."""

    def __init__(self, wait_s: float, clock: Callable[[], float]) -> None:
        self._default_wait_s = wait_s  # how long a shortage may last, unless it says
        self._wait_s = wait_s  # how long the current shortage may last before the run stops
        self._clock = clock
        self._open = asyncio.Event()  # set while requests may start
        self._open.set()
        self._since: float | None = None  # when the current shortage began; None: no shortage
        self.gave_up = False  # the shortage outlasted wait_s: nothing waits for space again

    async def wait_open(self) -> None:
        await self._open.wait()

    def release(self) -> None:
        """Wake every waiter (the run is stopping)."""
        self._open.set()

    def failed(self, wait_s: float | None = None) -> bool:
        """A write failed for lack of space (or of S3): close the gate. True when this
        began a shortage (the caller says so once), which then may last `wait_s` (by
        default the gate's)."""
        self._open.clear()
        if self._since is None:
            self._since = self._clock()
            self._wait_s = self._default_wait_s if wait_s is None else wait_s
            return True
        return False

    def left(self) -> float:
        """Seconds the shortage may still last."""
        return 0.0 if self._since is None else self._since + self._wait_s - self._clock()

    def give_up(self) -> None:
        self.gave_up = True
        self._open.set()

    def succeeded(self) -> bool:
        """A write went through: open the gate. True when this ended a shortage."""
        ended = self._since is not None
        self._since = None
        self._open.set()
        return ended
