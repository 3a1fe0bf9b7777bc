"""Several endpoints in one job (`[[endpoints]]`): through the `batchrun` command against
loopback simulators, one per endpoint, each misbehaving its own way.

Tests `batchrun.engine` (its lanes, one per endpoint) and `batchrun.config` ([[endpoints]]).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.checkpoint.folder import checkpoint_dir
from batchrun.checkpoint.notes import ENDPOINTS_NOTE
from batchrun.config.job import load_job
from batchrun.config.pricing import job_pricer
from batchrun.engine.lanes import CIRCUIT_ERRORS, Circuit
from batchrun.sim import RequestRecord, SimConfig, SimServer, start_in_thread
from tests.conftest import FAKE_KEY, Workspace, busiest, reviews
from tests.simproc import SimProcess

OTHER_KEY = "sk-other-CANARY-9876543210fedcba"


# What every [[endpoints]] job here has beyond the workspace's job (`Workspace.job`): rows
# known by id, a second's wait on a quota that ran out, and no name; each entry sets its
# own pace, so [limits] sets none.
POOLED: dict[str, Any] = {
    "name": None,
    "input": {"id_column": "id"},
    "limits": {"requests_per_minute": None, "concurrency": None, "quota_wait_s": 1},
}


def entry(name: str, server: SimServer | SimProcess, **values: Any) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": server.base_url,
        "api_key_env": "BATCHRUN_TEST_KEY",
        "requests_per_minute": 60000,
        "concurrency": 8,
        **values,
    }


@contextlib.contextmanager
def sims(*configs: SimConfig) -> Iterator[list[SimServer]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(start_in_thread(c)) for c in configs]


def answered(server: SimServer) -> int:
    return sum(1 for r in server.requests if r.status == 200 and r.fault is None)


def check_all_ok_once(ws: Workspace, rows: int) -> pl.DataFrame:
    out = ws.read_output()
    assert out.height == rows and out["id"].n_unique() == rows
    assert out["status"].to_list() == ["ok"] * rows
    assert out["endpoint"].null_count() == 0
    return out


def test_a_bad_key_takes_its_endpoint_out_and_the_others_answer_every_row(
    ws: Workspace,
) -> None:
    ws.write_input(reviews(60))
    with sims(SimConfig(api_key=OTHER_KEY), SimConfig()) as (bad, good):
        job = ws.job(base=POOLED, endpoints=[entry("first", bad), entry("second", good)])
        result = ws.run("run", str(job), "--quiet")
    assert result.code == 0, result.err
    out = check_all_ok_once(ws, 60)
    assert set(out["endpoint"]) == {"second"}
    assert "endpoint 'first' is out" in result.err and "BATCHRUN_TEST_KEY" in result.err
    assert result.err.count("is out") == 1  # one warning, not one per row
    assert FAKE_KEY not in result.err + result.out and FAKE_KEY[:12] not in result.err
    assert len(good.requests) == 60


def test_a_quota_that_runs_out_mid_run_pauses_its_endpoint_and_the_job_finishes(
    ws: Workspace,
) -> None:
    ws.write_input(reviews(120))
    slow = SimConfig(latency_ms=20, quota_window=(0.2, 1e9))
    with sims(slow, SimConfig(latency_ms=20)) as (thin, wide):
        job = ws.job(
            base=POOLED,
            endpoints=[
                entry("thin", thin, requests_per_minute=3000, concurrency=4),
                entry("wide", wide, requests_per_minute=3000, concurrency=4),
            ],
        )
        result = ws.run("run", str(job), "--quiet")
    assert result.code == 0, result.err
    out = check_all_ok_once(ws, 120)
    counts = dict(out.group_by("endpoint").len().iter_rows())
    assert counts["thin"] == answered(thin) and counts["wide"] == answered(wide)
    assert counts["thin"] > 0 and counts["wide"] > 0
    assert any(r.fault == "quota" for r in thin.requests)
    assert "endpoint 'thin' is out" in result.err and "quota" in result.err
    for server in (thin, wide):
        assert_within_rate(arrivals(server), 3000)


def test_a_quota_that_never_returns_holds_no_row_while_another_endpoint_serves(
    ws: Workspace,
) -> None:
    """The endpoint's wait for its quota (20 s here) is no row's wait: the rows that met the
    quota answer, and each later probe, go on to the serving endpoint, and the run ends
    when that one has answered every row (5 s at its pace), not when the wait is over."""
    ws.write_input(reviews(100))
    with sims(SimConfig(quota_window=(0, 1e9)), SimConfig()) as (broke, good):
        job = ws.job(
            base=POOLED,
            endpoints=[
                entry("broke", broke, concurrency=2),
                entry("good", good, requests_per_minute=1200, concurrency=4),
            ],
            limits={"quota_wait_s": 20},
        )
        started = time.monotonic()
        result = ws.run("run", str(job), "--quiet")
        took = time.monotonic() - started
    assert result.code == 0, result.err
    assert took < 15, took  # with a row kept back to probe: 20 s and more
    out = check_all_ok_once(ws, 100)
    assert set(out["endpoint"]) == {"good"}
    # The first answers (one a slot), then a probe 2 s on, sent by whichever row asked
    # for an endpoint next: every request there for another row.
    assert {r.fault for r in broke.requests} == {"quota"}
    assert len(broke.requests) >= 3
    assert len({row_text(r) for r in broke.requests}) == len(broke.requests)
    # One warning when it paused; its wait was not over when the run ended, and the report
    # says it was paused then.
    assert result.err.count("endpoint 'broke' is paused: its quota is exhausted") == 1
    assert "'broke' is out" not in result.err
    report = json.loads(ws.run("report", str(job), "--json").out)
    states = {e["name"]: e["last_run"]["state"] for e in report["endpoints"]}
    assert states == {"broke": "paused", "good": "serving"}
    assert "paused" in ws.run("report", str(job)).out


def test_an_endpoint_paused_when_the_run_stops_is_reported_paused(ws: Workspace) -> None:
    """The budget stops the run while one endpoint's quota is gone: a stop wakes what waits
    on the pause, and the report still says the endpoint was paused, not serving."""
    ws.write_input(reviews(400))
    with sims(SimConfig(quota_window=(0, 1e9)), SimConfig()) as (broke, good):
        job = ws.job(
            base=POOLED,
            endpoints=[entry("broke", broke, concurrency=2), entry("good", good, concurrency=4)],
            limits={"quota_wait_s": 60},
            cost={"budget_usd": 0.0005},
        )
        result = ws.run("run", str(job), "--quiet")
    assert result.code == 3 and "budget" in result.err, result.err
    report = json.loads(ws.run("report", str(job), "--json").out)
    states = {e["name"]: e["last_run"]["state"] for e in report["endpoints"]}
    assert states == {"broke": "paused", "good": "serving"}


def test_the_failed_attempts_say_quota_exhausted_bad_key_or_rate_limited(ws: Workspace) -> None:
    """Issue 22: a quota read as a rate limit said the opposite of what happened. Each
    endpoint's failed attempts are counted by what happened: in endpoints.json, in `report
    --json` and in its text (and so in the HTML page, which shows the same table)."""
    ws.write_input(reviews(24))
    configs = (
        SimConfig(api_key=OTHER_KEY),  # 401 invalid_api_key
        SimConfig(quota_window=(0, 1e9)),  # 429 insufficient_quota
        SimConfig(dialect="bcwhkj", quota_window=(0, 1e9)),  # {"codes": 300} at HTTP 200
        SimConfig(faults={"rate_limit": 0.1}, seed=5),  # 429 rate_limit_exceeded
    )
    with sims(*configs) as (revoked, broke, bcwhkj, busy):
        job = ws.job(
            base=POOLED,
            endpoints=[
                entry("revoked", revoked, concurrency=2),
                entry("broke", broke, concurrency=2),
                entry("bcwhkj", bcwhkj, preset="bcwhkj", concurrency=2),
                entry("busy", busy, concurrency=4),
            ],
        )
        result = ws.run("run", str(job), "--quiet")
        limited = sum(1 for r in busy.requests if r.fault == "rate_limit")
    assert result.code == 0, result.err
    check_all_ok_once(ws, 24)
    assert limited > 0
    expected = {
        "revoked": {"bad_key": len(revoked.requests)},
        "broke": {"quota_exhausted": len(broke.requests)},
        "bcwhkj": {"quota_exhausted": len(bcwhkj.requests)},
        "busy": {"rate_limited": limited},
    }
    assert all(len(server.requests) > 0 for server in (revoked, broke, bcwhkj))

    note = json.loads((checkpoint_dir(ws.output) / ENDPOINTS_NOTE).read_text())
    assert {name: e["errors"] for name, e in note["endpoints"].items()} == expected

    report = json.loads(ws.run("report", str(job), "--json").out)
    assert {e["name"]: e["last_run"]["errors"] for e in report["endpoints"]} == expected
    assert {e["name"]: e["last_run"]["rate_limited"] for e in report["endpoints"]} == {
        "revoked": 0,
        "broke": 0,
        "bcwhkj": 0,
        "busy": limited,
    }
    text = ws.run("report", str(job)).out
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()[:1]}
    for name, errors in expected.items():
        ((kind, n),) = errors.items()
        assert f"{kind} {n:,}" in rows[name], text
    assert "rate_limited" not in rows["broke"] + rows["bcwhkj"] + rows["revoked"]


def test_an_endpoints_note_from_before_the_quota_and_key_kinds_still_reads(
    ws: Workspace,
) -> None:
    """An endpoints.json written before `quota_exhausted` and `bad_key` (and before each
    endpoint's state was kept) reads as it is: its kinds are shown as they were counted."""
    ws.write_input(reviews(20))
    with sims(SimConfig(), SimConfig()) as (first, second):
        job = ws.job(base=POOLED, endpoints=[entry("first", first), entry("second", second)])
        assert ws.run("run", str(job), "--quiet").code == 0
    old = {
        "requests": 30,
        "answers": 20,
        "errors": {"rate_limited": 9, "invalid_request": 1},
        "rate_limited": 0,
        "allowed_rpm": None,
        "circuit_opened": 0,
        "out": "its key was refused",
        "requests_per_minute": 60000,
    }
    note = checkpoint_dir(ws.output) / ENDPOINTS_NOTE
    note.write_text(json.dumps({"endpoints": {"first": old}, "at": time.time()}))
    result = ws.run("report", str(job), "--json")
    assert result.code == 0, result.err
    runs = {e["name"]: e["last_run"] for e in json.loads(result.out)["endpoints"]}
    assert runs["first"]["errors"] == {"rate_limited": 9, "invalid_request": 1}
    assert runs["second"] is None
    text = ws.run("report", str(job))
    assert text.code == 0 and "invalid_request 1, rate_limited 9" in text.out
    page = ws.root / "report.html"
    assert ws.run("report", str(job), "--html", str(page)).code == 0
    assert "rate_limited 9" in page.read_text(encoding="utf-8")


def test_a_502_storm_opens_the_circuit_and_the_rows_go_elsewhere(ws: Workspace) -> None:
    ws.write_input(reviews(80))
    storm = SimConfig(faults={"cf_bad_gateway": 1.0})
    with sims(storm, SimConfig()) as (bad, good):
        job = ws.job(
            base=POOLED, endpoints=[entry("stormy", bad, concurrency=2), entry("calm", good)]
        )
        result = ws.run("run", str(job), "--quiet")
    assert result.code == 0, result.err
    out = check_all_ok_once(ws, 80)
    assert set(out["endpoint"]) == {"calm"}
    # The circuit opened after CIRCUIT_ERRORS failures in a row (and those in flight then):
    # the stormy gateway saw a handful of requests, not one per row and attempt.
    assert len(bad.requests) <= CIRCUIT_ERRORS + 2
    # A row that failed there was asked again at once elsewhere, within its attempts.
    assert out["attempts"].max() <= 2


def test_when_every_endpoint_is_out_the_run_stops_with_exit_3_naming_each(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    second_key = "sk-second-CANARY-55555555aaaabbbb"
    monkeypatch.setenv("BATCHRUN_SECOND_KEY", second_key)
    ws.write_input(reviews(30))
    rejecting = SimConfig(api_key=OTHER_KEY, dialect="bcwhkj")
    with sims(SimConfig(api_key=OTHER_KEY), rejecting, SimConfig(quota_window=(0, 1e9))) as (
        a,
        b,
        c,
    ):
        job = ws.job(
            base=POOLED,
            endpoints=[
                entry("keyless", a),
                entry("revoked", b, api_key_env="BATCHRUN_SECOND_KEY"),
                entry("broke", c),
            ],
        )
        result = ws.run("run", str(job), "--quiet")
    assert result.code == 3, result.err
    assert "No endpoint can serve" in result.err
    assert "keyless: the gateway rejected the API key in BATCHRUN_TEST_KEY" in result.err
    assert "revoked: the gateway rejected the API key in BATCHRUN_SECOND_KEY" in result.err
    assert "broke: its quota is exhausted" in result.err
    assert "Traceback" not in result.err
    for key in (FAKE_KEY, second_key):
        assert key[:12] not in result.err + result.out
        for path in ws.root.rglob("*"):
            if path.is_file():
                assert key[:12].encode() not in path.read_bytes(), path


def test_a_resume_after_adding_an_endpoint_sends_only_the_pending_rows(ws: Workspace) -> None:
    ws.write_input(reviews(50))
    with sims(SimConfig(), SimConfig()) as (a, b):
        job = ws.job(base=POOLED, endpoints=[entry("a", a)])
        assert ws.run("run", str(job), "--quiet", "--limit", "20").code == 0
        assert len(a.requests) == 20
        job = ws.job(
            base=POOLED,
            endpoints=[entry("a", a, concurrency=1), entry("b", b, model="gpt-4o-mini")],
        )
        result = ws.run("run", str(job), "--quiet")
        assert result.code == 0, result.err
        assert len(a.requests) + len(b.requests) == 50  # the 30 pending, once each
        assert len(b.requests) > 0
        # Removing one again re-asks nothing: the endpoint is not part of a row's identity.
        job = ws.job(base=POOLED, endpoints=[entry("b", b)])
        assert ws.run("run", str(job), "--quiet").code == 0
        assert len(a.requests) + len(b.requests) == 50
    out = check_all_ok_once(ws, 50)
    assert set(out["endpoint"]) == {"a", "b"}


def test_each_row_costs_what_its_endpoint_charges(ws: Workspace) -> None:
    ws.write_input(reviews(60))
    with sims(SimConfig(dialect="bcwhkj"), SimConfig()) as (cheap, full):
        job = ws.job(
            base=POOLED,
            endpoints=[
                entry("cheap", cheap, preset="bcwhkj", concurrency=2, requests_per_minute=1200),
                entry("full", full, preset="openai"),
            ],
            strategy="spread",
        )
        result = ws.run("run", str(job), "--quiet")
    assert result.code == 0, result.err
    out = check_all_ok_once(ws, 60)
    loaded = load_job(job, environ={"BATCHRUN_TEST_KEY": FAKE_KEY})
    pricers = {e.name: job_pricer(loaded, e) for e in loaded.endpoints}
    assert pricers["cheap"].factor == 0.5 and pricers["full"].factor == 1.0
    from batchrun.core.completion import Usage

    for row in out.iter_rows(named=True):
        usage = Usage(row["prompt_tokens"], row["completion_tokens"], row["total_tokens"])
        assert row["cost_usd"] == pytest.approx(pricers[row["endpoint"]].cost(usage))
    assert set(out["endpoint"]) == {"cheap", "full"}


def test_spread_shares_rows_in_proportion_to_the_endpoints_limits(ws: Workspace) -> None:
    ws.write_input(reviews(90))
    with SimProcess() as fast, SimProcess() as slow:
        job = ws.job(
            base=POOLED,
            endpoints=[
                entry("fast", fast, requests_per_minute=2400, concurrency=16),
                entry("slow", slow, requests_per_minute=1200, concurrency=16),
            ],
            strategy="spread",
        )
        result = ws.run("run", str(job), "--quiet")
    assert result.code == 0, result.err
    out = check_all_ok_once(ws, 90)
    counts = dict(out.group_by("endpoint").len().iter_rows())
    assert 50 <= counts["fast"] <= 70 and counts["fast"] + counts["slow"] == 90
    assert_within_rate(fast.times, 2400, tolerance=1.1)
    assert_within_rate(slow.times, 1200, tolerance=1.1)


def test_priority_gives_the_first_endpoint_all_it_can_take(ws: Workspace) -> None:
    """Within its limits the first takes every row; past them (its concurrency here) the
    second takes the overflow."""
    ws.write_input(reviews(40))
    with sims(SimConfig(), SimConfig()) as (first, second):
        job = ws.job(
            base=POOLED, endpoints=[entry("first", first, concurrency=64), entry("second", second)]
        )
        assert ws.run("run", str(job), "--quiet").code == 0
        assert set(check_all_ok_once(ws, 40)["endpoint"]) == {"first"}
        assert not second.requests
    with sims(SimConfig(latency_ms=50), SimConfig(latency_ms=50)) as (first, second):
        job = ws.job(
            base=POOLED, endpoints=[entry("first", first, concurrency=2), entry("second", second)]
        )
        assert ws.run("run", str(job), "--quiet", "--fresh").code == 0
        counts = dict(check_all_ok_once(ws, 40).group_by("endpoint").len().iter_rows())
        assert counts["second"] > 0 and max(r.t for r in first.requests) > min(
            r.t for r in second.requests
        )  # the first kept serving beside the overflow


def assert_within_rate(times: list[float], rpm: float, *, tolerance: float = 1.5) -> None:
    """Arrival times (sorted) within an endpoint's limit: over the whole run, and in any
    second within `tolerance` times a second's share. The pacer allows 1.1; the default is
    looser for simulators in this process, which share its GIL with the engine: a busy
    moment delays their reading of requests and bunches arrivals that were sent apart
    (`tests.simproc.SimProcess` runs one in its own process, for the tight bound)."""
    per_second = rpm / 60
    span = times[-1] - times[0]
    assert len(times) - 1 <= per_second * span * 1.05 + 3, (len(times), span, per_second)
    most = busiest(times, 1.0)
    assert most <= per_second * tolerance + 3, (most, per_second)


def row_text(record: RequestRecord) -> str:
    """The review a simulator request was for."""
    assert record.body is not None
    return str(record.body["messages"][-1]["content"])


def arrivals(server: SimServer) -> list[float]:
    return sorted(r.t for r in server.requests)


@pytest.mark.parametrize(
    ("endpoints", "said"),
    [
        ([{"name": "a"}, {"name": "a"}], "two [[endpoints]] entries are named 'a'"),
        ([{"base_url": "sim"}], "[[endpoints]] entry 1 needs name"),
        ([{"name": "a b"}], "name must be letters"),
    ],
)
def test_a_wrong_endpoints_list_is_an_error_before_any_request(
    ws: Workspace, endpoints: list[dict[str, Any]], said: str
) -> None:
    ws.write_input(reviews(5))
    with sims(SimConfig()) as (server,):
        for e in endpoints:
            e.setdefault("base_url", server.base_url)
        result = ws.run("run", str(ws.job(base=POOLED, endpoints=endpoints)), "--quiet")
        assert result.code == 2 and said in result.err, result.err
        assert not server.requests


def test_a_missing_key_variable_of_any_endpoint_is_an_error_before_any_request(
    ws: Workspace,
) -> None:
    ws.write_input(reviews(5))
    with sims(SimConfig(), SimConfig()) as (a, b):
        job = ws.job(
            base=POOLED, endpoints=[entry("a", a), entry("b", b, api_key_env="BATCHRUN_UNSET_KEY")]
        )
        result = ws.run("run", str(job), "--quiet")
        assert result.code == 2, result.err
        assert "BATCHRUN_UNSET_KEY of endpoint 'b' is not set" in result.err
        assert not a.requests and not b.requests


def test_endpoint_and_endpoints_together_are_an_error(ws: Workspace) -> None:
    ws.write_input(reviews(5))
    path = ws.job(
        base=POOLED, endpoints=[{"name": "a", "base_url": "sim"}], endpoint={"base_url": "sim"}
    )
    result = ws.run("run", str(path), "--quiet")
    assert result.code == 2 and "either [endpoint] or [[endpoints]]" in result.err


def test_the_failover_demo_finishes_on_the_second_gateway(tmp_path: Path) -> None:
    """jobs/failover.toml as shipped, its output moved here."""
    from batchrun.cli import main

    demo = Path(__file__).resolve().parents[2] / "jobs" / "failover.toml"
    job = tmp_path / "failover.toml"
    text = demo.read_text(encoding="utf-8")
    text = text.replace(
        '"../sample_data/reviews.csv"',
        json.dumps(str(demo.parent.parent / "sample_data" / "reviews.csv")),
    )
    text = text.replace('"../out/failover.parquet"', json.dumps(str(tmp_path / "out.parquet")))
    job.write_text(text, encoding="utf-8")
    assert main(["run", str(job), "--quiet"]) == 0
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["status"].to_list() == ["ok"] * out.height
    counts = dict(out.group_by("endpoint").len().iter_rows())
    assert counts.get("bcwhkj", 0) > 0 and counts["302ai"] > counts.get("bcwhkj", 0)
    # Issue 22: bcwhkj ran out of credit, and its failed attempts say so.
    note = json.loads((checkpoint_dir(tmp_path / "out.parquet") / ENDPOINTS_NOTE).read_text())
    errors = note["endpoints"]["bcwhkj"]["errors"]
    assert errors.get("quota_exhausted", 0) > 0 and "rate_limited" not in errors, errors


def test_a_circuit_opens_after_errors_in_a_row_and_probes_at_growing_intervals() -> None:
    circuit = Circuit(3)
    for _ in range(2):
        assert not circuit.failed(0.0)
    circuit.answered()  # a success in between: the count starts over
    assert not circuit.failed(1.0) and not circuit.failed(1.0)
    assert circuit.failed(1.0)  # the third in a row opens it
    first = circuit.open_until
    assert first is not None and not circuit.allows(first - 0.01)
    assert circuit.allows(first)
    circuit.sending(first)  # the probe
    assert not circuit.allows(first)  # one probe at a time
    assert circuit.failed(first)  # the probe failed: open for twice as long
    assert circuit.open_until == pytest.approx(first + 2 * (first - 1.0))
    circuit.sending(circuit.open_until)
    circuit.answered()
    assert circuit.open_until is None and circuit.allows(0.0)
    assert Circuit(None).failed(0.0) is False  # one endpoint: never opens


def test_report_status_and_estimate_show_each_endpoint(ws: Workspace) -> None:
    ws.write_input(reviews(60))
    storm = SimConfig(faults={"server_error": 0.3}, seed=3)
    with sims(storm, SimConfig(dialect="bcwhkj")) as (flaky, cheap):
        job = ws.job(
            base=POOLED,
            endpoints=[
                entry("flaky", flaky, concurrency=4, requests_per_minute=1200),
                entry("cheap", cheap, preset="bcwhkj", concurrency=4, requests_per_minute=1200),
            ],
            strategy="spread",
        )
        assert ws.run("run", str(job), "--quiet").code == 0
    out = check_all_ok_once(ws, 60)

    result = ws.run("report", str(job), "--json")
    assert result.code == 0, result.err
    figures = {e["name"]: e for e in json.loads(result.out)["endpoints"]}
    assert list(figures) == ["flaky", "cheap"]
    for name, e in figures.items():
        mine = out.filter(pl.col("endpoint") == name)
        assert e["rows"] == e["ok"] == mine.height
        assert e["cost_usd"] == pytest.approx(mine["cost_usd"].sum())
        assert e["latency_mean_s"] == pytest.approx(mine["latency_s"].mean())
        run = e["last_run"]
        assert run["answers"] == mine.height
        assert run["requests"] == sum(1 for _ in (flaky if name == "flaky" else cheap).requests)
    assert figures["flaky"]["last_run"]["errors"].get("server_error", 0) > 0
    text = ws.run("report", str(job)).out
    assert "Endpoints" in text and "flaky" in text and "cheap" in text
    page = ws.root / "report.html"
    assert ws.run("report", str(job), "--html", str(page)).code == 0
    html = page.read_text(encoding="utf-8")
    assert "Endpoint flaky:" in html and "Endpoint cheap:" in html

    status = json.loads(ws.run("status", str(job), "--json").out)
    by = status["spend_by_endpoint"]
    assert list(by) == ["flaky", "cheap"]
    assert sum(by.values()) == pytest.approx(status["spend_usd"])
    assert by["cheap"] == pytest.approx(out.filter(pl.col("endpoint") == "cheap")["cost_usd"].sum())

    ws.write_input(reviews(90))  # 30 rows more: to send
    estimate = json.loads(ws.run("estimate", str(job), "--json").out)
    assert estimate["to_send"] == 30
    costs = {c["name"]: c for c in estimate["by_endpoint"]}
    assert costs["cheap"]["cost_max_usd"] == pytest.approx(costs["flaky"]["cost_max_usd"] / 2)
    assert estimate["cost_min_usd"] == costs["cheap"]["cost_min_usd"]
    assert estimate["cost_max_usd"] == costs["flaky"]["cost_max_usd"]


def test_export_and_import_batch_name_the_endpoint_they_are_for(ws: Workspace) -> None:
    from batchrun.core.completion import Usage

    from ..batchfiles.test_batchfiles import answer, exported

    ws.write_input(reviews(30))
    with sims(SimConfig(), SimConfig()) as (a, b):
        job = ws.job(
            base=POOLED,
            endpoints=[entry("a", a), entry("b", b, preset="bcwhkj", model="gpt-3.5-turbo")],
        )
        folder = ws.root / "batches"
        result = ws.run("export-batch", str(job), str(folder), "--endpoint", "b")
        assert result.code == 0, result.err
        assert "for endpoint b" in result.out and "--endpoint b" in result.out
        lines = exported(folder)
        assert {line["body"]["model"] for line in lines} == {"gpt-3.5-turbo"}
        output, _ = answer(folder, b.base_url)
        result = ws.run("import-batch", str(job), str(output), "--endpoint", "b")
        assert result.code == 0, result.err
        assert "from endpoint b" in result.out
        wrong = ws.run("import-batch", str(job), str(output), "--endpoint", "c")
        assert wrong.code == 2 and "no endpoint named 'c': name one of a, b" in wrong.err
        # The rows are settled whatever endpoint answered: a run sends nothing.
        assert ws.run("run", str(job), "--quiet").code == 0
        assert not a.requests
    out = check_all_ok_once(ws, 30)
    assert set(out["endpoint"]) == {"b"}
    loaded = load_job(job, environ={"BATCHRUN_TEST_KEY": FAKE_KEY})
    pricer = job_pricer(loaded, loaded.endpoint_named("b"))
    assert pricer.model == "gpt-4o-mini" and pricer.factor == 0.5  # bcwhkj's price_as
    for row in out.iter_rows(named=True):
        usage = Usage(row["prompt_tokens"], row["completion_tokens"], row["total_tokens"])
        assert row["cost_usd"] == pytest.approx(pricer.cost(usage) * 0.5)  # the Batch half


def test_a_429_slows_only_the_endpoint_that_gave_it(ws: Workspace) -> None:
    ws.write_input(reviews(150))
    with sims(SimConfig(rpm_limit=300), SimConfig()) as (tight, roomy):
        job = ws.job(
            base=POOLED,
            endpoints=[
                entry("tight", tight, requests_per_minute=3000, concurrency=8),
                entry("roomy", roomy, requests_per_minute=1200, concurrency=8),
            ],
            strategy="spread",
        )
        result = ws.run("run", str(job), "--quiet")
        assert result.code == 0, result.err
        assert any(r.fault == "rate_limit" for r in tight.requests)
        assert not any(r.fault == "rate_limit" for r in roomy.requests)
        assert_within_rate(arrivals(roomy), 1200)
    check_all_ok_once(ws, 150)
    report = json.loads(ws.run("report", str(job), "--json").out)
    runs = {e["name"]: e["last_run"] for e in report["endpoints"]}
    assert runs["tight"]["rate_limited"] > 0 and runs["tight"]["allowed_rpm"] < 3000
    assert runs["roomy"]["rate_limited"] == 0 and runs["roomy"]["allowed_rpm"] is None


def test_the_budget_holds_across_every_endpoint(ws: Workspace) -> None:
    ws.write_input(reviews(400))
    with sims(SimConfig(), SimConfig()) as (a, b):
        job = ws.job(
            base=POOLED,
            endpoints=[entry("a", a, concurrency=4), entry("b", b, concurrency=4)],
            strategy="spread",
            cost={"budget_usd": 0.0005},
        )
        result = ws.run("run", str(job), "--quiet")
        assert a.requests and b.requests
    assert result.code == 3 and "budget" in result.err, result.err
    status = json.loads(ws.run("status", str(job), "--json").out)
    assert 0 < status["spend_usd"] <= 0.0005
    assert set(status["spend_by_endpoint"]) == {"a", "b"}


def test_the_progress_line_shows_each_endpoint_s_state() -> None:
    import io

    from batchrun.core.progress import Progress

    stream = io.StringIO()
    progress = Progress(10, 0, stream=stream, interactive=False)
    progress.endpoints = lambda: "bcwhkj out, 302ai serving"
    assert progress.line().endswith("· bcwhkj out, 302ai serving")


def test_a_checkpoint_from_before_endpoints_resumes_and_reports(ws: Workspace) -> None:
    """Segments written before results named their endpoint (no `endpoint` column) read
    it as null: a resume with [[endpoints]] sends only the new rows, merges old and new
    segments, and the report and status count the old results as "(unnamed)"."""
    import pyarrow.parquet as pq

    from batchrun.checkpoint.folder import Checkpoint, checkpoint_dir

    ws.write_input(reviews(30))
    with sims(SimConfig(), SimConfig()) as (a, b):
        job = ws.job(a.base_url, input={"id_column": "id"})
        assert ws.run("run", str(job), "--quiet").code == 0
        folder = checkpoint_dir(ws.output)
        for path in Checkpoint(folder).segments():
            table = pq.read_table(path)
            pq.write_table(table.drop_columns(["endpoint"]), path)
        ws.write_input(reviews(45))
        job = ws.job(base=POOLED, endpoints=[entry("a", a), entry("b", b)])
        result = ws.run("run", str(job), "--quiet")
        assert result.code == 0, result.err
        assert len(a.requests) + len(b.requests) == 45
    out = ws.read_output()
    assert out["status"].to_list() == ["ok"] * 45
    assert out["endpoint"].head(30).null_count() == 30
    assert out["endpoint"].tail(15).null_count() == 0
    report = json.loads(ws.run("report", str(job), "--json").out)
    rows = {e["name"]: e["rows"] for e in report["endpoints"]}
    assert rows.pop("(unnamed)") == 30 and sum(rows.values()) == 15
    status = json.loads(ws.run("status", str(job), "--json").out)
    assert status["done"] == 45 and "(unnamed)" in status["spend_by_endpoint"]


def test_a_ray_run_s_progress_line_shows_each_endpoint_s_state_over_the_cluster() -> None:
    """The desk takes each worker's endpoint states with its tally: an endpoint serves
    where any worker serves it, and is out only where every worker that said has it out."""
    import io
    from dataclasses import asdict

    from batchrun.core.progress import Progress
    from batchrun.ray.desk import Desk, Tally
    from batchrun.ray.driver import _show

    desk = Desk({"a": (600, None), "b": (600, None), "c": (600, None)})

    def lanes(**states: str) -> dict[str, dict[str, str]]:
        return {name: {"state": state} for name, state in states.items()}

    desk.sync(0, "x", asdict(Tally(ok=3, lanes=lanes(a="out", b="serving", c="paused"))))
    desk.sync(1, "y", asdict(Tally(ok=2, lanes=lanes(a="out", b="out", c="out"))))
    figures = desk.totals()
    assert figures["ok"] == 5
    assert {n: e["state"] for n, e in figures["endpoints"].items()} == {
        "a": "out",
        "b": "serving",
        "c": "paused",
    }
    progress = Progress(10, 0, stream=io.StringIO(), interactive=False)
    _show(progress, figures)
    assert progress.line().endswith("· a out, b serving, c paused")


def test_a_ray_run_s_endpoint_figures_are_every_worker_s_summed() -> None:
    """Each worker's requests, answers and failed attempts by kind per endpoint, with those
    of an attempt that died (a worker killed: its requests were sent all the same), and the
    first reason an endpoint went out: what `report` shows of a Ray run's endpoints."""
    from dataclasses import asdict

    from batchrun.ray.desk import Desk, Tally

    def lanes(
        requests: int, answers: int, errors: dict[str, int], out: str | None = None
    ) -> dict[str, dict[str, Any]]:
        figures = {"requests": requests, "answers": answers, "errors": errors}
        return {"a": {**figures, "circuit_opened": 1 if out else 0, "out": out}}

    desk = Desk({"a": (600, None)})
    desk.sync(0, "x", asdict(Tally(lanes=lanes(5, 4, {"server_error": 1}))))
    desk.sync(0, "x2", asdict(Tally(lanes=lanes(3, 3, {}))))  # shard 0 again: x died
    kinds = {"server_error": 1, "timeout": 1, "quota_exhausted": 2, "bad_key": 1}
    desk.sync(1, "y", asdict(Tally(lanes=lanes(7, 5, kinds, "k"))))
    run = desk.totals()["endpoints"]["a"]["run"]
    assert run == {
        "requests": 15,
        "answers": 12,
        "circuit_opened": 1,
        "errors": {"server_error": 2, "timeout": 1, "quota_exhausted": 2, "bad_key": 1},
        "out": "k",
    }
