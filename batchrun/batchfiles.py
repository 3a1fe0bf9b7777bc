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
twice changes nothing. Results are committed COMMIT_ROWS at a time under the checkpoint's
lock, as a run commits them, and the output Parquet is then rewritten from the checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from . import sink
from .checkpoint import FAILED_MARK, Checkpoint, atomic_file, checkpoint_dir, settled
from .columns import RowResult
from .completion import Usage
from .errors import JobError, UserError
from .job import Job
from .outcome import Action, Outcome, classify
from .plan import Plan, RunOptions, plan_run
from .pricing import job_pricer
from .results import counted_usage, failure_result, success_result
from .source import POSITION, ROW_KEY
from .tokens import counter_for

MAX_REQUESTS = 50_000  # requests in one Batch input file: the API's limit
MAX_BYTES = 200_000_000  # bytes in one Batch input file: the API's 200 MB
BATCH_PRICE_FACTOR = 0.5  # the OpenAI Batch API bills half the list price
ENDPOINT = "/v1/chat/completions"
FILE_NAME = "batch-{:04d}.jsonl"
FILE_GLOB = "batch-[0-9][0-9][0-9][0-9].jsonl"  # only what export writes, never a download
ID_SEPARATOR = "@"
ID_FINGERPRINT_CHARS = 16  # hex digits of the request fingerprint a custom_id carries
NOT_BATCHED = ("stream", "stream_options")  # request keys a Batch body leaves out
BATCH_ROWS = 10_000  # input rows read and rendered at a time, as a run reads them
COMMIT_ROWS = 2000  # results committed as one segment, as a run commits them

_KEY, _FP = "key", "fingerprint"


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
    exported: int = 0  # rows written as requests
    done: int = 0  # rows already settled for their current request
    unsendable: int = 0  # rows that cannot become a request: left to `run`
    files: list[BatchFile] = field(default_factory=list)


@dataclass
class ImportSummary:
    """What an import did with each line, and where the job stands after it."""

    files: int
    lines: int = 0
    ok: int = 0  # rows given an answer
    failed: int = 0  # rows given a final failure
    pending: Counter[str] = field(default_factory=Counter)  # lines left pending, by why
    stale: int = 0  # lines answering an older request of their row
    unknown: int = 0  # lines whose custom_id names no row of the job
    duplicate: int = 0  # lines for a row settled by an earlier line of this import
    already: int = 0  # lines for a row settled for this request before this import
    cost: float | None = None  # of the rows imported; None when the model has no price
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
) -> ExportSummary:
    """Write the job's pending rows into `folder` as Batch input files."""
    options = RunOptions(limit=limit, retry_failed=retry_failed)
    plan = plan_run(job, options)
    earlier = sorted(folder.glob(FILE_GLOB)) if folder.is_dir() else []
    if earlier and not force:
        raise UserError(
            f"{folder} already holds Batch files of an earlier export ({earlier[0].name}, …): "
            f"import their answers first and export into an empty folder, or add --force to "
            f"replace them."
        )
    summary = ExportSummary(total=plan.total)
    # The lock keeps a run from settling rows while they are being exported.
    checkpoint = Checkpoint(checkpoint_dir(job.output_path)).open()
    try:
        index = checkpoint.index()
        with _writing(folder):
            for path in earlier:
                path.unlink()
            folder.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(_pending_lines(plan, index, options, summary)) as lines:
                summary.files = write_batch_files(
                    lines, folder, max_requests=max_requests, max_bytes=max_bytes
                )
    finally:
        checkpoint.close()
    return summary


