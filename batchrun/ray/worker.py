"""The Ray engine's workers: batchrun's own engine on one shard of a job, on the desk.

A `ShardWorker` is the Ray actor the driver (`batchrun.ray.driver`) hands shards to; each
shard runs batchrun's engine (`batchrun.engine.local`) built for the cluster (`run_on_desk`):
its lanes paced by leases from the desk, its quota's probes pausing every worker, its budget
taken from the desk in slices, its stop handed to every other worker and theirs to it, and
its checkpoint's commit numbers given by the desk. `ChatStage` runs the same engine on the
batches of a Ray Data pipeline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import random
import resource
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..checkpoint.folder import Checkpoint, checkpoint_dir
from ..config.job import Job, default_cache
from ..config.pricing import SharedBudget
from ..core.messages import first_line
from ..core.progress import Progress
from ..engine.lanes import SharedLanes
from ..engine.lifecycle import concurrency_of, endpoints, with_concurrency, write_job_output
from ..engine.local import Shard, _Engine, lane_figures
from ..errors import StoreFailed, UserError
from ..rows.plan import Plan, RunOptions, plan_run
from ..storage.nofile import fitting_concurrency
from ..storage.space import store_backoff
from ..storage.store import Remote, S3Error
from .desk import SYNC_S, LeasedPacer, Tally, stop_from

try:
    import ray
except ImportError:  # pragma: no cover - the extra is not installed
    ray = None  # type: ignore[assignment]

log = logging.getLogger("batchrun")

QUOTA_HOLD_MARGIN_S = 1.0  # others wait this much past a quota probe's next try


def require_ray() -> Any:
    if ray is None:
        raise UserError(
            "The Ray engine needs Ray: pip install 'batchrun[ray]' (or run with --engine local)."
        )
    return ray


class _ActorLink:
    """A worker's way to the desk actor for one endpoint's pace (see
    `batchrun.ray.desk.DeskLink`), and for the budget."""

    def __init__(self, desk: Any, worker: str, endpoint: str) -> None:
        self._desk = desk
        self._worker = worker
        self._endpoint = endpoint

    def lease(self, want: int, tokens_each: int, successes: list[float], token_delta: int) -> Any:
        return self._desk.lease.remote(
            self._endpoint, self._worker, want, tokens_each, successes, token_delta
        )

    def cool_down(self, seconds: float, sent_at: float | None) -> None:
        self._desk.cool_down.remote(self._endpoint, seconds, sent_at)

    def hold(self, until: float) -> None:
        self._desk.hold.remote(self._endpoint, until)

    def quota_paused(self, until: float) -> None:
        """A quota probed here pauses every worker, a little past the next probe."""
        self.hold(until + QUOTA_HOLD_MARGIN_S)

    def allow(self, want: float) -> float:
        return float(ray.get(self._desk.allow.remote(want)))


@dataclass
class ShardDone:
    """What a worker hands back for a shard."""

    shard: int
    tally: dict[str, Any]
    stop: tuple[str, str] | None
    pid: int
    peak_rss_mb: float


class ShardWorker:
    """A Ray actor that runs shards of one job (see the module docstring)."""

    def __init__(
        self,
        job: Job,
        options: RunOptions,
        total: int,
        folder: str,
        desk_name: str,
        urls: Mapping[str, str],
        concurrency: int,
        remote: Remote | None = None,
    ) -> None:
        # Copies of S3 files go to this node's cache: the driver's default is in its
        # user's home, which another node may not have ([storage] cache is kept as given).
        cache = job.cache if job.storage.cache else default_cache(os.environ)
        self.job = dataclasses.replace(with_concurrency(job, concurrency), cache=cache)
        self.options = options
        self.total = total
        # A checkpoint on S3: this worker commits there and keeps a copy of its own, pulled
        # before each shard (the rows committed in its range by workers before it).
        self.remote = remote
        self.folder = Path(folder) if remote is None else Path(tempfile.mkdtemp(prefix="batchrun-"))
        self.desk = ray.get_actor(desk_name)  # by name: a handle as an argument is kept
        self.urls = dict(urls)
        self.name = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def pid(self) -> int:
        return os.getpid()

    def release(self) -> None:
        """Remove this worker's copy of an S3 checkpoint (the run is over)."""
        if self.remote is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def run_shard(self, shard: int, start: int, end: int) -> ShardDone:
        # On an event loop of its own, in a thread of its own: Ray may run actor methods
        # inside a loop, and the budget's rare blocking call to the desk must not stall it.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batchrun") as pool:
            return pool.submit(asyncio.run, self._run(shard, start, end)).result()

    async def _run(self, shard: int, start: int, end: int) -> ShardDone:
        desk = self.desk
        plan = plan_run(self.job, self.options, total=self.total)
        checkpoint = Checkpoint(self.folder, self.remote).attach(functools.partial(_number, desk))
        _pull_for_shard(checkpoint, self.job.limits.storage_wait_s)
        # This node's open-files limit, as a local run fits its concurrency to its own.
        job = self.job
        fits, crowded = fitting_concurrency(
            concurrency_of(job), len(checkpoint.segments()), sim=False
        )
        if crowded is not None:
            log.warning("%s", crowded)
            job = with_concurrency(job, fits)
        engine = await run_on_desk(
            job,
            self.options,
            plan,
            checkpoint,
            desk,
            self.name,
            self.urls,
            shard,
            (start, end),
        )
        stop = engine.stop
        if stop is not None and engine.stopped_elsewhere:
            stop = None  # another's: the driver has it from the desk
        return ShardDone(
            shard=shard,
            tally=asdict(tally(engine)),
            stop=(type(stop).__name__, str(stop)) if stop is not None else None,
            pid=os.getpid(),
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )


