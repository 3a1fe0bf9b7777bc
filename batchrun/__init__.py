"""batchrun: run tables of prompts through OpenAI-compatible chat APIs into Parquet.

From Python: `batchrun.run(job_path, ...)` runs a job file like `batchrun run`;
`batchrun.map(frame, prompt=..., model=...)` sends a polars or pandas frame's rows and returns
the frame with the answers; `run_async` and `map_async` are their awaitable forms. Errors are
the tree in `batchrun.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BadKey,
    BatchrunError,
    BudgetReached,
    InputError,
    Interrupted,
    JobError,
    QuotaExhausted,
    RunStopped,
    SystematicFailure,
    UserError,
)
from .version import __version__

if TYPE_CHECKING:
    from .api import RunResult, map, map_async, run, run_async


__all__ = [
    "BadKey",
    "BatchrunError",
    "BudgetReached",
    "InputError",
    "Interrupted",
    "JobError",
    "QuotaExhausted",
    "RunResult",
    "RunStopped",
    "SystematicFailure",
    "UserError",
    "__version__",
    "map",
    "map_async",
    "run",
    "run_async",
]

# The API's names load batchrun.api on first use: `import batchrun` (and so the command line,
# whose module imports this package first) does not pay for asyncio until a function is used.
_API_NAMES = frozenset({"RunResult", "map", "map_async", "run", "run_async"})


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'batchrun' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API_NAMES})
