"""The benchmarks still run (their short mode) and report sane figures.

Timings are not held to any target here (the machine may be busy): the figures are parsed
from what the benchmarks print, and must be positive, agree with each other (a ratio with
the figures it is made of, a table cell with the JSON) and state the counts the quick mode
runs exactly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
N = r"(\d[\d,]*(?:\.\d+)?)"  # a figure as printed: 1,068 or 0.40 or 1.9
PLAUSIBLE_MB = (30, 100_000)  # a Python process with polars loaded; not KB, not bytes


def figures(pattern: str, text: str) -> list[float]:
    """The figures of the one line of `text` matching `pattern` (N marks each); an optional
    one that is not printed reads 0."""
    found = [m for line in text.splitlines() if (m := re.fullmatch(pattern, line))]
    assert len(found) == 1, f"{pattern!r} in\n{text}"
    return [float(g.replace(",", "")) if g is not None else 0.0 for g in found[0].groups()]


def shown(value: float, decimals: int) -> tuple[float, float]:
    """The range a figure printed with `decimals` decimals stands for."""
    half = 0.5 * 10.0**-decimals
    return value - half, value + half


def agrees(ratio: float, ratio_decimals: int, top: float, bottom: float) -> bool:
    """Whether a printed ratio can be the printed (whole) figures `top` / `bottom`."""
    low, high = shown(ratio, ratio_decimals)
    return (top - 0.5) / (bottom + 0.5) <= high and low <= (top + 0.5) / (bottom - 0.5)


def test_bench_quick_runs_every_scenario() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARKS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert len(out.splitlines()) == 6, out  # one line a scenario

    # Throughput: the floor, the usual script and batchrun against the same simulator.
    for stated in [(0, 64, 300), (50, 50, 200)]:
        (
            lat,
            flight,
            count,
            floor,
            usual,
            usual_ratio,
            failed,
            whole,
            whole_ratio,
            steady,
            steady_ratio,
            target,
        ) = figures(
            rf"latency ({stated[0]}) ms, {N} in flight, {N} rows: floor {N} rows/s; "
            rf"usual script {N} \({N}(?:, {N} requests failed)?\); "
            rf"batchrun whole-process {N} \({N}\), steady {N} \({N}\); target {N} of the floor",
            out,
        )
        assert (lat, flight, count) == stated
        assert floor > 0 and usual > 0 and whole > 0 and steady > 0
        assert all(agrees(r, 2, x, floor) for r, x in [(usual_ratio, usual), (whole_ratio, whole)])
        assert agrees(steady_ratio, 2, steady, floor)
        assert 0 < target <= 1
        assert failed == int(failed) and 0 <= failed < count  # requests the usual script lost

    # Pacing at 1,800 a minute: the rate and the busiest second, each with its share.
    rpm, latency_ms, count, rate, of_limit, busiest, of_share, share = figures(
        rf"pacing at {N} rpm, {N} ms latency, {N} rows: {N} requests/min \({N} of the limit; "
        rf"target >= 0\.97\); busiest second {N} \({N} of its share of {N}; target <= 1\.2\)",
        out,
    )
    assert (rpm, latency_ms, count, share) == (1800, 100, 60, 30)
    assert rate > 0 and agrees(of_limit, 3, rate, rpm)
    assert busiest == int(busiest) and 1 <= busiest <= count
    low, high = shown(of_share, 2)
    assert low <= busiest / share <= high

    # Memory: peak RSS of a run and of an estimate, in MB.
    rows, limit, run_mb, estimate_s, estimate_mb, target_mb = figures(
        rf"memory, {N}-row Parquet input: run of the first {N} rows peak RSS {N} MB; "
        rf"estimate of all rows {N} s, peak RSS {N} MB; target < {N} MB",
        out,
    )
    assert (rows, limit, target_mb) == (20_000, 20_000, 300)
    assert estimate_s > 0
    for mb in (run_mb, estimate_mb):
        assert PLAUSIBLE_MB[0] < mb < PLAUSIBLE_MB[1]

    # Resume: the first request comes before the run's end.
    rows, committed, first_s, target_s, whole_s, peak_mb = figures(
        rf"resume, {N} rows of which {N} committed: first request after {N} s "
        rf"\(target < {N} s\), whole run {N} s, peak {N} MB",
        out,
    )
    assert (rows, committed, target_s) == (10_000, 9_999, 5)
    assert 0 < first_s <= whole_s
    assert PLAUSIBLE_MB[0] < peak_mb < PLAUSIBLE_MB[1]

    # Checkpointing: the steady rate committing every 0.5 s against once an hour.
    rows, in_flight, normal, interval_s, rare, cost_pct, target_pct = figures(
        rf"checkpointing, {N} rows, {N} in flight: steady {N} rows/s committing every {N} s "
        rf"against {N} committing once an hour \(([+-]\d+\.\d)% cost; target < {N}%\)",
        out,
    )
    assert (rows, in_flight, interval_s, target_pct) == (500, 64, 0.5, 5)
    assert normal > 0 and rare > 0
    low, high = shown(cost_pct / 100, 3)
    assert 1 - (normal + 0.5) / (rare - 0.5) <= high and low <= 1 - (normal - 0.5) / (rare + 0.5)


def table_rows(out: str) -> dict[str, list[str]]:
    """The printed Markdown table: each step's cells after its name."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith(("| step ", "| ---")):
            name, *cells = (c.strip() for c in line.strip("|").split(" | "))
            rows[name] = cells
    return rows


