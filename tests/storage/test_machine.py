"""When the machine misbehaves: a disk that fills up under a run, then frees or does not.

The disk is a real tmpfs of a few megabytes (CI runs as root, which may mount one), filled
with a ballast file while `batchrun run` runs in its own process against the simulator on
loopback; the checks are on what the user gets: the exit code, the lines on stderr, the
output's rows, and how many requests the gateway saw (what was paid for).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from batchrun.checkpoint.folder import checkpoint_dir
from batchrun.checkpoint.segments import current_segments
from batchrun.sim import SimConfig, start_in_thread

from ..conftest import FAKE_KEY, Workspace, reviews
from ..stingy import stingy_gateway

ROWS = 300
WAITING = "no request starts until there is space"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a ballast file until the disk has no space left."""
    ballast = disk / "ballast"
    chunk = b"\0" * 65536
    with open(ballast, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(chunk)
    tail = disk / "ballast-tail"  # the last pages, smaller than a chunk
    with contextlib.suppress(OSError), open(tail, "wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 512)
    return ballast


def free(disk: Path) -> None:
    for name in ("ballast", "ballast-tail"):
        (disk / name).unlink(missing_ok=True)


class Running:
    """`batchrun run` in its own process, its stderr read line by line in a thread."""

    def __init__(self, job: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun.cli", "run", str(job), "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "BATCHRUN_TEST_KEY": FAKE_KEY},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed check: never leave the run behind
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = self.lines.get(timeout=0.1)
                self.err.append(line)
                if text in line:
                    return line
        raise AssertionError(f"{text!r} never said; stderr so far: {''.join(self.err)}")

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()  # stderr is the reader thread's
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        while not self.lines.empty():
            self.err.append(self.lines.get())
        return self.proc.returncode, out, "".join(self.err)


def committed(output: Path) -> int:
    folder = checkpoint_dir(output)
    segments = current_segments(folder) if folder.exists() else []
    if not segments:
        return 0
    return int(pl.scan_parquet(segments).select(pl.len()).collect().item())


def job_on(ws: Workspace, disk: Path, base_url: str, wait_s: float) -> Path:
    ws.write_input(reviews(ROWS))
    return ws.job(
        base_url,
        input={"id_column": "id"},
        limits={
            "concurrency": 8,
            "requests_per_minute": 60000,
            "commit_interval_s": 0.1,
            "disk_wait_s": wait_s,
        },
        output={"path": str(disk / "out" / "result.parquet")},
    )


def start_then_fill(ws: Workspace, disk: Path, job: Path) -> tuple[Running, Path]:
    running = Running(job)
    output = disk / "out" / "result.parquet"
    deadline = time.monotonic() + 30
    with contextlib.ExitStack() as on_failure:
        on_failure.push(running.__exit__)
        while committed(output) < 20:  # some answers committed: the run is well under way
            assert time.monotonic() < deadline and running.proc.poll() is None, running.finish()
            time.sleep(0.02)
        fill(disk)
        on_failure.pop_all()
    return running, output


def test_a_disk_that_fills_up_pauses_the_run_until_it_frees(
    ws: Workspace, small_disk: Path
) -> None:
    with start_in_thread(SimConfig(latency_ms=20)) as sim:
        job = job_on(ws, small_disk, sim.base_url, wait_s=120)
        running, output = start_then_fill(ws, small_disk, job)
        with running:
            line = running.wait_for(WAITING)
            assert str(checkpoint_dir(output)) in line and "is full" in line
            time.sleep(0.3)  # requests sent before the line may still be on their way
            paused_at = len(sim.requests)
            time.sleep(1.5)  # the pause itself is the point: real time
            assert len(sim.requests) == paused_at, "requests started while the disk was full"
            assert paused_at < ROWS
            free(small_disk)
            code, out, err = running.finish()
        assert code == 0, err
        assert "there is space again" in err and "Traceback" not in err
        assert len(sim.requests) == ROWS  # nothing paid twice: every answer kept was committed
    result = pl.read_parquet(output)
    assert result["id"].to_list() == reviews(ROWS)["id"].to_list()
    assert set(result["status"]) == {"ok"}
    assert f"{ROWS:,} ok, 0 failed, 0 pending" in out


def test_a_disk_that_stays_full_stops_the_run_with_exit_3_and_says_what_was_lost(
    ws: Workspace, small_disk: Path
) -> None:
    with start_in_thread(SimConfig(latency_ms=20)) as sim:
        job = job_on(ws, small_disk, sim.base_url, wait_s=1)
        running, output = start_then_fill(ws, small_disk, job)
        with running:
            code, _, err = running.finish()
        first = len(sim.requests)
    assert code == 3, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("batchrun: The disk holding") and "stayed full for 1 s" in last
    lost = int(last.split(": ")[2].split(" answers could not be saved")[0].replace(",", ""))
    assert 0 < lost < ROWS  # those answered since the last commit and those in flight
    assert "could not be written" in err  # the output, on the same full disk
    kept = committed(output)
    assert kept + lost == first  # every answer had is either committed or counted as lost
    free(small_disk)
    with start_in_thread(SimConfig()) as sim:
        job = job_on(ws, small_disk, sim.base_url, wait_s=1)
        with Running(job) as resumed:
            code, _, err = resumed.finish()
        assert code == 0, err
        assert len(sim.requests) == ROWS - kept  # the lost answers are the only ones paid twice
    result = pl.read_parquet(output)
    assert result["id"].to_list() == reviews(ROWS)["id"].to_list()
    assert set(result["status"]) == {"ok"}


# -- damaged files ---------------------------------------------------------------------------


def finished_job(ws: Workspace, sim_url: str) -> tuple[Path, list[Path]]:
    ws.write_input(reviews(ROWS))
    job = ws.job(sim_url, input={"id_column": "id"}, limits={"concurrency": 4})
    assert ws.run("run", str(job), "-q").code == 0
    return job, current_segments(checkpoint_dir(ws.output))


def test_a_truncated_segment_is_skipped_by_readers_and_moved_aside_by_run(ws: Workspace) -> None:
    with start_in_thread(SimConfig()) as sim:
        job, segments = finished_job(ws, sim.base_url)
    victim = max(segments, key=lambda p: p.stat().st_size)
    held = pl.read_parquet(victim)["row_key"].n_unique()
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a copy cut short

    status = ws.run("status", str(job))
    assert status.code == 0 and "Traceback" not in status.err
    assert f"skipped the damaged checkpoint segment {victim}" in status.err
    assert "not readable Parquet" in status.err
    assert f"pending  {held}" in status.out
    report = ws.run("report", str(job))
    assert report.code == 0 and f"skipped the damaged checkpoint segment {victim}" in report.err

    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, input={"id_column": "id"}, limits={"concurrency": 4})
        result = ws.run("run", str(job), "-q")
        assert result.code == 0, result.err
        assert len(sim.requests) == held  # its rows, sent again; no other
    aside = checkpoint_dir(ws.output) / "quarantine" / victim.name
    assert aside.read_bytes() == data[: len(data) // 2]  # kept as found, never deleted
    assert f"the checkpoint segment {victim.name} is damaged" in result.err
    assert f"moved to {aside}" in result.err and "rows will be sent again" in result.err
    out = ws.read_output()
    assert out["id"].to_list() == reviews(ROWS)["id"].to_list()
    assert set(out["status"]) == {"ok"}
    again = ws.run("status", str(job))
    assert "skipped" not in again.err and "pending  0" in again.out


def test_a_segment_of_the_wrong_schema_is_named_and_its_rows_and_spend_said(
    ws: Workspace,
) -> None:
    with start_in_thread(SimConfig()) as sim:
        job, segments = finished_job(ws, sim.base_url)
    victim = segments[-1]
    frame = pl.read_parquet(victim)
    frame.with_columns(pl.col("position").cast(pl.String)).write_parquet(victim)
    spent = frame["cost_usd"].sum()
    status = ws.run("status", str(job))
    assert status.code == 0
    assert "its 'position' column is" in status.err and "not int64" in status.err
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, input={"id_column": "id"}, limits={"concurrency": 4})
        result = ws.run("run", str(job), "-q")
        assert result.code == 0, result.err
        assert len(sim.requests) == frame["row_key"].n_unique()
    assert f"the {frame.height:,} results it held, and ${spent:,.4f} spent on them," in result.err
    assert ws.read_output()["id"].to_list() == reviews(ROWS)["id"].to_list()


def test_a_damaged_output_is_rewritten_from_the_checkpoint(ws: Workspace) -> None:
    with start_in_thread(SimConfig()) as sim:
        job, _ = finished_job(ws, sim.base_url)
        before = ws.read_output()
        ws.output.write_bytes(ws.output.read_bytes()[:100])
        result = ws.run("run", str(job), "-q")
        assert result.code == 0, result.err
        assert len(sim.requests) == ROWS  # the first run's; nothing sent again
    assert ws.read_output().equals(before)


# -- the open-files limit ----------------------------------------------------------------------


def run_limited(job: Path, soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(
        [sys.executable, "-m", "batchrun.cli", "run", str(job), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        env={**os.environ, "BATCHRUN_TEST_KEY": FAKE_KEY},
    )


@pytest.mark.parametrize(("soft", "hard", "lowered"), [(256, 256, True), (256, 8192, False)])
def test_a_low_open_files_limit_is_raised_or_the_concurrency_lowered(
    ws: Workspace, soft: int, hard: int, lowered: bool
) -> None:
    ws.write_input(reviews(600))
    job = ws.job(
        "sim",
        input={"id_column": "id"},
        limits={"concurrency": 512, "requests_per_minute": 1_000_000},
        sim={"latency_ms": 200},
    )
    done = run_limited(job, soft, hard)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Too many open files" not in done.stderr
    warned = "the open-files limit is 256 (ulimit -n), too low for concurrency 512" in done.stderr
    assert warned == lowered, done.stderr
    if lowered:
        assert "`ulimit -n 2048`" in done.stderr
    out = ws.read_output()
    assert out["id"].to_list() == reviews(600)["id"].to_list()
    assert set(out["status"]) == {"ok"} and set(out["attempts"]) == {1}


# -- paths and empty inputs ------------------------------------------------------------------


def test_an_output_under_a_file_is_refused_before_any_request(ws: Workspace) -> None:
    (ws.root / "blocker").write_text("a file, not a folder")
    ws.write_input(reviews(10))
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, output={"path": "blocker/out/result.parquet"})
        result = ws.run("run", str(job), "-q")
        assert len(sim.requests) == 0
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err
    assert (
        f"The output {ws.root / 'blocker' / 'out' / 'result.parquet'} cannot be written" in lines[0]
    )


def test_an_output_on_a_read_only_disk_is_refused_before_any_request(
    ws: Workspace, small_disk: Path
) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    ws.write_input(reviews(10))
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, output={"path": str(small_disk / "out" / "result.parquet")})
        result = ws.run("run", str(job), "-q")
        assert len(sim.requests) == 0
    assert result.code == 2 and "Read-only file system" in result.err
    assert result.err.strip().count("\n") == 0 and "Traceback" not in result.err


@pytest.mark.parametrize("name", ["input.parquet", "input.csv"])
def test_an_empty_input_finishes_at_once_with_an_empty_output_of_the_right_schema(
    ws: Workspace, name: str
) -> None:
    ws.write_input(reviews(1).head(0), name)
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, input_path=name, input={"id_column": "id"})
        result = ws.run("run", str(job), "-q")
        assert len(sim.requests) == 0
        assert result.code == 0, result.err
        full = ws.job(sim.base_url, input_path="full.parquet", input={"id_column": "id"})
        ws.write_input(reviews(1), "full.parquet")
        empty = ws.read_output()
        assert ws.run("run", str(full), "-q").code == 0
    assert empty.height == 0
    assert empty.schema == ws.read_output().schema
    assert "0 rows: 0 ok, 0 failed, 0 pending" in result.out


