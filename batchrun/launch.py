"""Which engine runs a job: the one choice, for `batchrun run` and `batchrun.run` alike.

The job's `[engine] kind` names the engine; `--engine` on the command line, or `engine=` in
Python, overrides it for one run. The local engine runs on the caller's event loop; the Ray
driver blocks, so it runs on a worker thread while the loop stays free and hears Ctrl-C and
SIGTERM for it (see `batchrun.ray.run_async`).

The engines are imported when a run starts, so that `import batchrun` stays cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .config.job import Job
    from .engine.interrupts import RouteInterrupts
    from .engine.lifecycle import RunSummary
    from .rows.plan import RunOptions

ENGINES = ("local", "ray")  # the values of [engine] kind, --engine and engine=


def with_engine(job: Job, engine: str | None) -> Job:
    """The job on `engine` ("local" or "ray"), or as its `[engine]` says with None."""
    if engine is None:
        return job
    if engine not in ENGINES:
        raise UserError(f"engine must be 'local' or 'ray', not {engine!r}.")
    return dataclasses.replace(job, engine=job.engine.model_copy(update={"kind": engine}))


async def launch(
    job: Job,
    options: RunOptions,
    environ: Mapping[str, str],
    *,
    engine: str | None = None,
    interrupts: RouteInterrupts | None = None,
) -> RunSummary:
    """Run or resume the job on its engine (`engine` overrides `[engine] kind`). Interrupts
    come through `interrupts` when given, else through the loop's signal handlers."""
    job = with_engine(job, engine)
    if job.engine.kind == "ray":
        from .ray import driver as ray_engine

        return await ray_engine.run_async(job, options, environ, interrupts=interrupts)
    from .engine import local as local_engine

    return await local_engine.run(job, options, environ, interrupts=interrupts)
