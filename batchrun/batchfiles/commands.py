"""OpenAI Batch files: a job's pending rows out as Batch input files, the answers back in.

**Export** writes the rows a `run` would send now (no committed result for the current
request; with `retry_failed` the failed ones too) as lines of the Batch input format,

    {"custom_id": "<row key>@<fingerprint[:16]>", "method": "POST",
     "url": "/v1/chat/completions", "body": {<the request a run would send>}}

less `stream` and `stream_options` (the Batch API does not stream), in `batch-0001.jsonl`,
`batch-0002.jsonl`, … of at most MAX_REQUESTS lines and MAX_BYTES bytes each, every file
written atomically. Rows that cannot become a request (an empty prompt) are not exported:
`run` records them as failed without sending anything. Files hold request bodies only; the
key and the job's headers are never in them.

**The custom_id** names the row and the request it answers. The API asks only that it be a
string unique within a batch; row keys are unique in a job, so custom_ids are too. Import
splits it on its last `@` (a key may hold `@` itself) and takes the answer only if the 16 hex
digits begin the fingerprint of the request the job renders for that row now: an answer to
a request that has changed since the export (template, model, parameters) is counted stale,
never recorded as the answer to another request. A job that streams has the same
fingerprint when its rows are answered through a Batch file, which did not stream.

**Import** reads Batch output and error files line by line and classifies every `response`
with the classifier of a direct run (`outcome.classify`):

| line                                                   | what import does                  |
| ------------------------------------------------------ | --------------------------------- |
| an answer                                              | commits an `ok` result            |
| a final failure (a refusal, another 4xx)               | commits a `failed` result         |
| a retryable error, a rate limit, quota, a bad key; a   | commits nothing: the row stays    |
| line with no response (expired, cancelled)             | pending for `run`, counted by why |
| unknown custom_id; an older request (stale); a row     | commits nothing; counted          |
| answered earlier in this import (duplicate) or before  |                                   |

A row failed before takes a new answer, never a new failure, so importing the same file
twice changes nothing. Results are committed `sizes.IMPORT_COMMIT_ROWS` at a time under the
checkpoint's lock, and the output Parquet is then rewritten from the checkpoint.

**Memory** follows the batch sizes, never the row count. Export walks the input and the
checkpoint together, as a run does. Import takes the lines GROUP_LINES at a time: for a
group it finds the rows its custom_ids name in one pass over the input (MATCH_ROWS rows read
at a time, only the matched ones rendered) beside a walk of the checkpoint, which gives
their latest results, then classifies the group's lines in order. The pass begins where the
group before it found its first row and goes round the input's end to its beginning, so
that answer files in export order read the input about once over the whole import. What
must cross groups is what this import did to a row an earlier group settled (whether with
an answer, and the row's latest result before the import, which decides "already"): it is
written to a small Parquet file per group in the checkpoint folder and read back for the
keys of each group (see `_Settled`), so it takes disk, not memory. The price is time where
the files are out of order: a group whose rows lie all over the input reads all of it.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import polars as pl

from ..checkpoint.batches import Ledger
from ..checkpoint.folder import Checkpoint, checkpoint_dir
from ..checkpoint.walk import FAILED_MARK
from ..config.job import Endpoint, Job
from ..config.pricing import job_pricer
from ..core import sizes
from ..core.completion import Usage
from ..core.tokens import TokenCounter, counter_for
from ..errors import JobError, UserError
from ..protocol.outcome import Action, Outcome, classify
from ..protocol.result import FINGERPRINT, RowResult, counted_usage, failure_result, success_result
from ..rows import render, sink
from ..rows.anchor import anchor
from ..rows.plan import PRIOR, Plan, RunOptions, plan_run, settles, with_prior
from ..rows.source import ROW_KEY
from ..storage.files import atomic_file

MAX_REQUESTS = 50_000  # requests in one Batch input file: the API's limit
MAX_BYTES = 200_000_000  # bytes in one Batch input file: the API's 200 MB
BATCH_PRICE_FACTOR = 0.5  # the OpenAI Batch API bills half the list price
ENDPOINT = "/v1/chat/completions"
FILE_NAME = "batch-{:04d}.jsonl"
FILE_GLOB = "batch-[0-9][0-9][0-9][0-9].jsonl"  # only what export writes, never a download
ID_SEPARATOR = "@"
ID_FINGERPRINT_CHARS = 16  # hex digits of the request fingerprint a custom_id carries
NOT_BATCHED = ("stream", "stream_options")  # request keys a Batch body leaves out
# answer lines an import takes at a time: what bounds its memory, with `sizes.IMPORT_COMMIT_ROWS`
GROUP_LINES = 50_000
MATCH_ROWS = 25_000  # input rows an import reads at a time to find a group's rows
SETTLED_NAME = "import-{:05d}.tmp"  # in the checkpoint folder: a group's `_Settled` rows

_KEY, _ANSWERED = "key", "answered"  # the columns of a `_Settled` file, beside PRIOR


@dataclass(frozen=True)
class BatchFile:
    """One Batch input file written by an export."""

    path: Path
    requests: int
    size: int  # bytes


@dataclass
class ExportSummary:
    """What an export wrote and left out."""

    total: int  # rows the job covers (the first `limit` with --limit)
    endpoint: str = ""  # the endpoint the batch is for (its model name, its prices)
    pooled: bool = False  # the job has [[endpoints]]: name the endpoint
    exported: int = 0  # rows written as requests
    done: int = 0  # rows already settled for their current request
    unsendable: int = 0  # rows that cannot become a request: left to `run`
    in_batches: int = 0  # rows in the batch lane's batches still running: not exported
    files: list[BatchFile] = field(default_factory=list)


@dataclass
class ImportSummary:
    """What an import did with each line, and where the job stands after it."""

    files: int
    endpoint: str = ""  # the endpoint the batch ran at, named in each result
    pooled: bool = False
    lines: int = 0
    ok: int = 0  # rows given an answer
    failed: int = 0  # rows given a final failure
    pending: Counter[str] = field(default_factory=Counter)  # lines left pending, by why
    stale: int = 0  # lines answering an older request of their row
    unknown: int = 0  # lines whose custom_id names no row of the job
    duplicate: int = 0  # lines for a row settled by an earlier line of this import
    already: int = 0  # lines for a row settled for this request before this import
    cost: float | None = None  # of the rows imported; None when the model has no price
    already_cost: float = 0.0  # of the answers among `already`: paid for, and not used
    tokens: int = 0  # the tokens of the rows imported
    rows: int = 0  # rows of the job
    rows_ok: int = 0  # rows whose result for the current request is ok, after the import
    rows_failed: int = 0  # ... is a failure
    output_path: Path = Path()
    rows_written: int = 0


# -- export -------------------------------------------------------------------------------


def export_batch(
    job: Job,
    folder: Path,
    *,
    limit: int | None = None,
    retry_failed: bool = False,
    force: bool = False,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_BYTES,
    endpoint: str | None = None,
) -> ExportSummary:
    """Write the job's pending rows into `folder` as Batch input files for `endpoint` (by
    name; the first by default), with the model name it has for the job's model."""
    options = RunOptions(limit=limit, retry_failed=retry_failed)
    at = job.endpoint_named(endpoint)
    plan = plan_run(job, options)
    earlier = sorted(folder.glob(FILE_GLOB)) if folder.is_dir() else []
    if earlier and not force:
        raise UserError(
            f"{folder} already holds Batch files of an earlier export ({earlier[0].name}, …): "
            f"import their answers first and export into an empty folder, or add --force to "
            f"replace them."
        )
    summary = ExportSummary(total=plan.total, endpoint=at.name, pooled=job.pooled)
    # The lock keeps a run from settling rows while they are being exported.
    checkpoint = Checkpoint(checkpoint_dir(job.output_path), job.checkpoint_remote).open()
    try:
        anchor(checkpoint, plan.source)
        with _writing(folder):
            for path in earlier:
                path.unlink()
            folder.mkdir(parents=True, exist_ok=True)
            # Rows in the batch lane's batches still running are written into no file.
            held = Ledger(checkpoint.folder).held_positions()
            summary.in_batches = held.len()
            model = job.model_at(at)
            pending = _pending_lines(plan, checkpoint, options, summary, model, held)
            with contextlib.closing(pending) as lines:
                summary.files = write_batch_files(
                    lines, folder, max_requests=max_requests, max_bytes=max_bytes
                )
    finally:
        checkpoint.close()
    return summary