@pytest.mark.timeout(300)
def test_scale_quick_runs_every_command_and_keeps_every_row_once(tmp_path: Path) -> None:
    saved = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "scale.py"), "--quick", "--json", str(saved)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=BENCHMARKS,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (size,) = json.loads(saved.read_text())["sizes"]
    rows = size["rows"]
    assert rows == 3000  # QUICK_ROWS
    steps = {step["name"]: step for step in size["steps"]}
    assert len(steps) == 11
    for step in steps.values():
        assert step["code"] == step["expected"], step
        assert step["seconds"] > 0 and PLAUSIBLE_MB[0] < step["peak_mb"] < PLAUSIBLE_MB[1], step
    assert steps["run, killed half-way"]["code"] == -9
    # Every row reached the simulator exactly once over the kill and the resume.
    killed_with = steps["run, killed half-way"]["figures"]["committed_at_kill"]
    assert 0 < killed_with < rows
    resumed = steps["run, resumed after the kill"]["figures"]
    assert resumed["requests"] == rows - killed_with and resumed["first_request_s"] > 0
    appended = steps["run, one row appended"]["figures"]
    assert appended["requests"] == 1 and appended["first_request_s"] > 0
    scratch = steps["run, from scratch"]["figures"]
    assert scratch["requests"] == rows
    assert scratch["output_after_last_answer_s"] > 0
    assert scratch["rows_per_s"] > 0 and scratch["steady_rows_per_s"] > 0
    assert steps["compare (B shuffled)"]["figures"]["rows"] == {
        "both": rows,
        "only_a": 0,
        "only_b": 1,
    }
    # The outputs: each row once (count and unique ids), all ok, scored.
    assert sum("output holds each of" in name for name in size["checks"]) == 3
    assert all(size["checks"].values()), size["checks"]

    # The printed table says what the JSON holds: rows, peak MB and seconds of each step,
    # and the figures in its last column.
    table = table_rows(proc.stdout)
    assert list(table) == list(steps)
    for name, (count, peak_mb, seconds, _) in table.items():
        saved_step: dict[str, Any] = steps[name]
        assert count == f"{saved_step['rows']:,}" and saved_step["rows"] in (rows, rows + 1)
        assert peak_mb == f"{saved_step['peak_mb']:,.0f}", name
        assert seconds == f"{saved_step['seconds']:.2f}", name
    extra = {name: cells[3] for name, cells in table.items()}
    assert extra["run, killed half-way"] == f"SIGKILL with {killed_with:,} rows committed"
    assert extra["run, resumed after the kill"].endswith(f"; {rows - killed_with:,} requests")
    assert extra["run, one row appended"].endswith("; 1 request")
    assert extra["status"] == (
        f"rows {rows + 1:,}; done {rows + 1:,}; failed 0; pending 0; finished 100.0%"
    )
    assert extra["compare (B shuffled)"] == (
        f"{rows:,} rows in both, 0 only in A, 1 only in B, 0 disagree"
    )
    assert f"imported {rows:,} ok and 0 failed" in extra["import-batch"]
    whole, steady = figures(
        rf"{N} rows/s whole process, {N} steady; output written and exit [\d.]+ s after the "
        r"last answer",
        extra["run, from scratch"],
    )
    assert whole == round(scratch["rows_per_s"]) and steady == round(scratch["steady_rows_per_s"])
    checks = len(size["checks"])
    assert f"checks: {checks} of {checks} passed" in proc.stdout


