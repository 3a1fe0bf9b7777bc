"""Engine runs against real loopback servers with the engine's clock and sleep faked: pacing
by tokens, the shared pause of a 429, a body over the cap, and an early stop after the
request changed. The fake clock moves only when the engine sleeps on it, so the waits the
engine chose are measured exactly and no test waits them out."""

from __future__ import annotations

from aiohttp import web

from batchrun.errors import BudgetReached
from batchrun.protocol.wire import MAX_BODY_BYTES
from batchrun.sim import SimConfig, start_in_thread

from ..conftest import FakeClock, Workspace, reviews, run_faked
from ..stingy import loopback_gateway


def test_tokens_per_minute_paces_a_real_run(ws: Workspace) -> None:
    ws.write_input(reviews(60))
    clock = FakeClock()
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(
            sim.base_url,
            limits={"requests_per_minute": 1_000_000, "tokens_per_minute": 6000, "concurrency": 8},
        )
        summary = run_faked(job, clock)
        assert len(sim.requests) == 60
    assert summary.ok == 60
    used = int(ws.read_output()["total_tokens"].sum())
    # 100 tokens a second: the starts take what the rows used, less the first tenth of a
    # second's catching up and the last request's own share.
    assert used / 100 * 0.8 <= clock.now - 1000.0 <= used / 100 * 1.2


def test_a_429_pauses_every_start_for_its_retry_after(ws: Workspace) -> None:
    """The simulator's rate_limit fault asks for 1 s: the run's clock moves by at least
    that, once for the storm, and no row fails or uses up an attempt."""
    ws.write_input(reviews(40))
    clock = FakeClock()
    with start_in_thread(SimConfig(faults={"rate_limit": 0.2}, seed=3)) as sim:
        job = ws.job(sim.base_url, limits={"max_attempts": 1, "concurrency": 4})
        summary = run_faked(job, clock)
        limited = sum(1 for r in sim.requests if r.fault == "rate_limit")
    assert limited >= 3 and summary.ok == 40 and summary.failed == 0
    assert summary.rate_limited == limited
    assert clock.now - 1000.0 >= 1.0  # waited as told, on the engine's clock
    assert any(abs(s - 1.0) < 0.05 for s in clock.slept)
    out = ws.read_output()
    assert int(out["attempts"].sum()) == 40 + limited  # every 429 was asked again


async def huge_body(request: web.Request) -> web.StreamResponse:
    """A gateway's answer over batchrun's cap, streamed without a Content-Length."""
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b" " * (1 << 20)
    for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
        await response.write(chunk)
    return response


def test_a_body_over_the_cap_fails_its_row_after_its_attempts(ws: Workspace) -> None:
    ws.write_input(reviews(2))
    clock = FakeClock()
    with loopback_gateway(huge_body) as url:
        job = ws.job(url, limits={"max_attempts": 2, "concurrency": 2})
        summary = run_faked(job, clock)
    assert summary.failed == 2
    out = ws.read_output()
    assert set(out["error"]) == {"too_large"} and set(out["attempts"]) == {2}
    assert all(str(MAX_BODY_BYTES) in m for m in out["error_message"])


def test_an_early_stop_after_the_request_changed_keeps_only_current_answers(
    ws: Workspace,
) -> None:
    """A run after `max_tokens` changed, stopped by its budget half-way: the output holds
    the rows answered for the new request, never an answer to the old one."""
    ws.write_input(reviews(40))
    clock = FakeClock()
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, input={"id_column": "id"}, limits={"concurrency": 2})
        assert run_faked(job, clock).ok == 40
        changed = ws.job(
            sim.base_url,
            input={"id_column": "id"},
            limits={"concurrency": 2},
            request={"max_tokens": 9},
            cost={"budget_usd": 0.0006, "prices": {"gpt-4o-mini": {"input": 1.0, "output": 1.0}}},
        )
        summary = run_faked(changed, clock)
        assert isinstance(summary.stopped, BudgetReached)
    out = ws.read_output()
    assert 0 < out.height < 40
    assert set(out["status"]) == {"ok"}
    bodies = {
        r.body["messages"][-1]["content"]: r.body["max_tokens"] for r in sim.requests[40:] if r.body
    }
    assert all(bodies.get(f"Review: {t}") == 9 for t in out["text"])
    assert out["id"].to_list() == sorted(out["id"].to_list())  # input order
    assert out["id"].is_unique().all()
    assert summary.ok == out.height and summary.pending == 40 - out.height