_WORKER_PULL = (
    "A worker",
    "check that every node reaches S3 with the job's credentials, then run the same "
    "command to resume",
)


def _number(desk: Any) -> int:
    """A commit number from the desk, for a worker's checkpoint; while the driver's lease
    on S3 is not sure, an S3Error that the worker's engine waits out as an outage."""
    number = int(ray.get(desk.commit_number.remote()))
    if number < 0:
        raise S3Error(
            "the run's lease on S3 is not confirmed (the driver cannot reach S3, or lost it)",
            transient=True,
        )
    return number


def _pull_for_shard(
    checkpoint: Checkpoint, wait_s: float, said: tuple[str, str] = _WORKER_PULL
) -> None:
    """Bring a worker's copy of an S3 checkpoint up to date before a shard (what is settled
    in its range is known only then), or the driver's before it writes the output. S3 out
    of reach is waited out for `wait_s`; then, or when S3 refuses, one sentence: who could
    not read it, and what follows (`said`)."""
    since = time.monotonic()
    tries = 0
    while True:
        try:
            checkpoint.refresh()
            return
        except OSError as exc:
            left = since + wait_s - time.monotonic()
            passing = isinstance(exc, S3Error) and exc.transient
            if not passing or left <= 0:
                waited = f" for {wait_s:g} s (limits.storage_wait_s)" if passing else ""
                who, then = said
                raise StoreFailed(
                    f"{who} could not read the checkpoint {checkpoint.remote_url}{waited} "
                    f"({first_line(exc)}): {then}."
                ) from None
            time.sleep(min(store_backoff(tries), left))
            tries += 1


async def run_on_desk(
    job: Job,
    options: RunOptions,
    plan: Plan,
    checkpoint: Checkpoint,
    desk: Any,
    name: str,
    urls: Mapping[str, str],
    shard: int,
    span: tuple[int, int | None],
) -> _Engine:
    """batchrun's engine on the rows at positions `span`, each endpoint paced by the desk
    and the whole run stopped and budgeted by it, syncing with it every SYNC_S until it
    ends; returns the engine, ended."""
    keys = job.keys(os.environ)
    routes = job.routes(os.environ)  # this node's proxy and CA variables, as its key
    links = {e.name: _ActorLink(desk, name, e.name) for e in job.endpoints}
    pacers = {e.name: LeasedPacer(links[e.name], e.requests_per_minute) for e in job.endpoints}
    budget = None
    if job.cost.budget_usd:
        budget = SharedBudget(links[job.endpoints[0].name].allow, job.cost.budget_usd, 0.0)
    engine = _Engine(
        job,
        plan,
        checkpoint,
        urls,
        keys,
        routes=routes,
        sleep=asyncio.sleep,
        clock=time.time,
        rng=random.Random(),
        shard=Shard(
            span=span,
            lanes=SharedLanes(
                pacers=pacers,
                quota_paused={n: link.quota_paused for n, link in links.items()},
            ),
            budget=budget,
            tell_stop=lambda error: desk.halt.remote(type(error).__name__, str(error)),
        ),
    )
    engine.progress = Progress(plan.total, 0, quiet=True)
    attempt = uuid.uuid4().hex
    finished = asyncio.Event()

    async def sync() -> None:
        while True:
            state = await desk.sync.remote(shard, attempt, asdict(tally(engine)))
            if state.stop is not None:
                engine.hear_stop(stop_from(*state.stop))
            for endpoint, pacer in pacers.items():
                pacer.learn_pause(state.paused_until.get(endpoint, 0.0))
            if finished.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), SYNC_S)

    syncing = asyncio.create_task(sync())
    try:
        await engine.execute(options)
    finally:
        finished.set()
        await syncing
        if budget is not None:
            desk.give_back.remote(budget.unspent())
    return engine


