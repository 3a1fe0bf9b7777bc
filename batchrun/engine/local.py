"""The run: pull rows, pace, send, classify, retry, commit, write the output.

Shape of a run: one producer renders input rows into requests and skips rows whose latest
committed result has the same request fingerprint; as many workers as the endpoints'
concurrencies together take requests from a bounded queue and, for each attempt, a lane of
the pool (`batchrun.engine.lanes`: an endpoint's wire, pacer, quota gate and circuit), wait for its
pacer, send, classify and retry (elsewhere, where another endpoint serves); every final
result goes to the commit buffer, which a ticker and the buffer's size flush into checkpoint
segments. Results are durable only once flushed (at most `limits.commit_interval_s` or
`sizes.COMMIT_ROWS` of them are ever unflushed); a row is only ever skipped on the strength of a
flushed result.

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
from pathlib import Path
from typing import Any

import polars as pl

from ..checkpoint.folder import Checkpoint
from ..config.job import Job
from ..config.pricing import Budget, SharedBudget, job_pricer
from ..core import sizes
from ..core.completion import Usage
from ..core.network import DIRECT, ProxyURL, Route
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
    StoreFailed,
    SystematicFailure,
)
from ..protocol.outcome import Action, Outcome, classify, classify_failure, classify_stream
from ..protocol.result import (
    FINGERPRINT,
    RowResult,
    counted_usage,
    failure_result,
    plus_cost,
    success_result,
)
from ..protocol.wire import Reply, TransportFailure, Wire
from ..rows import sink
from ..rows.plan import Plan, RunOptions, answered, fresh, settles, with_prior
from ..rows.render import Rendered
from ..rows.request import Item
from ..rows.source import Source
from ..storage.nofile import fitting_concurrency
from ..storage.space import RETRY_S, SpaceGate, disk_full, store_backoff, what_is_full
from ..storage.store import S3Error
from . import lifecycle
from .batch import batch_lanes
from .interrupts import RouteInterrupts
from .lanes import CIRCUIT_ERRORS, Circuit, Lane, Pool
from .lifecycle import (
    Answered,
    MakeAnswerer,
    OpenRun,
    RunSummary,
    allowed_rpm,
    concurrency_of,
    with_concurrency,
)
from .pacing import Pacer, Sleep
from .retry import QuotaGate, RetryPolicy
from .stops import output_words, store_cause, store_sentence, with_uncommitted

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
        pacers: Mapping[str, Pacer] | None = None,
        budget: Budget | None = None,
    ) -> None:
        """`urls`, `keys` and `routes` give each endpoint's base URL, key and route (None:
        all direct) by name. `pacers` and `budget` stand in for the job's own (a Ray
        worker's shared ones); with `pacers`, `budget` is only what is given."""
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
        several = len(job.endpoints) > 1
        lanes = []
        for endpoint in job.endpoints:
            concurrency = endpoint.concurrency
            lanes.append(
                Lane(
                    endpoint=endpoint,
                    model=job.model_at(endpoint),
                    wire=Wire(
                        urls[endpoint.name],
                        keys.get(endpoint.name),
                        headers=endpoint.headers,
                        pool_size=concurrency,
                        timeout_s=limits.request_timeout_s,
                        idle_timeout_s=limits.idle_timeout_s,
                        route=routes.get(endpoint.name, DIRECT),
                    ),
                    pacer=pacers[endpoint.name]
                    if pacers is not None
                    else Pacer(
                        endpoint.requests_per_minute,
                        endpoint.tokens_per_minute,
                        clock=clock,
                        sleep=self._nap,
                    ),
                    quota=QuotaGate(limits.quota_wait_s, clock, self._nap, hand_off=several),
                    pricer=job_pricer(job, endpoint),
                    circuit=Circuit(CIRCUIT_ERRORS if several else None),
                )
            )
        self.pool = Pool(lanes, job.strategy, clock=clock, sleep=self._nap, stopping=self._stopping)
        # Every lane at once may be sending: the workers are their concurrencies together.
        self.workers = sum(lane.concurrency for lane in lanes)
        # Prompts are counted before sending only where a count is used: pacing by tokens
        # and the budget. Loading an encoding takes a quarter of a second.
        self._count_prompts = bool(
            any(e.tokens_per_minute for e in job.endpoints) or job.cost.budget_usd
        )
        self.parser = plan.annotator.parser if plan.annotator is not None else None
        self.budget: Budget | SharedBudget | None = budget
        if pacers is None and job.cost.budget_usd:
            self.budget = Budget(job.cost.budget_usd, checkpoint.spend())
        self.progress = Progress(0, 0, quiet=True)  # replaced by run() before executing
        self.counts = _Counts()
        self.final_ok = 0  # rows whose latest result is ok (before and during this run)
        self.final_failed = 0  # rows whose latest result is failed
        self.stop: BatchrunError | None = None  # the run-wide stop, once one happened
        self._buffer: list[RowResult] = []  # finished results not yet committed
        self._flush_lock = asyncio.Lock()  # one segment write at a time
        self._last_flush = time.monotonic()
        self.space = SpaceGate(limits.disk_wait_s, clock)
        self._full = (checkpoint.folder, "full")  # the folder a shortage stopped on, and how
        self._shortage = "disk"  # what the gate waits for while closed: "disk" or "store"
        self._store_tries = 0  # tries at S3 that failed in the current outage
        # The S3 failure the run stopped on (or gave up uploading on): the error, whether
        # it was waited out for storage_wait_s (else S3 refused), "commit" or "upload".
        self._store_failure: tuple[S3Error, bool, str] | None = None
        self.not_uploaded: str | None = None  # the output's S3 URL, when it did not get there
        self._workers: list[asyncio.Task[None]] = []
        self._producer: asyncio.Task[None] | None = None
        self._interrupts = 0  # Ctrl-C / SIGTERM received so far
        self.shard: tuple[int, int | None] = (0, None)  # the input positions this run covers

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
                await self._flush()
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

    def _cancel(self) -> None:
        for task in [self._producer, *self._workers]:
            if task is not None:
                task.cancel()

    def _halt(self, error: BatchrunError) -> None:
        if self.stop is None:
            self.stop = error
        self._stopping.set()
        for lane in self.pool.lanes:
            lane.pacer.close()
        self.space.release()

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
            if (
                self._buffer
                and not self._flush_lock.locked()  # a flush may be waiting for space
                and time.monotonic() - self._last_flush >= interval
            ):
                await self._flush()
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
        start = self.shard[0]
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
        start, end = self.shard
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
            result = RowResult(
                row_key=key,
                position=position,
                fingerprint=fp,
                status="failed",
                attempts=0,
                finished_at=time.time(),
                error="invalid_request",
                error_message=invalid,
            )
            self._record(result)
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
                await self._maybe_flush()

    async def _process(self, item: Item) -> RowResult | None:
        """Send one row until it has a final result; None if the run stopped before it had
        an answer. Every attempt goes where the pool says (see `batchrun.engine.lanes`)."""
        attempts = 0  # requests sent for this row
        tries = 0  # attempts that count toward max_attempts (quota probes do not)
        first_start = self.clock()
        failed_on: Lane | None = None  # the lane the last attempt failed on
        while True:
            await self.space.wait_open()
            lane = await self.pool.take(item, failed_on)
            if lane is None:
                return item.kept_answer(attempts, self.json_mode)
            try:
                lane.queued += 1
                try:
                    await lane.pacer.acquire(item.estimate)
                finally:
                    lane.queued -= 1
                await self.space.wait_open()  # again: the disk may have filled during the pacing
                if self.stop is not None:
                    return item.kept_answer(attempts, self.json_mode)
                worst = self._reserve(item, lane)
                if worst is None:
                    return item.kept_answer(attempts, self.json_mode)
                attempts += 1
                tries += 1
                sent_at = self.clock()
                outcome, reply = await self._send(item, lane)
            finally:
                self.pool.release(lane)
            usage = self._usage(item, outcome)
            cost = lane.pricer.cost(usage[0]) if usage else None
            if self.budget is not None:
                self.budget.settle(worst, cost)
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
                tries -= 1
                pausing = lane.quota.is_open
                if not await lane.quota.exhausted(item):
                    self._quota_gone(lane, outcome.message or "insufficient quota")
                elif pausing and not self.pool.single:
                    self.progress.note(
                        f"batchrun: warning: endpoint {lane.name!r} is paused: its quota is "
                        f"exhausted ({self._redact(outcome.message or 'insufficient quota')}); "
                        f"probing it for up to {self.job.limits.quota_wait_s:g} s while the "
                        f"others serve."
                    )
                failed_on = lane  # where another lane serves, it takes the row
                self.pool.poke()  # a probe may be due later: the waiting rows look again
                continue
            if lane.quota.probing(item):
                lane.quota.passed(item)
                self.pool.poke()  # the lane serves again
            if action is Action.OK:
                lane.answers += 1
                lane.pacer.recover(sent_at)
                assert usage is not None
                lane.pacer.reconcile(item.estimate, usage[0].total_tokens)
                if self.parser and item.ask_again(
                    self.parser, outcome, reply, usage, cost, self._count
                ):
                    item.kept_at = lane.name
                    tries, first_start, failed_on = 0, self.clock(), None
                    continue
                return self._success(item, outcome, attempts, reply, usage, cost, lane)
            if action is Action.FAIL:
                return self._failure(item, outcome, attempts, usage, cost, lane)
            if action is Action.BAD_KEY:
                tries -= 1  # the key's fault, not the row's
                self._bad_key(lane, outcome.message or "unauthorized")
                failed_on = lane
                continue
            if action is Action.BAD_ROUTE:
                tries -= 1  # the network's settings' fault, not the row's
                self._bad_route(lane, outcome.message or "refused")
                failed_on = lane
                continue
            if action is Action.RATE_LIMITED:
                # Pacing is the run's job: a rate limit never uses up a row's attempts, only
                # max_retry_s bounds its wait.
                tries -= 1
                lane.rate_limited += 1
                lane.pacer.cool_down(outcome.retry_after_s or RATE_LIMIT_COOL_DOWN_S, sent_at)
            exhausted = tries >= self.policy.max_attempts
            if exhausted or self.clock() - first_start > self.policy.max_retry_s:
                return self._failure(item, outcome, attempts, usage, cost, lane)
            failed_on = lane
            if action is Action.RETRY and not self.pool.serving_elsewhere(lane):
                # Nowhere else to go: the row's own backoff spaces its retries here.
                await self._nap(self.policy.delay(tries, outcome.retry_after_s, self.rng))

    @property
    def counter(self) -> TokenCounter:
        """The model's token counter, loaded when first needed."""
        return counter_for(str(self.job.request["model"]))

    def _reserve(self, item: Item, lane: Lane) -> float | None:
        """Reserve the request's worst case at `lane`'s prices against the budget; None
        (and a stop) if over."""
        if self.budget is None:
            return 0.0
        prompt = item.prompt_tokens if self.counter.exact else math.ceil(item.prompt_tokens * 1.2)
        worst = lane.pricer.worst_case(prompt, self.renderer.completion_estimate) or 0.0
        if self.budget.reserve(worst):
            return worst
        self._halt(
            BudgetReached(
                f"The budget of ${self.budget.limit:,.2f} is reached: ${self.budget.spent:,.4f} "
                f"spent and ${self.budget.reserved:,.4f} in flight, and the next request could "
                f"cost ${worst:,.4f}; raise cost.budget_usd and run again to continue "
                f"(finished rows are saved)."
            )
        )
        return None

    def _usage(self, item: Item, outcome: Outcome) -> tuple[Usage, bool] | None:
        """What the attempt used (counted locally when the gateway said nothing), if billed."""
        completion = outcome.completion
        if completion is None:
            return None
        if completion.usage is not None:
            return completion.usage, False
        return self._count_locally(item, completion.choices), True

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

    async def _send(self, item: Item, lane: Lane) -> tuple[Outcome, Reply | None]:
        body = item.body
        if body["model"] != lane.model:  # this gateway's name for the model
            body = {**body, "model": lane.model}
        lane.requests += 1
        lane.in_flight += 1
        lane.in_flight_tokens += item.estimate
        try:
            reply = await lane.wire.post(body)
        except TransportFailure as failure:
            return classify_failure(failure.kind, failure.message), None
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
        return outcome, reply

    # -- results --------------------------------------------------------------------------

    def _success(
        self,
        item: Item,
        outcome: Outcome,
        attempts: int,
        reply: Reply | None,
        counted: tuple[Usage, bool],
        cost: float | None,
        lane: Lane,
    ) -> RowResult:
        completion = outcome.completion
        assert completion is not None
        usage, estimated = counted
        if completion.response_model and completion.response_model != lane.model:
            self.counts.remapped += 1
        result = success_result(
            item.key,
            item.position,
            item.fingerprint,
            outcome,
            attempts=attempts,
            usage=usage + item.paid if item.paid else usage,
            usage_estimated=estimated,
            cost=plus_cost(cost, item.paid_cost),
            json_mode=self.json_mode,
            latency_s=reply.latency_s if reply else None,
            ttft_s=reply.ttft_s if reply else None,
        )
        result.endpoint = lane.name
        return result

    def _failure(
        self,
        item: Item,
        outcome: Outcome,
        attempts: int,
        counted: tuple[Usage, bool] | None,
        cost: float | None,
        lane: Lane,
    ) -> RowResult:
        kept = item.kept_answer(attempts, self.json_mode, counted, cost)
        if kept is not None:
            return kept  # asking again failed: the row keeps the answer it had
        usage, estimated = counted if counted is not None else (None, False)
        result = failure_result(
            item.key,
            item.position,
            item.fingerprint,
            outcome,
            attempts=attempts,
            redact=self._redact,
            usage=usage,
            usage_estimated=estimated,
            cost=cost,
        )
        result.endpoint = lane.name
        return result

    def _count(self, text: str) -> int:
        return self.counter.text(text)

    def _count_locally(self, item: Item, choices: tuple[str | None, ...]) -> Usage:
        return counted_usage(self.counter, item.body["messages"], choices)

    def _record(self, result: RowResult) -> None:
        self._buffer.append(result)
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

    async def _maybe_flush(self) -> None:
        if len(self._buffer) >= sizes.COMMIT_ROWS:
            await self._flush()

    async def _flush(self) -> None:
        """Commit the buffered results as one segment; on a full disk, wait for space, and
        with S3 out of reach, for S3.

        The write runs in a thread; if the awaiting task is cancelled (a second Ctrl-C), the
        write is still waited for, so that no commit is under way once the run moves on.
        While the disk is full, the results stay in the buffer (with those that keep coming
        back), no request starts, and the commit is tried again every RETRY_S until it
        passes or `disk_wait_s` is over (see `batchrun.storage.space`); likewise with S3 out of
        reach, with a growing backoff, for `storage_wait_s`.
        """
        async with self._flush_lock:
            while self._buffer:
                batch, self._buffer = self._buffer, []
                self._last_flush = time.monotonic()
                writing = asyncio.ensure_future(asyncio.to_thread(self.checkpoint.commit, batch))
                try:
                    await asyncio.shield(writing)
                except asyncio.CancelledError:
                    with contextlib.suppress(OSError):
                        await writing
                    raise
                except BatchrunError as exc:  # the checkpoint on S3 is lost or unreachable
                    self._buffer = batch + self._buffer
                    self._halt(exc)
                    return
                except OSError as exc:
                    if not (disk_full(exc) or isinstance(exc, S3Error)):
                        raise
                    self._buffer = batch + self._buffer
                    if isinstance(exc, S3Error):
                        waiting = await self._wait_for_store(exc, "commit")
                    else:
                        waiting = await self._wait_for_space(exc, self.checkpoint.folder)
                    if not waiting:
                        return
                    continue
                if self.space.succeeded():
                    again = (
                        "S3 answers again"
                        if self._shortage == "store"
                        else f"there is space again in {self.checkpoint.folder}"
                    )
                    self.progress.note(
                        f"batchrun: {again}: {len(batch):,} answers kept meanwhile are "
                        f"committed; going on."
                    )
                return  # what came back during the write waits for the next flush

    async def _wait_for_space(self, exc: OSError, folder: Path) -> bool:
        """A write into `folder` failed for lack of space: close the gate, say so once, and
        wait RETRY_S; False when it is not to be tried again (time is up, or the run is
        stopping), the run then stopped with what could not be saved."""
        what = what_is_full(exc)
        wait_s = self.job.limits.disk_wait_s
        if self.space.gave_up:
            return False
        if self.space.failed():
            self._shortage = "disk"
            self.progress.note(
                f"batchrun: the disk holding {folder} is {what}: no request starts until "
                f"there is space; {len(self._buffer):,} answers are kept in memory meanwhile, "
                f"and the run waits up to {wait_s:g} s (limits.disk_wait_s)."
            )
        left = self.space.left()
        if left <= 0 or self.stop is not None:
            self.space.give_up()
            if self.stop is None:
                self._full = (folder, what)
                self._halt(self.disk_full_stop())
            return False
        await self._nap(min(RETRY_S, left))
        return True

    def disk_full_stop(self) -> DiskFull:
        """The stop for a disk that stayed full, counting the answers not saved now."""
        folder, what = self._full
        return DiskFull(
            f"The disk holding {folder} stayed {what} for {self.job.limits.disk_wait_s:g} s: "
            f"{len(self._buffer):,} answers could not be saved and will be asked again; free "
            f"some space and run the same command to resume (every other answer is committed)."
        )

    async def _wait_for_store(self, exc: S3Error, what: str) -> bool:
        """A write to S3 (a `what`: "commit" or "upload") failed. Where the failure passes,
        close the gate, say so once, and wait a growing backoff: True, to try again. False
        when it is not to be tried again (S3 refused it, time is up, or the run is
        stopping): the run then stopped, unless it already had, saying what was not saved.
        A merge and the lease's renewals wait on their own (see `batchrun.checkpoint.folder`);
        while S3 is out of reach, the renewals fail, and the first commit after renews the
        lease before anything is written."""
        wait_s = self.job.limits.storage_wait_s
        if exc.transient and not self.space.gave_up:
            if self.space.failed(wait_s):
                self._shortage = "store"
                self._store_tries = 0
                self.progress.note(
                    f"batchrun: S3 cannot be reached ({exc.why}): no request starts until it "
                    f"answers; {len(self._buffer):,} answers are kept in memory meanwhile, and "
                    f"the run waits up to {wait_s:g} s (limits.storage_wait_s)."
                )
            left = self.space.left()
            if left > 0 and self.stop is None:
                await self._nap(min(store_backoff(self._store_tries), left))
                self._store_tries += 1
                return True
        self.space.give_up()
        if self._store_failure is None:
            self._store_failure = (exc, exc.transient, what)
        if self.stop is None:
            self._halt(self.store_stop())
        return False

    def store_stop(self, written: bool | None = None) -> StoreFailed:
        """The stop for S3 out of reach past storage_wait_s, or refusing a write, counting
        the answers not committed now; with `written` (the run's end: whether the output
        was written), where the rows committed so far are."""
        assert self._store_failure is not None
        _, waited, what = self._store_failure
        where = None if written is None else self._output_words(written)
        return StoreFailed(
            store_sentence(self.store_cause(), len(self._buffer), where, waited, what)
        )

    def store_cause(self) -> str:
        """What S3 did that stopped the run, in a few words."""
        assert self._store_failure is not None
        exc, waited, what = self._store_failure
        where = self.checkpoint.remote_url if what == "commit" else self.job.output_url
        return store_cause(exc, waited, what, self.job.limits.storage_wait_s, where or "")

    def _output_words(self, written: bool) -> str:
        return output_words(self.job, written, self.not_uploaded)

    def settle_stop(self, written: bool) -> None:
        """Once the run ended: make the stop's sentence say what is so now. A stop on S3
        counts the answers not committed and says where the output is; any other stop
        that left answers uncommitted (S3 was out of reach when it came) says how many."""
        stop, lost = self.stop, len(self._buffer)
        if isinstance(stop, StoreFailed) and self._store_failure is not None:
            self.stop = self.store_stop(written)
        elif stop is not None and lost and not isinstance(stop, DiskFull):
            if self.checkpoint.lease_lost is not None:
                why = "a run that lost its lease writes nothing more"
            elif self._store_failure is not None:
                why = self._store_failure[0].why
            else:
                why = "the commit failed"
            self.stop = with_uncommitted(stop, lost, why)

    async def publish_output(self) -> bool:
        """Upload the written output to S3 (nothing for a local one), waiting S3 out as a
        commit does; False, with `not_uploaded` set, when it could not be uploaded."""
        remote = self.job.output_remote
        if remote is None:
            return True
        while True:
            try:
                await asyncio.to_thread(sink.upload, self.job.output_path, remote)
            except S3Error as exc:
                if await self._wait_for_store(exc, "upload"):
                    continue
                self.not_uploaded = remote.url
                return False
            if self.space.succeeded():
                self.progress.note("batchrun: S3 answers again: the output is uploaded.")
            return True

    async def write_output(self, write: Callable[[], sink.Written]) -> sink.Written | None:
        """Write the output; on a full disk, wait for space as a commit does (unless the
        run already gave up on it). None when it could not be written."""
        while True:
            try:
                written = await asyncio.to_thread(write)
            except OSError as exc:
                if not disk_full(exc):
                    raise
                folder = self.job.output_path.parent
                if not await self._wait_for_space(exc, folder):
                    self.progress.note(
                        f"batchrun: the output {self.job.output_path} could not be written "
                        f"(the disk is {what_is_full(exc)}); every answer it would hold is "
                        f"committed: run the same command once there is space to write it."
                    )
                    return None
                continue
            self.space.succeeded()
            return written

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
