"""Every command of batchrun on one big job, end to end: peak memory and time of each.

    .venv/bin/python benchmarks/scale.py                       # 1,000,000 and 5,000,000 rows
    .venv/bin/python benchmarks/scale.py --sizes 1000000       # one size (10-20 minutes)
    .venv/bin/python benchmarks/scale.py --rows 200000 --json scale.json
    .venv/bin/python benchmarks/scale.py --quick               # 3,000 rows: checks it runs

For each size N it builds (not measured) a Parquet input of N rows (id, text, gold, lang) and
a job with `[parse]` labels and an `[eval]` label scorer by lang, against the embedded
simulator, started in this process with a request log that keeps only a count and the
arrival of the first request since it was reset. Then each step runs as its own
`python -m batchrun.cli ...` process, timed from its start to its exit, with its peak RSS:

- `run` from scratch (also: rows/s, and how long after the last committed answer the
  output was written and the process ended);
- in a second job folder, `run` killed with SIGKILL once about half the rows are
  committed, then the resuming `run` (time to its first request, and to its end);
- one row appended to the first job's input, and `run` again (first request, end);
- `status`, `report --html PATH`, `report --json` of the first job;
- `compare` of the second job's output with the first one's, shuffled into another order;
- in a third job folder with nothing run, `estimate` (of all N rows: of the first job,
  finished, it would count nothing), `export-batch` of every row, then `import-batch` of an
  answer fabricated for each exported line.

Then the outputs are checked: every row exactly once (row count, unique ids), every status
ok, the resumed output agreeing with the one run in one go. Exit status 1 if a step did not
exit as expected or a check failed; the table says which (a failing step's last line of
stderr is printed, and the other steps still run).

Peak RSS is `ru_maxrss` of `os.wait4`. Linux counts into a child's peak the memory of the
process that spawned it (the parent's pages at fork, or its whole memory under vfork), so the
commands are spawned by a small launcher process started before anything is imported or
built here; a command's figure is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LABELS = ("positive", "negative", "neutral")
JOB = """
[input]
path = "{input}"
id_column = "id"
[prompt]
system = "Label the review as positive, negative or neutral."
user = "Review: {{text}}"
[request]
model = "gpt-4o-mini"
max_tokens = 8
[endpoint]
base_url = "{base_url}"
[limits]
requests_per_minute = 10000000
concurrency = 256
[output]
path = "out/result.parquet"
[parse]
format = "label"
labels = ["positive", "negative", "neutral"]
[eval]
expected_column = "gold"
scorer = "label"
group_by = "lang"
"""
ENV = {"OPENAI_API_KEY": "sk-bench", "PATH": ""}
POLL_S = 0.5  # how often the committed rows are counted while a run is to be killed
QUICK_ROWS = 3000
# A small job's run to be killed is paced to last about this long, so that it is caught
# half-way (unpaced, 3,000 rows take well under a second).
PACED_BELOW = 100_000
QUICK_KILL_RUN_S = 8.0


# -- the launcher: spawns the measured commands from a process that stays small -----------


def launcher() -> None:
    """Reads one JSON request a line (argv, cwd, stdout, stderr paths), starts the command,
    answers its pid at once and, when it has ended, its exit code, times and peak RSS."""

    def answer(reply: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        ask = json.loads(line)
        with open(ask["stdout"], "wb") as out, open(ask["stderr"], "wb") as err:
            started = time.monotonic()
            proc = subprocess.Popen(ask["argv"], stdout=out, stderr=err, env=ENV, cwd=ask["cwd"])
            answer({"pid": proc.pid})
            _, status, usage = os.wait4(proc.pid, 0)
            ended, wall = time.monotonic(), time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
        answer(
            {
                "code": proc.returncode,
                "started": started,
                "ended": ended,
                "wall_end": wall,
                "peak_mb": usage.ru_maxrss / 1024,
            }
        )


class Launcher:
    """The parent's side of `launcher()`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--launcher"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._buffer = b""
        self._count = 0

    def start(self, args: list[str], cwd: Path) -> int:
        """Starts `python -m batchrun.cli *args`; returns its pid."""
        assert self._proc.stdin is not None
        self._count += 1
        self._out = self.logs / f"{self._count:03d}.out"
        self._err = self.logs / f"{self._count:03d}.err"
        ask = {
            "argv": [sys.executable, "-m", "batchrun.cli", *args],
            "cwd": str(cwd),
            "stdout": str(self._out),
            "stderr": str(self._err),
        }
        self._proc.stdin.write((json.dumps(ask) + "\n").encode())
        self._proc.stdin.flush()
        reply = self.reply(None)
        assert reply is not None
        return int(reply["pid"])

    def reply(self, timeout: float | None) -> dict[str, Any] | None:
        """The launcher's next answer, or None if none came within `timeout` seconds."""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            if not select.select([fd], [], [], timeout)[0]:
                return None
            data = os.read(fd, 65536)
            if not data:
                raise SystemExit("the launcher ended unexpectedly")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))

    def outputs(self) -> tuple[str, str]:
        """The stdout and stderr of the last command."""
        return (
            self._out.read_text(encoding="utf-8", errors="replace"),
            self._err.read_text(encoding="utf-8", errors="replace"),
        )

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait()


