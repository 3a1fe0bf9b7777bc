"""The Ray engine: one job run by many workers, with one rate limit and one checkpoint.

`batchrun run JOB --engine ray` (or `[engine] kind = "ray"`) splits the input into shards of
positions. Each worker is a Ray actor (`batchrun.ray.worker`) running batchrun's own async
engine (`batchrun.engine.local`) on one shard at a time: the same requests, retries,
classification and commits as a local run, nothing reimplemented. What the workers share
lives in a named actor holding a `batchrun.ray.desk.Desk`: the pace of each endpoint (leased
in slices), the stop, the pauses, the budget and the checkpoint's commit numbers.

Exactly once comes from the commit, as on one machine. Every worker commits segments into
the job's checkpoint folder with the usual atomic protocol, each under a number the desk
gives once; the driver holds the folder (its lock, its clean-up, its merges, which never
span a number whose segment is not in place yet) and, once every shard is done, writes the
output from it as a local run does. A shard whose worker died (the actor killed, its node
removed) is run again by a restarted worker: it reads the checkpoint first, so the rows its
predecessor committed are settled and never paid for again; only answers that were not yet
committed are asked again.

The key is read from the job's variable on each worker's own machine: it never travels
through Ray (task arguments and runtime environments are stored by the cluster). So are the
proxy and certificate variables (`HTTPS_PROXY`, `NO_PROXY`, `SSL_CERT_FILE`...): a worker
goes out the way its own node does, unless the job names a proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.job import Job
from ..core import sizes
from ..core.messages import first_line
from ..core.progress import Progress
from ..engine import lifecycle
from ..engine.commits import output_words, store_cause, store_sentence, with_uncommitted
from ..engine.interrupts import RouteInterrupts, block_on
from ..engine.lifecycle import (
    Answered,
    OpenRun,
    RunSummary,
    allowed_rpm,
    concurrency_of,
)
from ..errors import BatchrunError, ClusterLost, Interrupted, StoreFailed, UserError
from ..rows.plan import RunOptions
from ..rows.sink import Written, upload_waiting
from ..storage.store import S3Error
from .desk import SYNC_S, Desk, stop_from
from .worker import ChatStage, ShardDone, ShardWorker, _pull_for_shard, require_ray

try:
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
except ImportError:  # pragma: no cover - the extra is not installed
    ray = None  # type: ignore[assignment]

log = logging.getLogger("batchrun")

SHARDS_PER_WORKER = 4  # shards are small enough that a slow or restarted worker is caught up
MAX_SHARD_ATTEMPTS = 5  # a shard whose workers keep dying stops the run
RESTART_WAIT_S = 300.0  # how long a worker Ray restarts may take to come back
PULL_S = 2.0  # with the checkpoint on S3, how often the driver pulls the workers' segments
INTERRUPTED = "Interrupted: finished rows are saved; run the same command to resume."
LOOPBACK = "127.0.0.1"  # where a local Ray instance listens (see `on_loopback`)
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node address is loopback


_DRIVER_PULL = (
    "The driver",
    "every answer the workers gave is committed, but the output was not rewritten: run the "
    "same command once S3 answers to write it",
)


def open_desk(job: Job, name: str | None = None) -> Any:
    """The desk a job's ChatStage actors share, created by the first one that asks.

    `batchrun.ray.run(job, dataset=...)` creates it on the driver (it lives as long as the
    driver) and names it to the stage. Without a name, the stage's actors share one named
    after the job, detached so that it outlives whichever actor created it: it stays until
    `release(job)` or the cluster's end."""
    options: dict[str, Any] = {"get_if_exists": True, "num_cpus": 0}
    if name is None:
        name, options["lifetime"] = stage_desk(job), "detached"
    return (
        ray.remote(Desk)
        .options(name=name, **options)
        .remote(
            paces(job),
            budget_usd=job.cost.budget_usd,
        )
    )


def paces(job: Job) -> dict[str, tuple[float, float | None]]:
    """Each endpoint's requests and tokens a minute, by name: what a desk paces."""
    return {e.name: (e.requests_per_minute, e.tokens_per_minute) for e in job.endpoints}


def stage_desk(job: Job) -> str:
    """The name of the detached desk a job's ChatStage actors share by default."""
    return f"batchrun-stage-{job.name}"


def release(job: Job) -> None:
    """End the detached desk that ChatStage actors of `job` shared (see `open_desk`)."""
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(stage_desk(job)))


