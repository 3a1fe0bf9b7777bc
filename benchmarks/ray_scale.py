"""The Ray engine against the local one: time, rows/s, desk calls and memory by worker count.

    .venv/bin/python benchmarks/ray_scale.py                      # about 4-6 minutes on 2 cores
    .venv/bin/python benchmarks/ray_scale.py --rows 50000 --workers 1,2,4,8 --json ray.json
    .venv/bin/python benchmarks/ray_scale.py --quick              # tiny: checks it runs
    .venv/bin/python benchmarks/ray_scale.py --skip zero --sim-limit-factor 0   # pacing only
    .venv/bin/python benchmarks/ray_scale.py --skip zero --workers 1 --shard-rows 0 --no-local

--shard-rows is by default rows / (4 x the most workers measured), the same for every worker
count (the engine's own default is at least 10,000 rows a shard, which would leave workers
idle on these sizes); 0 leaves the engine's default. --keep DIR keeps the job folders
(checkpoints included) for a look afterwards.

Two workloads, each against its own `batchrun sim` process on 127.0.0.1 (nothing else on
the network), each run by the local engine and by the Ray engine with every --workers count,
on the same job (the same input, limits and shards; only `[engine]` differs):

- zero latency, no binding rate limit (--rows, 20,000): CPU-bound, so it shows what the
  engine costs, and what Ray adds (its start-up, its processes, the desk's calls);
- --latency-ms (500) with `requests_per_minute = --rpm` (6,000) (--latency-rows, 3,000): the
  cluster must hold the one limit whatever the worker count. The simulator refuses (429)
  more than SIM_LIMIT_FACTOR times the limit in any sliding second, so a burst past the
  pacer's tolerance shows as 429s; the achieved requests/s is measured from the starts the
  checkpoint records (finished_at - latency_s), over the whole span and its busiest second.

Every case is its own `python benchmarks/ray_scale.py --child JOB` process, started by a
small launcher (`benchmarks/peak.py`: Linux carries a parent's peak RSS into its children)
with a fresh checkpoint. The child is the CLI: it calls `batchrun.cli.main(["run", JOB,
"--quiet"])`, with `batchrun.ray.driver.run` (or `batchrun.engine.local.run`) and
`batchrun.ray.driver._drive` wrapped only to keep what they return, and prints that as one JSON line
after the CLI's own lines: the summary, `summary.workers` (worker count, each worker process's peak
RSS, the starts taken and the desk calls for them, shards and shard attempts), the desk's figures
per endpoint (starts leased, of which some may expire unused), and its own peak RSS and CPU. With no
`[engine] address` the CLI starts a local Ray instance for the run and shuts it down at its end, so
each case pays Ray's start-up and shut-down inside its wall time.

While a case runs, this process reads /proc every POLL_S for the processes under its
launcher: the driver, the Ray workers (`ray::ShardWorker`), the desk (`ray::Desk`) and Ray's
own processes (gcs_server, raylet, the dashboard head and monitors, idle workers), keeping
each one's VmHWM (peak RSS of its own memory, which the kernel does not carry across exec)
and CPU seconds as last seen; and the simulator's CPU seconds before and after. The load
average is taken before and after each case: other work on the machine shows there.

Rates: "whole" is rows over the case's process from start to exit; "steady" is rows over the
span between the first and last finished_at in the checkpoint; "first answer" is the first
finished_at after the process started (imports, Ray's start, the workers' start, the first
shard's plan); "exit after last" is from the last finished_at to the process's exit (output
written, Ray shut down).

Exit status 1 if a case did not exit 0 or a check failed (every row once in the output, all
ok; each start taken once in zero latency; the limit held within LIMIT_SLACK).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import peak  # benchmarks/peak.py

JOB = """
name = "ray-scale"
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
api_key_env = "RAY_SCALE_KEY"
[limits]
requests_per_minute = {rpm}
concurrency = {concurrency}
[output]
path = "out/result.parquet"
[engine]
{engine}
"""
KEY = "sk-ray-scale-not-a-key"
MARK = "RAY_SCALE_FIGURES "  # the child's JSON line starts with this
POLL_S = 0.25  # how often /proc is read while a case runs
UNBOUND_RPM = 10_000_000  # zero latency: a limit that never binds
ZERO_CONCURRENCY = 256  # in flight in zero latency (split among the Ray workers)
LATENCY_CONCURRENCY = 128  # in flight with latency: twice what the limit needs at 500 ms
SIM_LIMIT_FACTOR = 1.2  # the simulator refuses more than this times the limit in a second
LIMIT_SLACK = 1.03  # the achieved rate over the whole span may pass the limit by this much
SHARDS_PER_WORKER = 4  # as batchrun.ray.driver, but over the most workers measured (see shard_rows)
QUICK = {"rows": 600, "latency_rows": 150, "latency_ms": 100.0, "rpm": 3000}
CASE_TIMEOUT_S = 900.0


# -- the child: one case, through the CLI -------------------------------------------------


def child(job_path: str) -> int:
    """Runs the job as `batchrun run JOB --quiet` does, then prints the figures as JSON."""
    started = time.time()
    import resource

    import batchrun.cli as cli
    from batchrun.config.job import load_job

    kept: dict[str, Any] = {}
    kind = load_job(Path(job_path), environ=os.environ).engine.kind
    if kind == "ray":
        import batchrun.ray.driver as ray_engine

        ray_run, drive = ray_engine.run, ray_engine._drive

        def keep_run(*args: Any, **kwargs: Any) -> Any:
            kept["summary"] = summary = ray_run(*args, **kwargs)
            return summary

        def keep_drive(*args: Any, **kwargs: Any) -> Any:
            figures, stop, hurried = drive(*args, **kwargs)
            kept["desk"] = {k: figures[k] for k in ("endpoints", "commits", "requests")}
            return figures, stop, hurried

        ray_engine.run, ray_engine._drive = keep_run, keep_drive
    else:
        import batchrun.engine.local as local_engine

        local_run = local_engine.run

        async def keep_local(*args: Any, **kwargs: Any) -> Any:
            kept["summary"] = summary = await local_run(*args, **kwargs)
            return summary

        local_engine.run = keep_local  # cli imports it at each call

    code = cli.main(["run", job_path, "--quiet"])
    own = resource.getrusage(resource.RUSAGE_SELF)
    summary = kept.get("summary")
    figures: dict[str, Any] = {
        "code": code,
        "started": started,
        "ended": time.time(),
        "peak_mb": own.ru_maxrss / 1024,
        "cpu_s": own.ru_utime + own.ru_stime,
        "children_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "desk": kept.get("desk"),
    }
    if summary is not None:
        names = ["total", "ok", "failed", "pending", "ran", "elapsed_s"]
        names += ["rate_limited", "allowed_rpm", "workers"]
        figures["summary"] = {name: getattr(summary, name) for name in names}
        figures["summary"]["stopped"] = None if summary.stopped is None else str(summary.stopped)
    print(MARK + json.dumps(figures, default=str), flush=True)
    return code


# -- the processes under a case, from /proc --------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    rest = text[text.rfind(")") + 2 :].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK


def _status_kb(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in fields:
                    found[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


RANK = {"worker": 4, "desk": 4, "driver": 3, "launcher": 3, "idle worker": 2, "ray": 1}


def _kind(cmdline: str) -> str:
    if cmdline.startswith("ray::ShardWorker"):
        return "worker"
    if cmdline.startswith("ray::Desk"):
        return "desk"
    if cmdline.startswith("ray::"):
        return "idle worker"
    if "--child" in cmdline and "ray_scale" in cmdline:
        return "driver"
    if "peak.py" in cmdline:
        return "launcher"
    return "ray"  # gcs_server, raylet, dashboard, monitors, agents


@dataclass
class Seen:
    kind: str
    name: str
    hwm_mb: float = 0.0
    cpu_s: float = 0.0


class Tree:
    """Every process under `root` seen while a case runs: its kind, peak RSS, CPU."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, Seen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(POLL_S)

    def scan(self) -> None:
        parents: dict[int, list[int]] = {}
        cpu: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _stat(int(entry))) is not None:
                parents.setdefault(stat[0], []).append(int(entry))
                cpu[int(entry)] = stat[1]
        todo, under = [self.root], []
        while todo:
            pid = todo.pop()
            for kid in parents.get(pid, ()):
                under.append(kid)
                todo.append(kid)
        for pid in under:
            line = _cmdline(pid)
            if not line:
                continue
            kind = _kind(line)
            seen = self.seen.get(pid)
            if seen is None:
                seen = self.seen[pid] = Seen(kind, line.split()[0].rsplit("/", 1)[-1][:40])
            elif RANK[kind] > RANK[seen.kind]:
                seen.kind, seen.name = kind, line.split()[0].rsplit("/", 1)[-1][:40]
            hwm = _status_kb(pid, ("VmHWM",)).get("VmHWM")
            if hwm is not None:
                seen.hwm_mb = max(seen.hwm_mb, hwm / 1024)
            seen.cpu_s = max(seen.cpu_s, cpu.get(pid, 0.0))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        by_kind: dict[str, dict[str, Any]] = {}
        for seen in self.seen.values():
            group = by_kind.setdefault(seen.kind, {"count": 0, "hwm_mb": [], "cpu_s": 0.0})
            group["count"] += 1
            group["hwm_mb"].append(round(seen.hwm_mb, 1))
            group["cpu_s"] += seen.cpu_s
        for group in by_kind.values():
            group["hwm_mb"].sort()
        return by_kind


