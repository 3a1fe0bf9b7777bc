"""`batchrun estimate`: tokens, cost and time before running, with nothing sent.

The input is streamed in batches and rendered exactly as a run would render it; rows whose
committed result is for the same request are left out, as a resume would leave them out.
Prompt tokens are exact for OpenAI models (tiktoken, batches encoded on several threads)
and an estimate otherwise. Output tokens are a range: at most `max_tokens` × `n` a row, and,
when the checkpoint holds finished rows, their mean as the expected figure.

A job with a batch endpoint sends its rows there first, at the batch price: the expected
cost is the batch endpoint's, and the time is the completion window the provider promises
(the rate limits do not pace a batch), or the deadline when one hands the rest over sooner.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from ..checkpoint.folder import Checkpoint, checkpoint_dir
from ..checkpoint.remote import refresh_copy
from ..config.job import Job
from ..config.pricing import job_pricer
from ..core import sizes
from ..core.tokens import TOKENS_PER_MESSAGE, TOKENS_REPLY_PRIMING, TokenCounter, counter_for
from ..protocol.result import FINGERPRINT
from ..rows import render
from ..rows.anchor import settle_positions
from ..rows.plan import PRIOR, Plan, RunOptions, answered, plan_run, settles, with_prior


@dataclass(frozen=True)
class Estimate:
    """What a run of the job would send, use, cost and take."""

    model: str
    rows: int  # rows the job covers
    done: int  # rows with a committed result for the same request
    to_send: int  # rows a run would send
    invalid: int  # rows that would fail without a request (empty prompt)
    prompt_tokens: int  # of the rows to send
    prompt_exact: bool  # whether prompt_tokens is an exact count
    counted_with: str  # the encoding, or "estimate"
    output_tokens_max: int | None  # max_tokens × n × rows; None without max_tokens
    output_tokens_expected: int | None  # from the mean of finished rows, when there are some
    price_per_million: Mapping[str, float | None] | None  # input, cached_input, output
    cost_min_usd: float | None  # prompt tokens only (no cache discount)
    cost_expected_usd: float | None
    cost_max_usd: float | None
    # The time the rate limits imply (latency aside); None with a batch endpoint, whose
    # time is its completion window.
    minutes_at_limits: float | None
    # With [[endpoints]]: the cost if every row went to each one; the figures above span
    # them (the lowest minimum, the highest maximum; expected at the batch endpoint, else
    # at the first).
    by_endpoint: tuple[EndpointCost, ...] = ()
    completion_window: str | None = None  # the batch endpoint's, when the job has one
    deadline_s: float | None = None  # [limits] deadline_s: the batches' rows go direct then

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EndpointCost:
    """What the rows to send would cost at one endpoint, at its prices and billing."""

    name: str
    model: str  # the model priced there
    cost_min_usd: float | None
    cost_expected_usd: float | None
    cost_max_usd: float | None
    batch: bool = False  # a batch endpoint: its prices are the batch prices


def estimate(job: Job, limit: int | None = None) -> Estimate:
    """Estimate a run of `job`; reads the input and the checkpoint, sends nothing."""
    plan = plan_run(job, RunOptions(limit=limit))
    checkpoint = Checkpoint(checkpoint_dir(job.output_path))
    refresh_copy(checkpoint.folder, job.checkpoint_remote)
    settle_positions(checkpoint.folder, plan.source, job.checkpoint_remote)
    counter = counter_for(str(job.request["model"]))
    counted = tally(plan, checkpoint, counter)
    done, invalid, to_send = counted.ok + counted.failed, counted.invalid, counted.to_send
    prompt_tokens, exact = counted.prompt_tokens, counted.exact
    per_row = plan.renderer.completion_ceiling
    expected_row = _mean_completion(checkpoint)
    output_max = per_row * to_send if per_row is not None else None
    output_expected = round(expected_row * to_send) if expected_row is not None else None
    costs = []
    for endpoint in job.endpoints:
        pricer = job_pricer(job, endpoint)
        price = pricer.price
        cost_min = cost_expected = cost_max = None
        if price is not None:
            base = prompt_tokens * price.input / 1e6 * pricer.factor
            cost_min = base
            if output_expected is not None:
                cost_expected = base + output_expected * price.output / 1e6 * pricer.factor
            if output_max is not None:
                cost_max = base + output_max * price.output / 1e6 * pricer.factor
        costs.append(
            EndpointCost(
                endpoint.name, pricer.model, cost_min, cost_expected, cost_max, endpoint.is_batch
            )
        )
    price = job_pricer(job).price
    batch = job.batch_endpoint
    # The endpoint that takes the most: the batch one, where there is one, else the first.
    takes_most = next((c for c in costs if c.batch), costs[0])
    minutes = (
        None
        if batch is not None
        else _minutes(job, to_send, prompt_tokens, output_expected or output_max or 0)
    )
    return Estimate(
        model=str(job.request["model"]),
        rows=plan.total,
        done=done,
        to_send=to_send,
        invalid=invalid,
        prompt_tokens=prompt_tokens,
        prompt_exact=exact,
        counted_with=counter.name if counter.exact else "estimate",
        output_tokens_max=output_max,
        output_tokens_expected=output_expected,
        price_per_million=(
            {"input": price.input, "cached_input": price.cached_input, "output": price.output}
            if price is not None
            else None
        ),
        cost_min_usd=_span([c.cost_min_usd for c in costs], min),
        cost_expected_usd=takes_most.cost_expected_usd,
        cost_max_usd=_span([c.cost_max_usd for c in costs], max),
        minutes_at_limits=minutes,
        by_endpoint=tuple(costs) if job.pooled else (),
        completion_window=batch.completion_window if batch is not None else None,
        deadline_s=job.limits.deadline_s,
    )


def _minutes(job: Job, to_send: int, prompt_tokens: int, output_tokens: int) -> float:
    """The minutes the rows take with every endpoint at its limits at once."""
    minutes = to_send / sum(e.requests_per_minute for e in job.endpoints)
    if all(e.tokens_per_minute for e in job.endpoints):
        tpm = sum(e.tokens_per_minute or 0 for e in job.endpoints)
        minutes = max(minutes, (prompt_tokens + output_tokens) / tpm)
    return minutes


def _span(values: list[float | None], pick: Any) -> float | None:
    """The lowest or highest of the known values; None when none is known."""
    known = [v for v in values if v is not None]
    return pick(known) if known else None


@dataclass
class Tally:
    """The job's rows against its checkpoint, and the prompt tokens of those to send."""

    ok: int = 0  # rows whose committed result for the current request is ok
    failed: int = 0  # ... is a failure
    changed: int = 0  # rows with a committed result for an older request (to send again)
    invalid: int = 0  # rows that would fail without a request (an empty prompt)
    to_send: int = 0  # rows a run would send
    prompt_tokens: int = 0  # of the rows to send (when counted)
    exact: bool = True  # whether prompt_tokens is exact


