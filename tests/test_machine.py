"""When the machine misbehaves: a disk that fills up under a run, then frees or does not.

The disk is a real tmpfs of a few megabytes (CI runs as root, which may mount one), filled
with a ballast file while `batchrun run` runs in its own process against the simulator on
loopback; the checks are on what the user gets: the exit code, the lines on stderr, the
output's rows, and how many requests the gateway saw (what was paid for).
"""

from __future__ import annotations

import contextlib
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

from batchrun.checkpoint import checkpoint_dir, current_segments
from batchrun.sim import SimConfig, start_in_thread

from .conftest import FAKE_KEY, Workspace, reviews

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
        self.proc.stdout.close()
        assert self.proc.stderr is not None
        self.proc.stderr.close()
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
    while committed(output) < 20:  # some answers committed: the run is well under way
        assert time.monotonic() < deadline and running.proc.poll() is None, running.finish()
        time.sleep(0.02)
    fill(disk)
    return running, output


def test_a_disk_that_fills_up_pauses_the_run_until_it_frees(
    ws: Workspace, small_disk: Path
) -> None:
    with start_in_thread(SimConfig(latency_ms=20)) as sim:
        job = job_on(ws, small_disk, sim.base_url, wait_s=120)
        running, output = start_then_fill(ws, small_disk, job)
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
        resumed = Running(job)
        code, _, err = resumed.finish()
        assert code == 0, err
        assert len(sim.requests) == ROWS - kept  # the lost answers are the only ones paid twice
    result = pl.read_parquet(output)
    assert result["id"].to_list() == reviews(ROWS)["id"].to_list()
    assert set(result["status"]) == {"ok"}
