"""`batchrun estimate` and `batchrun status`: nothing sent, figures that match a real run."""

from __future__ import annotations

import json

import polars as pl
import pytest

from batchrun.checkpoint.folder import checkpoint_dir
from batchrun.sim import SimConfig, SimServer, start_in_thread

from ..conftest import Workspace, reviews


def test_estimate_sends_nothing_and_its_prompt_tokens_are_exact(
    ws: Workspace, sim: SimServer
) -> None:
    ws.write_input(pl.DataFrame({"text": ["I love it", "这款电水壶烧水很快，推荐！", "", "meh"]}))
    job = str(ws.job(sim.base_url))
    result = ws.run("estimate", job, "--json")
    assert result.code == 0, result.err
    est = json.loads(result.out)
    assert sim.requests == []
    assert (est["rows"], est["to_send"], est["invalid"], est["done"]) == (4, 3, 1, 0)
    assert est["prompt_exact"] and est["counted_with"] == "o200k_base"
    assert est["output_tokens_max"] == 3 * 8 and est["output_tokens_expected"] is None
    assert est["cost_min_usd"] == pytest.approx(est["prompt_tokens"] * 0.15e-6)
    assert est["cost_max_usd"] == pytest.approx(est["cost_min_usd"] + 24 * 0.6e-6)
    # the run's reported prompt tokens are what the estimate said
    assert ws.run("run", job, "-q").code == 0
    assert ws.read_output()["prompt_tokens"].sum() == est["prompt_tokens"]
    # after the run: nothing left to send, and the mean of finished rows as the expectation
    after = json.loads(ws.run("estimate", job, "--json").out)
    assert (after["done"], after["to_send"]) == (4, 0)
    changed = json.loads(ws.run("estimate", job, "--json", "--set", "request.seed=1").out)
    assert changed["to_send"] == 3 and changed["output_tokens_expected"] is not None


def test_estimate_in_the_terminal_says_what_is_exact(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(5))
    result = ws.run("estimate", str(ws.job(sim.base_url)))
    assert result.code == 0
    assert "(exact, o200k_base)" in result.out and "at most 40" in result.out
    result = ws.run("estimate", str(ws.job(sim.base_url, request={"model": "qwen-max"})))
    assert "(estimated, estimate)" in result.out and "unknown: no price" in result.out


def test_estimate_of_a_batch_job_prices_the_batch_and_gives_its_window(ws: Workspace) -> None:
    ws.write_input(reviews(5))
    endpoints = [
        {"name": "batch", "base_url": "sim", "kind": "batch"},
        {"name": "direct", "base_url": "sim"},
    ]
    job = str(ws.job(endpoints=endpoints, limits={"deadline_s": 600}))
    result = ws.run("estimate", job, "--json")
    assert result.code == 0, result.err
    est = json.loads(result.out)
    costs = {c["name"]: c for c in est["by_endpoint"]}
    assert costs["batch"]["batch"] and not costs["direct"]["batch"]
    for figure in ("cost_min_usd", "cost_max_usd"):  # the batch price: half the list price
        assert costs["batch"][figure] == pytest.approx(costs["direct"][figure] * 0.5)
    assert est["cost_min_usd"] == costs["batch"]["cost_min_usd"]
    assert est["cost_max_usd"] == costs["direct"]["cost_max_usd"]
    assert est["minutes_at_limits"] is None
    assert (est["completion_window"], est["deadline_s"]) == ("24h", 600)
    text = ws.run("estimate", job).out
    assert "within the completion window (24h)" in text and "600 s after" in text
    assert "(as gpt-4o-mini, at the batch price)" in text and "time at the limits" not in text


def test_estimate_rejects_what_run_rejects(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(3))
    result = ws.run("estimate", str(ws.job(sim.base_url, prompt={"user": "{nope}"})))
    assert result.code == 2 and "'nope'" in result.err


def test_status_during_and_after_runs(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(pl.DataFrame({"text": ["good", "[[sim:content_filter]] x", "bad", "ok"]}))
    job = str(ws.job(sim.base_url))
    before = json.loads(ws.run("status", job, "--json").out)
    assert (before["done"], before["failed"], before["pending"]) == (0, 0, 4)
    assert ws.run("run", job, "-q", "--limit", "2").code == 0
    mid = json.loads(ws.run("status", job, "--json").out)
    assert (mid["done"], mid["failed"], mid["pending"]) == (1, 1, 2)
    assert mid["spend_usd"] == pytest.approx(ws.read_output()["cost_usd"].sum())
    assert ws.run("run", job, "-q").code == 0
    text = ws.run("status", job).out
    assert "done     3" in text and "failed   1" in text and "pending  0" in text
    changed = json.loads(ws.run("status", job, "--json", "--set", "request.seed=3").out)
    assert (changed["pending"], changed["changed"]) == (4, 4)
    assert len(sim.requests) == 4


def test_status_shows_the_batches_in_flight_and_removes_nothing(ws: Workspace) -> None:
    ws.write_input(reviews(10))
    with start_in_thread(SimConfig(batch_delay_s=60)) as sim:
        batch = {"kind": "batch", "batch_rows": 4, "poll_s": 0.5}
        job = str(ws.job(sim.base_url, endpoint=batch))
        detached = ws.run("run", job, "-q", "--detach")
        assert detached.code == 0, detached.err
        ledger = checkpoint_dir(ws.output) / "batches"
        # What a run holding the lock may be writing: a file's lines before its record.
        unrecorded = [ledger / "0123456789abcdef01234567.jsonl", ledger / ".lines.1.tmp"]
        for path in unrecorded:
            path.write_text("{}\n")
        status = json.loads(ws.run("status", job, "--json").out)
        text = ws.run("status", job).out
    assert all(path.exists() for path in unrecorded)
    assert (status["done"], status["pending"]) == (0, 10)
    batches = status["batches"]
    assert [b["rows"] for b in batches] == [4, 4, 2]
    assert {b["status"] for b in batches} == {"validating"} and not any(
        b["handed_over"] for b in batches
    )
    assert {b["batch_id"] for b in batches} == {b.batch_id for b in sim.batch_ledger.batches}
    assert "batches  3 in flight, 10 rows" in text
    assert all(f"{b['batch_id']}  validating  {b['rows']} rows" in text for b in batches)