def cpu_of(pid: int) -> float:
    stat = _stat(pid)
    return stat[1] if stat is not None else 0.0


# -- the simulators, the inputs, the jobs ---------------------------------------------------


class Sim:
    """`batchrun sim` in its own process on 127.0.0.1."""

    def __init__(self, latency_ms: float, rpm_limit: int | None) -> None:
        argv = [sys.executable, "-m", "batchrun.cli", "sim", "--host", "127.0.0.1"]
        argv += ["--port", "0", "--latency-ms", str(latency_ms)]
        if rpm_limit is not None:
            argv += ["--rpm-limit", str(rpm_limit)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=child_env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise SystemExit(f"the simulator did not start: {line!r}")
        self.base_url = line.rsplit(" ", 1)[1].strip()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def child_env() -> dict[str, str]:
    """A small environment: the fake key, no Ray address (each case starts its own Ray)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "RAY_SCALE_KEY": KEY,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


def build_input(path: Path, rows: int) -> None:
    import polars as pl

    words = ["great", "works", "broken", "love", "refund", "okay", "fast", "terrible", "nice"]
    i = pl.int_range(rows, dtype=pl.Int64, eager=True).alias("i")
    vocab = pl.Series(words)
    pl.DataFrame(i).select(
        id=pl.lit("id") + pl.col("i").cast(pl.String).str.zfill(8),
        text=pl.format(
            "{} product, {} shipping #{}",
            pl.lit(vocab).gather(pl.col("i") % 9),
            pl.lit(vocab).gather((pl.col("i") * 7) % 9),
            pl.col("i"),
        ),
    ).write_parquet(path)


def engine_section(workers: int | None, shard_rows: int | None) -> str:
    if workers is None:
        return 'kind = "local"'
    lines = ['kind = "ray"', f"workers = {workers}"]
    if shard_rows is not None:
        lines.append(f"shard_rows = {shard_rows}")
    return "\n".join(lines)


# -- one workload ---------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    rows: int
    latency_ms: float
    rpm: int
    concurrency: int
    limited: bool  # the rate limit binds: measure the achieved rate against it
    shard_rows: int | None
    sim_rpm_limit: int | None = None  # the simulator's own limit (429s past it)
    cases: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_figures(output: Path, limited: bool) -> dict[str, Any]:
    """From the checkpoint: the first and last finished_at and, where the limit binds, the
    achieved starts a second (finished_at - latency_s) over the span and its busiest second."""
    import polars as pl

    from batchrun.checkpoint.folder import checkpoint_dir
    from batchrun.checkpoint.segments import current_segments

    segments = [str(p) for p in current_segments(checkpoint_dir(output))]
    frame = pl.read_parquet(segments, columns=["finished_at", "latency_s", "attempts"])
    done = frame["finished_at"]
    figures: dict[str, Any] = {
        "committed": frame.height,
        "first_finished": float(done.min()),  # type: ignore[arg-type]
        "last_finished": float(done.max()),  # type: ignore[arg-type]
        "retried_rows": int((frame["attempts"] > 1).sum()),
    }
    if limited:
        starts = sorted(
            frame.filter(pl.col("latency_s").is_not_null())
            .select(pl.col("finished_at") - pl.col("latency_s"))
            .to_series()
            .to_list()
        )
        span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
        figures["starts_per_s"] = (len(starts) - 1) / span if span > 0 else None
        figures["busiest_second"] = busiest(starts, 1.0)
    return figures


def busiest(times: list[float], window_s: float) -> int:
    """The most of `times` (sorted) in any window of `window_s`."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


def output_figures(path: Path) -> dict[str, int]:
    import polars as pl

    rows, ids, ok = (
        pl.scan_parquet(path)
        .select(pl.len(), pl.col("id").n_unique(), (pl.col("status") == "ok").sum())
        .collect()
        .row(0)
    )
    return {"rows": rows, "ids": ids, "ok": ok}


def run_case(
    root: Path, input_path: Path, sim: Sim, load: Workload, workers: int | None
) -> dict[str, Any]:
    """One case in its own process under a fresh launcher; its figures and checks."""
    label = "local" if workers is None else f"ray x{workers}"
    folder = root / load.name / label.replace(" ", "-")
    folder.mkdir(parents=True)
    job = folder / "job.toml"
    job.write_text(
        JOB.format(
            input=input_path.as_posix(),
            base_url=sim.base_url,
            rpm=load.rpm,
            concurrency=load.concurrency,
            engine=engine_section(workers, load.shard_rows),
        ),
        encoding="utf-8",
    )
    case: dict[str, Any] = {"engine": label, "workers": workers, "rows": load.rows}
    load_before, sim_cpu = os.getloadavg()[0], cpu_of(sim.proc.pid)
    proc, report = peak.start(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(job)],
        env=child_env(),
        cwd=str(folder),
    )
    tree = Tree(proc.pid)
    try:
        measured = peak.finish(proc, report, timeout=CASE_TIMEOUT_S)
    finally:
        processes = tree.stop()
    case |= {
        "code": measured.code,
        "seconds": measured.seconds,
        "tree_peak_mb": measured.peak_mb,  # wait4's: the driver or a process it reaped
        "processes": processes,
        "sim_cpu_s": cpu_of(sim.proc.pid) - sim_cpu,
        "load_1min": [load_before, os.getloadavg()[0]],
    }
    lines = [line for line in measured.stdout.splitlines() if line.startswith(MARK)]
    child_figures = json.loads(lines[-1][len(MARK) :]) if lines else {}
    case["child"] = child_figures
    checks: dict[str, bool] = {"exit 0": measured.code == 0}
    if measured.code != 0 or not child_figures:
        errors = [line for line in measured.stderr.splitlines() if line.strip()]
        case["error"] = errors[-1] if errors else "(no stderr)"
    output = folder / "out" / "result.parquet"
    summary = child_figures.get("summary") or {}
    if output.exists():
        out = output_figures(output)
        checks["every row once in the output, all ok"] = out == {
            "rows": load.rows,
            "ids": load.rows,
            "ok": load.rows,
        }
        case["checkpoint"] = spans = checkpoint_figures(output, load.limited)
        case["rows_per_s"] = load.rows / measured.seconds
        span = spans["last_finished"] - spans["first_finished"]
        case["steady_rows_per_s"] = spans["committed"] / span if span > 0 else None
        case["first_answer_s"] = spans["first_finished"] - child_figures.get("started", 0.0)
        case["exit_after_last_s"] = child_figures.get("ended", 0.0) - spans["last_finished"]
        if load.limited and spans.get("starts_per_s") is not None:
            limit = load.rpm / 60
            case["achieved_of_limit"] = spans["starts_per_s"] / limit
            case["busiest_of_share"] = spans["busiest_second"] / limit
            checks["the limit held over the run"] = spans["starts_per_s"] <= limit * LIMIT_SLACK
    else:
        checks["output written"] = False
    checks["no stop"] = bool(summary) and summary.get("stopped") is None
    workers_figures = summary.get("workers") or {}
    if workers is not None and workers_figures:
        requests, leases = workers_figures["requests"], workers_figures["leases"]
        case["leases_per_request"] = leases / requests if requests else None
        granted = (child_figures.get("desk") or {}).get("endpoints", {}).get("default", {})
        if granted.get("granted") is not None and requests:
            case["granted_per_request"] = granted["granted"] / requests
        if not load.limited:
            checks["each row's start taken once"] = requests == load.rows
    case["checks"] = checks
    case["failed"] = not all(checks.values())
    print(f"  {label}: {line_of(case, load)}", flush=True)
    if case.get("error"):
        print(f"    exit {measured.code}: {case['error']}", flush=True)
    for name, ok in checks.items():
        if not ok:
            print(f"    check failed: {name}", flush=True)
    return case


