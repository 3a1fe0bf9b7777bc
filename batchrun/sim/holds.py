"""Hold points: places in the Files and Batches API where a test can make the simulator stop
and wait, so that a client can be killed at a precise step of its work, not by luck of timing.

A test running the simulator in its own process (`start_in_thread`) arms a point with
`SimServer.hold`, which returns an event set when a request (or a batch) reaches it; what
reached it then waits until `SimServer.release`, the client going away (aiohttp cancels the
handler of a closed connection) or the server stopping. Each arming holds one pass, the
`after`-th from now (0: the next one). The points, in the order a batch lane meets them:

| point | where it waits |
| --- | --- |
| `upload` | an upload's handler, before it reads the body: nothing is stored |
| `uploaded` | an upload's handler, the file stored (and in the ledger), its answer withheld |
| `created` | a create-batch handler, the batch made (and in the ledger), its answer withheld |
| `answering` | a batch's task, `in_progress`, before it answers its first line |
| `content` | a file download, after its first bytes are sent |

With no point armed, a request pays one look at an empty dict.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

POINTS = ("upload", "uploaded", "created", "answering", "content")


@dataclass
class _Armed:
    """One point armed: the passes still to let through, and the event the test waits on."""

    passes: int
    reached: threading.Event


class Holds:
    """The armed points of one server; armed from any thread, taken on the server's loop."""

    def __init__(self) -> None:
        # Guards both dicts: tests arm and release from their thread.
        self._lock = threading.Lock()
        # The points armed and not reached yet, by name.
        self._armed: dict[str, _Armed] = {}
        # What waits at a point reached, by name: the loop it waits on and its release.
        self._held: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}

    def hold(self, point: str, after: int = 0) -> threading.Event:
        """Arm `point` for its pass `after` from now; the event is set when it is reached."""
        if point not in POINTS:
            raise ValueError(f"Unknown hold point {point!r}; the points are {', '.join(POINTS)}.")
        armed = _Armed(after, threading.Event())
        with self._lock:
            self._armed[point] = armed
        return armed.reached

    def release(self) -> None:
        """Let go of whatever waits at a point, and disarm the points not reached."""
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
            self._armed.clear()
        for loop, event in held:
            loop.call_soon_threadsafe(event.set)

    def armed(self, point: str) -> bool:
        """Whether `point` is armed (a pass of it may wait)."""
        return point in self._armed

    async def at(self, point: str) -> None:
        """A pass of `point`: returns at once unless this is the pass armed, which waits."""
        if not self._armed:
            return
        with self._lock:
            armed = self._armed.get(point)
            if armed is None:
                return
            if armed.passes > 0:
                armed.passes -= 1
                return
            del self._armed[point]
            release = asyncio.Event()
            self._held[point] = (asyncio.get_running_loop(), release)
        armed.reached.set()
        try:
            await release.wait()
        finally:  # released, or cancelled with its request
            with self._lock:
                if point in self._held and self._held[point][1] is release:
                    del self._held[point]
