"""Run-wide behaviour against a misbehaving simulator: bad keys, quotas, 429s, flaky gateways."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from itertools import pairwise
from typing import Any

import polars as pl
import pytest

from batchrun.engine import pacing as limits
from batchrun.protocol import wire
from batchrun.sim import SimConfig, SimServer, start_in_thread

from ..conftest import FakeClock, Workspace, reviews, run_faked


def ok_answers(sim: SimServer) -> Counter[str]:
    """Completions the gateway delivered (and would bill), by user message."""
    return Counter(
        r.body["messages"][-1]["content"]
        for r in sim.requests
        if r.status == 200 and r.fault is None and r.body
    )


@pytest.mark.parametrize("dialect", ["openai", "bcwhkj"])
def test_a_bad_key_stops_at_once_and_names_the_variable(ws: Workspace, dialect: str) -> None:
    with start_in_thread(SimConfig(dialect=dialect, api_key="sk-the-right-one-000000")) as sim:
        ws.write_input(reviews(200))
        job = ws.job(sim.base_url, limits={"concurrency": 8})
        result = ws.run("run", str(job), "-q")
        assert result.code == 3
        assert "BATCHRUN_TEST_KEY" in result.err and "rejected the API key" in result.err
        assert len(sim.requests) <= 8  # only what was already in flight
        assert ws.read_output().height == 0


def test_a_quota_window_is_waited_out_and_the_run_finishes(ws: Workspace) -> None:
    with start_in_thread(SimConfig(quota_window=(0.3, 1.5), latency_ms=20)) as sim:
        ws.write_input(reviews(60))
        job = ws.job(
            sim.base_url,
            limits={"quota_wait_s": 20, "concurrency": 8, "requests_per_minute": 1800},
        )
        result = ws.run("run", str(job), "-q")
        assert result.code == 0, result.err
        out = ws.read_output()
        assert set(out["status"]) == {"ok"} and out.height == 60
        refused = [r for r in sim.requests if r.fault == "quota"]
        assert 1 <= len(refused) <= 8 + 4  # those in flight, then a few probes, no storm
        assert sum(ok_answers(sim).values()) == 60


def test_a_quota_that_never_returns_stops_within_quota_wait(ws: Workspace) -> None:
    with start_in_thread(SimConfig(quota_window=(0.0, float("inf")))) as sim:
        ws.write_input(reviews(100))
        job = ws.job(sim.base_url, limits={"quota_wait_s": 2, "concurrency": 8})
        started = time.monotonic()
        result = ws.run("run", str(job), "-q")
        elapsed = time.monotonic() - started
        assert result.code == 3
        assert "quota" in result.err and "within 2 s" in result.err
        assert elapsed < 2 + 2.5
        assert len(sim.requests) <= 8 + 6  # the first wave, then a handful of probes


def test_a_quarter_failing_transiently_ends_with_every_row_ok_and_none_paid_twice(
    ws: Workspace,
) -> None:
    faults = {
        "server_error": 0.08,
        "cf_bad_gateway": 0.04,
        "html_error": 0.04,
        "reset": 0.03,
        "malformed": 0.03,
        "rate_limit": 0.03,
    }
    with start_in_thread(SimConfig(dialect="bcwhkj", faults=faults, seed=7)) as sim:
        frame = reviews(150)
        ws.write_input(frame)
        job = ws.job(sim.base_url, limits={"max_attempts": 12, "concurrency": 16})
        # The backoffs and 429 pauses are the engine's own choices: on its clock, not waited
        # out (18 s of real time they were).
        clock = FakeClock()
        summary = run_faked(job, clock)
        assert summary.stopped is None and summary.ok == 150
        assert clock.now > 1000.0  # it did back off and pause
        out = ws.read_output()
        assert set(out["status"]) == {"ok"} and out.height == 150
        assert sum(1 for r in sim.requests if r.fault) >= 20
        paid = ok_answers(sim)
        assert all(count == 1 for count in paid.values()) and len(paid) == 150
        assert out["attempts"].sum() == len(sim.requests)


def test_a_rate_limited_row_waits_as_told_uses_no_attempts_and_fails_only_after_max_retry_s(
    ws: Workspace,
) -> None:
    """Real time: the point is the waits Retry-After asks for, and max_retry_s's bound."""
    with start_in_thread(SimConfig()) as sim:
        ws.write_input(pl.DataFrame({"text": ["fine", "[[sim:rate_limit]] always limited"]}))
        job = ws.job(sim.base_url, limits={"max_attempts": 2, "max_retry_s": 3.5})
        assert ws.run("run", str(job), "-q").code == 0
        out = ws.read_output()
        assert out["status"].to_list() == ["ok", "failed"]
        times = [r.t for r in sim.requests if r.fault == "rate_limit"]
        # Every second (the simulator's Retry-After) until 3.5 s were over: far more
        # attempts than max_attempts, none sooner than asked.
        assert 4 <= len(times) <= 5 and out["attempts"][1] == len(times)
        assert all(b - a >= 0.95 for a, b in pairwise(times))
        assert out["error"][1] == "rate_limited"