def line_of(case: dict[str, Any], load: Workload) -> str:
    parts = [f"{case['seconds']:.1f} s"]
    if case.get("rows_per_s"):
        parts.append(f"{case['rows_per_s']:,.0f} rows/s whole")
    if case.get("steady_rows_per_s"):
        parts.append(f"{case['steady_rows_per_s']:,.0f} steady")
    if case.get("leases_per_request") is not None:
        parts.append(f"{case['leases_per_request']:.4f} desk calls/request")
    if load.limited and case.get("achieved_of_limit") is not None:
        parts.append(f"{case['achieved_of_limit']:.3f} of the limit")
    parts.append(f"driver {case['child'].get('peak_mb', 0):,.0f} MB")
    return ", ".join(parts)


# -- the table ------------------------------------------------------------------------------


def fmt(value: Any, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def mbs(values: list[float]) -> str:
    return " / ".join(f"{v:,.0f}" for v in values) if values else "—"


def table(load: Workload) -> str:
    head = ["engine", "wall s", "rows/s whole", "rows/s steady", "first answer s"]
    head += ["exit after last s", "desk calls / request", "starts leased / taken"]
    if load.limited:
        head += ["requests/s (of limit)", "busiest second (of share)", "429s"]
    head += ["driver MB", "workers MB (own ru_maxrss; VmHWM)", "Ray's processes MB (n)"]
    head += ["CPU s: driver / workers / desk / Ray / sim", "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    limit = load.rpm / 60
    for case in load.cases:
        child = case.get("child") or {}
        summary = child.get("summary") or {}
        workers = summary.get("workers") or {}
        procs = case.get("processes", {})
        ray_procs = [procs.get(k, {}) for k in ("ray", "idle worker")]
        ray_mb = sum(sum(p.get("hwm_mb", [])) for p in ray_procs)
        ray_n = sum(p.get("count", 0) for p in ray_procs)
        cpu = [
            child.get("cpu_s"),
            procs.get("worker", {}).get("cpu_s"),
            procs.get("desk", {}).get("cpu_s"),
            sum(p.get("cpu_s", 0.0) for p in ray_procs) if ray_n else None,
            case.get("sim_cpu_s"),
        ]
        cells = [
            case["engine"] + (" **FAILED**" if case["failed"] else ""),
            f"{case['seconds']:.1f}",
            fmt(case.get("rows_per_s"), ",.0f"),
            fmt(case.get("steady_rows_per_s"), ",.0f"),
            fmt(case.get("first_answer_s"), ".2f"),
            fmt(case.get("exit_after_last_s"), ".2f"),
            fmt(case.get("leases_per_request"), ".4f"),
            fmt(case.get("granted_per_request"), ".3f"),
        ]
        if load.limited:
            spans = case.get("checkpoint", {})
            rate = spans.get("starts_per_s")
            cells += [
                f"{rate:.1f} ({case['achieved_of_limit']:.3f})" if rate else "—",
                f"{spans['busiest_second']} ({case['busiest_of_share']:.2f})" if rate else "—",
                fmt(summary.get("rate_limited"), "d"),
            ]
        own = workers.get("peak_rss_mb") or []
        hwm = procs.get("worker", {}).get("hwm_mb") or []
        cells += [
            fmt(child.get("peak_mb"), ",.0f"),
            f"{mbs(own)}; {mbs(hwm)}" if case["workers"] else "—",
            f"{ray_mb:,.0f} ({ray_n})" if ray_n else "—",
            " / ".join(fmt(c, ".1f") for c in cpu),
            "{:.1f}-{:.1f}".format(*case["load_1min"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    shards = next((c["child"]["summary"]["workers"] for c in load.cases if c.get("workers")), None)
    lines.append("")
    lines.append(
        f"{load.name}: {load.rows:,} rows, latency {load.latency_ms:g} ms, "
        f"requests_per_minute {load.rpm:,}"
        + (f" ({limit:,.0f}/s)" if load.limited else " (never binds)")
        + (
            f"; the simulator refuses more than {load.sim_rpm_limit // 60:,} in any second"
            if load.sim_rpm_limit
            else ""
        )
        + f"; concurrency {load.concurrency} (split among Ray workers), shard_rows "
        + (f"{load.shard_rows:,}" if load.shard_rows else "the engine's default")
        + (
            f" ({shards['shards']} shards, {shards['shard_attempts']} attempts)"
            if shards and "shards" in shards
            else ""
        )
    )
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="zero-latency rows")
    parser.add_argument("--latency-rows", type=int, default=3_000, help="rows with latency")
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--rpm", type=int, default=6_000, help="the limit of the latency case")
    parser.add_argument(
        "--workers", help="Ray worker counts, comma-separated (default 1,2,4; --quick: 1,2)"
    )
    parser.add_argument(
        "--shard-rows",
        type=int,
        default=None,
        help="rows a shard (0: the engine's default); by default rows / (4 x the most "
        "workers), the same for every worker count",
    )
    parser.add_argument(
        "--sim-limit-factor",
        type=float,
        default=SIM_LIMIT_FACTOR,
        help="with latency, the simulator answers 429 past this times the limit in any "
        "second (default %(default)s; 0: it enforces nothing)",
    )
    parser.add_argument("--no-local", action="store_true", help="skip the local engine")
    parser.add_argument("--skip", default="", help="workloads to skip: zero,latency")
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks it runs")
    parser.add_argument("--json", type=Path, help="also save the figures to this file")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="keep the inputs and job folders in DIR (new)"
    )
    parser.add_argument("--child", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.exit(child(args.child))
    if args.quick:
        args.rows, args.latency_rows = QUICK["rows"], QUICK["latency_rows"]
        args.latency_ms, args.rpm = QUICK["latency_ms"], QUICK["rpm"]
    if args.workers is None:
        args.workers = "1,2" if args.quick else "1,2,4"
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    most = max(counts) if counts else 1

    def shard_rows(rows: int) -> int | None:
        if args.shard_rows is not None:
            return args.shard_rows or None
        return max(1, math.ceil(rows / (SHARDS_PER_WORKER * most)))

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    loads = [
        Workload(
            "zero latency", args.rows, 0.0, UNBOUND_RPM, ZERO_CONCURRENCY, False,
            shard_rows(args.rows),
        ),
        Workload(
            "latency and a limit", args.latency_rows, args.latency_ms, args.rpm,
            LATENCY_CONCURRENCY, True, shard_rows(args.latency_rows),
        ),
    ]  # fmt: skip
    loads = [w for w in loads if w.name.split()[0] not in skip]
    began = time.monotonic()
    machine = {
        "commit": commit(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="batchrun-ray-scale-") as tmp:
        root = Path(tmp) if args.keep is None else args.keep
        root.mkdir(parents=True, exist_ok=True)
        try:  # not imported here: this process stays small (see peak.py)
            machine["ray"] = importlib.metadata.version("ray")
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit("benchmarks/ray_scale.py needs Ray: pip install -e '.[ray]'") from None
        for load in loads:
            factor = args.sim_limit_factor
            load.sim_rpm_limit = round(load.rpm * factor) if load.limited and factor > 0 else None
            sim = Sim(load.latency_ms, load.sim_rpm_limit)
            try:
                input_path = root / f"input-{load.rows}.parquet"
                if not input_path.exists():
                    build_input(input_path, load.rows)
                print(f"{load.name}: {load.rows:,} rows against {sim.base_url} ...", flush=True)
                cases: list[int | None] = ([] if args.no_local else [None]) + counts
                for workers in cases:
                    load.cases.append(run_case(root, input_path, sim, load, workers))
                    if args.json:
                        save(args.json, machine, loads, time.monotonic() - began)
            finally:
                sim.close()
    total = time.monotonic() - began
    machine["load_at_end"] = os.getloadavg()
    for load in loads:
        print()
        print(table(load))
    loads_seen = [x for load in loads for c in load.cases for x in c["load_1min"]] or [0.0]
    print(
        f"\ncommit {machine['commit']}; {os.cpu_count()} cores, Python {machine['python']}, "
        f"Ray {machine.get('ray')}; "
        f"1-minute load average {min(loads_seen):.1f}-{max(loads_seen):.1f} over the cases; "
        f"whole benchmark {total / 60:.1f} min"
    )
    if args.json:
        save(args.json, machine, loads, total)
    if any(c["failed"] for load in loads for c in load.cases):
        raise SystemExit(1)


def commit() -> str | None:
    """The repository's commit the figures belong to (with a + if files are changed)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return (head + ("+" if changed else "")) or None


def save(path: Path, machine: dict[str, Any], loads: list[Workload], seconds: float) -> None:
    doc = {"machine": machine, "workloads": [asdict(w) for w in loads], "total_s": seconds}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
