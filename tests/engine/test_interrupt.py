"""Ctrl-C and SIGTERM during `batchrun run`: exit 130, finished rows kept, the next run completes.

Each run signalled here is a real `batchrun run` process with its own embedded simulator
(`base_url = "sim"`); the signal goes to that process. The runs before and after it run
in-process, with the simulator's latency turned down (an endpoint setting, not part of any
request, so it changes no row's fingerprint).

Tests `batchrun.engine` (the local run's signal handling) and `batchrun.checkpoint`.
"""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from batchrun.checkpoint.folder import Checkpoint, checkpoint_dir
from batchrun.cli import main
from batchrun.engine.local import INTERRUPT_GRACE_S
from batchrun.protocol.result import FINISHED_AT, KEY

from ..conftest import Workspace, latest_results, reviews

ROWS = 300
GRACE_S = INTERRUPT_GRACE_S  # how long requests in flight may finish after one signal
INPUT_IDS = reviews(ROWS)["id"].to_list()


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
    ws.write_input(reviews(ROWS))
    job = ws.job(
        "sim",
        input={"id_column": "id"},
        limits={"requests_per_minute": 600_000, "concurrency": 8},
        sim={"latency_ms": 300},
    )
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


@dataclass(frozen=True)
class FileState:
    """What an output file was: its bytes, modification time and inode (None: no file)."""

    content: bytes | None
    mtime_ns: int | None
    inode: int | None

    @classmethod
    def of(cls, path: Path) -> FileState:
        if not path.exists():
            return cls(None, None, None)
        stat = path.stat()
        return cls(path.read_bytes(), stat.st_mtime_ns, stat.st_ino)


@dataclass
class DoubleInterrupt:
    """A run interrupted twice, 0.2 s apart, while requests that outlast the grace were in
    flight, after an earlier run had committed PRIOR_ROWS rows and written them out."""

    ws_root: Path
    job: Path
    code: int | None
    out: str
    err: str  # with the log lines the launcher asked for left out
    elapsed_s: float  # from the first SIGINT to the process's exit
    committed_before: pl.DataFrame  # commits there before the first SIGINT
    committed_after: pl.DataFrame  # commits there once the process had exited
    output_before: FileState
    output_after: FileState
    output: Path
    temporaries: list[Path]  # half-written outputs left beside the output


PRIOR_ROWS = 16
SLOWER_THAN_GRACE_MS = (GRACE_S + 10) * 1000  # requests still in flight when the grace ends


def launched(job: Path, grace_s: float | None = None) -> list[str]:
    """`batchrun run JOB -q` logging at info (its first line says it is sending, so its
    signal handlers are set), with the grace set to `grace_s` if given."""
    patch = f"engine.INTERRUPT_GRACE_S = {grace_s!r}; " if grace_s is not None else ""
    code = (
        f"import sys; import batchrun.engine.local as engine; {patch}"
        "from batchrun.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return ["-c", code, "--log-level", "info", "run", str(job), "-q"]


def wait_until_sending(proc: subprocess.Popen[str]) -> None:
    """Until the run logs that it is sending, then long enough for its first requests to go."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "sending to" in line, line
    time.sleep(0.5)


def without_log_lines(err: str) -> str:
    return "\n".join(line for line in err.splitlines() if " INFO batchrun" not in line)


@pytest.fixture(scope="module")
def double_interrupt(tmp_path_factory: pytest.TempPathFactory) -> DoubleInterrupt:
    root = tmp_path_factory.mktemp("double")
    ws = Workspace(root, None)  # type: ignore[arg-type]  # capsys: runs nothing through it
    ws.write_input(reviews(ROWS))
    job = ws.job(
        "sim",
        input={"id_column": "id"},
        limits={"requests_per_minute": 600_000, "concurrency": 8},
        sim={"latency_ms": SLOWER_THAN_GRACE_MS},
    )
    # An earlier run commits the first rows and writes them out: the output to be kept.
    fast = ["run", str(job), "-q", "--limit", str(PRIOR_ROWS), "--set", "sim.latency_ms=0"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(fast) == 0
    before = commits(ws.output)
    output_before = FileState.of(ws.output)
    with running(*launched(job)) as proc:
        wait_until_sending(proc)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=GRACE_S + 5)
        elapsed = time.monotonic() - sent
    temporaries = list(ws.output.parent.glob(f".{ws.output.name}.*.tmp"))
    return DoubleInterrupt(
        root,
        job,
        proc.returncode,
        out,
        without_log_lines(err),
        elapsed,
        before,
        commits(ws.output),
        output_before,
        FileState.of(ws.output),
        ws.output,
        temporaries,
    )


def test_two_sigints_exit_130_and_lose_nothing_committed(
    double_interrupt: DoubleInterrupt, capsys: pytest.CaptureFixture[str]
) -> None:
    run = double_interrupt
    assert run.code == 130, run.err
    assert_one_sentence_on_stderr(run.err)
    assert run.committed_before.height == PRIOR_ROWS
    # Every commit made before the signals is still there, unchanged, and nothing else: the
    # requests in flight were given up, not waited for.
    assert run.committed_after.sort(KEY).equals(run.committed_before.sort(KEY))
    assert f"{PRIOR_ROWS} ok, 0 failed, {ROWS - PRIOR_ROWS} pending" in run.out
    assert "this run 0 rows" in run.out
    resume_to_the_end(Workspace(run.ws_root, capsys), run.job, PRIOR_ROWS)


def test_a_second_sigint_exits_at_once_and_leaves_the_output_as_it_was(
    double_interrupt: DoubleInterrupt,
) -> None:
    run = double_interrupt
    assert run.code == 130, run.err
    # Its requests outlast the grace, so one SIGINT would have waited all of it (see the
    # test below): the second one is what ended the run, at once.
    assert run.elapsed_s < GRACE_S / 2
    assert run.output_before.content is not None  # the earlier run's output ...
    assert run.output_after == run.output_before  # ... neither rewritten nor touched
    assert run.temporaries == []  # not even begun
    assert f"output: {run.output} not rewritten; run again to write it" in run.out, run.out


def test_a_signal_exits_after_the_grace_even_if_requests_are_still_in_flight(
    ws: Workspace,
) -> None:
    # Requests take 4 s, longer than the grace (cut to 1 s here to keep the test short).
    grace_s = 1.0
    ws.write_input(reviews(ROWS))
    job = ws.job(
        "sim",
        input={"id_column": "id"},
        limits={"requests_per_minute": 600_000, "concurrency": 2},
        sim={"latency_ms": 4000},
    )
    with running(*launched(job, grace_s)) as proc:
        wait_until_sending(proc)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=grace_s + 2)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run was still going {grace_s + 2:g} s after SIGINT")
        elapsed = time.monotonic() - sent
    assert proc.returncode == 130, err
    # One SIGINT waits for the requests in flight, for the whole grace since they outlast
    # it; then the output is written with the rows finished (none here).
    assert grace_s <= elapsed < grace_s + 2
    assert_one_sentence_on_stderr(without_log_lines(err))
    assert f"output: {ws.output} (0 rows)" in out, out
    assert ws.read_output().height == 0