def _pending_lines(
    plan: Plan,
    checkpoint: Checkpoint,
    options: RunOptions,
    summary: ExportSummary,
    model: str,
    held: pl.Series | None = None,
) -> Generator[tuple[str, bytes], None, None]:
    """(row key, Batch line) of every row a run would send now, asking for `model`, but
    those at the positions in `held`; counts the others."""
    requests = pending_requests(plan, checkpoint, options, model, held)
    with contextlib.closing(requests):
        for pending in requests:
            if isinstance(pending, Pending):
                summary.exported += 1
                yield pending.key, pending.line
            elif pending.done:
                summary.done += pending.rows
            else:
                summary.unsendable += pending.rows


@dataclass(frozen=True, slots=True)
class Pending:
    """A row a run would send now, as a Batch line."""

    key: str
    position: int
    fingerprint: str
    line: bytes
    prompt: Any  # what its messages are made of (`Renderer.to_messages` takes it)


@dataclass(frozen=True, slots=True)
class Passed:
    """Rows of one input batch that are not sent: settled already (`done`), or that cannot
    become a request (an empty prompt: `rendered` holds them, for their failure to be
    recorded)."""

    rows: int
    done: bool
    rendered: list[render.Rendered] = field(default_factory=list)


def pending_requests(
    plan: Plan,
    checkpoint: Checkpoint,
    options: RunOptions,
    model: str,
    held: pl.Series | None = None,
) -> Generator[Pending | Passed, None, None]:
    """Every row a run would send now, as a Batch line asking for `model`, in input order;
    and, for each input batch, how many rows it passes over and why. The input and the
    checkpoint are walked together, as a run walks them. Rows at the positions in `held`
    (rows in a batch still running) are neither sent nor counted."""
    renderer = plan.renderer
    batches = plan.source.batches(renderer.columns, sizes.READ_ROWS, options.limit)
    with contextlib.closing(batches), checkpoint.walk([FINGERPRINT, "status"]) as walk:
        for batch in batches:
            if not batch.height:
                continue
            frame = with_prior(renderer, batch, walk)
            if held is not None and held.len():
                frame = frame.filter(~pl.col(render.POSITION).is_in(held.implode()))
            done = settles(retry_failed=options.retry_failed)
            sendable = pl.col(render.REASON).is_null()
            counts = frame.select(done=done.sum(), unsendable=(~done & ~sendable).sum()).row(
                0, named=True
            )
            if counts["done"]:
                yield Passed(counts["done"], True)
            if counts["unsendable"]:
                unsendable = frame.filter(~done & ~sendable)
                yield Passed(counts["unsendable"], False, list(renderer.rows(unsendable)))
            for key, position, fp, payload, _ in renderer.rows(frame.filter(~done & sendable)):
                body = renderer.body(payload)
                if body["model"] != model:
                    body = {**body, "model": model}
                yield Pending(key, position, fp, batch_line(key, fp, body), payload)


