"""batchrun against the floor and the usual script, side by side in one run.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench.py            # every scenario (a few minutes)
    .venv/bin/python benchmarks/bench.py --quick    # tiny counts: checks it all still runs

Each throughput scenario starts `batchrun sim` in its own process on loopback and measures,
against that same server:

- the floor: a bare aiohttp loop that only sends and reads (no templating, no checkpoint);
- the usual script: `AsyncOpenAI` with a semaphore and `asyncio.gather`;
- batchrun through its command (`python -m batchrun.cli run`), output and checkpoint
  included. Its rate is given whole-process (from the command's start to its exit) and
  steady (the rows over the time between its first and last commit).

Other scenarios: pacing at 1,800 requests per minute, memory on a five-million-row input,
resume of a million finished rows, and the cost of checkpointing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import polars as pl

from batchrun.checkpoint.folder import Checkpoint, checkpoint_dir
from batchrun.sim import SimConfig, start_in_thread

PROMPT = "Label the review as positive, negative or neutral. Answer with one word."
JOB = """
[input]
path = "input.parquet"
id_column = "id"
[prompt]
system = "{system}"
user = "Review: {{text}}"
[request]
model = "gpt-4o-mini"
max_tokens = 8
[endpoint]
base_url = "{base_url}"
api_key_env = "BENCH_KEY"
[limits]
requests_per_minute = {rpm}
concurrency = {concurrency}
max_attempts = 3
[output]
path = "out/result.parquet"
"""


@contextlib.contextmanager
def sim_process(latency_ms: float) -> Iterator[str]:
    """`batchrun sim` in its own process; yields its base URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchrun.cli",
            "sim",
            "--port",
            "0",
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    finally:
        proc.terminate()
        proc.wait()


def texts(rows: int) -> list[str]:
    words = ["great", "works", "broken", "love", "refund", "okay", "fast", "terrible", "nice"]
    return [f"{words[i % 9]} product, {words[(i * 7) % 9]} shipping #{i}" for i in range(rows)]


def bodies(rows: int) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "model": "gpt-4o-mini",
                "max_tokens": 8,
                "messages": [
                    {"role": "system", "content": PROMPT},
                    {"role": "user", "content": f"Review: {t}"},
                ],
            }
        )
        for t in texts(rows)
    ]


async def floor(url: str, rows: int, in_flight: int) -> float:
    """Rows a second of a bare aiohttp loop."""
    payloads = bodies(rows)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(payloads)

        async def worker() -> None:
            for payload in queue:
                async with session.post(
                    f"{url}/chat/completions", data=payload, headers=headers
                ) as resp:
                    await resp.read()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return rows / (time.perf_counter() - start)


async def usual_script(url: str, rows: int, in_flight: int) -> tuple[float, int]:
    """(rows a second, requests that failed) of the script people write: AsyncOpenAI, a
    semaphore, gather; with the SDK's retries off, so a failure is not hidden in a retry."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=0)
    semaphore = asyncio.Semaphore(in_flight)

    async def one(text: str) -> str | None:
        async with semaphore:
            reply = await client.chat.completions.create(
                model="gpt-4o-mini",
                max_tokens=8,
                messages=[
                    {"role": "system", "content": PROMPT},
                    {"role": "user", "content": f"Review: {text}"},
                ],
            )
            return reply.choices[0].message.content

    start = time.perf_counter()
    results = await asyncio.gather(*(one(t) for t in texts(rows)), return_exceptions=True)
    elapsed = time.perf_counter() - start
    await client.close()
    failed = sum(isinstance(r, BaseException) for r in results)
    return (rows - failed) / elapsed, failed


def batchrun_command(*args: str) -> tuple[int, str, float]:
    """(exit code, stderr, peak RSS in MB) of one `batchrun` command, measured for it alone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={"BENCH_KEY": "sk-bench", "PATH": ""},
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss / 1024


def batchrun_run(
    root: Path, url: str, rows: int, in_flight: int, rpm: float = 1e7, extra: tuple[str, ...] = ()
) -> tuple[float, float, float]:
    """(whole-process rows/s, steady rows/s, peak RSS MB) of `batchrun run`."""
    if not (root / "input.parquet").exists():
        pl.DataFrame({"id": [f"r{i}" for i in range(rows)], "text": texts(rows)}).write_parquet(
            root / "input.parquet"
        )
    (root / "job.toml").write_text(
        JOB.format(system=PROMPT, base_url=url, rpm=rpm, concurrency=in_flight)
    )
    start = time.perf_counter()
    code, err, peak = batchrun_command("run", str(root / "job.toml"), "-q", "--fresh", *extra)
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"batchrun failed: {err}")
    done = (
        pl.scan_parquet(
            [str(s) for s in Checkpoint(checkpoint_dir(root / "out" / "result.parquet")).segments()]
        )
        .select(
            pl.col("finished_at").min().alias("a"),
            pl.col("finished_at").max().alias("b"),
            pl.len().alias("n"),
        )
        .collect()
        .row(0)
    )
    steady = done[2] / max(done[1] - done[0], 1e-9)
    return rows / elapsed, steady, peak