def tally(engine: _Engine) -> Tally:
    """What a worker's engine has done so far on its shard, for the desk."""
    ok, failed = engine.counts.ok, engine.counts.failed
    pacers = [lane.pacer for lane in engine.pool.lanes]
    now = engine.clock()
    return Tally(
        settled_ok=engine.final_ok - ok,
        settled_failed=engine.final_failed - failed,
        ok=ok,
        failed=failed,
        tokens=engine.progress.tokens,
        spend=engine.progress.spend,
        rate_limited=engine.rate_limited,
        remapped=engine.counts.remapped,
        requests=sum(p.requests for p in pacers if isinstance(p, LeasedPacer)),
        uncommitted=engine.commits.uncommitted,
        lanes={lane.name: lane_figures(lane, now) for lane in engine.pool.lanes},
    )


# -- the Ray Data stage -----------------------------------------------------------------------


class ChatStage:
    """batchrun as one stage of a Ray Data pipeline, between its own read and write::

        ds = ray.data.read_parquet("s3://bucket/reviews/")
        ds = ds.map_batches(
            batchrun.ray.ChatStage,
            fn_constructor_kwargs={"job": "label.toml"},
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=4),
            num_cpus=0.25,
        )
        ds.write_parquet("s3://bucket/labeled/")

    (or `batchrun.ray.run(job, dataset=ds)`, which does the same). Each batch in is the same
    batch out with the job's result columns added (failed rows have status "failed"; a
    run-wide stop, such as a bad key or the budget, fails the pipeline with its message).
    The pool's actors share one desk (`batchrun.ray.desk.Desk`, named after the job, created
    by the first actor): one rate limit, one budget, one stop for the whole pool. Each
    batch is run by batchrun's engine on a scratch checkpoint of its own: a batch that Ray
    runs again (a task retry) is asked again, as with any Ray Data stage; for exactly once
    over a whole table, run the job itself on Ray (`--engine ray`).
    """

    def __init__(self, job: Job | str | os.PathLike[str], desk: str | None = None) -> None:
        require_ray()
        from ..config.job import load_job

        # The driver's (the desk's opener), loaded here: the driver imports this module.
        from .driver import open_desk

        self.job = job if isinstance(job, Job) else load_job(Path(job), environ=os.environ)
        self.desk = open_desk(self.job, desk)
        self.name = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._sim = contextlib.ExitStack()
        self.urls = self._sim.enter_context(endpoints(self.job))

    async def __call__(self, batch: Any) -> Any:
        # On an event loop of its own (see ShardWorker.run_shard).
        return await asyncio.to_thread(self._answer, batch)

    def _answer(self, batch: Any) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..protocol.result import INPUT_ROW

        table = batch if isinstance(batch, pa.Table) else pa.Table.from_pandas(batch)
        with tempfile.TemporaryDirectory(prefix="batchrun-stage-") as scratch:
            source = Path(scratch) / "batch.parquet"
            pq.write_table(table, source)
            job = dataclasses.replace(  # the job's own input and output are not this batch's
                self.job,
                input_path=str(source),
                output_path=Path(scratch) / "answers.parquet",
                output_url=None,
            )
            options = RunOptions(quiet=True)
            plan = plan_run(job, options)
            checkpoint = Checkpoint(checkpoint_dir(job.output_path)).open()
            try:
                engine = asyncio.run(
                    run_on_desk(
                        job,
                        options,
                        plan,
                        checkpoint,
                        self.desk,
                        self.name,
                        self.urls,
                        uuid.uuid4().int & 0x7FFF_FFFF_FFFF,
                        (0, None),
                    )
                )
                if engine.stop is not None:
                    raise engine.stop
                write_job_output(job, plan, checkpoint, options)
            finally:
                checkpoint.close()
            answered = pq.read_table(job.output_path)
        if job.input.id_column is None and INPUT_ROW in answered.column_names:
            answered = answered.drop_columns([INPUT_ROW])  # a position within the batch
        return answered

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._sim.close()