def batch_line(key: str, fingerprint: str, body: Mapping[str, Any]) -> bytes:
    """One line of a Batch input file: the row's custom_id and its request, not streamed."""
    request = {k: v for k, v in body.items() if k not in NOT_BATCHED}
    line = {
        "custom_id": custom_id(key, fingerprint),
        "method": "POST",
        "url": ENDPOINT,
        "body": request,
    }
    return orjson.dumps(line) + b"\n"


def custom_id(key: str, fingerprint: str) -> str:
    """The custom_id of a row's request: its key, `@`, the start of its fingerprint."""
    return f"{key}{ID_SEPARATOR}{fingerprint[:ID_FINGERPRINT_CHARS]}"


def split_custom_id(text: str) -> tuple[str, str] | None:
    """(row key, fingerprint start) of a custom_id; None if it is not one of batchrun's."""
    key, separator, short = text.rpartition(ID_SEPARATOR)
    return (key, short) if separator else None


def write_batch_files(
    lines: Iterable[tuple[str, bytes]],
    folder: Path,
    *,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_BYTES,
) -> list[BatchFile]:
    """Write (row key, line) pairs into batch-0001.jsonl, … of at most `max_requests` lines
    and `max_bytes` bytes each, each file atomically; nothing is left if a line is too big."""
    written: list[BatchFile] = []
    stream = iter(lines)
    pending = next(stream, None)  # the next line to write, read ahead to end files on time
    try:
        while pending is not None:
            path = folder / FILE_NAME.format(len(written) + 1)
            requests = size = 0
            with atomic_file(path) as tmp, open(tmp, "wb") as out:
                while pending is not None:
                    key, line = pending
                    if len(line) > max_bytes:
                        raise UserError(
                            f"The request of row {key!r} takes {len(line):,} bytes, more than "
                            f"the {max_bytes:,} a Batch file may hold: shorten that row, or "
                            f"send the job with `batchrun run`."
                        )
                    if requests == max_requests or size + len(line) > max_bytes:
                        break
                    out.write(line)
                    requests += 1
                    size += len(line)
                    pending = next(stream, None)
            written.append(BatchFile(path, requests, size))
    except BaseException:
        for done in written:
            done.path.unlink(missing_ok=True)
        raise
    return written


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Translate the OS's refusals to write into the folder into one sentence."""
    try:
        yield
    except OSError as exc:
        raise UserError(
            f"Cannot write the Batch files into {folder} ({exc.strerror or exc}): choose "
            f"another folder."
        ) from None