_DESKS: dict[str, Any] = {}  # desks this driver created for its pipelines: kept referenced


# -- the driver -------------------------------------------------------------------------------


def shards(total: int, workers: int, rows: int | None = None) -> list[tuple[int, int]]:
    """The input's positions cut into ranges of `rows`, or else a few per worker of whole
    input batches each."""
    if total <= 0:
        return []
    size = rows
    if size is None:
        size = max(sizes.READ_ROWS, math.ceil(total / (workers * SHARDS_PER_WORKER)))
        size = math.ceil(size / sizes.READ_ROWS) * sizes.READ_ROWS
    return [(start, min(start + size, total)) for start in range(0, total, size)]


@contextlib.contextmanager
def on_loopback() -> Iterator[None]:
    """While a local Ray instance starts: every port it opens on loopback only.

    Ray (2.60) has no bind-address setting: its gRPC servers (GCS, raylet, every worker and
    the driver) listen on every interface unless the node's address is exactly 127.0.0.1,
    ::1 or localhost, and its agents on the node's address. `ray.init` turns a given
    `_node_ip_address` of 127.0.0.1 into the machine's network address, unless Ray is in
    its local-only mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the default on macOS and
    Windows), where the node's address is loopback. The driver reads that setting once,
    when `ray` is imported, hence its constant set here too; the processes Ray spawns
    inherit the variable. Both are restored once Ray is up: nothing else in this process
    changes. `tests/ray/test_ray.py` lists the sockets of a run to hold this.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(LOCAL_ONLY_ENV)
    saved = ray_constants.ENABLE_RAY_CLUSTER  # read by services.get_node_ip_address
    os.environ[LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved_env


def _on_loopback(address: str) -> bool:
    """Whether a cluster's address ("host:port") is on this machine's loopback."""
    import ipaddress

    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, "auto", a ray:// URL
        return False


def _check_loopback(rt: Any) -> None:
    """Refuse to run on a local instance Ray did not put on loopback (a Ray whose settings
    changed): its ports would be open to the network."""
    address = rt.util.get_node_ip_address()
    if address not in ("127.0.0.1", "::1", "localhost"):
        rt.shutdown()
        raise BatchrunError(
            f"The local Ray instance started on {address}, not on loopback, so its ports "
            f"would be reachable from the network; it was shut down before any work. Ray "
            f"{rt.__version__} may place a local instance differently: please report it, "
            f"and run with --engine local meanwhile."
        )


@contextlib.contextmanager
def connected(job: Job) -> Iterator[Any]:
    """Ray, connected to the job's cluster or to a local instance started for the run (shut
    down after it); a caller's own connection is used and left as it is."""
    rt = require_ray()
    if rt.is_initialized():
        yield rt
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # At ERROR: Ray warns at every start that its token authentication is on (it stays on).
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if job.engine.address:
            # A cluster on loopback keeps its address (Ray would put the network's instead).
            local = _on_loopback(job.engine.address)
            with on_loopback() if local else contextlib.nullcontext():
                rt.init(address=job.engine.address, **kwargs)
        else:
            cpus = max(os.cpu_count() or 1, math.ceil(job.engine.workers * job.engine.worker_cpus))
            with on_loopback():
                rt.init(
                    address="local",
                    num_cpus=cpus,
                    include_dashboard=False,
                    _node_ip_address=LOOPBACK,
                    **kwargs,
                )
            _check_loopback(rt)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = job.engine.address or "a local instance"
        raise UserError(
            f"Could not start or join the Ray cluster at {where} ({first_line(exc)}): check "
            f"[engine] address, and that this process has the cluster's RAY_AUTH_MODE and "
            f"token (~/.ray/auth_token) if it uses token authentication."
        ) from None
    try:
        yield rt
    finally:
        rt.shutdown()


def run(
    job: Job | str | os.PathLike[str],
    options: RunOptions | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    dataset: Any = None,
) -> Any:
    """Run or resume a job on Ray; see the module docstring. The same summary as a local
    run, over the whole job (a `RunSummary`). Ctrl-C and SIGTERM stop the run as they stop
    a local one (see `batchrun.engine.interrupts.block_on`).

    With `dataset` (a Ray Data `Dataset`), returns that dataset with the job's answers
    added by a `ChatStage` pool of `[engine] workers` actors (lazy, as Ray Data is); the
    job's input and output paths are not used."""
    require_ray()
    environ = os.environ if environ is None else environ
    if not isinstance(job, Job):
        from ..config.job import load_job

        job = load_job(Path(job), environ=environ)
    if dataset is not None:
        import ray.data

        name = f"batchrun-stage-{uuid.uuid4().hex[:12]}"
        _DESKS[name] = open_desk(job, name)
        return dataset.map_batches(
            ChatStage,
            fn_constructor_kwargs={"job": job, "desk": name},
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=job.engine.workers),
            num_cpus=job.engine.worker_cpus,
        )
    loaded = job
    return block_on(
        lambda route: run_async(loaded, options or RunOptions(), environ, interrupts=route)
    )