@pytest.mark.parametrize(
    ("dialect", "marker", "error"),
    [
        ("openai", "content_filter", "content_refused"),
        ("bcwhkj", "content_filter", "content_refused"),
        ("bcwhkj", "illegal_chars", "content_refused"),
        ("openai", "context_length", "context_length"),
        ("openai", "model_not_found", "model_not_found"),
    ],
)
def test_row_failures_are_not_retried(ws: Workspace, dialect: str, marker: str, error: str) -> None:
    with start_in_thread(SimConfig(dialect=dialect)) as sim:
        ws.write_input(pl.DataFrame({"text": ["good", f"[[sim:{marker}]] bad", "nice"]}))
        assert ws.run("run", str(ws.job(sim.base_url)), "-q").code == 0
        out = ws.read_output()
        assert out["status"].to_list() == ["ok", "failed", "ok"]
        assert out["error"][1] == error and out["attempts"][1] == 1
        assert out["error_message"][1]
        assert len(sim.requests) == 3


def test_when_the_first_rows_all_fail_alike_the_run_stops(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(200))
    job = ws.job(sim.base_url, request={"model": "missing-model"}, limits={"concurrency": 4})
    result = ws.run("run", str(job), "-q")
    assert result.code == 3
    assert "model_not_found" in result.err and "fix the job" in result.err
    assert len(sim.requests) <= 10 + 4
    assert ws.read_output()["error"].unique().to_list() == ["model_not_found"]