def render_export(summary: ExportSummary, job: str, folder: Path) -> str:
    """What was written, and what to do next (`job`: the job and its --set options)."""
    left = [f"{summary.done:,} rows already done"]
    if summary.in_batches:
        left.append(
            f"{summary.in_batches:,} rows in the batch lane's batches still running, which "
            f"`batchrun run` collects"
        )
    if summary.unsendable:
        left.append(
            f"{summary.unsendable:,} rows that cannot become a request (an empty prompt) left "
            f"to `batchrun run`, which records them as failed without sending"
        )
    if not summary.files:
        return (
            f"Nothing to export: no row of {summary.total:,} is pending ({'; '.join(left)}).\n"
            f"next: batchrun run {job}"
        )
    at = f" for endpoint {summary.endpoint}" if summary.pooled else ""
    lines = [
        f"{summary.exported:,} of {summary.total:,} rows written as {len(summary.files)} "
        f"Batch input file(s){at} in {folder} ({'; '.join(left)}):"
    ]
    lines += [f"  {f.path.name}  {f.requests:,} requests, {f.size:,} bytes" for f in summary.files]
    lines += [
        "next: upload each file (purpose batch), create a batch of it for "
        f"{ENDPOINT} with a 24h completion window, download its output and error files when "
        "it ends, then:",
        f"  batchrun import-batch {job}{f' --endpoint {summary.endpoint}' if at else ''} FILE…",
        f"  batchrun run {job}   (sends whatever is still pending)",
    ]
    return "\n".join(lines)


# -- import -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    """One line of a Batch output or error file."""

    custom_id: str
    status: int | None  # the response's HTTP status; None for a line with no response
    body: bytes  # the response body as JSON; an error without a body as {"error": …}
    error: str  # the line's error code, for a line with no response (batch_expired, …)