# -- the simulator's log, cut down to a count and the first arrival -----------------------


class FirstAndCount:
    """Stands in for the simulator's RequestLog: keeps no record, only how many requests
    arrived since the last reset and the earliest arrival (time.monotonic) among them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.first: float | None = None
        self.since = 0.0  # time.monotonic() of the last reset

    def append(self, record: Any) -> None:
        with self._lock:
            if record.t < self.since:
                return  # a request of the command before, answered late
            self.count += 1
            if self.first is None or record.t < self.first:
                self.first = record.t

    def snapshot(self) -> list[Any]:
        return []

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.first = None
            self.since = time.monotonic()

    def quiesce(self, quiet_s: float = 1.0) -> None:
        """Until no request has arrived for `quiet_s`: a killed command's last requests,
        still in the server's socket buffers, are read and answered after it died."""
        while True:
            before = self.count
            time.sleep(quiet_s)
            if self.count == before:
                return


def start_sim(log: FirstAndCount) -> Any:
    """The embedded simulator, answering from a thread of this process, logging to `log`."""
    from batchrun.sim import SimConfig, SimServer

    sim = SimServer(SimConfig(), "127.0.0.1", 0, record=False)
    if not hasattr(sim, "_log"):
        raise SystemExit("SimServer no longer has a _log to replace: update start_sim")
    sim._log = log  # type: ignore[assignment]  # read by the server thread as it starts
    sim.start()
    return sim


# -- building and reading the jobs (not measured) -----------------------------------------


def build_input(path: Path, rows: int) -> None:
    import polars as pl

    words = ["great", "works", "broken", "love", "refund", "okay", "fast", "terrible", "nice"]
    i = pl.int_range(rows, dtype=pl.Int64, eager=True).alias("i")
    vocab = pl.Series(words)
    frame = pl.DataFrame(i).select(
        id=pl.lit("id") + pl.col("i").cast(pl.String).str.zfill(8),
        text=pl.format(
            "{} product, {} shipping #{}",
            pl.lit(vocab).gather(pl.col("i") % 9),
            pl.lit(vocab).gather((pl.col("i") * 7) % 9),
            pl.col("i"),
        ),
        gold=pl.lit(pl.Series(LABELS)).gather(pl.col("i") % 3),
        lang=pl.when(pl.col("i") % 2 == 0).then(pl.lit("en")).otherwise(pl.lit("zh")),
    )
    frame.write_parquet(path, row_group_size=100_000)


