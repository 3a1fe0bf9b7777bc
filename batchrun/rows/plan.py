"""What a run will do, checked against the input before anything is sent.

`plan_run` is shared by `run`, `estimate` and `status`: each reads the same input, renders
it the same way, and refuses the same mistakes (exit 2) before any request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from ..checkpoint.walk import FAILED_MARK, Positions, Walk, marked_fingerprint
from ..config.job import Job
from ..config.pricing import job_pricer
from ..errors import InputError, JobError
from ..protocol.result import INPUT_ROW, KEY, output_columns
from ..protocol.result import POSITION as RESULT_POSITION
from . import render
from .render import Renderer, completion_ceiling
from .scoring import Annotator, job_annotator
from .source import POSITION, Source, open_job_input

PRIOR = "__batchrun_prior"  # a row's latest committed fingerprint, marked when it failed


@dataclass(frozen=True)
class RunOptions:
    """How `batchrun run` was asked to run."""

    fresh: bool = False
    retry_failed: bool = False
    limit: int | None = None
    quiet: bool = False
    interactive: bool | None = None  # None: a bar when stderr is a terminal
    detach: bool = False  # with a batch endpoint: submit the batches and return
    cancel_batches: bool = False  # with a batch endpoint: cancel its batches, collect, return


@dataclass(frozen=True)
class Plan:
    """What a run will do, checked before anything is sent."""

    source: Source
    renderer: Renderer
    columns: list[str]  # the result columns of the output
    json_mode: bool
    total: int  # rows the run covers
    annotator: Annotator | None  # what [parse] and [eval] add to the output


def plan_run(job: Job, options: RunOptions, *, total: int | None = None) -> Plan:
    """Check the job against its input (columns, ids, text); raise a UserError if wrong.
    With `total` (a Ray worker's plan: the driver checked the input), the rows are not
    read again."""
    _check_budget(job)
    source = open_job_input(job)
    n = job.request.get("n", 1)
    response_format = job.request.get("response_format")
    json_mode = isinstance(response_format, Mapping) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )
    columns = output_columns(n if isinstance(n, int) else 1, json_mode, job.pooled)
    annotator = job_annotator(job)
    added = list(annotator.columns) if annotator is not None else []
    position = [INPUT_ROW] if source.id_column is None else []
    clash = [c for c in [*position, *columns, *added] if c in source.columns]
    if clash:
        raise InputError(
            f"The input already has a column named {clash[0]!r}, which batchrun writes: "
            f"rename it in the input."
        )
    twice = [c for c in added if c in columns or added.count(c) > 1]
    if twice:
        raise JobError(
            f"{job.path}: [parse] columns names {twice[0]!r}, which batchrun writes already: "
            f"leave it out of columns."
        )
    check_eval_columns(job, source.columns)
    renderer = Renderer(job.prompt, job.request, source.columns)
    if total is None:
        total = source.check(options.limit)
    return Plan(source, renderer, columns, json_mode, total, annotator)


def check_eval_columns(job: Job, columns: Sequence[str]) -> None:
    """[eval]'s expected and group_by columns must be input columns."""
    if job.eval is None:
        return
    for name in (job.eval.expected_column, *job.eval.group_by):
        if name not in columns:
            raise InputError(
                f"[eval] names the column {name!r}, which the input does not have "
                f"(it has: {', '.join(columns)}): fix the job or the input."
            )


def _check_budget(job: Job) -> None:
    """A budget needs a price and a ceiling on each request, or it cannot be kept."""
    if job.cost.budget_usd is None:
        return
    pricer = job_pricer(job)
    if pricer.price is None:
        raise JobError(
            f"{job.path}: [cost] budget_usd is set but no price is known for model "
            f'{pricer.model!r}: give one in [cost.prices."{pricer.model}"] (input, output '
            f"in USD per million tokens) or remove the budget."
        )
    if completion_ceiling(job.request) is None:
        raise JobError(
            f"{job.path}: [cost] budget_usd is set but [request] has no max_tokens: set it, "
            f"so that the worst case of each request is bounded."
        )


def with_prior(
    renderer: Renderer,
    batch: pl.DataFrame,
    walk: Walk,
    only: pl.DataFrame | None = None,
    *,
    committed: bool = False,
) -> pl.DataFrame:
    """An input batch rendered (see `Renderer.render_frame`), each row with the marked
    fingerprint of its latest committed result in PRIOR (null if it has none): how a run,
    `status`, `estimate` and the Batch files sort rows, walking the input and the checkpoint
    together. With `only` (a frame of keys in a ROW_KEY column), just its rows; with
    `committed`, just the rows at positions that hold a result (the others are `fresh`'s).
    The walk is taken past the batch's positions."""
    from .source import ROW_KEY

    results = walk.until(_end(batch))
    if only is not None:
        # A semi join, not is_in: it took a third of the time on a group's 100,000 keys.
        batch = batch.join(only, on=ROW_KEY, how="semi", maintain_order="left")
    if committed:
        batch = batch.filter(_at(results[RESULT_POSITION].to_numpy()))
    frame = renderer.render_frame(batch, ROW_KEY, POSITION)
    prior = results.select(pl.col(KEY).alias(render.KEY), marked_fingerprint().alias(PRIOR))
    return frame.join(prior, on=render.KEY, how="left", maintain_order="left")


def fresh(renderer: Renderer, batch: pl.DataFrame, positions: Positions) -> pl.DataFrame | None:
    """The rows of an input batch at positions that hold no committed result, rendered,
    PRIOR null; None when there are none. A run sends them without reading any result, so
    a resume's first request never waits on a walk of the rows finished before it.
    `positions` is taken past the batch; `with_prior(committed=True)` on another walk has
    the rest of the batch."""
    from .source import ROW_KEY

    taken = positions.until(_end(batch))
    if len(taken):
        batch = batch.filter(~_at(taken))
    if not batch.height:
        return None  # rendering nothing costs a millisecond, a batch skipped on a resume
    frame = renderer.render_frame(batch, ROW_KEY, POSITION)
    return frame.with_columns(pl.lit(None, pl.String).alias(PRIOR))


def _end(batch: pl.DataFrame) -> int:
    return int(batch[POSITION][-1]) + 1 if batch.height else 0


def _at(positions: np.ndarray) -> pl.Expr:
    """Whether a batch row's position is among `positions`."""
    return pl.col(POSITION).cast(pl.Int64).is_in(pl.Series(positions, dtype=pl.Int64).implode())


def answered() -> pl.Expr:
    """Whether a row of `with_prior` has an answer to its current request."""
    return (pl.col(PRIOR) == pl.col(render.FP)).fill_null(False)


def settles(*, retry_failed: bool) -> pl.Expr:
    """Whether a row of `with_prior` is settled for its current request: answered, or
    failed and not to be sent again (with `retry_failed`, a failed row that can be sent is
    sent again; one that cannot, an empty prompt, stays failed)."""
    failed = (pl.col(PRIOR) == FAILED_MARK + pl.col(render.FP)).fill_null(False)
    if retry_failed:
        failed = failed & pl.col(render.REASON).is_not_null()  # unsendable stays failed
    return answered() | failed
