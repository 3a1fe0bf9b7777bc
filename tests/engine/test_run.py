"""`batchrun run` end to end against the simulator over loopback HTTP: the output rows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from batchrun.core import progress
from batchrun.protocol.result import RESULT_COLUMNS
from batchrun.sim import SimConfig, SimServer, start_in_thread

from ..conftest import Workspace, reviews

REPO = Path(__file__).resolve().parents[2]
BASE_COLUMNS = [c for c in RESULT_COLUMNS if c not in ("choices", "json_valid", "endpoint")]


def test_parquet_input_gives_one_row_per_input_row_in_order(ws: Workspace, sim: SimServer) -> None:
    frame = reviews(60).with_columns(pl.Series("n", range(60)))
    ws.write_input(frame)
    result = ws.run("run", str(ws.job(sim.base_url, input={"id_column": "id"})), "--quiet")
    assert result.code == 0, result.err
    out = ws.read_output()
    assert out.columns == ["id", "text", "n", *BASE_COLUMNS]
    assert out["id"].to_list() == frame["id"].to_list()
    assert out["text"].to_list() == frame["text"].to_list()
    assert set(out["status"]) == {"ok"}
    assert set(out["response"]) <= {"positive", "negative", "neutral"}
    assert out.schema["prompt_tokens"] == pl.Int64 and out.schema["attempts"] == pl.Int32
    assert out.schema["cost_usd"] == pl.Float64 and out.schema["usage_estimated"] == pl.Boolean
    assert (out["total_tokens"] == out["prompt_tokens"] + out["completion_tokens"]).all()
    assert out["cached_tokens"].null_count() == 0 and out["reasoning_tokens"].null_count() == 0
    assert out["cost_usd"].null_count() == 0 and out["cost_usd"].sum() > 0
    assert out["response_model"].to_list() == ["gpt-4o-mini"] * 60
    assert out["system_fingerprint"].null_count() == 0 and out["response_id"].n_unique() == 60
    assert out["usage_estimated"].to_list() == [False] * 60
    assert out["ttft_s"].null_count() == 60  # not streaming
    assert len(sim.requests) == 60
    assert "60 ok, 0 failed, 0 pending" in result.out


def test_each_row_gets_its_own_answer(ws: Workspace, sim: SimServer) -> None:
    frame = pl.DataFrame({"text": ["I love it, excellent", "Broken, terrible, refund", "ok"] * 5})
    ws.write_input(frame)
    assert ws.run("run", str(ws.job(sim.base_url)), "-q").code == 0
    out = ws.read_output()
    assert out["response"].to_list()[:2] == ["positive", "negative"]
    sent = {r.body["messages"][-1]["content"]: r for r in sim.requests if r.body}
    assert sorted(sent) == sorted(f"Review: {t}" for t in set(frame["text"]))


def test_csv_with_quotes_newlines_and_emoji_round_trips(ws: Workspace, sim: SimServer) -> None:
    source = REPO / "sample_data" / "reviews.csv"
    (ws.root / "reviews.csv").write_bytes(source.read_bytes())
    job = ws.job(sim.base_url, input={"path": "reviews.csv", "id_column": "review_id"})
    assert ws.run("run", str(job), "-q").code == 0
    out = ws.read_output()
    original = pl.read_csv(source, infer_schema=False)
    assert out.height == 300
    assert out.select(original.columns).equals(original)  # every input column unchanged, as text
    assert out["text"].str.contains("\n").sum() >= 8
    assert out["text"].str.contains('"').sum() >= 10
    assert set(out["status"]) == {"ok"}


def test_a_folder_and_a_glob_of_parts_are_read_in_order(ws: Workspace, sim: SimServer) -> None:
    parts = ws.root / "parts"
    parts.mkdir()
    frame = reviews(30)
    for i in range(3):
        frame.slice(i * 10, 10).write_parquet(parts / f"part-{i}.parquet")
    job = ws.job(sim.base_url, input={"path": "parts", "id_column": "id"})
    assert ws.run("run", str(job), "-q").code == 0
    assert ws.read_output()["id"].to_list() == frame["id"].to_list()

    job = ws.job(sim.base_url, input={"path": "parts/part-*.parquet"}, output={"path": "g.parquet"})
    assert ws.run("run", str(job), "-q").code == 0
    assert pl.read_parquet(ws.root / "g.parquet")["id"].to_list() == frame["id"].to_list()


def test_without_id_column_the_position_is_the_id(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(12))
    job = ws.job(sim.base_url)
    assert ws.run("run", str(job), "-q").code == 0
    assert ws.read_output().height == 12
    assert ws.run("run", str(job), "-q").code == 0
    assert len(sim.requests) == 12  # the second run resumed and sent nothing


def test_set_overrides_reach_the_request(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(5))
    job = ws.job(sim.base_url)
    result = ws.run(
        "run",
        str(job),
        "-q",
        "--set",
        "request.model=gpt-4-gizmo-g-B3hgivKK9",
        "--set",
        "request.seed=42",
        "--set",
        "limits.concurrency=2",
    )
    assert result.code == 0, result.err
    out = ws.read_output()
    assert set(out["response_model"]) == {"gpt-4-gizmo-g-B3hgivKK9"}
    assert out["cost_usd"].null_count() == 5  # no known price: null, never made up
    assert all(r.body and r.body["seed"] == 42 for r in sim.requests)


def test_limit_runs_the_first_rows_and_the_next_run_finishes(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(20))
    job = ws.job(sim.base_url, input={"id_column": "id"})
    assert ws.run("run", str(job), "-q", "--limit", "7").code == 0
    assert ws.read_output()["id"].to_list() == [f"r{i:04d}" for i in range(7)]
    assert len(sim.requests) == 7
    assert ws.run("run", str(job), "-q").code == 0
    assert ws.read_output()["id"].to_list() == [f"r{i:04d}" for i in range(20)]
    assert len(sim.requests) == 20  # the 7 finished rows were not sent again


def test_changed_requests_run_again_and_fresh_runs_everything(
    ws: Workspace, sim: SimServer
) -> None:
    ws.write_input(reviews(6))
    job = ws.job(sim.base_url)
    assert ws.run("run", str(job), "-q").code == 0
    assert ws.run("run", str(job), "-q", "--set", "request.max_tokens=9").code == 0
    assert len(sim.requests) == 12
    assert ws.run("run", str(job), "-q", "--set", "request.max_tokens=9").code == 0
    assert len(sim.requests) == 12
    assert ws.run("run", str(job), "-q", "--set", "request.max_tokens=9", "--fresh").code == 0
    assert len(sim.requests) == 18
    assert ws.read_output().height == 6


def test_null_and_empty_prompts_fail_their_row_not_the_run(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(pl.DataFrame({"text": ["good product", None, "", "bad product"]}))
    result = ws.run("run", str(ws.job(sim.base_url)), "-q")
    assert result.code == 0
    out = ws.read_output()
    assert out["status"].to_list() == ["ok", "failed", "failed", "ok"]
    assert out["error"].to_list() == [None, "invalid_request", "invalid_request", None]
    assert out["attempts"].to_list() == [1, 0, 0, 1]
    assert len(sim.requests) == 2


def test_messages_column_as_json_text(ws: Workspace, sim: SimServer) -> None:
    messages = [
        '[{"role": "system", "content": "Label positive or negative."}, '
        '{"role": "user", "content": "I love it"}]',
        '[{"role": "user", "content": [{"type": "text", "text": "hello"}]}]',
    ]
    ws.write_input(pl.DataFrame({"m": messages}))
    job = ws.job(sim.base_url, prompt={"system": None, "user": None, "messages_column": "m"})
    result = ws.run("run", str(job), "-q")
    assert result.code == 0, result.err
    assert ws.read_output()["status"].to_list() == ["ok", "ok"]
    bodies = sorted((r.body for r in sim.requests if r.body), key=lambda b: len(b["messages"]))
    assert bodies[0]["messages"][0]["content"] == [{"type": "text", "text": "hello"}]


def test_server_errors_and_resets_are_retried_until_every_row_is_ok(ws: Workspace) -> None:
    config = SimConfig(faults={"server_error": 0.2, "reset": 0.1}, seed=3)
    with start_in_thread(config) as sim:
        ws.write_input(reviews(80))
        job = ws.job(sim.base_url, limits={"max_attempts": 10})
        assert ws.run("run", str(job), "-q").code == 0
        out = ws.read_output()
        assert set(out["status"]) == {"ok"}
        assert out["attempts"].sum() == len(sim.requests) > 80
        assert (out["attempts"] > 1).any()


def test_pacing_puts_no_more_than_a_second_share_in_any_second(
    ws: Workspace, sim: SimServer
) -> None:
    ws.write_input(reviews(45))
    job = ws.job(sim.base_url, limits={"requests_per_minute": 600, "concurrency": 32})
    assert ws.run("run", str(job), "-q").code == 0
    times = [r.t for r in sim.requests]
    assert len(times) == 45
    busiest = max(sum(1 for u in times[i:] if u < t + 1.0) for i, t in enumerate(times))
    assert busiest <= 12
    assert times[-1] - times[0] >= 4.0  # 45 requests at 10 a second, not a burst


PLAIN_LINE = re.compile(
    r"(?P<done>[\d,]+)/(?P<total>[\d,]+) rows \((?P<pct>\d+)%\) · (?P<rate>[\d,.]+) rows/s · "
    r"ETA (?P<eta>[\d,]+s|\?) · failed (?P<failed>[\d,]+) · (?P<tokens>[\d,]+) tokens · "
    r"\$(?P<spend>[\d,.]+)"
)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_progress_line_without_a_terminal(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off a terminal (capsys's stderr is none), the progress is a plain line on stderr every
    PLAIN_EVERY_S, cut to 1 s here (the ticker looks twice a second) so that a run of about
    three seconds prints two or three."""
    every_s = 1.0
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", every_s)
    with start_in_thread(SimConfig(latency_ms=400)) as sim:
        ws.write_input(reviews(12))
        result = ws.run("run", str(ws.job(sim.base_url, limits={"concurrency": 2})))
    assert result.code == 0, result.err
    summary = result.out.splitlines()[0]
    assert "12 ok, 0 failed, 0 pending" in summary
    assert "rows/s" not in result.out  # the progress goes to stderr, the summary to stdout
    assert "\r" not in result.err  # no bar redrawn in place
    lines = result.err.splitlines()
    matches = [PLAIN_LINE.fullmatch(line) for line in lines]
    assert lines and all(matches), lines
    seen = [m.groupdict() for m in matches if m is not None]
    elapsed_s = number(re.findall(r"([\d,.]+) s$", summary)[0])
    assert len(seen) <= elapsed_s / every_s + 1  # every PLAIN_EVERY_S, not every tick
    done = [int(number(f["done"])) for f in seen]
    tokens = [int(number(f["tokens"])) for f in seen]
    spend = [number(f["spend"]) for f in seen]
    assert done == sorted(done) and tokens == sorted(tokens) and spend == sorted(spend)
    assert 0 < done[-1] <= 12  # rows were finishing while it ran
    run_tokens = int(number(re.findall(r"([\d,]+) tokens", summary)[0]))
    assert tokens[-1] <= run_tokens and spend[-1] <= number(re.findall(r"\$([\d.]+)", summary)[0])
    for fields, rows, used in zip(seen, done, tokens, strict=True):
        assert fields["total"] == "12" and fields["failed"] == "0"
        assert fields["pct"] == f"{100 * rows / 12:.0f}"
        rate = number(fields["rate"])
        assert (rate > 0) == (rows > 0) and (used > 0) == (rows > 0)
        assert (fields["eta"] == "?") == (rows == 0)
        if rows:  # the ETA is the rows left at that rate (both shown rounded)
            eta = number(fields["eta"][:-1])
            assert (12 - rows) / (rate + 0.05) - 0.5 <= eta <= (12 - rows) / (rate - 0.05) + 0.5


