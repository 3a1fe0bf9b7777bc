"""A run's lifecycle, the same whatever answers its rows.

Every run, local or on Ray, goes the same way (`run`):

1. **Open**: check the job against its input, read every endpoint's key and route, check the
   output can be written, hold the checkpoint (`open_run`).
2. **Realign** committed results with their rows where the input's rows moved, show what
   the checkpoint noticed (quarantined segments), start merging segments, start a simulator
   for an endpoint with `base_url = "sim"`.
3. **Answer**: hand the rows to the run's `Answerer` until every row is done or the run
   stops. The local engine answers through its direct lanes (`batchrun.engine.local`); a
   Ray run through its driver and workers (`batchrun.ray.driver`). A lane of another kind
   (the Batch APIs) is one more answerer.
4. **Write the output** from the checkpoint, unless the run was hurried (a second Ctrl-C) or
   lost the checkpoint's S3 lock to another run (that run writes it now); upload it where
   it goes to S3. How to wait out a full disk or S3 out of reach is the answerer's.
5. **Settle** the stop's sentence so it says what is so now; keep what each endpoint did for
   `report`; check that a run that did not stop wrote every row; sum up (`RunSummary`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..checkpoint.batches import refuse_if_running
from ..checkpoint.folder import Checkpoint, checkpoint_dir
from ..checkpoint.notes import ENDPOINTS_NOTE, GATEWAY_NOTE, save_note
from ..config.job import Job
from ..config.pricing import job_pricer
from ..core.network import Route
from ..core.progress import Progress
from ..core.secrets import Secret
from ..errors import BatchrunError, JobError
from ..rows import sink
from ..rows.anchor import anchor
from ..rows.plan import Plan, RunOptions, plan_run
from .interrupts import RouteInterrupts, signals

log = logging.getLogger("batchrun")


@dataclass
class RunSummary:
    """Where a run ended."""

    total: int
    ok: int
    failed: int
    pending: int
    ran: int  # rows finished by this run
    tokens: int
    spend: float
    elapsed_s: float
    output_path: Path
    rows_written: int | None  # None: the output was not rewritten (stopped at once, disk full)
    remapped: int = 0  # responses whose model differs from the requested one
    stopped: BatchrunError | None = None
    rate_limited: int = 0  # 429s that were rate limits
    allowed_rpm: float | None = None  # what got through when they came, a minute
    workers: Mapping[str, object] | None = None  # a Ray run's: how many, their peak memory
    not_uploaded: str | None = None  # the S3 URL the output (at output_path) did not reach
    # With a batch endpoint: the rows and batches still running at the provider.
    in_batches: Mapping[str, int] | None = None


@dataclass
class OpenRun:
    """A run once open: what its answerer works from."""

    job: Job
    options: RunOptions
    plan: Plan
    keys: Mapping[str, Secret | None]  # each endpoint's key by name (None: needs none)
    routes: Mapping[str, Route]  # each endpoint's way out by name
    checkpoint: Checkpoint
    progress: Progress
    urls: Mapping[str, str]  # each endpoint's base URL by name (a simulator's, started)


@dataclass
class Answered:
    """What an answerer did, once it stopped answering."""

    ok: int  # rows whose latest result is ok, before and during this run, as it counted them
    failed: int  # rows whose latest result is a failure
    ran: int  # rows finished by this run
    remapped: int  # responses whose model differs from the requested one
    tokens: int
    spend: float
    # Each endpoint's figures by name, as `note_endpoints` keeps them: requests, answers,
    # errors by kind, rate_limited, allowed_rpm, circuit_opened, out, state.
    endpoints: Mapping[str, Mapping[str, Any]]
    workers: Mapping[str, object] | None = None  # a Ray run's: how many, their peak memory
    batches: Mapping[str, int] | None = None  # rows and batches still running at the provider

    @property
    def rate_limited(self) -> int:
        """429s that were rate limits, this run, at every endpoint."""
        return sum(int(e["rate_limited"]) for e in self.endpoints.values())


class Answerer(Protocol):
    """What answers a run's rows (see the module docstring): the local engine's direct lanes,
    a Ray driver and its workers."""

    stop: BatchrunError | None  # the run-wide stop, once one happened

    @property
    def not_uploaded(self) -> str | None:
        """The output's S3 URL, when the output did not get there."""
        ...

    @property
    def hurried(self) -> bool:
        """Interrupted twice: end at once, without rewriting the output."""
        ...

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: stop starting requests; a second one stops at once."""

    async def execute(self, options: RunOptions) -> None:
        """Answer the run's rows until every one is done or the run stops."""

    async def write_output(self, write: Callable[[], sink.Written]) -> sink.Written | None:
        """Write the output with `write`; None when it could not be written."""
        ...

    async def publish_output(self) -> bool:
        """Upload the written output where it goes to S3; False (with `not_uploaded` set)
        when it could not be uploaded."""
        ...

    def settle_stop(self, written: bool) -> None:
        """Once the run ended: make the stop's sentence say what is so now (`written`:
        whether the output was written)."""

    def answered(self) -> Answered:
        """What this run did, once it stopped answering."""
        ...