def import_batch(
    job: Job,
    files: Sequence[Path],
    environ: Mapping[str, str],
    *,
    price_factor: float = BATCH_PRICE_FACTOR,
    endpoint: str | None = None,
) -> ImportSummary:
    """Commit the answers in Batch output and error files, from a batch at `endpoint` (by
    name; the first by default: its prices, its name in each result), to the job's
    checkpoint, then rewrite the output; see the module docstring."""
    at = job.endpoint_named(endpoint)
    plan = plan_run(job, RunOptions())
    for path in files:
        for _ in _read(path):  # every file is checked before anything is committed
            pass
    summary = ImportSummary(
        files=len(files),
        endpoint=at.name,
        pooled=job.pooled,
        rows=plan.total,
        output_path=job.output_path,
    )
    sink.check_writable(job.output_path)
    checkpoint = Checkpoint(checkpoint_dir(job.output_path), job.checkpoint_remote).open()
    for line in checkpoint.quarantined:
        print(line, file=sys.stderr)
    sink.remove_temporaries(job.output_path)
    try:
        anchor(checkpoint, plan.source)
        checkpoint.start_merging()
        importer = _Importer(job, at, plan, checkpoint, summary, environ, price_factor)
        with contextlib.closing(importer):
            importer.take(itertools.chain.from_iterable(_read(path) for path in files))
        checkpoint.stop_merging()
        written = sink.write_output(
            plan.source,
            checkpoint,
            job.output_path,
            plan.columns,
            plan.renderer,
            annotator=plan.annotator,
            metadata=sink.job_metadata(job, plan.total),
        )
        sink.publish(job.output_path, job.output_remote)
    finally:
        checkpoint.close()
    summary.rows_written, summary.rows_ok, summary.rows_failed = written
    return summary


class _Row(NamedTuple):
    """A row a group's lines name, as the job renders it now."""

    position: int
    fingerprint: str  # of the current request
    prior: str | None  # its latest result before this import: marked fingerprint, or None


def _match(
    plan: Plan, checkpoint: Checkpoint, keys: pl.Series, start: int = 0
) -> tuple[dict[str, _Row], list[pl.DataFrame]]:
    """The rows whose keys are in `keys`, found in one pass over the input beside a walk of
    the checkpoint (which gives their latest results): by key, and as rendered frames (see
    `plan.with_prior`). The pass begins at position `start` and goes round to the input's
    first row if some key is left to find, and ends once every key is found: answer files
    in export order name rows in input order, so a group begins where the one before it
    began, and the passes of a whole import read the input about once."""
    rows: dict[str, _Row] = {}
    frames: list[pl.DataFrame] = []
    wanted = keys.alias(ROW_KEY).to_frame()
    for begin, end in [(start, None), *([(0, start)] if start else [])]:
        if len(rows) == keys.len():
            break
        batches = plan.source.batches(plan.renderer.columns, MATCH_ROWS, start=begin, end=end)
        with contextlib.closing(batches), checkpoint.walk([FINGERPRINT, "status"]) as walk:
            if begin:
                walk.seek(begin)
            for batch in batches:
                if not batch.height:
                    continue
                frame = with_prior(plan.renderer, batch, walk, wanted)
                if not frame.height:
                    continue
                frames.append(frame)
                columns = (
                    frame[c].to_list() for c in (render.KEY, render.POSITION, render.FP, PRIOR)
                )
                rows.update((key, _Row(*row)) for key, *row in zip(*columns, strict=True))
                if len(rows) == keys.len():
                    break
    return rows, frames


class _Settled:
    """The rows this import settled in groups before the current one: whether with an
    answer (a later answer still replaces a failure) and the row's latest result before
    the import (what "already" is judged by). Kept on disk, a Parquet file a group in the
    checkpoint folder (removed at the end; a `.tmp` that the next open removes after a
    kill), and read back for the keys of each group: memory holds one group's worth.

    A row's record only ever changes from failed to answered, and its prior never, so the
    files are read without regard to their order."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._files: list[Path] = []  # one per group that settled rows, in group order

    def find(self, keys: pl.Series) -> dict[str, tuple[bool, str | None]]:
        """key -> (answered, prior) of the rows among `keys` an earlier group settled."""
        if not self._files:
            return {}
        found = (
            pl.scan_parquet(self._files)
            .filter(pl.col(_KEY).is_in(keys.implode()))
            .group_by(_KEY)
            .agg(pl.col(_ANSWERED).any(), pl.col(PRIOR).first())
            .collect()
        )
        return {key: (answered, prior) for key, answered, prior in found.iter_rows()}

    def add(self, settled: Mapping[str, bool], rows: Mapping[str, _Row]) -> None:
        """Record a group's newly settled rows (key -> answered) beside their priors."""
        if not settled:
            return
        frame = pl.DataFrame(
            {
                _KEY: list(settled),
                _ANSWERED: list(settled.values()),
                PRIOR: [rows[key].prior for key in settled],
            },
            schema={_KEY: pl.String, _ANSWERED: pl.Boolean, PRIOR: pl.String},
        )
        path = self._folder / SETTLED_NAME.format(len(self._files) + 1)
        frame.write_parquet(path)
        self._files.append(path)

    def close(self) -> None:
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files = []


