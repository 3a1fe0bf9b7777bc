"""`batchrun status`: where a job stands, from its checkpoint, during a run or after it.

Rows are rendered as a run would render them, so a row counts as done only if its committed
result is for the request the job would send now; reading the checkpoint needs no lock, nor
does reading the batch lane's ledger beside it (`batchrun.checkpoint.batches.read_intents`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs

from ..checkpoint.batches import Intent, read_intents
from ..checkpoint.folder import Checkpoint, checkpoint_dir
from ..checkpoint.remote import refresh_copy
from ..config.job import Job
from ..rows.anchor import settle_positions
from ..rows.plan import RunOptions, plan_run
from .estimate import tally


@dataclass(frozen=True)
class BatchInFlight:
    """A Batch file of the batch lane not collected yet, as the provider last described it."""

    batch_id: str | None  # None: not created yet (being submitted, or waiting for room)
    status: str  # the provider's last word, or "submitting" before its batch exists
    total: int  # the provider's counts of its lines
    completed: int
    failed: int
    rows: int  # the rows the file holds
    handed_over: bool  # the deadline sent its unanswered rows direct; its answers may come


@dataclass(frozen=True)
class Status:
    """The job's rows by state, and what they cost."""

    rows: int  # rows in the input
    done: int  # rows whose committed result for the current request is ok
    failed: int  # ... is a failure
    pending: int  # rows a run would still settle (never sent, or sent for an older request)
    changed: int  # of those, rows whose committed result is for an older request
    spend_usd: float  # every committed request's cost, superseded attempts included
    output_exists: bool
    # With [[endpoints]]: spend_usd by the endpoint that gave each result, in the job's
    # order (then any the job no longer names; "(unnamed)" for results before names).
    spend_by_endpoint: tuple[tuple[str, float], ...] = ()
    batches: tuple[BatchInFlight, ...] = ()  # with a batch endpoint: its batches in flight

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spend_by_endpoint": dict(self.spend_by_endpoint)}


def job_status(job: Job) -> Status:
    """Sort the job's rows by their committed results."""
    plan = plan_run(job, RunOptions())
    checkpoint = Checkpoint(checkpoint_dir(job.output_path))
    refresh_copy(checkpoint.folder, job.checkpoint_remote)
    settle_positions(checkpoint.folder, plan.source, job.checkpoint_remote)
    counted = tally(plan, checkpoint, None)
    by_endpoint: tuple[tuple[str, float], ...] = ()
    if job.pooled:
        spent = checkpoint.spend_by_endpoint()
        names = [e.name for e in job.endpoints]
        names += sorted(n for n in spent if n is not None and n not in names)
        by_endpoint = tuple((n, spent.get(n, 0.0)) for n in names)
        if None in spent:
            by_endpoint += (("(unnamed)", spent[None]),)
    return Status(
        rows=plan.total,
        done=counted.ok,
        failed=counted.failed,
        pending=counted.to_send + counted.invalid,
        changed=counted.changed,
        spend_usd=checkpoint.spend(),
        output_exists=_output_exists(job),
        spend_by_endpoint=by_endpoint,
        batches=tuple(_in_flight(i) for i in read_intents(checkpoint.folder) if i.open),
    )


def _in_flight(intent: Intent) -> BatchInFlight:
    counts = intent.counts
    return BatchInFlight(
        batch_id=intent.batch_id,
        status=intent.status or "submitting",
        total=counts.get("total", 0),
        completed=counts.get("completed", 0),
        failed=counts.get("failed", 0),
        rows=intent.rows,
        handed_over=intent.handed_over_at is not None,
    )


def _output_exists(job: Job) -> bool:
    """Whether the output is there: on S3 for an S3 output (this machine may have no copy)."""
    remote = job.output_remote
    if remote is None:
        return job.output_path.exists()
    try:
        return bool(remote.info().type == pafs.FileType.File)
    except OSError:
        return job.output_path.exists()


def render_status(status: Status) -> str:
    """One line a figure."""
    finished = status.done + status.failed
    pct = 100 * finished / status.rows if status.rows else 100.0
    changed = f" ({status.changed:,} for a changed request)" if status.changed else ""
    return "\n".join(
        [
            f"rows     {status.rows:,}",
            f"done     {status.done:,}",
            f"failed   {status.failed:,}",
            f"pending  {status.pending:,}{changed}",
            f"finished {pct:.1f}%",
            f"spend    ${status.spend_usd:,.4f}",
            *(f"  {name:<14} ${spend:,.4f}" for name, spend in status.spend_by_endpoint),
            *_batch_lines(status.batches),
        ]
    )


def _batch_lines(batches: tuple[BatchInFlight, ...]) -> list[str]:
    """The batches in flight: one line for them all, then one each."""
    if not batches:
        return []
    rows = sum(b.rows for b in batches)
    lines = [f"batches  {len(batches):,} in flight, {rows:,} rows"]
    for b in batches:
        done = f"{b.completed:,}/{b.total:,} lines done, {b.failed:,} failed, " if b.total else ""
        handed = ", handed over" if b.handed_over else ""
        lines.append(
            f"  {b.batch_id or '(no batch yet)'}  {b.status}  {done}{b.rows:,} rows{handed}"
        )
    return lines
