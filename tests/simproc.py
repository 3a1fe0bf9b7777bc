"""A simulator in its own process, for tests that check arrival times closely.

A simulator started with `start_in_thread` shares the test process's GIL with whatever else
runs there (a Ray driver, the engine): a busy moment delays its reading of requests and
bunches arrivals that were sent apart. This one runs `start_in_thread` in a child process,
so its clock reads arrivals as they come, and hands back its log's arrival times when it
stops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import TracebackType

# The child: start a simulator, say its URL, wait for stdin to close, print the arrivals.
_CHILD = """
import json, sys
from batchrun.sim import SimConfig, start_in_thread
with start_in_thread(SimConfig()) as server:
    print(server.base_url, flush=True)
    sys.stdin.read()
    times = [r.t for r in server.requests]
print(json.dumps(times), flush=True)
"""


class SimProcess:
    """A default simulator in a child process on 127.0.0.1; a context manager.

    `base_url` is where it answers; `times` (sorted arrival times in seconds, on the child's
    monotonic clock) is filled in when it stops.
    """

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        self.base_url = self._proc.stdout.readline().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            self._proc.kill()
            raise RuntimeError(f"the simulator did not start: {self.base_url!r}")
        self.times: list[float] = []

    def stop(self) -> None:
        """Stops the child and reads its arrival times; safe to call more than once."""
        if self._proc.returncode is not None:
            return
        out, _ = self._proc.communicate(timeout=30)
        self.times = sorted(json.loads(out.strip().splitlines()[-1]))

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