@dataclass
class _Group:
    """What an import knows while it takes one group of lines."""

    rows: dict[str, _Row]  # the rows the group's lines name, by key
    frames: list[pl.DataFrame]  # the same rows rendered, for answers to count locally
    # Rows settled by this import (earlier groups included): key -> whether with an answer.
    settled: dict[str, bool]
    changed: dict[str, bool] = field(default_factory=dict)  # the ones this group settled
    # Answers (and refusals with a completion) that came without usage, to count locally.
    uncounted: dict[str, Outcome] = field(default_factory=dict)


class _Importer:
    """Turns groups of lines into committed results, counting every line that gives none."""

    def __init__(
        self,
        job: Job,
        endpoint: Endpoint,
        plan: Plan,
        checkpoint: Checkpoint,
        summary: ImportSummary,
        environ: Mapping[str, str],
        price_factor: float,
        *,
        latency_s: float | None = None,
        last_try: Callable[[pl.Series], set[str]] | None = None,
    ) -> None:
        """`latency_s`: what each answer's latency is (a batch's time); `last_try`: given a
        group's row keys, those whose retryable failure is final (the batch lane's rows out
        of attempts), recorded as failures instead of left pending."""
        self.latency_s = latency_s
        self.last_try = last_try
        self.final: set[str] = set()  # the current group's rows on their last try
        self.plan = plan
        self.checkpoint = checkpoint
        self.summary = summary
        self.endpoint = endpoint.name
        self.pricer = job_pricer(job, endpoint)
        # A batch endpoint's pricer has its batch price already.
        self.price_factor = 1.0 if endpoint.is_batch else price_factor
        self.model = job.model_at(endpoint)
        if self.pricer.price is not None:
            summary.cost = 0.0
        self.redact = _redactor(endpoint, environ)
        self.earlier = _Settled(checkpoint.folder)
        self.counter: TokenCounter | None = None  # loaded for the first answer without usage
        self.buffer: list[RowResult] = []  # results not committed yet
        self.start = 0  # where the last group's rows began in the input

    def take(self, lines: Iterable[_Line]) -> None:
        """Classify the lines in order, GROUP_LINES at a time, and commit their results."""
        for group in _chunks(lines, GROUP_LINES):
            self._take_group(group)

    def _take_group(self, lines: Sequence[_Line]) -> None:
        # custom_ids are split again below rather than held: a group's worth of pairs.
        named = (split_custom_id(line.custom_id) for line in lines)
        keys = pl.Series(_KEY, list(dict.fromkeys(i[0] for i in named if i is not None)), pl.String)
        rows, frames = _match(self.plan, self.checkpoint, keys, self.start)
        if rows:
            self.start = min(row.position for row in rows.values())
        earlier = self.earlier.find(keys)
        for key, (_, prior) in earlier.items():
            # This import's own results of the row stand in the checkpoint now.
            rows[key] = rows[key]._replace(prior=prior)
        group = _Group(rows, frames, {key: answered for key, (answered, _) in earlier.items()})
        self.final = self.last_try(keys) if self.last_try is not None else set()
        for line in lines:
            self.summary.lines += 1
            parsed = split_custom_id(line.custom_id)
            row = rows.get(parsed[0]) if parsed is not None else None
            if parsed is None or row is None:
                self.summary.unknown += 1
            elif row.fingerprint[:ID_FINGERPRINT_CHARS] != parsed[1]:
                self.summary.stale += 1
            else:
                self._take_line(parsed[0], row, line, group)
        self._count_locally(group)
        self._commit(force=True)
        self.earlier.add(group.changed, rows)

    def _take_line(self, key: str, row: _Row, line: _Line, group: _Group) -> None:
        outcome = classify(line.status, {}, line.body) if line.status is not None else None
        answered = outcome is not None and outcome.action is Action.OK
        fp = row.fingerprint
        if row.prior == fp or (row.prior == FAILED_MARK + fp and not answered):
            self.summary.already += 1
            usage = outcome.completion.usage if outcome and outcome.completion else None
            cost = self.pricer.cost(usage) if usage is not None else None
            self.summary.already_cost += (cost or 0.0) * self.price_factor
            return
        if outcome is None:
            if key not in self.final:
                self.summary.pending[line.error] += 1
                return
            outcome = Outcome(
                Action.FAIL, line.error, f"the batch ended without answering ({line.error})"
            )
        if outcome.action not in (Action.OK, Action.FAIL):
            reason = outcome.error if outcome.action is Action.RETRY else outcome.action.value
            if key not in self.final:
                self.summary.pending[reason or "server_error"] += 1
                return
            outcome = Outcome(Action.FAIL, reason or "server_error", outcome.message)
        if key in group.settled:
            if group.settled[key] or not answered:
                self.summary.duplicate += 1
                return
            self.summary.failed -= 1  # this import's failure of the row gives way to an answer
        group.settled[key] = group.changed[key] = answered
        completion = outcome.completion
        if completion is not None and completion.usage is None:
            group.uncounted[key] = outcome
            return
        usage = completion.usage if completion is not None else None
        self._settle(key, row, outcome, usage, estimated=False)

    def _settle(
        self, key: str, row: _Row, outcome: Outcome, usage: Usage | None, *, estimated: bool
    ) -> None:
        cost = self.pricer.cost(usage) if usage is not None else None
        self.summary.tokens += usage.total_tokens if usage is not None else 0
        if cost is not None:
            cost *= self.price_factor
            self.summary.cost = (self.summary.cost or 0.0) + cost
        if outcome.action is Action.OK:
            assert usage is not None
            self.summary.ok += 1
            result = success_result(
                key,
                row.position,
                row.fingerprint,
                outcome,
                attempts=1,
                usage=usage,
                usage_estimated=estimated,
                cost=cost,
                json_mode=self.plan.json_mode,
                latency_s=self.latency_s,
            )
        else:
            self.summary.failed += 1
            result = failure_result(
                key,
                row.position,
                row.fingerprint,
                outcome,
                attempts=1,
                redact=self.redact,
                usage=usage,
                usage_estimated=estimated,
                cost=cost,
            )
        result.endpoint = self.endpoint
        self.buffer.append(result)
        self._commit()

    def _count_locally(self, group: _Group) -> None:
        """Settle the group's answers that came without usage, counted as a run counts them."""
        if not group.uncounted:
            return
        if self.counter is None:
            self.counter = counter_for(self.model)
        renderer = self.plan.renderer
        wanted = pl.Series(_KEY, list(group.uncounted), pl.String).implode()
        for frame in group.frames:
            held = frame.filter(pl.col(render.KEY).is_in(wanted))
            for key, _, _, payload, _ in renderer.rows(held):
                if payload is None:
                    continue
                outcome = group.uncounted[key]
                assert outcome.completion is not None
                messages = renderer.to_messages(payload)
                usage = counted_usage(self.counter, messages, outcome.completion.choices)
                self._settle(key, group.rows[key], outcome, usage, estimated=True)

    def _commit(self, *, force: bool = False) -> None:
        """Commit the buffered results once there are enough of them (or any, forced)."""
        if len(self.buffer) >= sizes.IMPORT_COMMIT_ROWS or (force and self.buffer):
            self.checkpoint.commit(self.buffer)
            self.buffer = []

    def close(self) -> None:
        self.earlier.close()


