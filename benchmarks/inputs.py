"""Peak memory and time of reading each input kind: a run's input check and `estimate`.

    .venv/bin/python benchmarks/inputs.py                          # 1,000,000 rows (xlsx 200,000)
    .venv/bin/python benchmarks/inputs.py --rows 200000 --xlsx-rows 50000
    .venv/bin/python benchmarks/inputs.py --quick                  # 2,000 rows: checks it runs

The same N Chinese reviews (id, text of 8 to 12 phrases, stars) are written (not measured)
as a UTF-8 CSV, a GB18030 CSV, JSON Lines with the review nested (`{"id", "review": {"text",
"stars"}}`), the same gzipped, and an .xlsx sheet (of fewer rows: writing a million-row
workbook takes minutes, and Excel holds about a million rows a sheet). For each, in its own
process started by `peak.py`'s launcher (so the figure is the command's own):

- the input check of a run (`plan_run`: the schema, every row's text read and checked,
  the ids checked for duplicates), as `batchrun run` does before its first request;
- `batchrun estimate` of every row (each one read, rendered and its tokens counted).

Exit status 1 if a step failed or counted other than N rows.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
from pathlib import Path

import polars as pl
from peak import measure

PHRASES = [
    "很好",
    "质量不错",
    "物流太慢了",
    "客服态度差",
    "性价比高",
    "包装破损",
    "会回购",
    "一般般",
    "颜色和图片不一样",
    "尺码偏小",
]
JOB = """
[input]
path = "{path}"
id_column = "id"
{reading}
[prompt]
system = "Label the review as positive, negative or neutral."
user = "Review: {template}"
[request]
model = "gpt-4o-mini"
max_tokens = 8
[endpoint]
base_url = "sim"
[output]
path = "out/result.parquet"
"""
# The input check of a run, alone: what `batchrun run` does before its first request.
CHECK = """
import sys
from pathlib import Path
from batchrun.config.job import load_job
from batchrun.rows.plan import RunOptions, plan_run
plan = plan_run(load_job(Path(sys.argv[1]), environ={}), RunOptions())
print(plan.total)
"""
ENV = {"OPENAI_API_KEY": "sk-bench", "PATH": ""}


def reviews(n: int) -> pl.DataFrame:
    rng = random.Random(1)
    texts = [
        "，".join(rng.choices(PHRASES, k=rng.randint(8, 12))) + f"（第{i}条）" for i in range(n)
    ]
    stars = [str(rng.randint(1, 5)) for _ in range(n)]
    return pl.DataFrame({"id": [f"r{i:07d}" for i in range(n)], "text": texts, "stars": stars})


def write_inputs(folder: Path, rows: int, xlsx_rows: int) -> dict[str, tuple[str, str, str]]:
    """Each kind's file, `[input]` reading keys and template; returns them by name."""
    frame = reviews(rows)
    frame.write_csv(folder / "utf8.csv")
    text = (folder / "utf8.csv").read_text(encoding="utf-8")
    (folder / "gb18030.csv").write_bytes(text.encode("gb18030"))
    del text
    with open(folder / "reviews.jsonl", "w", encoding="utf-8") as dst:
        for row in frame.iter_rows(named=True):
            review = {"text": row["text"], "stars": int(row["stars"])}
            dst.write(json.dumps({"id": row["id"], "review": review}, ensure_ascii=False) + "\n")
    with (
        open(folder / "reviews.jsonl", "rb") as src,
        gzip.open(folder / "reviews.jsonl.gz", "wb") as gz,
    ):
        while block := src.read(1 << 20):
            gz.write(block)
    frame.head(xlsx_rows).write_excel(folder / "reviews.xlsx", worksheet="Reviews")
    return {
        "UTF-8 CSV": ("utf8.csv", "", "{text}"),
        "GB18030 CSV": ("gb18030.csv", 'encoding = "gb18030"', "{text}"),
        "JSON Lines, nested": ("reviews.jsonl", "", "{review}"),
        "JSON Lines, gzipped": ("reviews.jsonl.gz", "", "{review}"),
        "Excel sheet": ("reviews.xlsx", 'sheet = "Reviews"', "{text}"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--xlsx-rows", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="2,000 rows: checks it runs")
    args = parser.parse_args()
    rows, xlsx_rows = (2_000, 2_000) if args.quick else (args.rows, args.xlsx_rows)
    failed = False
    with tempfile.TemporaryDirectory(prefix="batchrun-inputs-") as scratch:
        folder = Path(scratch)
        print(f"writing {rows:,} rows of each kind (xlsx: {xlsx_rows:,})...", file=sys.stderr)
        kinds = write_inputs(folder, rows, xlsx_rows)
        print(
            "| input | rows | file MB | check s | check peak MB | estimate s | estimate peak MB |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, (path, reading, template) in kinds.items():
            job = folder / f"{Path(path).name}.toml"
            job.write_text(JOB.format(path=path, reading=reading, template=template))
            expected = xlsx_rows if path.endswith(".xlsx") else rows
            check = measure([sys.executable, "-c", CHECK, str(job)], env=ENV, cwd=scratch)
            estimate = measure(
                [sys.executable, "-m", "batchrun.cli", "estimate", str(job)], env=ENV, cwd=scratch
            )
            counted = check.stdout.strip() == str(expected)
            estimated = f"{expected:,} (0 done, {expected:,} to send" in estimate.stdout
            if check.code or estimate.code or not counted or not estimated:
                failed = True
                print(f"{name}: check {check.code} {check.stderr.strip()[-300:]}", file=sys.stderr)
                print(
                    f"{name}: estimate {estimate.code} {estimate.stderr.strip()[-300:]}",
                    file=sys.stderr,
                )
            size = (folder / path).stat().st_size / 1e6
            print(
                f"| {name} | {expected:,} | {size:.0f} | {check.seconds:.1f} | "
                f"{check.peak_mb:.0f} | {estimate.seconds:.1f} | {estimate.peak_mb:.0f} |",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
