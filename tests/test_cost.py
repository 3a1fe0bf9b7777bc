"""Prices, the budget guard and the unknown-price warning, through `batchrun run`."""

from __future__ import annotations

import pytest

from batchrun.sim import SimServer

from .conftest import Workspace, reviews


def mini_cost(prompt: int, completion: int, cached: int) -> float:
    return ((prompt - cached) * 0.15 + cached * 0.075 + completion * 0.60) / 1_000_000


def test_cost_follows_the_price_table_with_cached_tokens(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(10))
    system = "Label the review as positive, negative or neutral. " * 8  # long enough to cache
    job = ws.job(sim.base_url, request={"max_tokens": 40}, prompt={"system": system})
    assert ws.run("run", str(job), "-q").code == 0
    out = ws.read_output()
    assert (out["cached_tokens"] > 0).any()
    for row in out.iter_rows(named=True):
        expected = mini_cost(row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"])
        assert row["cost_usd"] == pytest.approx(expected)


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
    spent = out["cost_usd"].sum()
    assert spent <= budget
    assert len(sim.requests) == out.height  # nothing was sent that is not in the output
    # a bigger budget carries on, counting what was already spent
    result = ws.run("run", str(job), "-q", "--set", f"cost.budget_usd={2 * budget}")
    assert result.code == 3
    total = ws.read_output()["cost_usd"].sum()
    assert spent < total <= 2 * budget


def test_a_budget_needs_a_price_and_max_tokens(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(3))
    job = ws.job(sim.base_url, cost={"budget_usd": 1.0}, request={"model": "qwen-max"})
    result = ws.run("run", str(job), "-q")
    assert result.code == 2 and "no price is known" in result.err
    job = ws.job(sim.base_url, cost={"budget_usd": 1.0}, request={"max_tokens": None})
    result = ws.run("run", str(job), "-q")
    assert result.code == 2 and "no max_tokens" in result.err
    prices = {"qwen-max": {"input": 0.4, "output": 1.2}}
    job = ws.job(
        sim.base_url, cost={"budget_usd": 1.0, "prices": prices}, request={"model": "qwen-max"}
    )
    assert ws.run("run", str(job), "-q").code == 0
    assert sim.requests