async def run_async(
    job: Job,
    options: RunOptions,
    environ: Mapping[str, str],
    *,
    interrupts: RouteInterrupts | None = None,
) -> RunSummary:
    """`run`, awaited: the run's lifecycle (`batchrun.engine.lifecycle`) on the caller's loop,
    the driver on a worker thread. Ctrl-C and SIGTERM reach the run through `interrupts`
    (as the local engine's), or else through the loop's signal handlers; a cancelled await
    stops the run as Ctrl-C. The key and the route are only checked here: each worker reads
    them on its own machine."""
    require_ray()
    return await lifecycle.run(job, options, environ, RayAnswerer, interrupts=interrupts)


class RayAnswerer:
    """A Ray run's answerer (see `batchrun.engine.lifecycle.Answerer`): a driver handing
    shards to workers on a Ray cluster, run on a worker thread so that the loop stays free
    to hear interrupts; then the output written from the driver's copy of the checkpoint."""

    def __init__(self, opened: OpenRun) -> None:
        self.opened = opened
        self.heard = Interrupts()
        self.stop: BatchrunError | None = None
        self.not_uploaded: str | None = None
        self._figures: dict[str, Any] = {}  # the desk's, once the driver ended
        self._upload_failure: S3Error | None = None  # why the output did not reach S3
        self._unread = False  # the stop is the driver's own: it could not read the copy

    @property
    def hurried(self) -> bool:
        return self.heard.count >= 2

    def interrupt(self) -> None:
        self.heard.hear()

    async def execute(self, options: RunOptions) -> None:
        driving = asyncio.ensure_future(asyncio.to_thread(self._drive))
        try:
            self._figures, self.stop = await asyncio.shield(driving)
        except asyncio.CancelledError:
            self.heard.hear()  # the driver stops its workers and keeps their rows
            await asyncio.wait([driving])  # the checkpoint stays held until they stopped
            raise

    def _drive(self) -> tuple[dict[str, Any], BatchrunError | None]:
        with connected(self.opened.job) as rt:
            return Driver(rt, self.opened, self.heard).drive()

    async def write_output(self, write: Callable[[], Written]) -> Written | None:
        return await asyncio.to_thread(self._write_output, write)

    def _write_output(self, write: Callable[[], Written]) -> Written | None:
        """The output, once the driver's copy of an S3 checkpoint holds every worker's
        segments; None when the copy could not be read."""
        job, checkpoint = self.opened.job, self.opened.checkpoint
        gone = isinstance(self.stop, StoreFailed)  # the workers waited S3 out already
        try:
            _pull_for_shard(checkpoint, 0.0 if gone else job.limits.storage_wait_s, _DRIVER_PULL)
        except StoreFailed as exc:
            if self.stop is None:  # the workers committed every answer: only the output is missing
                self.stop, self._unread = exc, True
            return None
        return write()

    async def publish_output(self) -> bool:
        job = self.opened.job
        if job.output_remote is None:
            return True
        # Where the workers waited S3 out already, one try.
        wait_s = 0.0 if isinstance(self.stop, StoreFailed) else job.limits.storage_wait_s
        note = self.opened.progress.note
        failure = await asyncio.to_thread(
            upload_waiting, job.output_path, job.output_remote, wait_s, note
        )
        if failure is None:
            return True
        self._upload_failure, self.not_uploaded = failure, job.output_url
        return False

    def settle_stop(self, written: bool) -> None:
        if self._unread:
            return
        lost_lease = self.opened.checkpoint.lease_lost is not None
        self.stop = _settled(
            self.opened.job, self.stop, self._figures, written, self._upload_failure, lost_lease
        )

    def answered(self) -> Answered:
        figures = self._figures
        return Answered(
            ok=figures["settled_ok"] + figures["ok"],
            failed=figures["settled_failed"] + figures["failed"],
            ran=figures["ok"] + figures["failed"],
            remapped=figures["remapped"],
            tokens=figures["tokens"],
            spend=figures["spend"],
            endpoints={
                name: {
                    **e["run"],
                    "rate_limited": e["rate_limited"],
                    "allowed_rpm": allowed_rpm(e["rate_limited"], e["allowed_rps"]),
                    "state": e["state"],
                }
                for name, e in figures["endpoints"].items()
            },
            workers=figures.get("workers"),
        )


