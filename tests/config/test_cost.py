"""Prices, the budget guard and the unknown-price warning, through `batchrun run`."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.config.job import Job, build_job
from batchrun.config.pricing import job_pricer
from batchrun.core.completion import Usage
from batchrun.sim import SimServer

from ..conftest import Workspace, reviews


def mini_cost(prompt: int, completion: int, cached: int) -> float:
    """gpt-4o-mini at the shipped table's prices (batchrun/data/prices.toml), USD."""
    return ((prompt - cached) * 0.15 + cached * 0.075 + completion * 0.60) / 1_000_000


def spent_this_run(out: str) -> float:
    """The run's spend as its summary line gives it."""
    (dollars,) = re.findall(r"tokens, \$([\d,.]+), ", out)
    return float(dollars.replace(",", ""))


def check_costs(out: pl.DataFrame, cost: Callable[[int, int, int], float]) -> float:
    """Every row's cost_usd is `cost` of its usage columns; returns their sum."""
    assert out.height > 0 and out["usage_estimated"].to_list() == [False] * out.height
    for row in out.iter_rows(named=True):
        expected = cost(row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"])
        assert row["cost_usd"] == pytest.approx(expected, rel=1e-9, abs=1e-15), row
    return float(out["cost_usd"].sum())


def test_cost_follows_the_price_table_with_cached_tokens(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(10))
    system = "Label the review as positive, negative or neutral. " * 8  # long enough to cache
    job = ws.job(sim.base_url, request={"max_tokens": 40}, prompt={"system": system})
    result = ws.run("run", str(job), "-q")
    assert result.code == 0, result.err
    out = ws.read_output()
    assert (out["cached_tokens"] > 0).any()
    total = check_costs(out, mini_cost)
    assert spent_this_run(result.out) == round(total, 4)


def test_a_price_in_the_job_overrides_the_table(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(4))
    prices = {"gpt-4o-mini": {"input": 1.0, "output": 2.0}}
    assert ws.run("run", str(ws.job(sim.base_url, cost={"prices": prices})), "-q").code == 0
    for row in ws.read_output().iter_rows(named=True):
        expected = (row["prompt_tokens"] * 1.0 + row["completion_tokens"] * 2.0) / 1e6
        assert row["cost_usd"] == pytest.approx(expected)  # no cached price: cached at input


def test_an_unknown_model_gets_null_cost_and_one_warning(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(6))
    result = ws.run("run", str(ws.job(sim.base_url, request={"model": "qwen-max"})), "-q")
    assert result.code == 0
    assert result.err.count("no price is known for model 'qwen-max'") == 1
    assert ws.read_output()["cost_usd"].null_count() == 6


def test_the_budget_stops_before_spend_could_pass_it(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(300))
    budget = 0.0005
    job = ws.job(sim.base_url, cost={"budget_usd": budget}, limits={"concurrency": 8})
    result = ws.run("run", str(job), "-q")
    assert result.code == 3
    assert "budget of $0.00 is reached" in result.err and "raise cost.budget_usd" in result.err
    out = ws.read_output()
    assert 10 < out.height < 300 and set(out["status"]) == {"ok"}
    spent = check_costs(out, mini_cost)
    assert spent <= budget
    assert spent_this_run(result.out) == round(spent, 4)
    assert len(sim.requests) == out.height  # nothing was sent that is not in the output
    # a bigger budget carries on, counting what was already spent
    result = ws.run("run", str(job), "-q", "--set", f"cost.budget_usd={2 * budget}")
    assert result.code == 3
    total = check_costs(ws.read_output(), mini_cost)
    assert spent < total <= 2 * budget
    assert spent_this_run(result.out) == round(total - spent, 4)


def test_a_budget_needs_a_price_and_max_tokens(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(3))
    job = ws.job(sim.base_url, cost={"budget_usd": 1.0}, request={"model": "qwen-max"})
    result = ws.run("run", str(job), "-q")
    assert result.code == 2 and "no price is known" in result.err
    job = ws.job(sim.base_url, cost={"budget_usd": 1.0}, request={"max_tokens": None})
    result = ws.run("run", str(job), "-q")
    assert result.code == 2 and "no max_tokens" in result.err
    # Given a price, it runs, and costs what the job's price says of each row's usage. The
    # prices are high and the system prompt long enough to be half cached, so the summary's
    # four decimals and the cached-token price both show.
    prices = {"qwen-max": {"input": 40.0, "cached_input": 10.0, "output": 120.0}}
    job = ws.job(
        sim.base_url,
        cost={"budget_usd": 1.0, "prices": prices},
        request={"model": "qwen-max"},
        prompt={"system": "Label the review as positive, negative or neutral. " * 8},
    )
    result = ws.run("run", str(job), "-q")
    assert result.code == 0, result.err
    out = ws.read_output()
    assert out.height == 3 and set(out["status"]) == {"ok"} and (out["cached_tokens"] > 0).all()

    def qwen_cost(prompt: int, completion: int, cached: int) -> float:
        return ((prompt - cached) * 40.0 + cached * 10.0 + completion * 120.0) / 1_000_000

    total = check_costs(out, qwen_cost)
    assert total > 0.0001 and spent_this_run(result.out) == round(total, 4)
    assert len(sim.requests) == 3


def pool_job(tmp_path: Path, *endpoints: dict[str, Any], stream: bool = False) -> Job:
    """A job with these `[[endpoints]]`, for its pricers."""
    raw = {
        "input": {"path": "in.csv"},
        "prompt": {"user": "{text}"},
        "request": {"model": "gpt-4o-mini", "stream": stream},
        "output": {"path": "out/o.parquet"},
        "endpoints": list(endpoints),
    }
    return build_job(raw, tmp_path, path=tmp_path / "j.toml")


BATCH = {"name": "openai-batch", "kind": "batch"}
BCWHKJ = {"name": "bcwhkj", "preset": "bcwhkj"}  # non_stream_price_factor 0.5


@pytest.mark.parametrize("stream", [False, True])
def test_a_batch_answer_costs_the_list_price_times_the_batch_factor_alone(
    tmp_path: Path, stream: bool
) -> None:
    job = pool_job(tmp_path, {**BATCH, "preset": "bcwhkj"}, stream=stream)
    pricer = job_pricer(job, job.batch_endpoint)
    usage = Usage(prompt_tokens=1000, completion_tokens=100, total_tokens=1100, cached_tokens=400)
    assert pricer.factor == 0.5
    assert pricer.cost(usage) == pytest.approx(mini_cost(1000, 100, 400) * 0.5)
    assert pricer.worst_case(1000, 100) == pytest.approx(mini_cost(1000, 100, 0) * 0.5)


def test_the_batch_factor_is_the_endpoints_own(tmp_path: Path) -> None:
    job = pool_job(tmp_path, {**BATCH, "batch_price_factor": 0.4}, {"name": "direct"})
    usage = Usage(prompt_tokens=1000, completion_tokens=100, total_tokens=1100)
    batch, direct = (job_pricer(job, e) for e in job.endpoints)
    assert batch.cost(usage) == pytest.approx(mini_cost(1000, 100, 0) * 0.4)
    assert direct.cost(usage) == pytest.approx(mini_cost(1000, 100, 0))


def test_the_default_pricer_is_the_first_direct_endpoints(tmp_path: Path) -> None:
    job = pool_job(tmp_path, BATCH, BCWHKJ)
    assert job_pricer(job).factor == 0.5 and job_pricer(job, job.endpoints[1]).factor == 0.5
    job = pool_job(tmp_path, BATCH, {"name": "openai"})
    assert job_pricer(job).factor == 1.0
    alone = pool_job(tmp_path, {**BATCH, "batch_price_factor": 0.25})
    assert job_pricer(alone).factor == 0.25