def test_a_429_storm_slows_the_whole_run_instead_of_retrying_in_a_storm(ws: Workspace) -> None:
    """Real time: the gateway's limit is a sliding second, the job asks five times that."""
    from statistics import median

    from batchrun.core.tokens import counter_for

    # The simulator counts tokens with the model's encoding; loaded here, its first answer
    # does not stall (and bunch up the requests behind it) while the encoding loads.
    counter_for("gpt-4o-mini").text("warm")
    with start_in_thread(SimConfig(rpm_limit=600)) as sim:  # 10 in any second
        ws.write_input(reviews(40))
        job = ws.job(
            sim.base_url,
            # 50 a second; one attempt: were a 429 to use it up, its row would fail
            limits={"requests_per_minute": 3000, "concurrency": 16, "max_attempts": 1},
        )
        result = ws.run("run", str(job), "-q")
        requests = sim.requests
    assert result.code == 0, result.err
    out = ws.read_output()
    assert out["status"].to_list() == ["ok"] * 40  # no row failed ...
    limited = [r for r in requests if r.fault == "rate_limit"]
    assert limited and all(r.status == 429 for r in limited)  # ... though 429s came,
    assert (out["attempts"] > 1).any()  # some rows' more than once: none cost an attempt
    assert out["attempts"].sum() == len(requests) == 40 + len(limited)
    assert f"the gateway answered 429 {len(limited):,} time" in result.out, result.out

    # The first 429 named when the gateway's second would let a request in again: its
    # oldest admitted request's arrival, plus the second.
    first = limited[0].t
    admitted = [r.t for r in requests if r.status == 200]
    reopens = min(t for t in admitted if first - 1.0 < t <= first) + 1.0
    assert reopens - first > 0.4, "the first 429 came late in its second: nothing to wait"
    # A cool-down shared by the whole run: once that 429 is back (the requests sent before
    # it are its echo), no row sends anything until the gateway reopens; rows retrying on
    # their own, and the others going on at 50 a second, would have sent dozens.
    echo_s = 0.1
    meanwhile = [round(r.t - first, 3) for r in requests if first + echo_s < r.t < reopens - 0.05]
    assert meanwhile == [], meanwhile
    # And slowed: after it, the starts come at about the gateway's 10 a second, not in
    # bursts at the job's 50 between pauses.
    later = [r.t for r in requests if r.t >= reopens - 0.05]
    assert len(later) >= 20
    assert median(b - a for a, b in pairwise(later)) > 0.06
    assert len(limited) <= 16  # one storm (its echo at most the requests in flight), no more


def test_the_engine_reads_the_gateways_ratelimit_headers(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    original = limits.Pacer.follow_headers

    def spy(self: limits.Pacer, headers: Any, in_flight: int, in_flight_tokens: int) -> None:
        seen.append({k: v for k, v in headers.items() if k.startswith("x-ratelimit")})
        original(self, headers, in_flight, in_flight_tokens)

    monkeypatch.setattr(limits.Pacer, "follow_headers", spy)
    with start_in_thread(SimConfig(rpm_limit=6000, ratelimit_headers=True)) as sim:
        ws.write_input(reviews(5))
        assert ws.run("run", str(ws.job(sim.base_url)), "-q").code == 0
    assert len(seen) == 5 and all("x-ratelimit-remaining-requests" in h for h in seen)


def test_a_hanging_gateway_costs_a_timeout_not_a_hang(ws: Workspace) -> None:
    with start_in_thread(SimConfig(hang_s=30)) as sim:
        ws.write_input(pl.DataFrame({"text": ["fine", "[[sim:hang]] never answered"]}))
        job = ws.job(sim.base_url, limits={"request_timeout_s": 0.5, "max_attempts": 2})
        started = time.monotonic()
        assert ws.run("run", str(job), "-q").code == 0
        assert time.monotonic() - started < 10
        out = ws.read_output()
        assert out["status"].to_list() == ["ok", "failed"] and out["error"][1] == "timeout"
        assert out["attempts"][1] == 2


def test_an_oversized_body_fails_the_row_instead_of_filling_memory(
    ws: Workspace, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_BODY_BYTES", 64)  # every real answer is larger than this
    ws.write_input(reviews(2))
    job = ws.job(sim.base_url, limits={"max_attempts": 2})
    assert ws.run("run", str(job), "-q").code == 0
    out = ws.read_output()
    assert out["error"].to_list() == ["too_large"] * 2


def test_errors_arriving_in_200_bodies_each_land_in_their_class(ws: Workspace) -> None:
    markers = {"content_filter": "content_refused", "illegal_chars": "content_refused"}
    with start_in_thread(SimConfig(dialect="bcwhkj")) as sim:
        texts = [f"[[sim:{m}]] text" for m in markers]
        ws.write_input(pl.DataFrame({"text": texts}))
        assert ws.run("run", str(ws.job(sim.base_url)), "-q").code == 0
        statuses = defaultdict(set)
        for r in sim.requests:
            statuses[r.fault].add(r.status)
        assert statuses["content_filter"] == {200} and statuses["illegal_chars"] == {200}
        assert ws.read_output()["error"].to_list() == list(markers.values())