Shard = tuple[int, int, int]  # its number, its first position, the position after its last


@dataclass
class _Schedule:
    """Where each shard and each worker is, as the driver hands shards out."""

    todo: deque[Shard]  # shards no worker runs now (again at the front where one died)
    idle: list[int]  # workers (by index) ready for a shard
    running: dict[Any, tuple[int, Shard]] = field(default_factory=dict)  # a call -> its worker
    # A call asking a worker Ray restarts whether it is back -> the worker, since when.
    restarting: dict[Any, tuple[int, float]] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)  # runs of each shard so far

    def calls(self) -> list[Any]:
        """The calls the driver waits on."""
        return [*self.running, *self.restarting]


class Driver:
    """The driver of a Ray run: starts the desk and the workers, hands out the shards until
    all are done (again where a worker died), shows the progress, pulls the workers'
    segments from S3 for the merger, watches the checkpoint's lock; ends with the desk's
    figures and the run's stop (`drive`)."""

    def __init__(self, rt: Any, opened: OpenRun, heard: Interrupts) -> None:
        self.rt = rt
        self.job = opened.job
        self.checkpoint = opened.checkpoint
        self.progress = opened.progress
        self.heard = heard
        self.stop: BatchrunError | None = None
        self.peaks: dict[int, float] = {}  # each worker process's peak memory, MB
        self.pulled = time.monotonic()  # when the workers' segments were last pulled from S3
        self.desk, self.workers = self._start(opened)
        engine = self.job.engine
        self.schedule = _Schedule(
            todo=deque(
                (i, start, end)
                for i, (start, end) in enumerate(
                    shards(opened.plan.total, engine.workers, engine.shard_rows)
                )
            ),
            idle=list(range(len(self.workers))),
        )

    def _start(self, opened: OpenRun) -> tuple[Any, list[Any]]:
        """The desk, on the driver's node (the node that holds the checkpoint's lock is the
        one whose loss ends the run anyway), and the workers."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        rt, job, checkpoint, engine = self.rt, self.job, self.checkpoint, self.job.engine
        desk_name = f"batchrun-desk-{uuid.uuid4().hex[:12]}"
        here = NodeAffinitySchedulingStrategy(rt.get_runtime_context().get_node_id(), soft=False)
        desk = (
            rt.remote(Desk)
            .options(name=desk_name, max_restarts=0, num_cpus=0, scheduling_strategy=here)
            .remote(
                paces(job),
                budget_usd=job.cost.budget_usd,
                spent=checkpoint.spend() if job.cost.budget_usd else 0.0,
                next_commit=checkpoint.next_commit,
            )
        )
        desk.lease_until.remote(checkpoint.lease_sure_until())
        self.heard.reach(desk)
        concurrency = max(1, math.ceil(concurrency_of(job) / engine.workers))
        worker_class = rt.remote(ShardWorker)
        workers = [
            worker_class.options(
                name=f"{desk_name}-worker-{i}",
                num_cpus=engine.worker_cpus,
                max_restarts=-1,
                max_task_retries=0,
                max_concurrency=2,
            ).remote(
                job,
                opened.options,
                opened.plan.total,
                str(checkpoint.folder),
                desk_name,
                opened.urls,
                concurrency,
                checkpoint.remote,
            )
            for i in range(engine.workers)
        ]
        return desk, workers

    def drive(self) -> tuple[dict[str, Any], BatchrunError | None]:
        """Run every shard, or until the run stops; the desk's figures and the stop."""
        try:
            while self.schedule.todo or self.schedule.running:
                self._hand_out()
                if self.heard.count >= 2:  # a second Ctrl-C: stop at once, no output
                    self._stop_on(Interrupted(INTERRUPTED))
                    break
                calls = self.schedule.calls()
                ready, _ = (
                    self.rt.wait(calls, num_returns=1, timeout=SYNC_S * 2) if calls else ([], [])
                )
                self._watch()
                for call in ready:
                    if call in self.schedule.restarting:
                        self._on_restarting(call)
                    else:
                        self._on_shard(call)
                if self.stop is not None and not self.schedule.running:
                    break
            _desk_call(self.rt, self.desk.settle)  # a 429 storm the run ended in sets its figures
            figures = self._totals()
        finally:
            self._tear_down()
        schedule = self.schedule
        figures["workers"] = {
            "count": len(self.workers),
            "peak_rss_mb": sorted(self.peaks.values()),  # of each worker process that ran a shard
            "requests": figures["requests"],  # starts the workers took
            "leases": sum(e["leases"] for e in figures["endpoints"].values()),  # calls for them
            "shards": len(schedule.attempts),
            "shard_attempts": sum(schedule.attempts.values()),
        }
        return figures, self.stop

    def _stop_on(self, stop: BatchrunError) -> None:
        """The run's stop, unless it has one already."""
        if self.stop is None:
            self.stop = stop

    def _hand_out(self) -> None:
        """A shard to each idle worker, while there are shards and the run goes on."""
        schedule = self.schedule
        while schedule.idle and schedule.todo and self.stop is None and self.heard.count == 0:
            index, shard = schedule.idle.pop(0), schedule.todo.popleft()
            schedule.attempts[shard[0]] = schedule.attempts.get(shard[0], 0) + 1
            schedule.running[self.workers[index].run_shard.remote(*shard)] = (index, shard)

    def _totals(self) -> dict[str, Any]:
        """The desk's figures, shown; a stop a worker told the desk becomes the run's."""
        figures: dict[str, Any] = _desk_call(self.rt, self.desk.totals)
        _show(self.progress, figures)
        if figures["stop"] is not None:
            self._stop_on(stop_from(*figures["stop"]))
        return figures

    def _watch(self) -> None:
        """Each tick: the progress, the workers' segments from S3 (for the merger), the
        checkpoint's lock (the workers commit only while it is sure)."""
        self._totals()
        checkpoint = self.checkpoint
        if checkpoint.remote is not None and time.monotonic() >= self.pulled + PULL_S:
            try:
                checkpoint.refresh()
            except OSError as exc:  # S3 not answering for now: the next tick tries again
                log.warning("pulling the checkpoint from S3 failed (%s)", first_line(exc))
            self.pulled = time.monotonic()
        self.desk.lease_until.remote(checkpoint.lease_sure_until())
        if checkpoint.lease_lost is not None and self.stop is None:
            self.stop = checkpoint.lease_lost  # another run took the job over: every worker stops
            self.desk.halt.remote(type(self.stop).__name__, str(self.stop))

    def _on_restarting(self, call: Any) -> None:
        """A worker Ray was restarting answered: back (idle again), or not yet."""
        schedule = self.schedule
        index, since = schedule.restarting.pop(call)
        try:
            self.rt.get(call)
        except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
            if time.monotonic() - since > RESTART_WAIT_S:
                raise ClusterLost(
                    f"A worker of the run could not be restarted within "
                    f"{RESTART_WAIT_S:g} s ({first_line(exc)}): the cluster may "
                    f"lack room for it; run the same command to resume."
                ) from None
            time.sleep(SYNC_S)
            schedule.restarting[self.workers[index].pid.remote()] = (index, since)
            return
        schedule.idle.append(index)

    def _on_shard(self, call: Any) -> None:
        """A shard ended: done (its worker idle again), or its worker lost (the shard to
        the next worker that is up), or a failure that ends the run."""
        schedule = self.schedule
        index, shard = schedule.running.pop(call)
        try:
            done: ShardDone = self.rt.get(call)
        except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
            # A worker is given work only once it answers (see `restarting`), so each of
            # these is a worker lost while it ran the shard.
            if schedule.attempts[shard[0]] >= MAX_SHARD_ATTEMPTS:
                raise ClusterLost(
                    f"The workers running rows {shard[1]:,} to {shard[2]:,} died "
                    f"{MAX_SHARD_ATTEMPTS} times ({first_line(exc)}): look at the Ray "
                    f"cluster's logs, then run the same command to resume."
                ) from None
            log.warning("a worker died on rows %d to %d; running them again", *shard[1:])
            schedule.todo.appendleft(shard)
            # Ray restarts the actor behind the same handle: it takes work again once it
            # answers.
            schedule.restarting[self.workers[index].pid.remote()] = (index, time.monotonic())
            return
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            if isinstance(cause, BatchrunError):
                raise cause from None
            what = f"{type(cause).__name__}: {first_line(cause)}" if cause else ""
            raise BatchrunError(
                f"A worker failed on rows {shard[1]:,} to {shard[2]:,} ({what or exc}): "
                f"every committed row is kept; run the same command to resume, and "
                f"please report this if it happens again."
            ) from None
        self.peaks[done.pid] = max(self.peaks.get(done.pid, 0.0), done.peak_rss_mb)
        if done.stop is not None:
            self._stop_on(stop_from(*done.stop))
        schedule.idle.append(index)

    def _tear_down(self) -> None:
        """However the run ended: no worker may go on sending, or committing into a folder
        the driver is about to unlock."""
        rt, desk, workers = self.rt, self.desk, self.workers
        with contextlib.suppress(Exception):
            desk.halt.remote("Interrupted", INTERRUPTED)
            if self.checkpoint.remote is not None:  # their copies of the checkpoint
                rt.wait([w.release.remote() for w in workers], num_returns=len(workers), timeout=10)
            for worker in workers:
                rt.kill(worker, no_restart=True)
            rt.kill(desk)