def _pending_lines(
    plan: Plan, index: Mapping[str, str], options: RunOptions, summary: ExportSummary
) -> Generator[tuple[str, bytes], None, None]:
    """(row key, Batch line) of every row a run would send now; counts the others."""
    batches = plan.source.batches(plan.renderer.columns, BATCH_ROWS, options.limit)
    with contextlib.closing(batches):
        for batch in batches:
            for key, _, fp, payload, invalid in plan.renderer.render_batch(
                batch, ROW_KEY, POSITION
            ):
                sendable = invalid is None
                if settled(
                    index.get(key), fp, retry_failed=options.retry_failed, sendable=sendable
                ):
                    summary.done += 1
                elif not sendable:
                    summary.unsendable += 1
                else:
                    summary.exported += 1
                    yield key, batch_line(key, fp, plan.renderer.body(payload))


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
    lines = [
        f"{summary.exported:,} of {summary.total:,} rows written as {len(summary.files)} "
        f"Batch input file(s) in {folder} ({'; '.join(left)}):"
    ]
    lines += [f"  {f.path.name}  {f.requests:,} requests, {f.size:,} bytes" for f in summary.files]
    lines += [
        "next: upload each file (purpose batch), create a batch of it for "
        f"{ENDPOINT} with a 24h completion window, download its output and error files when "
        "it ends, then:",
        f"  batchrun import-batch {job} FILE…",
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
) -> ImportSummary:
    """Commit the answers in Batch output and error files to the job's checkpoint, then
    rewrite the output; see the module docstring."""
    plan = plan_run(job, RunOptions())
    for path in files:
        for _ in _read(path):  # every file is checked before anything is committed
            pass
    summary = ImportSummary(files=len(files), output_path=job.output_path)
    checkpoint = Checkpoint(checkpoint_dir(job.output_path)).open()
    sink.remove_temporaries(job.output_path)
    try:
        rows = _Rows.render(plan)
        importer = _Importer(job, plan, checkpoint.index(), summary, environ, price_factor)
        buffer: list[RowResult] = []
        for path in files:
            for chunk in _chunks(_read(path), COMMIT_ROWS):
                buffer += importer.take(chunk, rows)
                if len(buffer) >= COMMIT_ROWS:
                    checkpoint.commit(buffer)
                    buffer = []
        buffer += importer.count_locally()
        checkpoint.commit(buffer)
        summary.rows = rows.frame.height
        summary.rows_ok, summary.rows_failed, stale = rows.standing(checkpoint.index())
        summary.rows_written = sink.write_output(
            plan.source,
            checkpoint.segments(),
            job.output_path,
            plan.columns,
            exclude=stale,
            annotator=plan.annotator,
            metadata=sink.job_metadata(job, plan.total),
        )
    finally:
        checkpoint.close()
    return summary


class _Rows:
    """Every row of the job as a run would render it now, sorted by key for lookups."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame  # key, position, fingerprint (the current request's); by key

    @classmethod
    def render(cls, plan: Plan) -> _Rows:
        schema = {_KEY: pl.String, POSITION: pl.Int64, _FP: pl.String}
        parts = [pl.DataFrame(schema=schema)]
        batches = plan.source.batches(plan.renderer.columns, BATCH_ROWS)
        with contextlib.closing(batches):
            for batch in batches:
                keys, positions, fps = [], [], []
                for key, position, fp, _, _ in plan.renderer.render_batch(batch, ROW_KEY, POSITION):
                    keys.append(key)
                    positions.append(position)
                    fps.append(fp)
                parts.append(pl.DataFrame([keys, positions, fps], schema=schema, orient="col"))
        return cls(pl.concat(parts).sort(_KEY))

    def find(self, keys: Sequence[str]) -> list[tuple[int, str] | None]:
        """(position, current fingerprint) of each key's row; None where no row has it."""
        if not keys or self.frame.height == 0:
            return [None] * len(keys)
        at = self.frame[_KEY].search_sorted(pl.Series(keys, dtype=pl.String))
        hits = self.frame.select(pl.all().gather(at.clip(upper_bound=self.frame.height - 1)))
        return [
            (position, fp) if found == key else None
            for key, found, position, fp in zip(
                keys, hits[_KEY], hits[POSITION], hits[_FP], strict=True
            )
        ]

    def standing(self, index: Mapping[str, str]) -> tuple[int, int, list[str]]:
        """Rows ok and failed for their current request; keys whose result is older."""
        committed = pl.DataFrame(
            {_KEY: list(index), "prior": list(index.values())},
            schema={_KEY: pl.String, "prior": pl.String},
        )
        joined = self.frame.join(committed, on=_KEY, how="inner")
        ok = pl.col("prior") == pl.col(_FP)
        failed = pl.col("prior") == pl.lit(FAILED_MARK) + pl.col(_FP)
        counts = joined.select(ok.sum().alias("ok"), failed.sum().alias("failed"))
        stale = joined.filter(~ok & ~failed)[_KEY].to_list()
        return int(counts["ok"].item()), int(counts["failed"].item()), stale


