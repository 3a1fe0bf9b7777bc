"""The benchmarks still run (their short mode); their timings are not checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