@pytest.mark.timeout(200)
def test_s3_scale_quick_runs_a_job_on_s3_and_resumes_it_elsewhere() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "s3_scale.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=BENCHMARKS,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("1,000 rows")
    # Both runs sent every row once; the resume from another cache sent none (asserted in
    # the script); every step printed its figures.
    for step in ("run, local disk", "run, S3", "status from another cache", "resume from a"):
        assert any(line.strip().startswith(step) and "peak" in line for line in lines), step


def test_bomb_quick_holds_the_cap_in_a_few_hundred_megabytes() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bomb.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCHMARKS,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for shape in ("plain", "stream"):
        code, rows, total, requests, seconds, peak = figures(
            rf"gzip +{shape} +exit {N}, {N} of {N} rows too_large, {N} requests, {N} s, "
            rf"peak {N} MB",
            proc.stdout,
        )
        assert (code, rows, total, requests) == (0, 6, 6, 18)  # 3 attempts a row
        assert seconds > 0 and PLAUSIBLE_MB[0] < peak < 400
    assert "checks: 2 of 2 passed" in proc.stdout


@pytest.mark.timeout(200)
def test_batch_lane_quick_submits_and_collects_every_row_once() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "batch_lane.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=BENCHMARKS,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    rows, files, lines = figures(rf"{N} rows in {N} files of {N} lines at most", out)
    assert (rows, files, lines) == (10_000, 5, 2_000)
    for step in ("run --detach", "run"):
        seconds, cpu, peak = figures(
            rf"  {re.escape(step)}: {N} s \({N} s of CPU\), peak {N} MB", out
        )
        assert seconds > 0 and cpu > 0 and PLAUSIBLE_MB[0] < peak < 400, step
    answered_s, answering_cpu, sim_cpu, sim_peak = figures(
        rf"  simulator: every batch completed {N} s after the submit \({N} s of CPU\); "
        rf"{N} s of CPU in all, peak {N} MB",
        out,
    )
    assert answered_s >= 0 and 0 <= answering_cpu <= sim_cpu
    assert PLAUSIBLE_MB[0] < sim_peak < PLAUSIBLE_MB[1]
    # Every row once, ok, from the batch endpoint; no files left in the ledger.
    assert "checks: 4 of 4 passed" in out


def test_inputs_quick_reads_every_kind_and_counts_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "inputs.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=BENCHMARKS,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kinds = ("UTF-8 CSV", "GB18030 CSV", "JSON Lines, nested", "JSON Lines, gzipped", "Excel sheet")
    for kind in kinds:
        row = next(line for line in proc.stdout.splitlines() if line.startswith(f"| {kind} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == "2,000", row
        check_peak, estimate_peak = float(cells[4]), float(cells[6])
        assert PLAUSIBLE_MB[0] < check_peak < 400 and PLAUSIBLE_MB[0] < estimate_peak < 400, row