# Makes the run's answerer, once the run is open.
MakeAnswerer = Callable[[OpenRun], Answerer]


async def run(
    job: Job,
    options: RunOptions,
    environ: Mapping[str, str],
    make: MakeAnswerer,
    *,
    interrupts: RouteInterrupts | None = None,
) -> RunSummary:
    """Run or resume a job, its rows answered by what `make` builds; see the module
    docstring. Interrupts come through `interrupts`, or else the loop's signal handlers."""
    routes = job.routes(environ)
    plan, keys, checkpoint = open_run(job, options, environ)
    started = time.monotonic()
    progress = Progress(plan.total, 0, quiet=options.quiet, interactive=options.interactive)
    written: sink.Written | None = None
    try:
        await asyncio.to_thread(realign, job, plan, checkpoint)
        for line in [*checkpoint.quarantined, *unpriced(job)]:
            progress.note(line)
        checkpoint.start_merging()
        with endpoints(job) as urls:
            answerer = make(OpenRun(job, options, plan, keys, routes, checkpoint, progress, urls))
            with (interrupts or signals)(answerer.interrupt):
                try:
                    await answerer.execute(options)
                finally:
                    progress.close()
                checkpoint.stop_merging()
                if checkpoint.merge_error is not None:
                    log.warning(
                        "%s: merging checkpoint segments stopped (%s); they stay as they are",
                        job.name,
                        checkpoint.merge_error,
                    )
                # A run that lost its lease leaves the output to the run that holds it now.
                if not answerer.hurried and checkpoint.lease_lost is None:
                    written = await answerer.write_output(
                        functools.partial(
                            write_job_output, job, plan, checkpoint, options, publish=False
                        )
                    )
                    if written is not None:
                        await answerer.publish_output()
                answerer.settle_stop(written is not None)
    finally:
        progress.close()
        checkpoint.close()
    answered = answerer.answered()
    allowed_rpm = note_gateway(job, checkpoint.folder, answered)
    note_endpoints(job, checkpoint.folder, answered.endpoints)
    rows_written = written.rows if written is not None else None
    if not (options.detach or options.cancel_batches):  # these leave rows to a later run
        check_complete(job, plan, answerer.stop, rows_written)
    # What the output holds is the standing, whatever the answerer had counted when the
    # run stopped (the one checking finished rows may not have reached them all).
    ok, failed = (written.ok, written.failed) if written else (answered.ok, answered.failed)
    return RunSummary(
        total=plan.total,
        ok=ok,
        failed=failed,
        pending=max(plan.total - ok - failed, 0),
        ran=answered.ran,
        tokens=answered.tokens,
        spend=answered.spend,
        elapsed_s=time.monotonic() - started,
        output_path=job.output_path,
        rows_written=rows_written,
        remapped=answered.remapped,
        stopped=answerer.stop,
        rate_limited=answered.rate_limited,
        allowed_rpm=allowed_rpm,
        workers=answered.workers,
        not_uploaded=answerer.not_uploaded,
        in_batches=answered.batches,
    )


def open_run(
    job: Job, options: RunOptions, environ: Mapping[str, str]
) -> tuple[Plan, dict[str, Secret | None], Checkpoint]:
    """What every run does before anything starts: check the job against its input, read
    every endpoint's key, check the output can be written, and hold the checkpoint."""
    plan = plan_run(job, options)
    keys = job.keys(environ)
    sink.check_writable(job.output_path)
    checkpoint = Checkpoint(checkpoint_dir(job.output_path), job.checkpoint_remote).open(
        fresh=options.fresh
    )
    if job.batch_endpoint is None:
        try:
            refuse_if_running(checkpoint.folder, "a run without that endpoint")
        except BaseException:
            checkpoint.close()
            raise
    sink.remove_temporaries(job.output_path)
    return plan, keys, checkpoint


def realign(job: Job, plan: Plan, checkpoint: Checkpoint) -> None:
    """Move committed results with their rows where the input's rows moved (`anchor`)."""
    moved = anchor(checkpoint, plan.source)
    if moved:
        log.info("%s: %d committed results moved with their rows in the input", job.name, moved)


