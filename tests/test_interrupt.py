"""Ctrl-C and SIGTERM during `batchrun run`: exit 130, finished rows kept, the next run completes.

Each run here is a real `batchrun run` process with its own embedded simulator
(`base_url = "sim"`); the signal goes to that process. The run after it resumes in-process,
with the simulator's latency turned down (an endpoint setting, not part of any request, so it
changes no row's fingerprint).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from batchrun.checkpoint import Checkpoint, checkpoint_dir
from batchrun.columns import FINISHED_AT, KEY

from .conftest import Workspace, latest_results, reviews

ROWS = 300
GRACE_S = 5.0  # batchrun.engine.INTERRUPT_GRACE_S: how long requests in flight may finish
INPUT_IDS = reviews(ROWS)["id"].to_list()


def write_job(ws: Workspace, latency_ms: float, concurrency: int = 8) -> Path:
    ws.write_input(reviews(ROWS))
    return ws.job(
        "sim",
        input={"id_column": "id"},
        limits={"requests_per_minute": 600_000, "concurrency": concurrency},
        sim={"latency_ms": latency_ms},
    )


@contextlib.contextmanager
def running(*argv: str) -> Iterator[subprocess.Popen[str]]:
    """`batchrun ARGV` in its own process; killed and reaped if the test leaves it running."""
    proc = subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def batchrun_run(job: Path) -> list[str]:
    return ["-m", "batchrun.cli", "run", str(job), "-q"]


def wait_for_first_commit(output: Path, proc: subprocess.Popen[str]) -> None:
    """Until the run has committed its first segment (its signal handlers are installed)."""
    folder = checkpoint_dir(output)
    deadline = time.monotonic() + 30
    while not any(folder.glob("seg-*.parquet")):
        assert proc.poll() is None, "the run ended before committing anything"
        assert time.monotonic() < deadline, "no segment committed within 30 s"
        time.sleep(0.01)


def committed_keys(output: Path) -> set[str]:
    return set(latest_results(checkpoint_dir(output)))


def commits(output: Path) -> pl.DataFrame:
    """Every committed result (row key, finished_at) in the checkpoint, once per commit."""
    segments = Checkpoint(checkpoint_dir(output)).segments()
    return pl.scan_parquet([str(s) for s in segments]).select(KEY, FINISHED_AT).collect()


def assert_one_sentence_on_stderr(err: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    sentence = lines[0].lower()
    assert sentence.startswith("batchrun: ") and "saved" in sentence and "resume" in sentence


def resume_to_the_end(ws: Workspace, job: Path, committed_before: int) -> None:
    """The next run sends only the rows not committed, and the output holds every row once."""
    result = ws.run("run", str(job), "-q", "--set", "sim.latency_ms=0")
    assert result.code == 0, result.err
    assert f"this run {ROWS - committed_before:,} rows" in result.out
    out = ws.read_output()
    assert out["id"].to_list() == INPUT_IDS
    assert out["status"].to_list() == ["ok"] * ROWS
    assert out["response_id"].n_unique() == ROWS
    per_row = commits(ws.output).group_by(KEY).len()
    assert per_row.height == ROWS and per_row["len"].max() == 1  # no row was committed twice


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_keeps_finished_rows_and_the_next_run_completes(
    ws: Workspace, sig: signal.Signals
) -> None:
    job = write_job(ws, latency_ms=300)
    with running(*batchrun_run(job)) as proc:
        wait_for_first_commit(ws.output, proc)  # about 1.5 s after the start
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=GRACE_S + 5)
        elapsed = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert elapsed < GRACE_S + 2
    assert_one_sentence_on_stderr(err)

    out = ws.read_output()  # the rows finished so far, nothing else
    assert 0 < out.height < ROWS
    assert out["status"].to_list() == ["ok"] * out.height
    assert out["response"].null_count() == 0
    ids = out["id"].to_list()
    assert ids == [i for i in INPUT_IDS if i in set(ids)]  # unique and in input order
    assert set(ids) == committed_keys(ws.output)  # every committed row, each finished
    resume_to_the_end(ws, job, out.height)


@dataclass
class DoubleInterrupt:
    """A run interrupted twice, 0.2 s apart, while requests were in flight."""

    ws_root: Path
    job: Path
    code: int | None
    err: str
    elapsed_s: float  # from the first SIGINT to the process's exit
    committed_before: pl.DataFrame  # commits seen before the first SIGINT


@pytest.fixture(scope="module")
def double_interrupt(tmp_path_factory: pytest.TempPathFactory) -> DoubleInterrupt:
    # Requests take 1.5 s, started in waves of 8: the first wave is committed at about 2 s,
    # the second is in flight until about 3 s, so both signals land while it is.
    root = tmp_path_factory.mktemp("double")
    ws = Workspace(root, None)  # type: ignore[arg-type]  # capsys: runs nothing in-process
    job = write_job(ws, latency_ms=1500)
    with running(*batchrun_run(job)) as proc:
        wait_for_first_commit(ws.output, proc)
        before = commits(ws.output)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=GRACE_S + 5)
        elapsed = time.monotonic() - sent
    return DoubleInterrupt(root, job, proc.returncode, err, elapsed, before)


def test_two_sigints_exit_130_and_lose_nothing_committed(
    double_interrupt: DoubleInterrupt, capsys: pytest.CaptureFixture[str]
) -> None:
    run = double_interrupt
    assert run.code == 130, run.err
    assert_one_sentence_on_stderr(run.err)
    assert run.committed_before.height > 0
    ws = Workspace(run.ws_root, capsys)
    after = commits(ws.output)
    assert after.join(run.committed_before, on=[KEY, FINISHED_AT]).height == (
        run.committed_before.height
    )  # every commit made before the signals is still there, unchanged
    resume_to_the_end(ws, run.job, after[KEY].n_unique())


def test_a_second_sigint_exits_at_once(double_interrupt: DoubleInterrupt) -> None:
    code, elapsed = double_interrupt.code, double_interrupt.elapsed_s
    assert code == 130
    assert elapsed < 2.0  # well under the grace


def test_a_signal_exits_after_the_grace_even_if_requests_are_still_in_flight(
    ws: Workspace,
) -> None:
    # Requests take 4 s, longer than the grace (cut to 1 s here to keep the test short).
    job = write_job(ws, latency_ms=4000, concurrency=2)
    code = (
        "import sys; import batchrun.engine as engine; engine.INTERRUPT_GRACE_S = 1.0; "
        "from batchrun.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = ["-c", code, "--log-level", "info", "run", str(job), "-q"]
    with running(*argv) as proc:
        assert proc.stderr is not None
        assert "batchrun" in proc.stderr.readline()  # logged once sending: handlers are set
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=3.0)
        except subprocess.TimeoutExpired:
            pytest.fail("the run was still going 3 s after SIGINT with a 1 s grace")
        elapsed = time.monotonic() - sent
    assert proc.returncode == 130
    assert elapsed < 3.0