def write_job(folder: Path, input_path: Path, base_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.toml"
    job.write_text(JOB.format(input=input_path.as_posix(), base_url=base_url), encoding="utf-8")
    return job


def output_of(folder: Path) -> Path:
    return folder / "out" / "result.parquet"


def segments(folder: Path) -> list[Path]:
    from batchrun.checkpoint.folder import checkpoint_dir
    from batchrun.checkpoint.segments import current_segments

    return current_segments(checkpoint_dir(output_of(folder)))


def committed_rows(folder: Path) -> int:
    """Rows in the job's checkpoint now, read from the segments' footers."""
    import pyarrow.parquet as pq

    total = 0
    for path in segments(folder):
        with contextlib.suppress(FileNotFoundError):  # merged away since it was listed
            total += pq.ParquetFile(path).metadata.num_rows
    return total


def finished_span(folder: Path) -> tuple[float, float, int]:
    """(first and last finished_at, rows) over the job's checkpoint."""
    import polars as pl

    first, last, n = (
        pl.scan_parquet([str(p) for p in segments(folder)])
        .select(
            pl.col("finished_at").min().alias("a"),
            pl.col("finished_at").max().alias("b"),
            pl.len().alias("n"),
        )
        .collect()
        .row(0)
    )
    return float(first), float(last), int(n)


def append_row(path: Path, rows: int) -> None:
    import polars as pl

    frame = pl.read_parquet(path)
    extra = pl.DataFrame(
        {"id": [f"extra{rows:08d}"], "text": ["an appended review: love it"]},
    ).with_columns(gold=pl.lit("positive"), lang=pl.lit("en"))
    pl.concat([frame, extra]).write_parquet(path, row_group_size=100_000)


def shuffled_copy(source: Path, target: Path) -> None:
    import polars as pl

    pl.read_parquet(source).sample(fraction=1.0, shuffle=True, seed=7).write_parquet(target)


def fabricate_answers(folder: Path, target: Path) -> int:
    """A Batch output file answering every line export-batch wrote into `folder`."""
    import orjson

    n = 0
    with open(target, "wb") as out:
        for path in sorted(folder.glob("batch-*.jsonl")):
            with open(path, "rb") as lines:
                for raw in lines:
                    line = orjson.loads(raw)
                    body = {
                        "id": f"chatcmpl-{n}",
                        "object": "chat.completion",
                        "created": 1_700_000_000,
                        "model": "gpt-4o-mini-2024-07-18",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": LABELS[n % 3]},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 24, "completion_tokens": 1, "total_tokens": 25},
                    }
                    record = {
                        "id": f"batch_req_{n}",
                        "custom_id": line["custom_id"],
                        "response": {"status_code": 200, "request_id": f"req_{n}", "body": body},
                        "error": None,
                    }
                    out.write(orjson.dumps(record) + b"\n")
                    n += 1
    return n


def output_figures(path: Path) -> dict[str, int]:
    """Rows, distinct ids, rows with status ok, and rows scored, of an output file."""
    import polars as pl

    rows, ids, ok, scored = (
        pl.scan_parquet(path)
        .select(
            pl.len(),
            pl.col("id").n_unique(),
            (pl.col("status") == "ok").sum(),
            pl.col("score").is_not_null().sum(),
        )
        .collect()
        .row(0)
    )
    return {"rows": rows, "ids": ids, "ok": ok, "scored": scored}


# -- the measurement -----------------------------------------------------------------------


@dataclass
class Step:
    name: str
    rows: int
    code: int = 0
    expected: int = 0
    peak_mb: float = 0.0
    seconds: float = 0.0
    extra: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.code != self.expected


class Scale:
    """One size: its folders, the launcher and the simulator's log."""

    def __init__(self, root: Path, rows: int, launch: Launcher, log: FirstAndCount, url: str):
        self.root = root
        self.rows = rows
        self.launch = launch
        self.log = log
        self.url = url
        self.steps: list[Step] = []
        self.checks: dict[str, bool] = {}
        self.build_s = 0.0

    def command(
        self, name: str, rows: int, args: list[str], cwd: Path, kill_at: Path | None = None
    ) -> tuple[Step, dict[str, Any], str]:
        """Runs one command to its end (with `kill_at`, SIGKILLs it once half the rows are
        committed in that job folder); returns its step, the launcher's answer, its stdout."""
        self.log.reset()
        pid = self.launch.start(args, cwd)
        step = Step(name, rows)
        killed_with = None
        if kill_at is None:
            done = self.launch.reply(None)
        else:
            step.expected = -signal.SIGKILL
            while (done := self.launch.reply(POLL_S)) is None:
                if committed_rows(kill_at) >= self.rows // 2:
                    os.kill(pid, signal.SIGKILL)
                    done = self.launch.reply(None)
                    killed_with = committed_rows(kill_at)
                    self.log.quiesce()
                    break
        assert done is not None
        out, err = self.launch.outputs()
        step.code = done["code"]
        step.peak_mb = done["peak_mb"]
        step.seconds = done["ended"] - done["started"]
        step.figures["requests"] = self.log.count
        step.figures["load_1min"] = os.getloadavg()[0]  # others' work on the machine shows here
        if self.log.first is not None:
            step.figures["first_request_s"] = self.log.first - done["started"]
        if killed_with is not None:
            step.figures["committed_at_kill"] = killed_with
        print(f"  {name}: {step.seconds:.1f} s, peak {step.peak_mb:,.0f} MB", flush=True)
        if step.failed:
            lines = [line for line in err.splitlines() if line.strip()] or ["(no stderr)"]
            step.error = lines[-1]
            print(f"  exit {step.code} (expected {step.expected}): {step.error}", flush=True)
        self.steps.append(step)
        return step, done, out

    def check(self, name: str, ok: bool) -> None:
        self.checks[name] = bool(ok)
        if not ok:
            print(f"check failed: {name}", flush=True)

    def measure(self) -> None:
        n = self.rows
        built = time.monotonic()
        source = self.root / "input.parquet"
        build_input(source, n)
        first_input = self.root / "input-first.parquet"
        first_input.write_bytes(source.read_bytes())
        one = write_job(self.root / "first", first_input, self.url)
        two = write_job(self.root / "resumed", source, self.url)
        three = write_job(self.root / "batch", source, self.url)
        self.build_s = time.monotonic() - built

        # (a) run from scratch
        step, done, _ = self.command("run, from scratch", n, ["run", str(one), "-q"], one.parent)
        if not step.failed:
            first, last, committed = finished_span(one.parent)
            step.figures |= {
                "rows_per_s": n / step.seconds,
                "steady_rows_per_s": committed / max(last - first, 1e-9),
                "output_after_last_answer_s": done["wall_end"] - last,
            }
            step.extra = (
                f"{n / step.seconds:,.0f} rows/s whole process, "
                f"{step.figures['steady_rows_per_s']:,.0f} steady; output written and exit "
                f"{step.figures['output_after_last_answer_s']:.1f} s after the last answer"
            )
            self.check("run from scratch sent every row once", step.figures["requests"] == n)

        # (b) a second folder: run killed half-way, then resumed
        kill_args = ["run", str(two), "-q"]
        if n < PACED_BELOW:
            kill_args += ["--set", f"limits.requests_per_minute={n * 60 / QUICK_KILL_RUN_S:.0f}"]
        step, _, _ = self.command("run, killed half-way", n, kill_args, two.parent, two.parent)
        at_kill = step.figures.get("committed_at_kill", 0)
        step.extra = f"SIGKILL with {at_kill:,} rows committed" if at_kill else "not killed"
        self.check("killed run was killed part-way", 0 < at_kill < n)
        step, _, _ = self.command(
            "run, resumed after the kill", n, ["run", str(two), "-q"], two.parent
        )
        self.resume_extra(step)
        self.check(
            "resume sent only the rows not committed",
            step.figures["requests"] == n - at_kill,
        )

        # (c) one row appended to the first job's input, run again
        append_row(first_input, n)
        step, _, _ = self.command(
            "run, one row appended", n + 1, ["run", str(one), "-q"], one.parent
        )
        self.resume_extra(step)
        self.check("appended row alone was sent", step.figures["requests"] == 1)

        # (d), (e) status and report of the first job
        step, _, out = self.command("status", n + 1, ["status", str(one)], one.parent)
        step.extra = "; ".join(
            " ".join(words)
            for words in map(str.split, out.splitlines())
            if words[:1] not in ([], ["spend"])
        )
        html = self.root / "report.html"
        step, _, _ = self.command(
            "report --html", n + 1, ["report", str(one), "--html", str(html)], one.parent
        )
        if html.exists():
            step.extra = f"{html.stat().st_size / 1024:,.0f} KB page"
        step, _, out = self.command(
            "report --json", n + 1, ["report", str(one), "--json"], one.parent
        )
        if not step.failed:
            step.extra = f"{len(out) / 1024:,.1f} KB of JSON"

        # (f) estimate, of the third job, whose rows are all still to send (of the first
        # job, which has none left, it counts nothing)
        step, _, out = self.command("estimate", n, ["estimate", str(three)], three.parent)
        step.extra = "; ".join(
            " ".join(line.split())
            for line in out.splitlines()
            if line.startswith(("rows ", "prompt tokens "))
        )

        # (g) compare: the resumed output against the first one, shuffled
        shuffled = self.root / "first-shuffled.parquet"
        if output_of(one.parent).exists():
            shuffled_copy(output_of(one.parent), shuffled)
        step, _, out = self.command(
            "compare (B shuffled)",
            n,
            ["compare", str(output_of(two.parent)), str(shuffled), "--json"],
            self.root,
        )
        if not step.failed:
            result = json.loads(out)
            rows = result["rows"]
            differ = result["disagreements"]["rows"]
            step.figures |= {"rows": rows, "disagreements": differ}
            step.extra = (
                f"{rows['both']:,} rows in both, {rows['only_a']} only in A, "
                f"{rows['only_b']} only in B, {differ} disagree"
            )
            self.check(
                "compare joins every row and finds no disagreement",
                rows == {"both": n, "only_a": 0, "only_b": 1} and differ == 0,
            )

        # (h) the third job, nothing run: export-batch, fabricated answers, import-batch
        batches = self.root / "batches"
        step, _, _ = self.command(
            "export-batch", n, ["export-batch", str(three), str(batches)], three.parent
        )
        if not step.failed:
            files = sorted(batches.glob("batch-*.jsonl"))
            size = sum(p.stat().st_size for p in files)
            step.extra = f"{len(files)} files, {size / 1e6:,.0f} MB"
            answers = self.root / "output.jsonl"
            lines = fabricate_answers(batches, answers)
            self.check("export-batch wrote every row once", lines == n)
            step, _, out = self.command(
                "import-batch", n, ["import-batch", str(three), str(answers)], three.parent
            )
            step.extra = out.splitlines()[0] if out.strip() else ""
            self.check("import-batch sent nothing", step.figures["requests"] == 0)

        # the outputs: every row exactly once, every status ok
        for label, folder, rows in (
            ("first", one.parent, n + 1),
            ("resumed", two.parent, n),
            ("batch", three.parent, n),
        ):
            path = output_of(folder)
            figures = output_figures(path) if path.exists() else {}
            self.check(
                f"{label} output holds each of {rows:,} rows once, all ok and scored",
                figures == {"rows": rows, "ids": rows, "ok": rows, "scored": rows},
            )

    def resume_extra(self, step: Step) -> None:
        first = step.figures.get("first_request_s")
        sent = step.figures["requests"]
        step.extra = (
            f"first request after {first:.2f} s; {sent:,} request{'s' if sent != 1 else ''}"
            if first is not None
            else "no request"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "build_s": self.build_s,
            "steps": [asdict(s) | {"failed": s.failed} for s in self.steps],
            "checks": self.checks,
        }


def table(results: list[dict[str, Any]]) -> str:
    """The steps as rows, the sizes side by side."""
    head = ["step"]
    for _ in results:
        head += ["rows", "peak MB", "seconds", "extra"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    names = list(dict.fromkeys(s["name"] for r in results for s in r["steps"]))
    for name in names:
        cells = [name]
        for result in results:
            step = next((s for s in result["steps"] if s["name"] == name), None)
            if step is None:
                cells += ["", "", "", "not run"]
                continue
            extra = step["extra"]
            if step["failed"]:
                extra = f"**exit {step['code']}**: {step['error']}"
            cells += [
                f"{step['rows']:,}",
                f"{step['peak_mb']:,.0f}",
                f"{step['seconds']:.2f}",
                extra,
            ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,5000000", help="row counts, comma-separated")
    parser.add_argument("--rows", type=int, help="one size (instead of --sizes)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows: checks it runs")
    parser.add_argument("--json", type=Path, help="also save the figures to this file")
    parser.add_argument("--launcher", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.launcher:
        launcher()
        return
    if args.quick:
        sizes = [QUICK_ROWS]
    elif args.rows is not None:
        sizes = [args.rows]
    else:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]

    began = time.monotonic()
    results: list[dict[str, Any]] = []
    passed = True
    with tempfile.TemporaryDirectory(prefix="batchrun-scale-") as tmp:
        # Before anything is imported or built here: see the module docstring.
        launch = Launcher(Path(tmp))
        log = FirstAndCount()
        sim = start_sim(log)
        try:
            for rows in sizes:
                root = Path(tmp) / f"rows-{rows}"
                root.mkdir()
                scale = Scale(root, rows, launch, log, sim.base_url)
                print(f"{rows:,} rows ...", flush=True)
                try:
                    scale.measure()
                finally:
                    results.append(scale.as_dict())
                passed &= all(scale.checks.values()) and not any(s.failed for s in scale.steps)
                if args.json:
                    save(args.json, results, time.monotonic() - began)
        finally:
            sim.stop()
            launch.close()
    total = time.monotonic() - began
    print()
    print(table(results))
    for result in results:
        failed = [name for name, ok in result["checks"].items() if not ok]
        print(
            f"\n{result['rows']:,} rows: input built in {result['build_s']:.1f} s (not measured); "
            f"checks: {len(result['checks']) - len(failed)} of {len(result['checks'])} passed; "
            f"1-minute load average at the steps' ends {load(result)} on {os.cpu_count()} cores"
            + "".join(f"\n- FAILED: {name}" for name in failed)
        )
    print(f"\nwhole benchmark: {total / 60:.1f} min")
    if args.json:
        save(args.json, results, total)
    if not passed:
        raise SystemExit(1)


def load(result: dict[str, Any]) -> str:
    loads = [s["figures"]["load_1min"] for s in result["steps"]]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"


def save(path: Path, results: list[dict[str, Any]], seconds: float) -> None:
    path.write_text(json.dumps({"sizes": results, "total_s": seconds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
