"""Time and peak memory of the batch lane on an N-row job: the submit and the collect.

    .venv/bin/python benchmarks/batch_lane.py [--rows 1000000] [--batch-rows 50000]
    .venv/bin/python benchmarks/batch_lane.py --quick       # 10,000 rows: checks it runs

Builds (not measured) an input of N reviews (sample_data's texts in turn, each numbered so
that no two prompts are alike) and a job whose one endpoint is a batch endpoint
(`kind = "batch"`) at a `batchrun sim` process of its own on loopback, batches done as soon
as it can (`batch_delay_s` small, `batch_line_ms = 0`). Then, each its own
`python -m batchrun.cli` process started from a small launcher (`peak.py`), so that the
figures are the command's own:

- **submit**: `batchrun run JOB --detach` writes the pending rows into Batch files of
  `batch_rows` lines, uploads them, creates the batches and exits;
- the simulator answers every batch (timed from the submit's exit until it lists every
  batch completed; its CPU and peak memory from /proc);
- **collect**: `batchrun run JOB` downloads each batch's output file, imports it into the
  checkpoint and writes the output.

The output is then checked: every row once, all ok, answered by the batch endpoint, and the
checkpoint's batch folder holding no lines or answers left. Exit status 1 if a command
failed or a check did not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import peak  # benchmarks/peak.py

ROOT = Path(__file__).resolve().parent.parent
REVIEWS = ROOT / "sample_data" / "reviews.csv"
ENDPOINT = "sim-batch"
JOB = """
[input]
path = "input.parquet"
id_column = "id"
[prompt]
system = "Label the review as positive, negative or neutral."
user = "Review: {{text}}"
[request]
model = "gpt-4o-mini"
max_tokens = 8
[[endpoints]]
name = "{endpoint}"
base_url = "{base_url}"
api_key_env = "OPENAI_API_KEY"
kind = "batch"
batch_rows = {batch_rows}
poll_s = {poll_s}
[output]
path = "out/result.parquet"
"""
ENV = {"OPENAI_API_KEY": "sk-bench", "PATH": ""}
QUICK_ROWS, QUICK_BATCH_ROWS = 10_000, 2_000
BATCH_DELAY_S = 0.2  # how long the simulator keeps a batch validating, by default
POLL_S = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    cpu_s: float
    peak_mb: float
    stdout: str


def build(root: Path, rows: int, base_url: str, batch_rows: int) -> Path:
    """The input of `rows` reviews and its job file. (The simulator is started before, and
    each command from the launcher: what this process holds counts in neither.)"""
    import polars as pl

    texts = pl.read_csv(REVIEWS, columns=["text"]).get_column("text")
    i = pl.int_range(rows, dtype=pl.Int64, eager=True)
    pl.DataFrame({"i": i}).select(
        id=pl.lit("r") + pl.col("i").cast(pl.String).str.zfill(8),
        text=pl.lit(texts).gather(pl.col("i") % len(texts))
        + pl.lit(" (#")
        + pl.col("i").cast(pl.String)
        + pl.lit(")"),
    ).write_parquet(root / "input.parquet", row_group_size=100_000)
    job = root / "job.toml"
    job.write_text(
        JOB.format(endpoint=ENDPOINT, base_url=base_url, batch_rows=batch_rows, poll_s=POLL_S)
    )
    return job


class Simulator:
    """`batchrun sim` in its own process, keeping no request log and no batch ledger."""

    def __init__(self, batch_delay_s: float) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "batchrun.cli",
                "sim",
                "--port",
                "0",
                "--batch-delay-s",
                str(batch_delay_s),
                "--batch-line-ms",
                "0",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert self.proc.stdout is not None
        announced = self.proc.stdout.readline().strip()  # batchrun sim listening on URL
        self.base_url = announced.rsplit(" ", 1)[-1]
        if not self.base_url.startswith("http"):
            raise SystemExit(f"the simulator did not start: {announced!r}")

    def cpu_s(self) -> float:
        """Its user and system CPU seconds so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def peak_mb(self) -> float:
        """Its peak resident memory so far (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def statuses(self) -> list[str]:
        """The status of every batch it holds."""
        url = f"{self.base_url}/batches?limit=100"
        request = urllib.request.Request(url, headers={"Authorization": "Bearer sk-bench"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            page = json.load(answer)
        assert not page["has_more"], "more than 100 batches: page the listing"
        return [batch["status"] for batch in page["data"]]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def command(name: str, argv: list[str], cwd: Path) -> Step:
    """Run `python -m batchrun.cli *argv` to its end from the launcher."""
    done = peak.measure([sys.executable, "-m", "batchrun.cli", *argv], env=ENV, cwd=str(cwd))
    if done.code != 0:
        raise SystemExit(f"batchrun {name} exited {done.code}:\n{done.stderr[-3000:]}")
    return Step(name, done.seconds, done.cpu_s, done.peak_mb, done.stdout + done.stderr)


def show(step: Step) -> None:
    print(
        f"  {step.name}: {step.seconds:.1f} s ({step.cpu_s:.1f} s of CPU), "
        f"peak {step.peak_mb:,.0f} MB"
    )


def wait_completed(sim: Simulator, files: int) -> float:
    """Seconds until the simulator lists `files` batches, every one completed."""
    started = time.monotonic()
    while True:
        statuses = sim.statuses()
        if len(statuses) == files and all(s == "completed" for s in statuses):
            return time.monotonic() - started
        if any(s in ("failed", "expired", "cancelled") for s in statuses):
            raise SystemExit(f"a batch did not complete: {sorted(statuses)}")
        time.sleep(0.5)


def check(root: Path, rows: int) -> list[tuple[str, bool]]:
    """The output holds every row once, all ok, from the batch endpoint; the ledger kept no
    lines nor answers of collected batches."""
    import polars as pl

    output = pl.scan_parquet(root / "out" / "result.parquet")
    figures = output.select(
        rows=pl.len(),
        ids=pl.col("id").n_unique(),
        ok=(pl.col("status") == "ok").sum(),
        batch=(pl.col("endpoint") == ENDPOINT).sum(),
    ).collect()
    found = figures.row(0, named=True)
    left = [
        p.name for p in (root / "out" / "result.parquet.checkpoint" / "batches").glob("*.jsonl")
    ]
    return [
        (f"output holds each of {rows:,} rows once", found["rows"] == found["ids"] == rows),
        ("every row ok", found["ok"] == rows),
        (f"every row answered by {ENDPOINT}", found["batch"] == rows),
        ("no Batch lines or answers left in the ledger", not left),
    ]


def measure(
    rows: int, batch_rows: int, batch_delay_s: float = BATCH_DELAY_S, submit_only: bool = False
) -> int:
    """Submit and collect a job of `rows` rows (or only submit it); print the figures; 1 if
    a check failed."""
    files = -(-rows // batch_rows)
    sim = Simulator(batch_delay_s)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            job = build(root, rows, sim.base_url, batch_rows)
            print(f"{rows:,} rows in {files} files of {batch_rows:,} lines at most")
            submit = command("run --detach", ["run", str(job), "--detach"], root)
            if submit_only:
                show(submit)
                return 0
            sim_before = sim.cpu_s()
            answered_s = wait_completed(sim, files)
            sim_answering = sim.cpu_s() - sim_before
            collect = command("run", ["run", str(job)], root)
            show(submit)
            show(collect)
            print(
                f"  simulator: every batch completed {answered_s:.1f} s after the submit "
                f"({sim_answering:.1f} s of CPU); {sim.cpu_s():.1f} s of CPU in all, "
                f"peak {sim.peak_mb():,.0f} MB"
            )
            checks = check(root, rows)
    finally:
        sim.close()
    for name, ok in checks:
        print(f"  {'ok' if ok else 'FAILED'}: {name}")
    passed = sum(ok for _, ok in checks)
    print(f"checks: {passed} of {len(checks)} passed")
    return 0 if passed == len(checks) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=50_000, help="lines a file at most")
    parser.add_argument(
        "--batch-delay-s",
        type=float,
        default=BATCH_DELAY_S,
        help="how long the simulator keeps a batch validating: longer than the submit keeps "
        "its answering from slowing the uploads (default: %(default)s)",
    )
    parser.add_argument("--submit-only", action="store_true", help="stop after the submit")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ROWS:,} rows in files of {QUICK_BATCH_ROWS:,}"
    )
    args = parser.parse_args()
    if args.quick:
        sys.exit(measure(QUICK_ROWS, QUICK_BATCH_ROWS))
    sys.exit(measure(args.rows, args.batch_rows, args.batch_delay_s, args.submit_only))


if __name__ == "__main__":
    main()