def tally(plan: Plan, checkpoint: Checkpoint, counter: TokenCounter | None) -> Tally:
    """Render every row as a run would and sort it against its latest committed result (in
    one walk over the input and the checkpoint); count prompt tokens if given a counter."""
    result = Tally(exact=counter is not None and counter.exact)
    roles = {role: counter.text(role) for role in ("system", "user")} if counter else {}
    renderer = plan.renderer
    batches = plan.source.batches(renderer.columns, sizes.READ_ROWS * 2, plan.total)
    with contextlib.closing(batches), checkpoint.walk([FINGERPRINT, "status"]) as walk:
        for batch in batches:
            frame = with_prior(renderer, batch, walk)
            ok, done = answered(), settles(retry_failed=False)
            sendable = pl.col(render.REASON).is_null()
            counts = frame.select(
                ok=ok.sum(),
                failed=(done & ~ok).sum(),
                changed=(pl.col(PRIOR).is_not_null() & ~done).sum(),
                invalid=(~done & ~sendable).sum(),
            ).row(0, named=True)
            result.ok += counts["ok"]
            result.failed += counts["failed"]
            result.changed += counts["changed"]
            result.invalid += counts["invalid"]
            sending = frame.filter(~done & sendable)
            result.to_send += sending.height
            if counter is None or not sending.height:
                continue
            systems: list[str] = []
            users: list[str] = []
            for _, _, _, payload, _ in renderer.rows(sending):
                if isinstance(payload, tuple):
                    system, user = payload
                    result.prompt_tokens += (
                        TOKENS_REPLY_PRIMING + TOKENS_PER_MESSAGE + roles["user"]
                    )
                    if system is not None:
                        systems.append(system)
                        result.prompt_tokens += TOKENS_PER_MESSAGE + roles["system"]
                    users.append(user)
                else:
                    messages = renderer.to_messages(payload)
                    result.prompt_tokens += counter.chat(messages)
                    result.exact = result.exact and counter.chat_is_exact(messages)
            result.prompt_tokens += sum(counter.texts(systems)) + sum(counter.texts(users))
    return result