def unpriced(job: Job) -> list[str]:
    """A warning for each endpoint whose model has no known price."""
    lines = []
    for endpoint in job.endpoints:
        pricer = job_pricer(job, endpoint)
        if pricer.price is None:
            at = f" at endpoint {endpoint.name!r}" if job.pooled else ""
            lines.append(
                f"batchrun: warning: no price is known for model {pricer.model!r}{at}, so "
                f"cost_usd will be null; give one in [cost.prices] to have costs."
            )
    return lines


@contextlib.contextmanager
def endpoints(job: Job) -> Iterator[dict[str, str]]:
    """The base URL of each endpoint by name; for one with `base_url = "sim"`, a simulator
    started for this run with its own settings."""
    with contextlib.ExitStack() as stack:
        urls = {}
        for endpoint in job.endpoints:
            if not endpoint.uses_sim:
                urls[endpoint.name] = endpoint.base_url
                continue
            from ..sim import SimConfig, start_in_thread

            try:
                config = SimConfig(**endpoint.sim)
            except (TypeError, ValueError) as exc:
                where = f"[[endpoints]] {endpoint.name!r} sim" if job.pooled else "[sim]"
                raise JobError(f"{job.path}: {where} {exc}.") from None
            urls[endpoint.name] = stack.enter_context(start_in_thread(config)).base_url
        yield urls


def check_complete(
    job: Job, plan: Plan, stop: BatchrunError | None, rows_written: int | None
) -> None:
    """A run that did not stop has a committed result for every row, so the output must
    hold them all: say so loudly rather than exit 0 over a short file. (A detached run and
    cancel-batches leave rows to a later run by design: `run` does not ask this of them.)"""
    if stop is None and rows_written != plan.total:
        raise BatchrunError(
            f"The output {job.output_url or job.output_path} has {rows_written} rows where "
            f"{plan.total} were "
            f"expected, although every row is committed: run the same command again to "
            f"rewrite it, and please report this."
        )


def write_job_output(
    job: Job, plan: Plan, checkpoint: Checkpoint, options: RunOptions, *, publish: bool = True
) -> sink.Written:
    """The job's output, written from its checkpoint (see `batchrun.rows.sink.write_output`),
    and (with `publish`) uploaded when it goes to S3."""
    written = sink.write_output(
        plan.source,
        checkpoint,
        job.output_path,
        plan.columns,
        plan.renderer,
        limit=options.limit,
        annotator=plan.annotator,
        metadata=sink.job_metadata(job, plan.total),
    )
    if publish:
        sink.publish(job.output_path, job.output_remote)
    return written


def allowed_rpm(rate_limited: int, allowed_rps: float | None) -> float | None:
    """The rate a gateway let through, a minute, when it rate-limited (else None)."""
    return allowed_rps * 60 if rate_limited and allowed_rps is not None else None


def note_gateway(job: Job, folder: Path, answered: Answered) -> float | None:
    """Keep what rate the (first) gateway let through when it rate-limited, for `report`;
    that rate, a minute (None: it did not rate-limit)."""
    first = answered.endpoints.get(job.endpoints[0].name)  # none: it did not send this run
    rpm: float | None = first["allowed_rpm"] if first is not None else None
    if first is None or rpm is None:
        return None
    with contextlib.suppress(OSError):  # a figure, not a result
        save_note(
            folder,
            GATEWAY_NOTE,
            {
                "allowed_rpm": rpm,
                "rate_limited": first["rate_limited"],
                "requests_per_minute": job.endpoints[0].requests_per_minute,
                "at": time.time(),
            },
        )
    return rpm


def note_endpoints(job: Job, folder: Path, figures: Mapping[str, Mapping[str, Any]]) -> None:
    """Keep what each endpoint of a job with [[endpoints]] did in its last run (requests,
    answers, failed attempts by kind, 429s and the rate that got through, why it went out),
    for `report`."""
    if not job.pooled:
        return
    limits = {e.name: e.requests_per_minute for e in job.endpoints}
    note = {
        "endpoints": {
            name: {**values, "requests_per_minute": limits.get(name)}
            for name, values in figures.items()
        },
        "at": time.time(),
    }
    with contextlib.suppress(OSError):  # a figure, not a result
        save_note(folder, ENDPOINTS_NOTE, note)


def concurrency_of(job: Job) -> int:
    """Requests the job may have in flight: its endpoints' together."""
    return sum(e.concurrency for e in job.endpoints)


def with_concurrency(job: Job, concurrency: int) -> Job:
    """The job with `concurrency` requests in flight at most, shared among its endpoints
    in proportion to theirs (each keeps one)."""
    wanted = concurrency_of(job)
    endpoints = tuple(
        dataclasses.replace(e, concurrency=max(1, e.concurrency * concurrency // wanted))
        for e in job.endpoints
    )
    limits = job.limits.model_copy(update={"concurrency": min(job.limits.concurrency, concurrency)})
    return dataclasses.replace(job, limits=limits, endpoints=endpoints)