# -- a gateway stingier than the job -----------------------------------------------------------


@pytest.mark.parametrize("hint", ["header", "message"])
def test_a_gateway_stingier_than_the_job_costs_no_row_and_its_rate_is_found(
    ws: Workspace, hint: str
) -> None:
    rows = 600
    ws.write_input(reviews(rows))
    with stingy_gateway(limit=100, window_s=2.0, hint=hint) as gateway:
        job = ws.job(
            gateway.base_url,
            input={"id_column": "id"},
            limits={
                "requests_per_minute": 20 * gateway.limit_rpm,  # 20 times what it allows
                "concurrency": 32,
                "max_attempts": 2,  # a 429 uses up none of them
            },
        )
        result = ws.run("run", str(job), "-q")
        assert result.code == 0, result.err
        sent = gateway.admitted + gateway.refused
    out = ws.read_output()
    assert out.height == rows and set(out["status"]) == {"ok"}
    assert gateway.refused > 0  # the gateway did hold the run back
    assert sent / rows < 1.5 and out["attempts"].sum() / rows < 1.5
    line = next(x for x in result.out.splitlines() if x.startswith("rate limits:"))
    said = float(line.split("about ")[1].split(" requests a minute")[0].replace(",", ""))
    assert abs(said - gateway.limit_rpm) <= 0.15 * gateway.limit_rpm, line
    assert "set limits.requests_per_minute to that" in line
    report = ws.run("report", str(job), "--json")
    figures = json.loads(report.out)["rate_limits"]
    assert figures["allowed_rpm"] == pytest.approx(said, rel=0.05)
    assert "rate limits" in ws.run("report", str(job)).out
