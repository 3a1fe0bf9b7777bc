"""Peak memory of `batchrun run` against a gateway whose every answer inflates to 1 GiB.

    .venv/bin/python benchmarks/bomb.py              # 12 rows at concurrency 6, every encoding
    .venv/bin/python benchmarks/bomb.py --quick      # gzip only, 6 rows: checks it runs

The gateway (`tests/bombs.py`, on loopback in this process) answers every request with
about a megabyte of gzip (deflate: the same; br: 2 KB; zstd: 100 KB) that inflates to 1 GiB,
with the compressed size as its `Content-Length`, as a JSON completion or, when the job
streams, as an event stream. This is issue 22's case: 12 rows at concurrency 6 took 20 GB
and ended in a traceback when the cap was checked against the header. Each run is
`python -m batchrun.cli run` in its own process, its peak RSS its own (see `peak.py`);
every row must fail `too_large` after its attempts, exit 0, under 400 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the bomb gateway: tests/
from peak import measure

from tests.bombs import BombGateway
from tests.stingy import loopback_gateway

LIMIT_MB = 400
JOB = """
[input]
path = "input.csv"
id_column = "id"
[prompt]
user = "Review: {{text}}"
[request]
model = "gpt-4o-mini"
max_tokens = 8
stream = {stream}
[endpoint]
base_url = "{url}"
api_key_env = "BENCH_KEY"
[limits]
requests_per_minute = 600000
concurrency = {concurrency}
max_attempts = {attempts}
[output]
path = "out/result.parquet"
"""


def one(encoding: str, stream: bool, rows: int, concurrency: int, attempts: int) -> bool:
    """Run the job against a bomb gateway; print its figures; whether it held."""
    import polars as pl

    gateway = BombGateway(encoding, content_length=True)
    with tempfile.TemporaryDirectory() as tmp, loopback_gateway(gateway.handle) as url:
        root = Path(tmp)
        texts = [f"review number {i}" for i in range(rows)]
        pl.DataFrame({"id": [f"r{i}" for i in range(rows)], "text": texts}).write_csv(
            root / "input.csv"
        )
        job = root / "job.toml"
        job.write_text(
            JOB.format(
                stream=str(stream).lower(), url=url, concurrency=concurrency, attempts=attempts
            )
        )
        env = {**os.environ, "BENCH_KEY": "sk-bench"}
        started = time.monotonic()
        done = measure([sys.executable, "-m", "batchrun.cli", "run", str(job), "-q"], env=env)
        seconds = time.monotonic() - started
        out = pl.read_parquet(root / "out" / "result.parquet") if done.code == 0 else None
    too_large = 0 if out is None else int((out["error"] == "too_large").sum())
    held = (
        done.code == 0
        and too_large == rows
        and "Traceback" not in done.stderr
        and done.peak_mb < LIMIT_MB
    )
    shape = "stream" if stream else "plain"
    print(
        f"{encoding:<7} {shape:<6} exit {done.code}, {too_large:,} of {rows:,} rows too_large, "
        f"{gateway.requests:,} requests, {seconds:.1f} s, peak {done.peak_mb:,.0f} MB"
        f"{'' if held else '  FAILED'}",
        flush=True,
    )
    if not held:
        print(done.stderr[-2000:], file=sys.stderr)
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--attempts", type=int, default=3, help="max_attempts of the job")
    parser.add_argument("--quick", action="store_true", help="gzip only, 6 rows")
    args = parser.parse_args()
    rows = 6 if args.quick else args.rows
    encodings = ["gzip"] if args.quick else ["gzip", "deflate", "br", "zstd"]
    print(
        f"{rows:,} rows at concurrency {args.concurrency}, {args.attempts} attempts a row, "
        f"each answer 1 GiB inflated, Content-Length the compressed size; limit {LIMIT_MB} MB",
        flush=True,
    )
    held = [
        one(encoding, stream, rows, args.concurrency, args.attempts)
        for encoding in encodings
        for stream in (False, True)
    ]
    print(f"checks: {sum(held)} of {len(held)} passed")
    sys.exit(0 if all(held) else 1)


if __name__ == "__main__":
    main()