class Interrupts:
    """Ctrl-C and SIGTERM as a Ray run hears them, from any thread: counted, and each one
    handed to the run's desk, which stops every worker."""

    def __init__(self) -> None:
        # Guards both fields below; re-entrant, as a signal handler (`hear`) may run in the
        # main thread while that thread holds it.
        self._lock = threading.RLock()
        self._count = 0  # interrupts heard so far
        self._desk: Any = None  # the run's desk, once it exists

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def hear(self, *_: object) -> None:
        """One interrupt (a signal handler's arguments are ignored)."""
        with self._lock:
            self._count += 1
            desk = self._desk
        if desk is not None:
            desk.halt.remote("Interrupted", INTERRUPTED)

    def reach(self, desk: Any) -> None:
        """Hand interrupts to `desk` from now on, and any heard before it existed."""
        with self._lock:
            self._desk = desk
            heard = self._count
        if heard:
            desk.halt.remote("Interrupted", INTERRUPTED)


def _settled(
    job: Job,
    stop: BatchrunError | None,
    figures: Mapping[str, Any],
    written: bool,
    failure: S3Error | None,
    lost_lease: bool = False,
) -> BatchrunError | None:
    """The run's stop, its sentence saying what is so once the run ended. A worker's stop
    on S3 gives only its cause (`Commits.store_stop` with `cause_only`): the answers no worker could
    commit (summed over their tallies) and where the output is are added here. A run
    that did not stop but whose output could not be uploaded stops on that."""
    lost = int(figures.get("uncommitted", 0))
    not_uploaded = job.output_url if failure is not None else None
    where = output_words(job, written, not_uploaded)
    if isinstance(stop, StoreFailed):
        cause = str(stop).rstrip(".")
        waited = cause.startswith("S3 could not be reached")
        return StoreFailed(store_sentence(cause, lost, where, waited, "commit"))
    if stop is None and failure is not None:
        wait_s = job.limits.storage_wait_s
        cause = store_cause(failure, failure.transient, "upload", wait_s, job.output_url or "")
        return StoreFailed(store_sentence(cause, 0, where, failure.transient, "upload"))
    if stop is not None and lost:
        why = (
            "a run that lost its lease writes nothing more"
            if lost_lease
            else "S3 could not be reached"
        )
        return with_uncommitted(stop, lost, why)
    return stop


def _desk_call(rt: Any, method: Any) -> Any:
    """A call to the desk; its loss (its node gone) ends the run in one sentence."""
    try:
        return rt.get(method.remote())
    except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
        raise ClusterLost(
            f"The run's desk (the actor that holds its rate limit, on the driver's node) was "
            f"lost ({first_line(exc)}): every committed row is kept; run the same command "
            f"to resume."
        ) from None


def _show(progress: Progress, figures: Mapping[str, Any]) -> None:
    endpoints = figures["endpoints"]
    if len(endpoints) > 1:  # the cluster's state of each, on the progress line
        line = ", ".join(f"{name} {e['state']}" for name, e in endpoints.items())
        progress.endpoints = lambda: line
    progress.show(
        done=figures["done"],
        settled=figures["settled_ok"] + figures["settled_failed"],
        ok=figures["ok"],
        failed=figures["failed"],
        tokens=figures["tokens"],
        spend=figures["spend"],
    )
