"""The batch lane: a job's rows through its batch endpoint's Files and Batches API.

An endpoint with `kind = "batch"` takes the rows a run would send now as Batch files (the
lines `export-batch` writes), at the provider's batch price; the answers come back in
output and error files and are committed as `import-batch` commits them. The lane is an
`Answerer` of the run's lifecycle (`batchrun.engine.lifecycle`); the job's direct endpoints,
if it has any, take what it leaves: rows a batch answered with a retryable failure, and,
with `[limits] deadline_s`, every row not answered when the deadline comes.

**Never submitted twice.** Each file is an intent in the checkpoint's ledger
(`batchrun.checkpoint.batches`), committed before anything is uploaded; each id the provider
gives is committed as soon as it is given. The ledger's key names the file at the provider
and goes into the batch's metadata, so a run that finds an intent without an id (a kill
came between the call and its record) lists the provider's files or batches for the key and
adopts what it finds before creating anything. The rows of a live intent are written into
no other file and sent by no lane. Collecting (download, import, record) can be repeated
after a kill: importing the same answers twice commits nothing new.

**One round** of the lane: poll every batch not yet ended; collect the ended ones; hand
over at the deadline; submit files for the rows pending (within `batch_rows`,
`batch_bytes`, the room left under `batch_enqueued_tokens` and the budget); wait `poll_s`.
A batch the provider refuses to start for its enqueued-token limit
(`token_limit_exceeded`) waits for running batches to end and is created again from the
same file. With `--detach` the lane submits and returns; a later run collects.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..batchfiles.commands import (
    ImportSummary,
    Passed,
    Pending,
    _Importer,
    _read,
    custom_id,
    pending_requests,
)
from ..checkpoint.batches import (
    ATTEMPT,
    KEY_CHARS,
    METADATA_KEY,
    POSITION,
    ROW_KEY,
    Intent,
    Ledger,
)
from ..config.job import Endpoint
from ..config.pricing import Budget, job_pricer
from ..core.tokens import TokenCounter, counter_for
from ..errors import BatchrunError, BudgetReached, Interrupted, RunStopped
from ..protocol.batches import BatchClient, BatchInfo, BatchState
from ..protocol.result import RowResult, unsendable_result
from ..rows import sink
from ..rows.plan import RunOptions
from ..rows.render import Rendered
from ..rows.sink import upload_waiting
from .lifecycle import Answered, OpenRun

log = logging.getLogger("batchrun")

TOKEN_LIMIT = "token_limit_exceeded"
MAX_REFUSALS = 5  # token_limit_exceeded this often with nothing else running: the file is too big
HAND_OVER_POLLS = 3  # looks at the batches the deadline cancelled before the direct lanes go
CANCEL_POLL_S = 5.0  # how often cancel-batches looks at the batches it cancelled


class DeadlinePassed(RunStopped):
    """The deadline came with rows unanswered and no direct endpoint to take them."""


@dataclass
class LaneFigures:
    """What the batch lane did this run, for the summary, the progress line and `report`."""

    files: int = 0  # files submitted
    lines: int = 0  # lines in them
    collected: int = 0  # batches collected
    ok: int = 0
    failed: int = 0
    pending: Counter[str] = field(default_factory=Counter)  # lines left pending, by why
    already: int = 0  # answers for rows answered elsewhere first (after a hand-over)
    cost: float = 0.0
    already_cost: float = 0.0  # what those cost: paid twice
    tokens: int = 0
    handed_over: int = 0  # rows the deadline sent direct


class BatchLane:
    """The answerer of a job with a batch endpoint (see the module docstring); its direct
    endpoints, if any, answer after it through the local engine (`direct`)."""

    def __init__(
        self,
        opened: OpenRun,
        *,
        detach: bool,
        direct: Callable[[OpenRun], Any] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        job = opened.job
        endpoint = job.batch_endpoint
        assert endpoint is not None
        self.opened = opened
        self.job = job
        self.endpoint: Endpoint = endpoint
        self.detach = detach
        self._make_direct = direct if job.direct_endpoints else None
        self.direct: Any = None  # the direct lanes' engine, once they answer
        self.clock = clock  # wall time: a batch's times outlive the process
        self.stop: BatchrunError | None = None
        self.not_uploaded: str | None = None
        self.figures = LaneFigures()
        self.pricer = job_pricer(job, endpoint)  # at the batch price
        self.ledger: Ledger | None = None
        self.budget: Budget | None = None
        self._interrupts = 0
        self._stopping = asyncio.Event()
        self._warned: set[str] = set()  # unknown statuses already warned about
        self._counter: TokenCounter | None = None
        # Whether the last walk of the input found every pending row a file: until a batch
        # is collected (which may leave rows pending again), there is nothing to walk for.
        self._exhausted = False
        self._walks = 0  # walks of the input so far: the first counts the rows passed over

    # -- the Answerer's face --------------------------------------------------------------

    @property
    def hurried(self) -> bool:
        return self._interrupts >= 2 or (self.direct is not None and self.direct.hurried)

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: stop submitting and waiting; the batches keep running (they
        are paid for). A second one stops at once."""
        self._interrupts += 1
        if self.direct is not None:
            self.direct.interrupt()
        if self.stop is None:
            self.stop = Interrupted("Interrupted.")  # its sentence is settled at the end
        self._stopping.set()

    async def execute(self, options: RunOptions) -> None:
        checkpoint = self.opened.checkpoint
        self.ledger = ledger = await asyncio.to_thread(Ledger, checkpoint.folder)
        if self.job.cost.budget_usd:
            self.budget = Budget(self.job.cost.budget_usd, checkpoint.spend())
            # The batches of earlier runs not collected yet hold their worst cases still.
            self.budget.reserved = sum(i.reserved_usd for i in ledger.open())
        self.opened.progress.endpoints = self._describe
        async with self._api() as api:
            try:
                await self._rounds(api, options)
            except RunStopped as exc:  # the endpoint refused the key, the route, the budget
                self.stop = exc
            if self.stop is None and not self.detach and self._make_direct is not None:
                await self._answer_direct(options)
                with contextlib.suppress(BatchrunError):  # the batches handed over, if ended
                    await self._poll(api)

    async def _rounds(self, api: BatchClient, options: RunOptions) -> None:
        ledger = self.ledger
        assert ledger is not None
        await self._adopt(api)
        if options.cancel_batches:
            await self._cancel_all(api)
            return
        while self.stop is None:
            await self._poll(api)
            if self.stop is not None:
                break
            if self._deadline_due():
                await self._hand_over(api)
                break
            await self._submit(api, options)
            if self.detach or self.stop is not None or not ledger.live():
                break
            await self._nap(self.endpoint.poll_s)

    async def write_output(self, write: Callable[[], sink.Written]) -> sink.Written | None:
        return await asyncio.to_thread(write)

    async def publish_output(self) -> bool:
        job = self.job
        if job.output_remote is None:
            return True
        note = self.opened.progress.note
        wait_s = job.limits.storage_wait_s
        failure = await asyncio.to_thread(
            upload_waiting, job.output_path, job.output_remote, wait_s, note
        )
        if failure is None:
            return True
        self.not_uploaded = job.output_url
        return False

    def settle_stop(self, written: bool) -> None:
        """An interrupt or a deadline says what is left running at the provider."""
        if self.direct is not None:
            self.direct.settle_stop(written)
            if self.direct.stop is not None:
                self.stop = self.direct.stop
        if isinstance(self.stop, Interrupted | DeadlinePassed) and self.ledger is not None:
            running = self.ledger.live()
            if running:
                rows = sum(i.rows for i in running)
                head = (
                    "Interrupted"
                    if isinstance(self.stop, Interrupted)
                    else f"The deadline ({self.job.limits.deadline_s:g} s, limits.deadline_s) "
                    f"passed with no direct endpoint to take the rows left"
                )
                self.stop = type(self.stop)(
                    f"{head}: {rows:,} rows are in {len(running)} batches still running at "
                    f"{self.endpoint.name} (they are paid for); run the same command to "
                    f"collect them, or `batchrun cancel-batches` to cancel them."
                )
            elif isinstance(self.stop, Interrupted):
                self.stop = Interrupted(
                    "Interrupted: finished rows are saved; run the same command to resume."
                )

    def answered(self) -> Answered:
        figures = self.figures
        endpoints: dict[str, Mapping[str, Any]] = {
            self.endpoint.name: {
                "requests": figures.lines,
                "answers": figures.ok,
                "errors": dict(figures.pending),
                "rate_limited": 0,
                "allowed_rpm": None,
                "circuit_opened": 0,
                "out": None,
                "state": "batch",
            }
        }
        ok, failed, ran = figures.ok, figures.failed, figures.ok + figures.failed
        remapped, tokens, spend = 0, figures.tokens, figures.cost
        if self.direct is not None:
            direct = self.direct.answered()
            endpoints.update(direct.endpoints)
            ran += direct.ran
            remapped += direct.remapped
            # The direct engine's tokens and spend are the run's progress, to which the
            # batches' collects added theirs.
            tokens, spend = direct.tokens, direct.spend
        if self.direct is not None:
            # The direct engine walked the checkpoint after the batches' commits: its
            # standing counts them.
            ok, failed = direct.ok, direct.failed
        return Answered(
            ok=ok,
            failed=failed,
            ran=ran,
            remapped=remapped,
            tokens=tokens,
            spend=spend,
            endpoints=endpoints,
            batches=self._in_flight(),
        )

    # -- the rounds -----------------------------------------------------------------------

    def _api(self) -> BatchClient:
        opened = self.opened
        name = self.endpoint.name
        return BatchClient(
            opened.urls[name],
            opened.keys.get(name),
            name=name,
            key_env=self.endpoint.api_key_env,
            headers=self.endpoint.headers,
            route=opened.routes[name],
            timeout_s=self.job.limits.request_timeout_s,
            max_retry_s=self.job.limits.max_retry_s,
            sleep=self._nap,
        )

    async def _adopt(self, api: BatchClient) -> None:
        """Intents a kill left without an id: find at the provider what they created, and
        adopt it (or create it, where nothing was)."""
        assert self.ledger is not None
        for intent in self.ledger.open():
            if intent.batch_id is None and intent.handed_over_at is None:
                await self._launch(api, intent, recovering=True)

    async def _launch(self, api: BatchClient, intent: Intent, *, recovering: bool) -> None:
        """Upload the intent's file and create its batch, each id committed as it comes;
        `recovering`: a kill may have come after a call and before its record."""
        ledger = self.ledger
        assert ledger is not None
        if intent.file_id is None:
            found = await api.find_file(intent.filename) if recovering else None
            if found is None:
                found = await api.upload(ledger.lines_path(intent), intent.filename)
            ledger.record(intent, file_id=found.id, uploaded_at=self.clock())
        if intent.batch_id is None:
            batch: BatchInfo | None = None
            if recovering:
                # The newest batch of the key: one refused before is taken again, and is
                # recreated once its refusal is seen (`_poll`).
                batch = await api.find_batch(METADATA_KEY, intent.key)
            if batch is None:
                assert intent.file_id is not None
                batch = await api.create_batch(
                    intent.file_id,
                    completion_window=self.endpoint.completion_window,
                    metadata={METADATA_KEY: intent.key, "batchrun_job": self.job.name[:512]},
                )
            self._record_batch(intent, batch, submitted=True)

    def _record_batch(self, intent: Intent, batch: BatchInfo, *, submitted: bool = False) -> None:
        assert self.ledger is not None
        changes: dict[str, Any] = {
            "batch_id": batch.id,
            "status": batch.status,
            "counts": dataclasses.asdict(batch.request_counts),
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
        }
        if submitted:
            changes["submitted_at"] = self.clock()
        if batch.state.ended and intent.finished_at is None:
            changes["finished_at"] = self.clock()
        self.ledger.record(intent, **changes)

    async def _poll(self, api: BatchClient) -> None:
        """Ask after every batch not ended; collect the ended ones; recreate the ones the
        provider refused for its enqueued-token limit, once there is room."""
        assert self.ledger is not None
        for intent in self.ledger.open():
            if self._stopping.is_set() and self.stop is not None:
                return
            if intent.batch_id is None:
                continue  # refused for the token limit: created again by `_submit`
            if intent.finished_at is None:
                batch = await api.get_batch(intent.batch_id)
                if batch.state is BatchState.UNKNOWN and batch.status not in self._warned:
                    self._warned.add(batch.status)
                    self.opened.progress.note(
                        f"batchrun: warning: {self.endpoint.name} says batch {batch.id} is "
                        f"{batch.status!r}, a status batchrun does not know; it is taken as "
                        f"still running."
                    )
                if batch.state is BatchState.FAILED and TOKEN_LIMIT in batch.error_codes:
                    # Not the rows' failure: the provider had too many tokens enqueued.
                    self.ledger.record(
                        intent, refused=[*intent.refused, batch.id], batch_id=None, status=None
                    )
                    continue
                self._record_batch(intent, batch)
            if intent.finished_at is not None:
                await self._collect(api, intent)

    async def _collect(self, api: BatchClient, intent: Intent) -> None:
        """Download an ended batch's output and error files and commit their answers."""
        ledger = self.ledger
        assert ledger is not None
        files = []
        for kind, file_id in (("output", intent.output_file_id), ("errors", intent.error_file_id)):
            if file_id is None:
                continue
            path = ledger.answers_path(intent, kind)
            if not path.exists():
                await api.download(file_id, path)
            files.append(path)
        summary = await asyncio.to_thread(self._import, intent, files)
        figures = self.figures
        late = intent.handed_over_at is not None
        figures.collected += 1
        figures.ok += summary.ok
        figures.failed += summary.failed
        figures.pending.update(summary.pending)
        figures.already += summary.already
        figures.cost += summary.cost or 0.0
        figures.tokens += summary.tokens
        figures.already_cost += summary.already_cost
        progress = self.opened.progress
        progress.ok += summary.ok
        progress.failed += summary.failed
        progress.done += summary.ok + summary.failed
        progress.spend += (summary.cost or 0.0) + summary.already_cost
        progress.tokens += summary.tokens
        if self.budget is not None:
            self.budget.settle(intent.reserved_usd, (summary.cost or 0.0) + summary.already_cost)
        collected = {
            "ok": summary.ok,
            "failed": summary.failed,
            "pending": dict(summary.pending),
            "already": summary.already,
            "cost": summary.cost or 0.0,
            "late_cost": summary.already_cost if late else 0.0,
        }
        ledger.record(intent, collected_at=self.clock(), collected=collected)
        await asyncio.to_thread(ledger.drop_files, intent)
        self._exhausted = False

    def _import(self, intent: Intent, files: list[Path]) -> ImportSummary:
        """Commit the answers in `files` (the importer of `import-batch`): each answer's
        latency is the batch's time; rows out of attempts fail on a retryable error."""
        opened = self.opened
        summary = ImportSummary(files=len(files), endpoint=self.endpoint.name)
        submitted = intent.submitted_at or intent.created_at
        latency = (intent.finished_at or self.clock()) - submitted
        last_try = functools.partial(self._last_try, intent)
        importer = _Importer(
            self.job,
            self.endpoint,
            opened.plan,
            opened.checkpoint,
            summary,
            os.environ,
            1.0,  # the endpoint's pricer has its batch price
            latency_s=latency,
            last_try=last_try,
        )
        # A file's rows are in input order: the importer's pass over the input begins at
        # the first of them, not at the input's first row for every batch (which made
        # collecting N batches read the input N/2 times over).
        assert self.ledger is not None
        first = self.ledger.rows_of([intent], [POSITION]).get_column(POSITION).min()
        if first is not None:
            importer.start = int(first)  # type: ignore[arg-type]
        with contextlib.closing(importer):
            for path in files:
                importer.take(_read(path))
        return summary

    def _last_try(self, intent: Intent, keys: pl.Series) -> set[str]:
        """The rows among `keys` this intent held on their last attempt: where no direct
        endpoint takes the rows a batch did not answer, at `limits.max_attempts`."""
        if self._make_direct is not None or intent.handed_over_at is not None:
            return set()
        assert self.ledger is not None
        rows = self.ledger.rows_of([intent]).filter(
            pl.col(ROW_KEY).is_in(keys.implode())
            & (pl.col(ATTEMPT) >= self.job.limits.max_attempts)
        )
        return set(rows.get_column(ROW_KEY).to_list())

    # -- submitting -----------------------------------------------------------------------

    async def _submit(self, api: BatchClient, options: RunOptions) -> None:
        """Files for the rows pending, while there is room (see the module docstring);
        batches the provider refused for its token limit are created again first."""
        ledger = self.ledger
        assert ledger is not None
        for intent in ledger.live():
            if intent.batch_id is None and intent.file_id is not None and self._room(intent.tokens):
                running = any(i.batch_id and i.finished_at is None for i in ledger.live())
                if len(intent.refused) >= MAX_REFUSALS and not running:
                    raise RunStopped(
                        f"{self.endpoint.name} refused batch file {intent.filename} "
                        f"{len(intent.refused)} times for its enqueued-token limit "
                        f"(token_limit_exceeded) with no other batch running: lower "
                        f"batch_enqueued_tokens and batch_rows so that a file fits the limit, "
                        f"then run the same command."
                    )
                await self._launch(api, intent, recovering=False)
        if self._stopping.is_set():
            return
        if self._exhausted:
            return
        making = self._files(options)
        with contextlib.closing(making):
            while not self._stopping.is_set():
                made = await asyncio.to_thread(_next, making)
                if made is None:
                    break
                self.figures.files += 1
                self.figures.lines += made.rows
                await self._launch(api, made, recovering=False)

    def _room(self, tokens: int) -> bool:
        """Whether `tokens` more fit under the endpoint's enqueued-token cap."""
        cap = self.endpoint.batch_enqueued_tokens
        if cap is None:
            return True
        assert self.ledger is not None
        enqueued = sum(
            i.tokens for i in self.ledger.live() if i.batch_id is not None and i.finished_at is None
        )
        return enqueued + tokens <= cap

    def _files(self, options: RunOptions) -> Generator[Intent, None, None]:
        """Intents for the rows pending, one file each, committed to the ledger; rows that
        cannot become a request are recorded failed, as a run records them."""
        ledger = self.ledger
        assert ledger is not None
        opened, endpoint = self.opened, self.endpoint
        # With direct endpoints, rows a batch held before are theirs now.
        holders = ledger.intents() if self._make_direct is not None else ledger.live()
        held = ledger.rows_of(holders, [POSITION]).get_column(POSITION)
        requests = pending_requests(
            opened.plan, opened.checkpoint, options, self.job.model_at(endpoint), held
        )
        counting = bool(endpoint.batch_enqueued_tokens or self.budget is not None)
        self._walks += 1
        with contextlib.closing(requests):
            stream = self._sendable(requests)
            pending = next(stream, None)
            while pending is not None:
                if not self._room(0):
                    return
                scratch = ledger.scratch()
                keys: list[str] = []
                positions: list[int] = []
                digest = hashlib.sha256()
                size = tokens = 0
                worst = 0.0
                with open(scratch, "wb") as out:
                    while pending is not None:
                        line = pending.line
                        cost = self._tokens(pending) if counting else (0, 0.0)
                        if keys and (
                            len(keys) == endpoint.batch_rows
                            or size + len(line) > endpoint.batch_bytes
                            or not self._room(tokens + cost[0])
                        ):
                            break
                        if len(line) > endpoint.batch_bytes:
                            scratch.unlink(missing_ok=True)
                            raise BatchrunError(
                                f"The request of row {pending.key!r} takes {len(line):,} bytes, "
                                f"more than batch_bytes ({endpoint.batch_bytes:,}) of endpoint "
                                f"{endpoint.name!r}: shorten that row, or send the job through "
                                f"a direct endpoint."
                            )
                        out.write(line)
                        cid = custom_id(pending.key, pending.fingerprint)
                        digest.update(cid.encode() + b"\n")
                        keys.append(pending.key)
                        positions.append(pending.position)
                        size += len(line)
                        tokens += cost[0]
                        worst += cost[1]
                        pending = next(stream, None)
                if self.budget is not None and not self.budget.reserve(worst):
                    scratch.unlink(missing_ok=True)
                    self.stop = BudgetReached(
                        f"The budget of ${self.budget.limit:,.2f} is reached: the next Batch "
                        f"file of {len(keys):,} rows could cost ${worst:,.4f} with "
                        f"${self.budget.spent:,.4f} spent and ${self.budget.reserved:,.4f} in "
                        f"batches; raise cost.budget_usd and run again to continue (finished "
                        f"rows are saved)."
                    )
                    return
                rows = pl.DataFrame(
                    {ROW_KEY: keys, POSITION: positions},
                    schema={ROW_KEY: pl.String, POSITION: pl.Int64},
                )
                earlier = ledger.attempts(rows.get_column(ROW_KEY))
                rows = rows.join(earlier, on=ROW_KEY, how="left").with_columns(
                    (pl.col(ATTEMPT).fill_null(0) + 1).cast(pl.Int32)
                )
                # The same rows sent again (their batch left them pending) make a new key:
                # each of them is on a later attempt, so the highest attempt is higher.
                digest.update(f"attempt {rows.get_column(ATTEMPT).max()!s}\n".encode())
                intent = Intent(
                    key=digest.hexdigest()[:KEY_CHARS],
                    endpoint=endpoint.name,
                    rows=len(keys),
                    bytes=size,
                    tokens=tokens,
                    reserved_usd=worst,
                    created_at=self.clock(),
                )
                yield ledger.propose(scratch, rows, intent)
            self._exhausted = True

    def _sendable(
        self, requests: Generator[Pending | Passed, None, None]
    ) -> Generator[Pending, None, None]:
        """The rows to send; the rows passed over counted (once), the ones that cannot
        become a request recorded failed, as a run records them."""
        progress = self.opened.progress
        for request in requests:
            if isinstance(request, Pending):
                yield request
            elif request.done:
                if self._walks == 1:
                    progress.skip(request.rows)
            else:
                self.opened.checkpoint.commit([_unsendable(r) for r in request.rendered])
                self.figures.failed += request.rows
                progress.failed += request.rows
                progress.done += request.rows

    def _tokens(self, pending: Pending) -> tuple[int, float]:
        """A line's prompt + max_tokens × n tokens, and its worst-case cost."""
        if self._counter is None:
            self._counter = counter_for(self.job.model_at(self.endpoint))
        renderer = self.opened.plan.renderer
        prompt = self._counter.chat(renderer.to_messages(pending.prompt))
        completion = renderer.completion_estimate
        worst = self.pricer.worst_case(prompt, completion) or 0.0
        return prompt + completion, worst

    # -- the deadline and the direct lanes ------------------------------------------------

    def _deadline_due(self) -> bool:
        deadline = self.job.limits.deadline_s
        if deadline is None or self.ledger is None:
            return False
        running = [i for i in self.ledger.live() if i.submitted_at is not None]
        if not running:
            return False
        return self.clock() >= min(i.submitted_at or 0.0 for i in running) + deadline

    async def _hand_over(self, api: BatchClient) -> None:
        """The deadline: cancel the batches still running, collect what they finished if
        they end within a few polls, and hand their other rows to the direct lanes; without
        direct endpoints, the run stops and the batches keep running."""
        assert self.ledger is not None
        if self._make_direct is None:
            self.stop = DeadlinePassed("The deadline passed.")  # settled at the end
            return
        for intent in self.ledger.live():
            if intent.batch_id is not None and intent.finished_at is None:
                with contextlib.suppress(BatchrunError):
                    await api.cancel_batch(intent.batch_id)
            self.figures.handed_over += intent.rows
            self.ledger.record(
                intent, cancel_requested_at=self.clock(), handed_over_at=self.clock()
            )
            if intent.batch_id is None:  # a file with no batch (refused): nothing will come
                self.ledger.record(intent, collected_at=self.clock(), collected={"cancelled": True})
                if self.budget is not None:
                    self.budget.settle(intent.reserved_usd, 0.0)
        # What the cancelled batches finished is theirs: a few polls for them to end, so
        # that it is collected before the direct lanes take the rest. A batch still
        # cancelling after that is collected when it ends (its answers then come second).
        for _ in range(HAND_OVER_POLLS):
            if self.stop is not None or not any(i.batch_id for i in self.ledger.open()):
                break
            await self._nap(self.endpoint.poll_s)
            await self._poll(api)

    async def _cancel_all(self, api: BatchClient) -> None:
        """`batchrun cancel-batches`: cancel every batch still running, then collect each
        as the provider ends it (what it finished is committed; its other rows stay
        pending)."""
        assert self.ledger is not None
        for intent in self.ledger.live():
            if intent.batch_id is not None and intent.finished_at is None:
                await api.cancel_batch(intent.batch_id)
                self.ledger.record(intent, cancel_requested_at=self.clock())
        while self.stop is None and any(i.batch_id for i in self.ledger.open()):
            await self._poll(api)
            if any(i.batch_id for i in self.ledger.open()):
                await self._nap(min(self.endpoint.poll_s, CANCEL_POLL_S))
        for intent in self.ledger.live():  # files never turned into a batch: nothing to cancel
            if intent.batch_id is None:
                self.ledger.record(intent, collected_at=self.clock(), collected={"cancelled": True})

    async def _answer_direct(self, options: RunOptions) -> None:
        """The direct endpoints answer the rows left: the local engine over them alone."""
        assert self._make_direct is not None
        direct_job = dataclasses.replace(self.job, endpoints=tuple(self.job.direct_endpoints))
        opened = dataclasses.replace(self.opened, job=direct_job)
        self.direct = self._make_direct(opened)
        if self._interrupts:
            self.direct.interrupt()
        await self.direct.execute(options)

    # -- the progress line ----------------------------------------------------------------

    def _in_flight(self) -> dict[str, int]:
        """Rows and batches still running at the provider."""
        if self.ledger is None:
            return {"rows": 0, "batches": 0}
        live = [i for i in self.ledger.live() if i.submitted_at is not None]
        return {"rows": sum(i.rows for i in live), "batches": len(live)}

    def _describe(self) -> str:
        if self.ledger is None:
            return ""
        states: Counter[str] = Counter()
        done = total = 0
        for intent in self.ledger.open():
            states[intent.status or "submitting"] += 1
            done += intent.counts.get("completed", 0) + intent.counts.get("failed", 0)
            total += intent.counts.get("total", 0) or intent.rows
        if not states:
            return f"{self.endpoint.name}: no batch running"
        parts = ", ".join(f"{n} {status}" for status, n in sorted(states.items()))
        return f"{self.endpoint.name}: batches {parts} ({done:,}/{total:,} lines)"

    async def _nap(self, seconds: float) -> None:
        """Sleep, cut short by a stop."""
        if self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _next(intents: Generator[Intent, None, None]) -> Intent | None:
    return next(intents, None)


def _unsendable(rendered: Rendered) -> RowResult:
    key, position, fp, _, invalid = rendered
    return unsendable_result(key, position, fp, invalid or "")


def batch_lanes(opened: OpenRun, *, detach: bool, direct: Callable[[OpenRun], Any]) -> BatchLane:
    """The answerer of a job with a batch endpoint; `direct` makes the direct lanes' engine
    for the rows it leaves."""
    return BatchLane(opened, detach=detach, direct=direct)
