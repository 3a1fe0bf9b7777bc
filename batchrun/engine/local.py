"""The run: pull rows, pace, send, classify, retry, commit, write the output.

Shape of a run: one producer renders input rows into requests and skips rows whose latest
committed result has the same request fingerprint; as many workers as the endpoints'
concurrencies together take requests from a bounded queue and, for each attempt, a lane of
the pool (`batchrun.engine.lanes`: an endpoint's wire, pacer, quota gate and circuit), wait for its
pacer, send, classify and retry (elsewhere, where another endpoint serves; the row's state
from one attempt to the next is `batchrun.engine.attempt.Attempts`); every final result goes
to the commit buffer (`batchrun.engine.commits`), which a ticker and the buffer's size flush
into checkpoint segments. Results are durable only once flushed (at most
`limits.commit_interval_s` or `sizes.COMMIT_ROWS` of them are ever unflushed); a row is only
ever skipped on the strength of a flushed result.

Run-wide stops (bad key or quota with one endpoint, every endpoint out with several, a
systematic client error, the budget, an interrupt) set `_stop`: no request starts after it
is set; requests in flight finish and are committed; rows not finished stay pending for the
next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..checkpoint.folder import Checkpoint
from ..config.job import Job
from ..config.pricing import Budget, SharedBudget
from ..core import sizes
from ..core.completion import Usage
from ..core.network import ProxyURL, Route
from ..core.progress import Progress
from ..core.secrets import Secret
from ..core.tokens import TokenCounter, counter_for
from ..errors import (
    BadKey,
    BadRoute,
    BatchrunError,
    BudgetReached,
    DiskFull,
    Interrupted,
    NoEndpoint,
    QuotaExhausted,
    RunStopped,
    SystematicFailure,
)
from ..protocol.outcome import Action, classify, classify_failure, classify_stream
from ..protocol.result import (
    FINGERPRINT,
    RowResult,
    counted_usage,
    failure_result,
    plus_cost,
    success_result,
    unsendable_result,
)
from ..protocol.wire import TransportFailure
from ..rows import sink
from ..rows.plan import Plan, RunOptions, answered, fresh, settles, with_prior
from ..rows.render import Rendered
from ..rows.request import Item
from ..rows.source import Source
from ..storage.nofile import fitting_concurrency
from . import lifecycle
from .attempt import Attempts
from .commits import Commits
from .interrupts import RouteInterrupts
from .lanes import Lane, SharedLanes, build_pool
from .lifecycle import (
    Answered,
    MakeAnswerer,
    OpenRun,
    RunSummary,
    allowed_rpm,
    concurrency_of,
    with_concurrency,
)
from .pacing import Sleep
from .retry import RetryPolicy

log = logging.getLogger("batchrun")

REFRESH_S = 0.5  # how often the ticker looks at the buffer and redraws the progress
INTERRUPT_GRACE_S = 5.0  # how long requests in flight may finish after Ctrl-C
RATE_LIMIT_COOL_DOWN_S = 2.0  # the shared pause after a 429 that names no Retry-After
SYSTEMATIC_ROWS = 10  # this many first rows failing alike stop the run
SYSTEMATIC_ERRORS = frozenset({"invalid_request", "model_not_found"})


@dataclass
class _Counts:
    ok: int = 0
    failed: int = 0
    remapped: int = 0
    early_errors: list[str] = field(default_factory=list)  # errors of rows before the first ok


async def run(
    job: Job,
    options: RunOptions,
    environ: Mapping[str, str],
    *,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    interrupts: RouteInterrupts | None = None,
) -> RunSummary:
    """Run or resume a job on this machine, its rows answered through the direct lanes (and
    first through its batch endpoint, where it has one: `batchrun.engine.batch`); see the
    module docstring and `batchrun.engine.lifecycle`."""
    direct = functools.partial(direct_lanes, sleep=sleep, clock=clock, rng=rng or random.Random())
    make: MakeAnswerer = direct
    if job.batch_endpoint is not None:
        from .batch import batch_lanes  # imported only for a job that has a batch endpoint

        make = functools.partial(batch_lanes, detach=options.detach, direct=direct)
    return await lifecycle.run(job, options, environ, make, interrupts=interrupts)


def direct_lanes(
    opened: OpenRun, *, sleep: Sleep, clock: Callable[[], float], rng: random.Random
) -> _Engine:
    """The answerer of a local run: the engine over the job's endpoints, with no more
    requests in flight than the open files allow."""
    job = opened.job
    concurrency, crowded = fitting_concurrency(
        concurrency_of(job), len(opened.checkpoint.segments()), sim=job.uses_sim
    )
    if crowded is not None:
        job = with_concurrency(job, concurrency)
        opened.progress.note(crowded)
    engine = _Engine(
        job,
        opened.plan,
        opened.checkpoint,
        opened.urls,
        opened.keys,
        routes=opened.routes,
        sleep=sleep,
        clock=clock,
        rng=rng,
    )
    engine.progress = opened.progress
    if job.pooled:
        opened.progress.endpoints = engine.pool.describe
    return engine


def lane_figures(lane: Lane, now: float) -> dict[str, Any]:
    """What one lane did this run, and its state at the end, as `note_endpoints` keeps it."""
    return {
        "requests": lane.requests,
        "answers": lane.answers,
        "errors": dict(lane.errors),
        "rate_limited": lane.rate_limited,
        "allowed_rpm": allowed_rpm(lane.rate_limited, lane.pacer.allowed_rps),
        "circuit_opened": lane.circuit.opened,
        "out": lane.out,
        "state": lane.state(now),
    }


@dataclass(frozen=True)
class Shard:
    """What a Ray worker's engine runs on and shares with the rest of the run (see
    `batchrun.ray.worker`)."""

    span: tuple[int, int | None]  # the input positions it covers
    lanes: SharedLanes  # each endpoint's pace and quota pauses, on the desk
    budget: SharedBudget | None  # the run's budget, taken from the desk in slices
    tell_stop: Callable[[BatchrunError], None]  # hands this engine's own stop to every worker


class _Engine:
    """The async machinery of one run."""

    def __init__(
        self,
        job: Job,
        plan: Plan,
        checkpoint: Checkpoint,
        urls: Mapping[str, str],
        keys: Mapping[str, Secret | None],
        *,
        routes: Mapping[str, Route] | None = None,
        sleep: Sleep,
        clock: Callable[[], float],
        rng: random.Random,
        shard: Shard | None = None,
    ) -> None:
        """`urls`, `keys` and `routes` give each endpoint's base URL, key and route (None:
        all direct) by name. With `shard` (a Ray worker's), the engine runs on its span of
        the input, paced, budgeted and stopped with the rest of the cluster."""
        limits = job.limits
        routes = routes or {}
        self.job = job
        self.plan = plan
        self.renderer = plan.renderer
        self.checkpoint = checkpoint
        # What no message may show, each able to mask itself: the keys, the proxies' logins.
        self.keys: list[Secret | ProxyURL] = [key for key in keys.values() if key is not None]
        self.keys += {r.proxy for r in routes.values() if r.proxy and r.proxy.has_credentials}
        self.json_mode = plan.json_mode
        self.sleep = sleep
        self.clock = clock
        self.rng = rng
        self.policy = RetryPolicy(max_attempts=limits.max_attempts, max_retry_s=limits.max_retry_s)
        self._stopping = asyncio.Event()  # set with `stop`: cuts every wait short
        self.pool = build_pool(
            job,
            urls,
            keys,
            routes,
            clock=clock,
            sleep=self._nap,
            stopping=self._stopping,
            shared=shard.lanes if shard is not None else None,
        )
        # Every lane at once may be sending: the workers are their concurrencies together.
        self.workers = sum(lane.concurrency for lane in self.pool.lanes)
        # Prompts are counted before sending only where a count is used: pacing by tokens
        # and the budget. Loading an encoding takes a quarter of a second.
        self._count_prompts = bool(
            any(e.tokens_per_minute for e in job.endpoints) or job.cost.budget_usd
        )
        self.parser = plan.annotator.parser if plan.annotator is not None else None
        self.budget: Budget | SharedBudget | None = None
        if shard is not None:
            self.budget = shard.budget
        elif job.cost.budget_usd:
            self.budget = Budget(job.cost.budget_usd, checkpoint.spend())
        self.progress = Progress(0, 0, quiet=True)  # replaced by run() before executing
        self.counts = _Counts()
        self.final_ok = 0  # rows whose latest result is ok (before and during this run)
        self.final_failed = 0  # rows whose latest result is failed
        self.stop: BatchrunError | None = None  # the run-wide stop, once one happened
        self.stopped_elsewhere = False  # the stop came from the cluster (another worker)
        self._tell_stop = shard.tell_stop if shard is not None else None
        self.span = shard.span if shard is not None else (0, None)  # the input positions run
        self.commits = Commits(
            job,
            checkpoint,
            clock=clock,
            nap=self._nap,
            note=lambda line: self.progress.note(line),
            halt=self._halt,
            stopped=lambda: self.stop is not None,
            cause_only=shard is not None,
        )
        self.space = self.commits.space  # closed while a full disk or S3 is waited out
        self._workers: list[asyncio.Task[None]] = []
        self._producer: asyncio.Task[None] | None = None
        self._interrupts = 0  # Ctrl-C / SIGTERM received so far

    # -- the run as a whole ---------------------------------------------------------------

    async def execute(self, options: RunOptions) -> None:
        for lane in self.pool.lanes:
            log.info(
                "%s: sending to %s %s with %d in flight at most",
                self.job.name,
                lane.wire.url,
                lane.wire.route.shown,
                lane.concurrency,
            )
        queue: asyncio.Queue[Item | None] = asyncio.Queue(maxsize=2 * self.workers)
        async with contextlib.AsyncExitStack() as wires:
            for lane in self.pool.lanes:
                await wires.enter_async_context(lane.wire)
            self._producer = asyncio.create_task(
                self._produce(self.plan.source, options, queue), name="batchrun-producer"
            )
            self._workers = [
                asyncio.create_task(self._work(queue), name=f"batchrun-worker-{i}")
                for i in range(self.workers)
            ]
            finished = asyncio.Event()
            ticker = asyncio.create_task(self._tick(finished), name="batchrun-ticker")
            try:
                results = await asyncio.gather(
                    self._producer, *self._workers, return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException) and not isinstance(
                        result, asyncio.CancelledError
                    ):
                        raise result
            finally:
                # Never cancel the ticker: it may be in the middle of a commit, whose segment
                # must be in place before the output is written from the segments.
                finished.set()
                await ticker
                await self.commits.flush()
        if isinstance(self.stop, DiskFull):
            self.stop = self.disk_full_stop()  # with the answers lost since

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: stop starting requests; a second one stops at once."""
        self._interrupts += 1
        self._halt(
            Interrupted("Interrupted: finished rows are saved; run the same command to resume.")
        )
        if self._interrupts == 1:
            asyncio.get_running_loop().call_later(INTERRUPT_GRACE_S, self._cancel)
        else:
            self._cancel()

    def hear_stop(self, error: BatchrunError) -> None:
        """A stop raised elsewhere in the cluster (another worker, the driver): this engine
        stops too, without handing the stop back."""
        if self.stop is None:
            self.stopped_elsewhere = True
            self._halt(error)

    @property
    def rate_limited(self) -> int:
        """429s that were rate limits, this run, at every endpoint."""
        return sum(lane.rate_limited for lane in self.pool.lanes)

    @property
    def hurried(self) -> bool:
        """Interrupted twice: exit at once, without rewriting the output."""
        return self._interrupts >= 2

    def answered(self) -> Answered:
        """What this run did, once it stopped answering (see `batchrun.engine.lifecycle`)."""
        for lane in self.pool.lanes:
            lane.pacer.settle()  # a storm the run ended in
        now = self.clock()
        return Answered(
            ok=self.final_ok,
            failed=self.final_failed,
            ran=self.counts.ok + self.counts.failed,
            remapped=self.counts.remapped,
            tokens=self.progress.tokens,
            spend=self.progress.spend,
            endpoints={lane.name: lane_figures(lane, now) for lane in self.pool.lanes},
        )

    @property
    def not_uploaded(self) -> str | None:
        """The output's S3 URL, when it did not get there."""
        return self.commits.not_uploaded

    async def write_output(self, write: Callable[[], sink.Written]) -> sink.Written | None:
        """Write the output, waiting for space as a commit does; None when it could not be."""
        return await self.commits.write_output(write)

    async def publish_output(self) -> bool:
        """Upload the written output to S3, waiting S3 out; False when it could not be."""
        return await self.commits.publish_output()

    def disk_full_stop(self) -> DiskFull:
        """The stop for a disk that stayed full, counting the answers not saved now."""
        return self.commits.disk_full_stop()

    def settle_stop(self, written: bool) -> None:
        """Once the run ended: make the stop's sentence say what is so now (whether the
        output was `written`, the answers not committed)."""
        self.stop = self.commits.settled_stop(self.stop, written)

    def _cancel(self) -> None:
        for task in [self._producer, *self._workers]:
            if task is not None:
                task.cancel()

    def _halt(self, error: BatchrunError) -> None:
        first = self.stop is None
        if first:
            self.stop = error
        self._stopping.set()
        for lane in self.pool.lanes:
            lane.pacer.close()
        self.space.release()
        if first and not self.stopped_elsewhere and self._tell_stop is not None:
            self._tell_stop(error)

    def _lane_out(self, lane: Lane, stop: RunStopped, why: str) -> None:
        """`lane` serves no more this run: the run stops with `stop` where it was the only
        endpoint, with a NoEndpoint naming each where it was the last of several, and
        otherwise carries on without it (one warning)."""
        if lane.out is not None:
            return
        lane.out = why
        self.pool.poke()
        if self.pool.single:
            self._halt(stop)
        elif self.pool.all_out:
            each = "; ".join(f"{o.name}: {o.out}" for o in self.pool.lanes)
            self._halt(
                NoEndpoint(
                    f"No endpoint can serve any more ({each}): fix what each one says and "
                    f"run again; finished rows are saved."
                )
            )
        else:
            self.progress.note(f"batchrun: warning: endpoint {lane.name!r} is out: {why}.")

    def _quota_gone(self, lane: Lane, message: str) -> None:
        wait_s = self.job.limits.quota_wait_s
        self._lane_out(
            lane,
            QuotaExhausted(
                f"The account's quota is exhausted ({self._redact(message)}) and did not come "
                f"back within {wait_s:g} s: top it up and run again to resume."
            ),
            f"its quota is exhausted ({self._redact(message)}) and did not come back within "
            f"{wait_s:g} s",
        )

    def _bad_key(self, lane: Lane, message: str) -> None:
        variable = lane.endpoint.api_key_env
        message = self._redact(message)
        self._lane_out(
            lane,
            BadKey(
                f"The gateway rejected the API key in {variable} ({message}): set it to a "
                f"valid key and run again; finished rows are saved."
            ),
            f"the gateway rejected the API key in {variable} ({message})",
        )

    def _bad_route(self, lane: Lane, message: str) -> None:
        message = self._redact(message)
        route = lane.wire.route
        if route.proxy is not None and "proxy" in message:
            fix = (
                f"fix the user and password of the proxy {route.proxy.shown} (in the proxy "
                f"variable or the endpoint's proxy setting)"
            )
        else:
            fix = (
                "trust its CA: give the CA's PEM file in the endpoint's ca_bundle or in "
                "SSL_CERT_FILE (a company's inspecting proxy brings its own)"
            )
        self._lane_out(
            lane,
            BadRoute(
                f"Connecting to {lane.wire.url} {route.shown} failed: {message}; {fix}, "
                f"and run again; finished rows are saved."
            ),
            f"{message} ({route.shown})",
        )

    async def _tick(self, finished: asyncio.Event) -> None:
        """Flush every commit_interval_s and redraw, until the workers are done."""
        interval = self.job.limits.commit_interval_s
        while not finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), min(interval, REFRESH_S))
            if self.commits.due(interval):
                await self.commits.flush()
            self.progress.refresh()

    # -- producing requests ---------------------------------------------------------------

    async def _produce(
        self, source: Source, options: RunOptions, queue: asyncio.Queue[Item | None]
    ) -> None:
        """Two feeds share the queue, each walking the input and the checkpoint as it stood
        when the run began: the rows that hold no result, sent from the first batch on (a
        resume's first request never waits on the rows finished before it), and the rows
        that hold one, counted as done or sent again when their request changed (or, with
        --retry-failed, when they failed)."""
        committed = bool(self.checkpoint.segments())
        positions = await asyncio.to_thread(self.checkpoint.positions)
        walk = await asyncio.to_thread(self.checkpoint.walk, [FINGERPRINT, "status"])
        start = self.span[0]
        if start:
            await asyncio.to_thread(positions.seek, start)
            await asyncio.to_thread(walk.seek, start)
        retry_failed = options.retry_failed

        def new_rows(batch: pl.DataFrame) -> tuple[pl.DataFrame | None, int, int]:
            return fresh(self.renderer, batch, positions), 0, 0

        def seen_rows(batch: pl.DataFrame) -> tuple[pl.DataFrame | None, int, int]:
            frame = with_prior(self.renderer, batch, walk, committed=True)
            ok, done = answered(), settles(retry_failed=retry_failed)
            counts = frame.select(ok.sum().alias("ok"), (done & ~ok).sum().alias("failed"))
            settled_ok, settled_failed = counts.row(0)
            return frame.filter(~done), int(settled_ok), int(settled_failed)

        # The second feed waits for the first to queue a row or end: on two cores, checking
        # every finished row beside it would delay the first request by as long again.
        going = asyncio.Event()
        feeds = [asyncio.create_task(self._feed(source, options, new_rows, queue, going))]
        if committed:
            feeds.append(
                asyncio.create_task(self._feed(source, options, seen_rows, queue, after=going))
            )
        try:
            await asyncio.gather(*feeds)
        finally:
            for feed in feeds:
                feed.cancel()
            await asyncio.gather(*feeds, return_exceptions=True)
            positions.close()
            walk.close()
        # Only when not cancelled: a cancelled run cancels the workers too, and a full queue
        # with no worker left to empty it would block this forever.
        for _ in self._workers:
            await queue.put(None)

    async def _feed(
        self,
        source: Source,
        options: RunOptions,
        pending: Callable[[pl.DataFrame], tuple[pl.DataFrame | None, int, int]],
        queue: asyncio.Queue[Item | None],
        going: asyncio.Event | None = None,
        *,
        after: asyncio.Event | None = None,
    ) -> None:
        """Queue the rows `pending` leaves of each input batch (it renders them, in a
        thread, and says how many rows it found settled, ok and failed). `going` is set
        once a row is queued or the feed ends; the feed starts once `after` is set."""
        if after is not None:
            await after.wait()
        start, end = self.span
        batches = source.batches(
            self.renderer.columns, sizes.READ_ROWS, options.limit, start=start, end=end
        )
        try:
            while self.stop is None:
                step = await asyncio.to_thread(_next_pending, batches, pending)
                if step is None:
                    break
                frame, ok, failed = step
                self.final_ok += ok
                self.final_failed += failed
                self.progress.skip(ok + failed)
                for rendered in self.renderer.rows(frame) if frame is not None else ():
                    if self.stop is not None:
                        break
                    item = self._prepare(rendered)
                    if item is not None:
                        await queue.put(item)
                        if going is not None:
                            going.set()
        finally:
            if going is not None:
                going.set()
            with contextlib.suppress(ValueError):  # still running in its thread if cancelled
                batches.close()

    def _prepare(self, rendered: Rendered) -> Item | None:
        """A pending row's request, or None when it cannot be sent (its failure recorded)."""
        key, position, fp, payload, invalid = rendered
        if invalid is not None:
            self._record(unsendable_result(key, position, fp, invalid))
            return None
        body = self.renderer.body(payload)
        prompt_tokens = self.counter.chat(body["messages"]) if self._count_prompts else 0
        estimate = prompt_tokens + self.renderer.completion_estimate
        return Item(key, position, fp, body, prompt_tokens, estimate)

    # -- sending --------------------------------------------------------------------------

    async def _work(self, queue: asyncio.Queue[Item | None]) -> None:
        while (item := await queue.get()) is not None:
            if self.stop is not None:
                continue  # drain: rows not started stay pending
            result = await self._process(item)
            if result is not None:
                self._record(result)
                await self.commits.flush_if_full()

    async def _process(self, item: Item) -> RowResult | None:
        """Send one row until it has a final result; None if the run stopped before it had
        an answer. Each attempt takes a lane (where the pool says, see
        `batchrun.engine.lanes`) and waits for its pacer, reserves, is sent; then what came
        back says what follows: a result, another attempt, or first a wait."""
        row = Attempts(item, self.clock())
        while True:
            await self.space.wait_open()
            lane = await self.pool.take(item, row.failed_on)
            if lane is None:
                return item.kept_answer(row.attempts, self.json_mode)
            try:
                if not await self._pace(item, lane) or not self._reserve(row, lane):
                    return item.kept_answer(row.attempts, self.json_mode)
                await self._send(row, lane)
            finally:
                self.pool.release(lane)
            self._bill(row, lane)
            self._tell_lane(row, lane)
            action = row.last.action
            if action is Action.QUOTA:
                await self._on_quota(row, lane)
            elif action is Action.OK:
                if not self._asks_again(row, lane):
                    return self._success(row, lane)
            elif action is Action.FAIL:
                return self._failure(row, lane)
            elif action is Action.BAD_KEY or action is Action.BAD_ROUTE:
                self._on_refused(row, lane)
            elif self.policy.gives_up(row.tries, self.clock() - row.started):
                return self._failure(row, lane)
            else:
                await self._before_retry(row, lane)

    async def _pace(self, item: Item, lane: Lane) -> bool:
        """Wait for `lane`'s pacer (and for space, which may have run out meanwhile); False
        when the run stopped."""
        lane.queued += 1
        try:
            await lane.pacer.acquire(item.estimate)
        finally:
            lane.queued -= 1
        await self.space.wait_open()
        return self.stop is None

    @property
    def counter(self) -> TokenCounter:
        """The model's token counter, loaded when first needed."""
        return counter_for(str(self.job.request["model"]))

    def _reserve(self, row: Attempts, lane: Lane) -> bool:
        """Reserve the request's worst case at `lane`'s prices against the budget; False
        (and a stop) if over."""
        if self.budget is None:
            return True
        item = row.item
        prompt = item.prompt_tokens if self.counter.exact else math.ceil(item.prompt_tokens * 1.2)
        worst = lane.pricer.worst_case(prompt, self.renderer.completion_estimate) or 0.0
        if self.budget.reserve(worst):
            row.worst = worst
            return True
        self._halt(
            BudgetReached(
                f"The budget of ${self.budget.limit:,.2f} is reached: ${self.budget.spent:,.4f} "
                f"spent and ${self.budget.reserved:,.4f} in flight, and the next request could "
                f"cost ${worst:,.4f}; raise cost.budget_usd and run again to continue "
                f"(finished rows are saved)."
            )
        )
        return False

    async def _send(self, row: Attempts, lane: Lane) -> None:
        """Send the row's request to `lane` and classify what came back."""
        item = row.item
        row.sent(self.clock())
        body = item.body
        if body["model"] != lane.model:  # this gateway's name for the model
            body = {**body, "model": lane.model}
        lane.requests += 1
        lane.in_flight += 1
        lane.in_flight_tokens += item.estimate
        try:
            reply = await lane.wire.post(body)
        except TransportFailure as failure:
            row.came_back(classify_failure(failure.kind, failure.message), None)
            return
        finally:
            lane.in_flight -= 1
            lane.in_flight_tokens -= item.estimate
        lane.pacer.follow_headers(reply.headers, lane.in_flight, lane.in_flight_tokens)
        if reply.stream is not None:
            outcome = classify_stream(reply.status, reply.headers, reply.stream)
        else:
            outcome = classify(reply.status, reply.headers, reply.body)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "HTTP %d in %.3f s: %s %s",
                reply.status,
                reply.latency_s,
                outcome.action.value,
                outcome.error or "",
            )
        row.came_back(outcome, reply)

    def _bill(self, row: Attempts, lane: Lane) -> None:
        """What the attempt used (counted locally when the gateway said nothing) and cost,
        settled against the budget's reservation."""
        completion = row.last.completion
        if completion is None:
            row.usage = None
        elif completion.usage is not None:
            row.usage = completion.usage, False
        else:
            row.usage = self._count_locally(row.item, completion.choices), True
        row.cost = lane.pricer.cost(row.usage[0]) if row.usage else None
        if self.budget is not None:
            self.budget.settle(row.worst, row.cost)

    def _tell_lane(self, row: Attempts, lane: Lane) -> None:
        """What the attempt says of `lane`: its failed attempts by kind, its circuit, its
        quota's probe, its pace after a 429."""
        outcome = row.last
        action = outcome.action
        if action is not Action.OK:
            kind = outcome.error or action.value
            lane.errors[kind] = lane.errors.get(kind, 0) + 1
        # A server error or a timeout counts against the circuit; any answer of the
        # gateway's own (a refusal, a 429, a quota, a key) shows that it is up.
        if action is Action.RETRY:
            if lane.circuit.failed(self.clock()):
                self.pool.poke()
        else:
            lane.circuit.answered()
        if action is Action.QUOTA:
            return
        if lane.quota.probing(row.item):
            lane.quota.passed(row.item)
            self.pool.poke()  # the lane serves again
        if action is Action.OK:
            lane.answers += 1
            lane.pacer.recover(row.sent_at)
            assert row.usage is not None
            lane.pacer.reconcile(row.item.estimate, row.usage[0].total_tokens)
        elif action is Action.RATE_LIMITED:
            # Pacing is the run's job: a rate limit never uses up a row's attempts, only
            # max_retry_s bounds its wait.
            lane.rate_limited += 1
            lane.pacer.cool_down(outcome.retry_after_s or RATE_LIMIT_COOL_DOWN_S, row.sent_at)

    async def _on_quota(self, row: Attempts, lane: Lane) -> None:
        """The quota answer: probe the quota (the first row to get it), or wait while
        another row does, or go to another lane; the lane goes out when it stays gone."""
        message = row.last.message or "insufficient quota"
        pausing = lane.quota.is_open
        if not await lane.quota.exhausted(row.item):
            self._quota_gone(lane, message)
        elif pausing and not self.pool.single:
            self.progress.note(
                f"batchrun: warning: endpoint {lane.name!r} is paused: its quota is "
                f"exhausted ({self._redact(message)}); "
                f"probing it for up to {self.job.limits.quota_wait_s:g} s while the "
                f"others serve."
            )
        row.failed_on = lane  # where another lane serves, it takes the row
        self.pool.poke()  # a probe may be due later: the waiting rows look again

    def _asks_again(self, row: Attempts, lane: Lane) -> bool:
        """Whether an answer that does not parse is asked again (its bounds start over)."""
        assert row.usage is not None
        if self.parser and row.item.ask_again(
            self.parser, row.last, row.reply, row.usage, row.cost, self._count
        ):
            row.item.kept_at = lane.name
            row.asked_again(self.clock())
            return True
        return False

    def _on_refused(self, row: Attempts, lane: Lane) -> None:
        """The gateway rejected the key or the route refused: `lane`'s fault, not the row's."""
        outcome = row.last
        if outcome.action is Action.BAD_KEY:
            self._bad_key(lane, outcome.message or "unauthorized")
        else:
            self._bad_route(lane, outcome.message or "refused")
        row.failed_on = lane

    async def _before_retry(self, row: Attempts, lane: Lane) -> None:
        """The row goes elsewhere where another lane serves; else its own backoff spaces
        its retries of a server error here."""
        row.failed_on = lane
        if row.last.action is Action.RETRY and not self.pool.serving_elsewhere(lane):
            await self._nap(self.policy.delay(row.tries, row.last.retry_after_s, self.rng))

    async def _nap(self, seconds: float) -> None:
        """Sleep, unless the run stops first: a stop never waits out a backoff or a pause."""
        if self._stopping.is_set():
            return
        napping = asyncio.ensure_future(self.sleep(seconds))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({napping, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            napping.cancel()
            stopping.cancel()

    # -- results --------------------------------------------------------------------------

    def _success(self, row: Attempts, lane: Lane) -> RowResult:
        item, outcome, reply = row.item, row.last, row.reply
        completion = outcome.completion
        assert completion is not None and row.usage is not None
        usage, estimated = row.usage
        if completion.response_model and completion.response_model != lane.model:
            self.counts.remapped += 1
        result = success_result(
            item.key,
            item.position,
            item.fingerprint,
            outcome,
            attempts=row.attempts,
            usage=usage + item.paid if item.paid else usage,
            usage_estimated=estimated,
            cost=plus_cost(row.cost, item.paid_cost),
            json_mode=self.json_mode,
            latency_s=reply.latency_s if reply else None,
            ttft_s=reply.ttft_s if reply else None,
        )
        result.endpoint = lane.name
        return result

    def _failure(self, row: Attempts, lane: Lane) -> RowResult:
        item = row.item
        kept = item.kept_answer(row.attempts, self.json_mode, row.usage, row.cost)
        if kept is not None:
            return kept  # asking again failed: the row keeps the answer it had
        usage, estimated = row.usage if row.usage is not None else (None, False)
        result = failure_result(
            item.key,
            item.position,
            item.fingerprint,
            row.last,
            attempts=row.attempts,
            redact=self._redact,
            usage=usage,
            usage_estimated=estimated,
            cost=row.cost,
        )
        result.endpoint = lane.name
        return result

    def _count(self, text: str) -> int:
        return self.counter.text(text)

    def _count_locally(self, item: Item, choices: tuple[str | None, ...]) -> Usage:
        return counted_usage(self.counter, item.body["messages"], choices)

    def _record(self, result: RowResult) -> None:
        self.commits.add(result)
        ok = result.status == "ok"
        if ok:
            self.counts.ok += 1
            self.final_ok += 1
        else:
            self.counts.failed += 1
            self.final_failed += 1
            self._watch_systematic(result)
        self.progress.advance(ok=ok, tokens=result.total_tokens or 0, cost=result.cost_usd)

    def _watch_systematic(self, result: RowResult) -> None:
        """Stop when the first rows all fail with the same client error."""
        early = self.counts.early_errors
        if self.counts.ok or len(early) >= SYSTEMATIC_ROWS or result.attempts == 0:
            return
        early.append(result.error or "")
        if (
            len(early) == SYSTEMATIC_ROWS
            and len(set(early)) == 1
            and early[0] in (SYSTEMATIC_ERRORS)
        ):
            self._halt(
                SystematicFailure(
                    f"The first {SYSTEMATIC_ROWS} rows all failed with {early[0]} "
                    f"({result.error_message or 'no message'}): fix the job (model name, "
                    f"parameters) and run again; use --retry-failed to send those rows again."
                )
            )

    def _redact(self, text: str) -> str:
        for key in self.keys:
            text = key.redact(text)
        return text


def _next_pending(
    batches: Iterator[pl.DataFrame],
    pending: Callable[[pl.DataFrame], tuple[pl.DataFrame | None, int, int]],
) -> tuple[pl.DataFrame | None, int, int] | None:
    batch = next(batches, None)
    return None if batch is None else pending(batch)