def throughput(latency_ms: float, in_flight: int, rows: int, target: float) -> None:
    with sim_process(latency_ms) as url, tempfile.TemporaryDirectory() as tmp:
        base = asyncio.run(floor(url, rows, in_flight))
        usual, failed = asyncio.run(usual_script(url, rows, in_flight))
        whole, steady, _ = batchrun_run(Path(tmp), url, rows, in_flight)
    print(
        f"latency {latency_ms:.0f} ms, {in_flight} in flight, {rows:,} rows: "
        f"floor {base:,.0f} rows/s; usual script {usual:,.0f} ({usual / base:.2f}"
        f"{f', {failed:,} requests failed' if failed else ''}); "
        f"batchrun whole-process {whole:,.0f} ({whole / base:.2f}), "
        f"steady {steady:,.0f} ({steady / base:.2f}); target {target:.2f} of the floor",
        flush=True,
    )


def pacing(rows: int) -> None:
    rpm = 1800
    with start_in_thread(SimConfig(latency_ms=100)) as sim, tempfile.TemporaryDirectory() as tmp:
        batchrun_run(Path(tmp), sim.base_url, rows, 64, rpm=rpm)
        times = [r.t for r in sim.requests]
    span = times[-1] - times[0]
    rate = (len(times) - 1) / span * 60
    share = rpm / 60
    per_second = Counter(int(t - times[0]) for t in times)
    full = [per_second[s] for s in range(int(span))]  # whole seconds only
    print(
        f"pacing at {rpm:,} rpm, 100 ms latency, {rows:,} rows: {rate:,.0f} requests/min "
        f"({rate / rpm:.3f} of the limit; target >= 0.97); busiest second {max(full)} "
        f"({max(full) / share:.2f} of its share of {share:.0f}; target <= 1.2)",
        flush=True,
    )


def memory(rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, start_in_thread(SimConfig()) as sim:
        root = Path(tmp)
        # Written by a child process: a child's peak RSS counts the parent's pages at fork,
        # so the harness itself must stay small while batchrun is measured.
        script = (
            "import sys, polars as pl, bench; rows = int(sys.argv[1]); "
            "pl.DataFrame({'id': pl.int_range(rows, eager=True).cast(pl.String), "
            "'text': pl.Series(bench.texts(1000) * (rows // 1000))})"
            ".write_parquet(sys.argv[2], row_group_size=100_000)"
        )
        subprocess.run(
            [sys.executable, "-c", script, str(rows), str(root / "input.parquet")],
            check=True,
            cwd=Path(__file__).parent,
        )
        _, _, run_peak = batchrun_run(root, sim.base_url, rows, 64, extra=("--limit", "20000"))
        start = time.perf_counter()
        code, err, peak = batchrun_command("estimate", str(root / "job.toml"))
        took = time.perf_counter() - start
        assert code == 0, err
    print(
        f"memory, {rows:,}-row Parquet input: run of the first 20,000 rows peak RSS "
        f"{run_peak:,.0f} MB; estimate of all rows {took:.1f} s, peak RSS {peak:,.0f} MB; "
        f"target < 300 MB",
        flush=True,
    )


def checkpoint_cost(rows: int, in_flight: int) -> None:
    """Steady rate with the usual commit interval against one that commits far less often."""
    with sim_process(0) as url, tempfile.TemporaryDirectory() as tmp:
        _, normal, _ = batchrun_run(Path(tmp), url, rows, in_flight)
        _, rare, _ = batchrun_run(
            Path(tmp), url, rows, in_flight, extra=("--set", "limits.commit_interval_s=3600")
        )
    print(
        f"checkpointing, {rows:,} rows, {in_flight} in flight: steady {normal:,.0f} rows/s "
        f"committing every 0.5 s against {rare:,.0f} committing once an hour "
        f"({1 - normal / rare:+.1%} cost; target < 5%)",
        flush=True,
    )


def resume_scenario(rows: int) -> None:
    import resume  # benchmarks/resume.py

    first, total, peak_mb = resume.measure(rows)
    print(
        f"resume, {rows:,} rows of which {rows - 1:,} committed: first request after "
        f"{first:.2f} s (target < 5 s), whole run {total:.2f} s, peak {peak_mb:,.0f} MB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks it runs")
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    args = parser.parse_args()
    quick = args.quick
    scenarios = {
        "zero-latency": lambda: throughput(0, 64 if quick else 256, 300 if quick else 4000, 0.8),
        "one-second": lambda: throughput(
            1000 if not quick else 50, 1000 if not quick else 50, 6000 if not quick else 200, 0.9
        ),
        "pacing": lambda: pacing(60 if quick else 1800),
        "memory": lambda: memory(20_000 if quick else 5_000_000),
        "resume": lambda: resume_scenario(10_000 if quick else 1_000_000),
        "checkpoint": lambda: checkpoint_cost(500 if quick else 8000, 64 if quick else 256),
    }
    for name, scenario in scenarios.items():
        if args.only is None or args.only in name:
            scenario()


if __name__ == "__main__":
    main()