def test_demo_job_through_the_installed_command(tmp_path: Path) -> None:
    out = tmp_path / "demo.parquet"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchrun.cli",
            "run",
            str(REPO / "jobs" / "demo.toml"),
            "--set",
            f"output.path={out}",
            "--set",
            "limits.requests_per_minute=60000",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    frame = pl.read_parquet(out)
    assert frame.height == 300 and set(frame["status"]) == {"ok"}
    assert frame.columns[-len(BASE_COLUMNS) :] == BASE_COLUMNS
    labels = Counter(frame["response"])
    assert set(labels) <= {"positive", "negative", "neutral"} and len(labels) == 3
    assert "300 ok, 0 failed, 0 pending" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_batch_demo_job_through_the_installed_command(tmp_path: Path) -> None:
    """jobs/batch-demo.toml: the batch lane at half price, the lines it leaves sent direct."""
    out = tmp_path / "batch-demo.parquet"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}

    def batchrun(*argv: str) -> subprocess.CompletedProcess[str]:
        job = str(REPO / "jobs" / "batch-demo.toml")
        return subprocess.run(
            [sys.executable, "-m", "batchrun.cli", *argv, job, "--set", f"output.path={out}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    started = time.monotonic()
    proc = batchrun("run")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 60
    assert "300 ok, 0 failed, 0 pending" in proc.stdout and "Traceback" not in proc.stderr
    frame = pl.read_parquet(out)
    assert frame.height == 300 and set(frame["status"]) == {"ok"}
    assert frame["review_id"].n_unique() == 300
    assert f"{frame['total_tokens'].sum():,} tokens" in proc.stdout  # each answer counted once
    by_endpoint = Counter(frame["endpoint"])
    assert set(by_endpoint) == {"sim-batch", "sim-direct"}, by_endpoint
    assert by_endpoint["sim-batch"] > 250
    # A batch answer costs half its direct price (gpt-4o-mini's list price, cached input too).
    price = {"input": 0.15, "cached": 0.075, "output": 0.6}
    list_price = (
        (pl.col("prompt_tokens") - pl.col("cached_tokens")) * price["input"]
        + pl.col("cached_tokens") * price["cached"]
        + pl.col("completion_tokens") * price["output"]
    ) / 1e6
    share = frame.select(pl.col("endpoint"), (pl.col("cost_usd") / list_price).alias("share"))
    for endpoint, factor in (("sim-batch", 0.5), ("sim-direct", 1.0)):
        shares = share.filter(pl.col("endpoint") == endpoint)["share"]
        assert shares.min() == pytest.approx(factor) and shares.max() == pytest.approx(factor)
    report = batchrun("report", "--json")
    assert report.returncode == 0, report.stderr
    lane = json.loads(report.stdout)["batch_lane"]
    assert (lane["files"], lane["rows"], lane["in_flight"]) == (3, 300, {"files": 0, "rows": 0})
    assert lane["ok"] == by_endpoint["sim-batch"]
    assert lane["pending"] == {"server_error": by_endpoint["sim-direct"]}
    assert lane["cost_usd"] == pytest.approx(
        frame.filter(pl.col("endpoint") == "sim-batch")["cost_usd"].sum()
    )
    status = batchrun("status", "--json")
    assert json.loads(status.stdout)["batches"] == []


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"], ["sim", "--help"]])
def test_every_command_explains_itself(command: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun.cli", *command], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "usage: batchrun" in proc.stdout and len(proc.stdout) > 300


def test_retry_failed_sends_only_the_failed_rows_again(ws: Workspace) -> None:
    ws.write_input(reviews(40))
    with start_in_thread(SimConfig(faults={"content_filter": 0.3}, seed=5)) as flaky:
        assert ws.run("run", str(ws.job(flaky.base_url)), "-q").code == 0
    failed = ws.read_output().filter(pl.col("status") == "failed")
    assert 3 <= failed.height < 40 and set(failed["error"]) == {"content_refused"}
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url)
        assert ws.run("run", str(job), "-q").code == 0
        assert sim.requests == []  # failures are final results: a plain resume sends nothing
        result = ws.run("run", str(job), "-q", "--retry-failed")
        assert result.code == 0
        sent = sorted(r.body["messages"][-1]["content"] for r in sim.requests if r.body)
        assert sent == sorted(f"Review: {t}" for t in failed["text"])
    out = ws.read_output()
    assert set(out["status"]) == {"ok"} and out.height == 40
    assert ws.run("run", str(job), "-q", "--retry-failed", "--fresh").code == 2