def _mean_completion(checkpoint: Checkpoint) -> float | None:
    """Mean completion tokens of the rows whose latest result is ok, or None if none is."""
    total = count = 0
    with checkpoint.walk(["status", "completion_tokens"]) as walk:
        for window in walk.windows():
            ok = window.filter(pl.col("status") == "ok")["completion_tokens"]
            total += int(ok.sum() or 0)
            count += ok.len() - ok.null_count()
    return total / count if count else None


def render_estimate(est: Estimate) -> str:
    """The estimate as a few aligned lines for the terminal."""

    def usd(value: float | None) -> str:
        return f"${value:,.4f}" if value is not None else "unknown"

    how = "exact" if est.prompt_exact else "estimated"
    lines = [
        ("model", est.model),
        (
            "rows",
            f"{est.rows:,} ({est.done:,} done, {est.to_send:,} to send, "
            f"{est.invalid:,} with an empty prompt)",
        ),
        ("prompt tokens", f"{est.prompt_tokens:,} ({how}, {est.counted_with})"),
        ("output tokens", _range(est.output_tokens_expected, est.output_tokens_max)),
    ]
    if est.price_per_million is None:
        lines.append(("cost", "unknown: no price for this model (set [cost.prices])"))
    else:
        expected = f", expected {usd(est.cost_expected_usd)}" if est.cost_expected_usd else ""
        lines.append(("cost", f"{usd(est.cost_min_usd)} to {usd(est.cost_max_usd)}{expected}"))
    for cost in est.by_endpoint:
        if cost.cost_min_usd is None:
            shown = f"unknown: no price for {cost.model} (set [cost.prices])"
        else:
            how = f"as {cost.model}, at the batch price" if cost.batch else f"as {cost.model}"
            shown = f"{usd(cost.cost_min_usd)} to {usd(cost.cost_max_usd)} ({how})"
        lines.append((f"  at {cost.name}", shown))
    if est.minutes_at_limits is not None:
        lines.append(("time at the limits", f"{est.minutes_at_limits:,.1f} min (latency aside)"))
    else:
        time = f"within the completion window ({est.completion_window})"
        if est.deadline_s is not None:
            time += (
                f"; what is not answered {est.deadline_s:,g} s after the first submission "
                f"goes direct (deadline_s)"
            )
        lines.append(("time", time))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def _range(expected: int | None, ceiling: int | None) -> str:
    top = f"at most {ceiling:,}" if ceiling is not None else "no ceiling (no max_tokens)"
    return f"{top}, expected {expected:,} (mean of finished rows)" if expected else top
