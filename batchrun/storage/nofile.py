"""Fitting a run into the open-files limit (RLIMIT_NOFILE).

Every request in flight holds a socket (two with the embedded simulator, whose side of the
connection is in this process too), and every walk over the checkpoint holds each segment
file open. macOS starts shells at 256 open files and many Linux machines at 1024, below the
concurrency a tier-5 key wants: the soft limit is first raised towards the hard one (which a
process may do by itself), and if the run still cannot fit, its concurrency is lowered, with
one warning naming the limit and `ulimit -n`, rather than failing mid-run on EMFILE.
"""

from __future__ import annotations

import sys

try:
    import resource
except ImportError:  # Windows: no such limit to fit
    resource = None  # type: ignore[assignment]

# What the process holds besides sockets and segment files: Python and its imports, polars'
# and pyarrow's pools, stdio, the lock, the input being read, the output being written.
RESERVE = 64
WALKS = 3  # walks that hold every segment at once: a run's two feeds, and a merge's inputs
MACOS_MAX = 10_240  # OPEN_MAX: the most a macOS process may ask for, whatever the hard limit


def raise_limit() -> int | None:
    """Raise the soft limit as far as the hard one allows; the soft limit then (None where
    there is no such limit)."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if sys.platform == "darwin":
        ceiling = min(ceiling, MACOS_MAX)
    if soft == resource.RLIM_INFINITY or soft >= ceiling:
        return None if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    except (ValueError, OSError):
        return soft
    return ceiling


def fitting_concurrency(concurrency: int, segments: int, *, sim: bool) -> tuple[int, str | None]:
    """The concurrency that fits the open-files limit (raised first), and the warning to
    give when it had to be lowered (None when it fits)."""
    limit = raise_limit()
    if limit is None:
        return concurrency, None
    per_request = 2 if sim else 1
    room = limit - RESERVE - WALKS * segments
    fits = max(room // per_request, 1)
    if concurrency <= fits:
        return concurrency, None
    need = RESERVE + WALKS * segments + per_request * concurrency
    return fits, (
        f"batchrun: warning: the open-files limit is {limit} (ulimit -n), too low for "
        f"concurrency {concurrency}{' with the embedded simulator' if sim else ''}: running "
        f"with {fits} in flight; raise it with `ulimit -n {_round_up(need)}` to run with "
        f"{concurrency}."
    )


def _round_up(n: int) -> int:
    size = 256
    while size < n:
        size *= 2
    return size
