"""Exactly once under chaos: `batchrun run` killed with SIGKILL at random instants, then resumed.

The simulator serves from its own process, so killing a run does not kill the server. After
every kill, every file batchrun left must be readable; at the end, the output must hold every
input row exactly once with its own answer (the one a clean run gets for that row), no
committed row may have been sent again, and the kills must not have stopped progress.

Tests `batchrun.checkpoint` and `batchrun.engine` (the local run), through the command.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from batchrun.checkpoint.folder import Checkpoint, checkpoint_dir
from batchrun.cli import main
from batchrun.protocol.result import FINISHED_AT, KEY

from ..conftest import FAKE_KEY, Workspace, latest_results, reviews, toml_dumps

ROWS = 600
KILLS = 12
SEED = 20240617
KEY_ENV = "BATCHRUN_CHAOS_KEY"
# 70 requests a second, so that the 600 rows take over 8 s of sending and a kill 0.2 to
# 1.2 s into a run lands in the middle of it (unpaced, the whole input takes 0.7 s).
PACED_RPM = 4200
INPUT_IDS = reviews(ROWS)["id"].to_list()


@pytest.fixture
def sim_url() -> Iterator[str]:
    """A `batchrun sim` server in its own process: 30 ms mean latency, uniform."""
    argv = ["sim", "--port", "0", "--latency-ms", "30", "--latency-dist", "uniform"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", *argv], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("batchrun sim listening on http://127.0.0.1:"), line
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


# The job each test run here makes (`Workspace.job`), in a folder of its own with the input.
CHAOS_JOB: dict[str, Any] = {
    "name": "chaos",
    "input": {"id_column": "id"},
    "endpoint": {"api_key_env": KEY_ENV},
    "limits": {"requests_per_minute": PACED_RPM, "concurrency": 32},
}


def start_run(job: Path) -> subprocess.Popen[str]:
    argv = ["-m", "batchrun.cli", "--log-level", "info", "run", str(job), "-q"]
    return subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, KEY_ENV: FAKE_KEY},
    )


def check_every_file_is_readable(folder: Path) -> list[str]:
    """Read every file batchrun left under `folder`; returns their names."""
    seen = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.endswith(".tmp") or path.name == "lock":
            continue  # a write a kill cut short, under a name no reader looks for; the lock
        seen.append(path.name)
        if path.suffix == ".parquet":
            try:
                pq.read_table(path)
            except Exception as exc:
                pytest.fail(f"{path} is not a readable Parquet file after a kill: {exc}")
        else:
            path.read_bytes()
    return seen


def commits(output: Path) -> pl.DataFrame:
    """Every result ever committed (key, finished_at, response, response_id), once each."""
    segments = Checkpoint(checkpoint_dir(output)).segments()
    frame = pl.scan_parquet([str(s) for s in segments])
    every = frame.select(KEY, FINISHED_AT, "response", "response_id").collect()
    # (key, finished_at) names a commit: a merge cut short by a kill never leaves one twice.
    assert every.unique(subset=[KEY, FINISHED_AT]).height == every.height
    return every


def test_sigkill_at_random_instants_then_resume_gives_every_row_exactly_once(
    ws: Workspace, tmp_path: Path, sim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(SEED)
    ws.write_input(reviews(ROWS), "chaos/input.parquet")
    job = ws.job(sim_url, file="chaos/job.toml", **CHAOS_JOB)
    output = tmp_path / "chaos" / "out" / "result.parquet"
    folder = checkpoint_dir(output)

    committed: list[int] = []
    killed = 0
    for _ in range(KILLS):
        proc = start_run(job)
        try:
            delay = rng.uniform(0.2, 1.2)
            if rng.random() < 0.25:
                time.sleep(delay)  # from the start: often while starting up or resuming
            else:
                assert proc.stderr is not None
                line = proc.stderr.readline()  # logged once the run starts sending
                assert "batchrun" in line, line + proc.communicate()[1]
                time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err
        check_every_file_is_readable(output.parent)
        if output.exists():
            ids = pl.read_parquet(output, columns=["id"])["id"]
            assert ids.n_unique() == ids.len()
        committed.append(len(latest_results(folder)))

    assert killed >= KILLS - 2, "most runs should have been killed before they finished"
    assert committed == sorted(committed), f"committed rows went down: {committed}"
    assert len(set(committed)) >= 4, f"the kills stopped progress: {committed}"
    assert committed[-1] > 0, committed

    before = len(latest_results(folder))  # needs no lock; no run is going
    final = start_run(job)
    try:
        out_text, err = final.communicate(timeout=60)
    finally:
        if final.poll() is None:
            final.kill()
            final.communicate()
    assert final.returncode == 0, err
    assert "Traceback" not in err
    ran = re.search(r"this run ([\d,]+) rows", out_text)
    assert ran is not None, out_text
    assert int(ran[1].replace(",", "")) == ROWS - before  # committed rows were not sent again

    # A clean run of the same rows against the same server, in another folder.
    ws.write_input(reviews(ROWS), "clean/input.parquet")
    clean_job = ws.job(sim_url, file="clean/job.toml", **CHAOS_JOB)
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    assert main(["run", str(clean_job), "-q", "--set", "limits.requests_per_minute=600000"]) == 0
    clean = pl.read_parquet(tmp_path / "clean" / "out" / "result.parquet")
    assert clean["id"].to_list() == INPUT_IDS and clean["response_id"].n_unique() == ROWS

    out = pl.read_parquet(output)
    assert out.height == ROWS
    assert out["id"].to_list() == INPUT_IDS  # unique and in input order
    assert out["status"].to_list() == ["ok"] * ROWS
    answers = ["id", "text", "response", "response_id"]
    assert out.select(answers).equals(clean.select(answers))  # each row has its own answer

    every = commits(output)
    per_row = every.group_by(KEY).len()
    assert per_row.height == ROWS
    assert per_row["len"].max() == 1  # no committed row was ever sent (and paid for) again
    expected = clean.select(pl.col("id").alias(KEY), "response", "response_id")
    assert every.join(expected, on=[KEY, "response", "response_id"]).height == ROWS
    check_every_file_is_readable(output.parent)
    assert not list(folder.glob("*.tmp"))  # the last run cleared what the kills left


def test_a_kill_while_the_output_is_written_leaves_nothing_behind_after_the_next_run(
    tmp_path: Path,
) -> None:
    # Rows carrying 1 MB each, so that writing the output takes a moment to catch.
    rows = 20
    blobs = [os.urandom(500_000).hex() for _ in range(rows)]
    reviews(rows).with_columns(pl.Series("blob", blobs)).write_parquet(tmp_path / "input.parquet")
    doc = {
        "input": {"path": "input.parquet", "id_column": "id"},
        "prompt": {"user": "Review: {text}"},
        "request": {"model": "gpt-4o-mini"},
        "endpoint": {"base_url": "sim"},
        "limits": {"requests_per_minute": 600_000},
        "output": {"path": "out/result.parquet"},
    }
    job = tmp_path / "job.toml"
    job.write_text(toml_dumps(doc), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()

    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", "run", str(job), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while proc.poll() is None and not any(n.endswith(".tmp") for n in os.listdir(out)):
            pass  # until the output's temporary file appears
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err}"
    assert not (out / "result.parquet").exists()  # killed before the output was in place

    assert main(["run", str(job), "-q"]) == 0
    assert pl.read_parquet(out / "result.parquet").height == rows
    assert sorted(os.listdir(out)) == ["result.parquet", "result.parquet.checkpoint"]
