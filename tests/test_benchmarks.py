"""The benchmarks still run (their short mode); their timings are not checked here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_quick_runs_every_scenario() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARKS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for scenario in (
        "latency 0 ms",
        "latency 50 ms",
        "pacing",
        "memory",
        "resume",
        "checkpointing",
    ):
        assert scenario in proc.stdout


@pytest.mark.timeout(300)
def test_scale_quick_runs_every_command_and_keeps_every_row_once(tmp_path: Path) -> None:
    figures = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "scale.py"), "--quick", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=BENCHMARKS,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (size,) = json.loads(figures.read_text())["sizes"]
    rows = size["rows"]
    steps = {step["name"]: step for step in size["steps"]}
    assert len(steps) == 11
    for step in steps.values():
        assert step["code"] == step["expected"], step
        assert step["seconds"] > 0 and step["peak_mb"] > 0, step
    assert steps["run, killed half-way"]["code"] == -9
    # Every row reached the simulator exactly once over the kill and the resume.
    killed_with = steps["run, killed half-way"]["figures"]["committed_at_kill"]
    assert 0 < killed_with < rows
    resumed = steps["run, resumed after the kill"]["figures"]
    assert resumed["requests"] == rows - killed_with and resumed["first_request_s"] > 0
    appended = steps["run, one row appended"]["figures"]
    assert appended["requests"] == 1 and appended["first_request_s"] > 0
    assert steps["run, from scratch"]["figures"]["requests"] == rows
    assert steps["run, from scratch"]["figures"]["output_after_last_answer_s"] > 0
    assert steps["compare (B shuffled)"]["figures"]["rows"] == {
        "both": rows,
        "only_a": 0,
        "only_b": 1,
    }
    # The outputs: each row once (count and unique ids), all ok, scored.
    assert sum("output holds each of" in name for name in size["checks"]) == 3
    assert all(size["checks"].values()), size["checks"]
    assert "| run, resumed after the kill | 3,000 |" in proc.stdout