class _Importer:
    """Turns matched lines into results, counting every line that gives none."""

    def __init__(
        self,
        job: Job,
        plan: Plan,
        index: Mapping[str, str],
        summary: ImportSummary,
        environ: Mapping[str, str],
        price_factor: float,
    ) -> None:
        self.plan = plan
        self.index = index  # the checkpoint's latest results before this import
        self.summary = summary
        self.pricer = job_pricer(job)
        self.price_factor = price_factor
        self.model = str(job.request["model"])
        if self.pricer.price is not None:
            summary.cost = 0.0
        self.redact = _redactor(job, environ)
        # Keys given a result by this import, and whether it was an answer (an answer in a
        # later line still replaces a failure, as it would in a later import).
        self.settled: dict[str, bool] = {}
        # Rows whose answer came without usage: key -> (position, fingerprint, outcome),
        # committed once their prompts are rendered again and counted.
        self.uncounted: dict[str, tuple[int, str, Outcome]] = {}

    def take(self, lines: Sequence[_Line], rows: _Rows) -> list[RowResult]:
        """The results of a chunk of lines."""
        ids = [split_custom_id(line.custom_id) for line in lines]
        found = rows.find([i[0] if i is not None else "" for i in ids])
        results = []
        for line, parsed, row in zip(lines, ids, found, strict=True):
            self.summary.lines += 1
            if parsed is None or row is None:
                self.summary.unknown += 1
                continue
            key, short = parsed
            position, fp = row
            if fp[:ID_FINGERPRINT_CHARS] != short:
                self.summary.stale += 1
            else:
                result = self._result(key, position, fp, line)
                if result is not None:
                    results.append(result)
        return results

    def _result(self, key: str, position: int, fp: str, line: _Line) -> RowResult | None:
        outcome = classify(line.status, {}, line.body) if line.status is not None else None
        answered = outcome is not None and outcome.action is Action.OK
        prior = self.index.get(key)
        if prior == fp or (prior == FAILED_MARK + fp and not answered):
            self.summary.already += 1
            return None
        if outcome is None:
            self.summary.pending[line.error] += 1
            return None
        if outcome.action not in (Action.OK, Action.FAIL):
            reason = outcome.error if outcome.action is Action.RETRY else outcome.action.value
            self.summary.pending[reason or "server_error"] += 1
            return None
        if key in self.settled:
            if self.settled[key] or not answered:
                self.summary.duplicate += 1
                return None
            self.summary.failed -= 1  # this import's failure of the row gives way to an answer
        self.settled[key] = answered
        completion = outcome.completion
        if completion is not None and completion.usage is None:
            self.uncounted[key] = (position, fp, outcome)
            return None
        usage = completion.usage if completion is not None else None
        return self._settle(key, position, fp, outcome, usage, estimated=False)

    def _settle(
        self,
        key: str,
        position: int,
        fp: str,
        outcome: Outcome,
        usage: Usage | None,
        *,
        estimated: bool,
    ) -> RowResult:
        cost = self.pricer.cost(usage) if usage is not None else None
        if cost is not None:
            cost *= self.price_factor
            self.summary.cost = (self.summary.cost or 0.0) + cost
        if outcome.action is Action.OK:
            assert usage is not None
            self.summary.ok += 1
            return success_result(
                key,
                position,
                fp,
                outcome,
                attempts=1,
                usage=usage,
                usage_estimated=estimated,
                cost=cost,
                json_mode=self.plan.json_mode,
            )
        self.summary.failed += 1
        return failure_result(
            key,
            position,
            fp,
            outcome,
            attempts=1,
            redact=self.redact,
            usage=usage,
            usage_estimated=estimated,
            cost=cost,
        )

    def count_locally(self) -> list[RowResult]:
        """The results of answers that came without usage, counted as a run counts them."""
        if not self.uncounted:
            return []
        counter = counter_for(self.model)
        renderer = self.plan.renderer
        results = []
        batches = self.plan.source.batches(renderer.columns, BATCH_ROWS)
        with contextlib.closing(batches):
            for batch in batches:
                for key, _, fp, payload, _ in renderer.render_batch(batch, ROW_KEY, POSITION):
                    held = self.uncounted.get(key)
                    if held is None or held[1] != fp or payload is None:
                        continue
                    position, _, outcome = held
                    assert outcome.completion is not None
                    messages = renderer.to_messages(payload)
                    usage = counted_usage(counter, messages, outcome.completion.choices)
                    results.append(self._settle(key, position, fp, outcome, usage, estimated=True))
        return results


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
    return _Line(cid, status, orjson.dumps(body) if body is not None else b"", "")


def _chunks(lines: Iterable[_Line], size: int) -> Iterator[list[_Line]]:
    stream = iter(lines)
    while chunk := list(itertools.islice(stream, size)):
        yield chunk


def _redactor(job: Job, environ: Mapping[str, str]) -> Callable[[str], str]:
    """Masks the job's key in provider messages, where the key is set."""
    try:
        key = job.api_key(environ)
    except JobError:  # importing needs no key: there is just none to mask
        key = None
    return key.redact if key is not None else _unchanged


def _unchanged(text: str) -> str:
    return text


def render_import(summary: ImportSummary, job: str) -> str:
    """What each line became, where the job stands, and what to do next (`job`: the job
    and its --set options)."""
    cost = f"${summary.cost:,.4f}" if summary.cost is not None else "cost unknown"
    lines = [
        f"{summary.lines:,} lines in {summary.files} file(s): imported {summary.ok:,} ok and "
        f"{summary.failed:,} failed ({cost})"
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
