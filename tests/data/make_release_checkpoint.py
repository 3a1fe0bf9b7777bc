"""Write `tests/data/release-0.1/`: a small job, its checkpoint folder and its output, as
the release before issue 23's restructuring writes them, for `tests/test_release_checkpoint`.

Made with batchrun at commit 60e2333 (branch i23-fixture, before the package was split into
layered sub-packages), so that a later batchrun must read it as it is. Run it again only to
make a new fixture on purpose (it replaces the folder), from the repository's root:

    .venv/bin/python tests/data/make_release_checkpoint.py

It takes some 15 seconds: the last step is a two-worker Ray run on a local instance on
127.0.0.1 (as `tests/ray/test_ray.py`). Everything is answered by the embedded simulator
(`base_url = "sim"`), whose answers follow the prompt. The job has two named endpoints
(`[[endpoints]]`, so results carry the `endpoint` column), a `[parse]` with retry_invalid
and an `[eval]`. Its paths are relative to the job file, so the folder works wherever it is.

What the checkpoint holds, in commit order (the input is 30 rows, r00 to r29):

1. a local run of the first 8 rows of an earlier input (a row r99 first, since removed) with
   the simulator failing half the requests and one attempt allowed: failed rows;
   then the input lost r99 and the rows moved: the next run realigned the results (one
   segment rewritten; r99's result is kept at a negative position);
2. a local run of the first 16 rows: a content-filter refusal (r05), an empty prompt value
   (r07, failed with no attempt), an answer outside the label set asked again (r11);
3. `import-batch` of an OpenAI Batch made by `export-batch --limit 22` and answered by a
   simulator on loopback, at the endpoint "beta" (Batch prices);
4. a local `--retry-failed` run of the first 24 rows, with 429s from "alpha" (the gateway
   note): the failed rows of 1 answered again, superseding their failures;
   then commits 1 to 4 are merged by the checkpoint's own merger (FANOUT of them, one size
   class) into the tier `seg-000000000001-000000000004.parquet`;
5. and 6. a Ray run (`--engine ray`, 2 workers, shards of 5 rows) of the last 6 rows: two
   shards, each committed by a worker under a number the desk gave.

Beside them: the notes a run leaves (`endpoints.json`, `gateway.json`, `aligned.json` and
the `lock` file), and `expected.json` here, the figures of `batchrun status JOB --json` and
`batchrun report JOB --json` on the result.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FIXTURE = HERE / "release-0.1"
JOB = "job.toml"
ROWS = 30
WORDS = ["I love it, works great", "Broken on arrival, terrible", "It is okay I guess"]
GOLD = ["positive", "negative", "neutral"]
MARKS = {5: "[[sim:content_filter]] ", 11: "[[sim:off_format]] "}
EMPTY = 7  # an empty prompt value: failed with invalid_request, nothing sent


def job_text(alpha: str = "", beta: str = "", attempts: int = 4) -> str:
    """The job file; `alpha`/`beta` add lines (the simulator's faults) for one run."""
    return f"""\
# The job of tests/data/release-0.1 (see tests/data/make_release_checkpoint.py).
name = "release-0.1"
strategy = "priority"

[input]
path = "input.parquet"
id_column = "id"

[prompt]
system = "Label the review as positive, negative or neutral. Answer with one word."
user = "Review: {{text}}"

[request]
model = "gpt-4o-mini"
temperature = 0
max_tokens = 8

[parse]
format = "label"
labels = ["positive", "negative", "neutral"]
retry_invalid = 1

[eval]
expected_column = "gold"
scorer = "label"
group_by = ["lang"]

[[endpoints]]
name = "alpha"
base_url = "sim"
concurrency = 1
{alpha}
[[endpoints]]
name = "beta"
base_url = "sim"
concurrency = 1
{beta}
[limits]
max_attempts = {attempts}
commit_interval_s = 60  # one commit a run (a pause after a 429 made two)

[engine]
workers = 2
shard_rows = 5

[output]
path = "result/answers.parquet"  # not out/, which .gitignore leaves out
"""


def input_frame(extra_first: bool) -> Any:
    import polars as pl

    ids = [f"r{i:02d}" for i in range(ROWS)]
    texts = ["" if i == EMPTY else f"{MARKS.get(i, '')}{WORDS[i % 3]} #{i}" for i in range(ROWS)]
    gold = [GOLD[i % 3] for i in range(ROWS)]
    lang = ["en" if i % 2 else "de" for i in range(ROWS)]
    if extra_first:
        ids, texts = ["r99", *ids], ["Fine, I suppose #99", *texts]
        gold, lang = ["neutral", *gold], ["en", *lang]
    return pl.DataFrame({"id": ids, "text": texts, "gold": gold, "lang": lang})


def cli(*argv: str) -> None:
    from batchrun.cli import main

    print("$ batchrun", " ".join(argv), flush=True)
    code = main(list(argv))
    if code != 0:
        raise SystemExit(f"batchrun {argv[0]} exited {code}")


def captured(*argv: str) -> Any:
    """The JSON a command prints."""
    import contextlib
    import io

    from batchrun.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    if code != 0:
        raise SystemExit(f"batchrun {argv[0]} exited {code}")
    return json.loads(out.getvalue())


def answer_batch(folder: Path, base_url: str) -> list[Path]:
    """Play the OpenAI Batch API for the files export-batch wrote (as tests/test_batchfiles)."""
    out, err = [], []
    lines = [
        json.loads(line)
        for path in sorted(folder.glob("batch-*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    for n, line in enumerate(lines):
        request = urllib.request.Request(
            f"{base_url}/chat/completions",
            data=json.dumps(line["body"]).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                status, body = reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            status, body = exc.code, json.loads(exc.read())
        record = {
            "id": f"batch_req_{n}",
            "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": f"req_{n}", "body": body},
            "error": None,
        }
        (out if status == 200 else err).append(record)
    paths = [folder / "output.jsonl", folder / "errors.jsonl"]
    for path, records in zip(paths, (out, err), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return [p for p, records in zip(paths, (out, err), strict=True) if records]


def merge_tiers(folder: Path) -> None:
    """Let the checkpoint's merger merge what is due, to the end (a run stops it when it
    ends, abandoning a merge under way: this makes the tier certain)."""
    from batchrun.checkpoint import Checkpoint

    with Checkpoint(folder).open() as checkpoint:
        checkpoint.start_merging()
        deadline = time.monotonic() + 60
        while checkpoint._due() is not None:  # the merger's own rule
            if time.monotonic() > deadline:
                raise SystemExit("the merger did not finish")
            time.sleep(0.05)
        checkpoint.stop_merging()
        if checkpoint.merge_error is not None:
            raise SystemExit(f"the merge failed: {checkpoint.merge_error}")


def segments(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("seg-*.parquet"))


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from batchrun.sim import SimConfig, start_in_thread

    if FIXTURE.exists():
        shutil.rmtree(FIXTURE)
    FIXTURE.mkdir(parents=True)
    os.chdir(FIXTURE)  # the job's paths are relative to it; so are these commands'
    folder = Path("result/answers.parquet.checkpoint")
    final = job_text()

    # 1. failures, on an input that still has r99 first
    input_frame(extra_first=True).write_parquet("input.parquet")
    faults = "[endpoints.sim]\nfaults = { server_error = 0.5 }\n"
    Path(JOB).write_text(job_text(faults, faults, attempts=1), encoding="utf-8")
    cli("run", JOB, "--limit", "8", "--quiet")

    # 2. r99 gone, rows moved: realigned, then the first 16 rows
    time.sleep(0.01)  # a new modification time for the input
    input_frame(extra_first=False).write_parquet("input.parquet")
    Path(JOB).write_text(final, encoding="utf-8")
    cli("run", JOB, "--limit", "16", "--quiet")

    # 3. an OpenAI Batch of rows 16 to 21, answered by a simulator, imported at "beta"
    with tempfile.TemporaryDirectory(prefix="batchrun-fixture-") as scratch:
        batches = Path(scratch)
        cli("export-batch", JOB, str(batches / "in"), "--limit", "22", "--endpoint", "beta")
        with start_in_thread(SimConfig()) as sim:
            files = answer_batch(batches / "in", sim.base_url)
        cli("import-batch", JOB, *map(str, files), "--endpoint", "beta")

    # 4. the failed rows answered again, with 429s from alpha; then the tier
    limited = "[endpoints.sim]\nfaults = { rate_limit = 0.3 }\nseed = 1\n"
    Path(JOB).write_text(job_text(limited, "", attempts=12), encoding="utf-8")
    cli("run", JOB, "--retry-failed", "--limit", "24", "--quiet")
    Path(JOB).write_text(final, encoding="utf-8")
    if not (folder / "gateway.json").exists():
        raise SystemExit("alpha was not rate-limited with answers between: try another seed")
    merge_tiers(folder)
    print("after the merge:", segments(folder), flush=True)

    # 5, 6. the last rows on Ray, two workers
    cli("run", JOB, "--engine", "ray", "--quiet")
    print("segments:", segments(folder), flush=True)
    tier, *singles = segments(folder)
    if tier != "seg-000000000001-000000000004.parquet" or len(singles) != 2:
        raise SystemExit("not the commits this fixture is meant to hold")
    notes = sorted(p.name for p in folder.iterdir() if not p.name.startswith("seg-"))
    print("notes:", notes, flush=True)

    expected = {
        "status": captured("status", JOB, "--json"),
        "report": captured("report", JOB, "--json"),
    }
    # The one figure that depends on where the folder is: kept relative to it.
    assert Path(expected["report"]["output"]) == Path("result/answers.parquet").resolve()
    expected["report"]["output"] = "result/answers.parquet"
    (FIXTURE / "expected.json").write_text(
        json.dumps(expected, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
