"""Waiting out a full disk: a commit or the output that fails with ENOSPC, EDQUOT or EFBIG.

A full disk is not the run's fault and usually passes (a log rotated, a download removed, a
quota raised), so it pauses the run rather than ending it: while the gate is closed no
request starts, the answers that come back are kept in memory, and the write is tried again
every RETRY_S. The first write that succeeds opens the gate; `wait_s` after the first failure
the run stops (exit 3) with what it could not save. Time is the engine's injectable clock.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable

RETRY_S = 2.0  # how often a write is tried again while the disk is full
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


class SpaceGate:
    """The run-wide pause while writes fail for lack of space (see the module docstring)."""

    def __init__(self, wait_s: float, clock: Callable[[], float]) -> None:
        self._wait_s = wait_s  # how long the disk may stay full before the run stops
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

    def failed(self) -> bool:
        """A write failed for lack of space: close the gate. True when this began a
        shortage (the caller says so once)."""
        self._open.clear()
        if self._since is None:
            self._since = self._clock()
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