def _read(path: Path) -> Iterator[_Line]:
    """The lines of a Batch output or error file; a UserError naming the first bad one."""
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    line = _parse(raw)
                except ValueError as exc:
                    raise UserError(
                        f"{path}, line {number}, is not a line of a Batch output or error file "
                        f"({exc}): give the files downloaded for the batch, not the ones "
                        f"export-batch wrote."
                    ) from None
                yield line
    except FileNotFoundError:
        raise UserError(f"The Batch file {path} does not exist: check the path.") from None
    except OSError as exc:
        raise UserError(f"The Batch file {path} cannot be read ({exc.strerror or exc}).") from None


def _parse(raw: bytes) -> _Line:
    """One line of a Batch output or error file; ValueError saying what is wrong with it."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("it is not JSON") from None
    if not isinstance(obj, dict):
        raise ValueError("it is not a JSON object")
    cid = obj.get("custom_id")
    if not isinstance(cid, str):
        raise ValueError("it has no custom_id")
    response, error = obj.get("response"), obj.get("error")
    if response is None:
        if error is None:
            raise ValueError("it has neither a response nor an error")
        code = error.get("code") if isinstance(error, Mapping) else None
        return _Line(cid, None, b"", str(code or "error"))
    status = response.get("status_code") if isinstance(response, Mapping) else None
    if not isinstance(status, int) or isinstance(status, bool):
        raise ValueError("its response has no status_code")
    body = response.get("body")
    if body is None and error is not None:
        # vLLM's run-batch puts an error beside a response without a body.
        body = error if isinstance(error, Mapping) and "error" in error else {"error": error}
    # A copy: what orjson.dumps returns holds 4 KB whatever its length, and a group holds
    # GROUP_LINES of these.
    return _Line(
        cid, status, bytes(memoryview(orjson.dumps(body))) if body is not None else b"", ""
    )


def _chunks(lines: Iterable[_Line], size: int) -> Iterator[list[_Line]]:
    stream = iter(lines)
    while chunk := list(itertools.islice(stream, size)):
        yield chunk


def _redactor(endpoint: Endpoint, environ: Mapping[str, str]) -> Callable[[str], str]:
    """Masks the endpoint's key in provider messages, where the key is set."""
    try:
        key = endpoint.api_key(environ)
    except JobError:  # importing needs no key: there is just none to mask
        key = None
    return key.redact if key is not None else _unchanged


