"""Time and peak memory of `batchrun estimate` on a generated input of N rows.

    .venv/bin/python benchmarks/estimate_big.py [--rows 1000000] [--quick]

Writes N realistic review rows (English and Chinese, 20 to 60 words) to a Parquet file, then
runs `batchrun estimate` on it in a child process and reports its wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

WORDS_EN = [
    "great",
    "product",
    "works",
    "well",
    "battery",
    "lasts",
    "love",
    "it",
    "broken",
    "after",
    "two",
    "days",
    "refund",
    "terrible",
    "quality",
    "fast",
    "shipping",
    "would",
    "recommend",
    "disappointed",
    "okay",
    "nothing",
    "special",
    "the",
    "kettle",
    "boils",
    "quickly",
    "and",
    "looks",
    "nice",
]
WORDS_ZH = list("这款产品质量很好物流很快包装完整推荐购买但是电池不耐用有点失望客服态度不错")

JOB = """
[input]
path = "input.parquet"
id_column = "id"
[prompt]
system = "Label the review as positive, negative or neutral. Answer with one word."
user = "Review: {text}"
[request]
model = "gpt-4o-mini"
max_tokens = 8
[endpoint]
base_url = "sim"
[limits]
requests_per_minute = 30000
tokens_per_minute = 150000000
[output]
path = "out.parquet"
"""


def make_input(path: Path, rows: int) -> None:
    rng = random.Random(1)
    texts = []
    for _ in range(rows):
        if rng.random() < 0.4:
            texts.append("".join(rng.choices(WORDS_ZH, k=rng.randint(20, 60))))
        else:
            texts.append(" ".join(rng.choices(WORDS_EN, k=rng.randint(20, 60))))
    pl.DataFrame({"id": [f"r{i:08d}" for i in range(rows)], "text": texts}).write_parquet(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="10,000 rows: checks it runs")
    args = parser.parse_args()
    rows = 10_000 if args.quick else args.rows
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_input(root / "input.parquet", rows)
        (root / "job.toml").write_text(JOB)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "batchrun.cli", "estimate", str(root / "job.toml")],
            capture_output=True,
            text=True,
        )
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(proc.stdout)
        print(f"{rows:,} rows: estimate took {elapsed:.1f} s, peak RSS {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