def _unchanged(text: str) -> str:
    return text


def render_import(summary: ImportSummary, job: str) -> str:
    """What each line became, where the job stands, and what to do next (`job`: the job
    and its --set options)."""
    cost = f"${summary.cost:,.4f}" if summary.cost is not None else "cost unknown"
    at = f" from endpoint {summary.endpoint}" if summary.pooled else ""
    lines = [
        f"{summary.lines:,} lines in {summary.files} file(s){at}: imported {summary.ok:,} ok "
        f"and {summary.failed:,} failed ({cost})"
    ]
    if summary.pending:
        reasons = ", ".join(f"{why} {n:,}" for why, n in summary.pending.most_common())
        lines.append(f"left pending for `batchrun run`: {summary.pending.total():,} ({reasons})")
    skipped = [
        (summary.stale, "stale (the row's request changed since the export)"),
        (summary.unknown, "unknown custom_id"),
        (summary.duplicate, "duplicate (the row was answered by an earlier line)"),
        (summary.already, "already committed for the same request"),
    ]
    for count, why in skipped:
        if count:
            lines.append(f"not imported: {count:,} {why}")
    pending = summary.rows - summary.rows_ok - summary.rows_failed
    lines.append(
        f"job: {summary.rows:,} rows: {summary.rows_ok:,} ok, {summary.rows_failed:,} failed, "
        f"{pending:,} pending"
    )
    lines.append(f"output: {summary.output_path} ({summary.rows_written:,} rows)")
    if pending:
        lines.append(f"next: batchrun run {job}   (sends the {pending:,} pending rows)")
    return "\n".join(lines)
