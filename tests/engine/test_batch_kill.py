"""The batch lane killed with SIGKILL at each of its steps, then run again: every row once.

The simulator runs in the test's process (its ledger and files outlive the run); the run is
a real `batchrun run` process over real loopback HTTP, killed with a real SIGKILL. The steps
are hit by the simulator's hold points (`batchrun.sim.holds`), not by timing: the test arms
one, waits until the run reaches it (and, while polling, until the run has seen the batch
in progress), kills the run, lets the simulator go on, and runs the job again in-process.

| step | hold point | the checkpoint's ledger at the kill |
| --- | --- | --- |
| after the intent | `upload` (body not read) | the intent, no file id |
| after the upload | `uploaded` (file stored, answer withheld) | the intent, no file id |
| after the batch is created | `created` (answer withheld) | the file id, no batch id |
| while polling | `answering` (batch `in_progress`) | the batch id, seen `in_progress` |
| while importing | `content`, 2nd download | one batch collected, one ended |

While importing: the lane collects the ended batches one after another (download, commit
the answers, record the collection), and only the downloads touch the provider, so the one
point a server can hold inside collecting is a download. Holding the second one kills the
run with one batch's answers committed and recorded, the other's output partly received
(into a hidden temporary of the ledger, never under the answers' name): the rerun must
neither take a part of a file for the answers nor collect the first batch again. (Between a
commit and its record nothing reaches the provider; that importing the same answers twice
commits nothing new is the importer's, tested through `import-batch` in
tests/batchfiles/test_batchfiles.py.)

After the rerun: every row `ok` exactly once, committed once; at the simulator, no file
uploaded twice, no row in two batches, each intent's batch created once; in the
checkpoint's ledger, every intent collected, holding every row once between them.

Tests `batchrun.engine.batch` (recovery after a kill) and `batchrun.checkpoint.batches`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.checkpoint.batches import LEDGER, METADATA_KEY, ROW_KEY, Ledger
from batchrun.checkpoint.folder import Checkpoint, checkpoint_dir
from batchrun.protocol.result import KEY
from batchrun.sim import SimConfig, SimServer, start_in_thread

from ..conftest import Workspace, reviews

ROWS = 40
BATCH_ROWS = 20  # two files, two batches
INPUT_IDS = reviews(ROWS)["id"].to_list()
REACH_TIMEOUT_S = 30.0  # how long a run may take to reach its step

Records = list[dict[str, Any]]  # the intents' records in the checkpoint's ledger, as written


@dataclass(frozen=True)
class Step:
    """A step of the lane to kill the run at: the hold point that stops it there, and what
    the checkpoint's ledger shows then."""

    point: str
    after: int  # passes of the point let through first
    shows: Callable[[Records], bool]  # what the ledger shows at the step
    # Whether the run goes on past the hold to the step (the lane polls the batch held),
    # rather than being at it once the hold is reached.
    goes_on: bool = False


def one_intent_without(field: str) -> Callable[[Records], bool]:
    return lambda records: len(records) == 1 and records[0][field] is None


def seen_in_progress(records: Records) -> bool:
    return any(r["batch_id"] is not None and r["status"] == "in_progress" for r in records)


def one_collected_one_ended(records: Records) -> bool:
    collected = [r for r in records if r["collected_at"] is not None]
    ended = [r for r in records if r["collected_at"] is None and r["output_file_id"]]
    return len(collected) == 1 and len(ended) == 1


STEPS = {
    "after-the-intent": Step("upload", 0, one_intent_without("file_id")),
    "after-the-upload": Step("uploaded", 0, one_intent_without("file_id")),
    "after-the-batch-is-created": Step("created", 0, one_intent_without("batch_id")),
    "while-polling": Step("answering", 0, seen_in_progress, goes_on=True),
    "while-importing": Step("content", 1, one_collected_one_ended),
}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with start_in_thread(SimConfig(batch_delay_s=0.1)) as server:
        yield server


def intent_records(output: Path) -> Records:
    """The intents' records as the run (maybe still running) has written them."""
    folder = checkpoint_dir(output) / LEDGER
    return [json.loads(p.read_text()) for p in sorted(folder.glob("[!.]*.json"))]


@contextlib.contextmanager
def running(ws: Workspace, job: Path) -> Iterator[subprocess.Popen[str]]:
    """`batchrun run JOB` in its own process; killed and reaped if the test leaves it."""
    argv = [sys.executable, "-m", "batchrun.cli", "run", str(job), "-q"]
    proc = subprocess.Popen(
        argv, cwd=ws.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_for(proc: subprocess.Popen[str], what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while not done():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}: {err}")
        assert time.monotonic() < deadline, f"the run did not reach {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("step", list(STEPS.values()), ids=list(STEPS))
def test_a_run_killed_at_a_step_of_the_lane_and_run_again_answers_every_row_once(
    ws: Workspace, sim: SimServer, step: Step
) -> None:
    ws.write_input(reviews(ROWS))
    job = ws.job(
        sim.base_url,
        input={"id_column": "id"},
        endpoint={"kind": "batch", "batch_rows": BATCH_ROWS, "poll_s": 0.1},
    )
    reached = sim.hold(step.point, step.after)
    with running(ws, job) as proc:
        wait_for(proc, f"the {step.point!r} hold", reached.is_set)
        if step.goes_on:
            wait_for(proc, "the step", lambda: step.shows(intent_records(ws.output)))
        assert step.shows(intent_records(ws.output)), intent_records(ws.output)
        proc.kill()
        proc.wait()
    assert proc.returncode == -9
    sim.release()

    result = ws.run("run", str(job), "-q")
    assert result.code == 0, result.err

    out = ws.read_output()
    assert sorted(out["id"].to_list()) == INPUT_IDS
    assert out["status"].to_list() == ["ok"] * ROWS
    segments = Checkpoint(checkpoint_dir(ws.output)).segments()
    commits = pl.scan_parquet([str(s) for s in segments]).select(KEY).collect()
    assert commits.height == ROWS and commits[KEY].n_unique() == ROWS  # each row committed once

    server = sim.batch_ledger
    assert server is not None
    assert server.filenames_uploaded_twice() == []
    assert server.custom_ids_in_two_batches() == []
    assert all(b.status == "completed" for b in server.batches)
    intents = Ledger(checkpoint_dir(ws.output)).intents()
    assert len(intents) == ROWS // BATCH_ROWS
    assert Counter(b.metadata[METADATA_KEY] for b in server.batches) == {i.key: 1 for i in intents}
    assert sorted(u.filename for u in server.uploads) == sorted(i.filename for i in intents)
    assert all(i.collected_at is not None for i in intents)
    assert sum(i.collected["ok"] for i in intents) == ROWS  # each answer collected once
    held = Ledger(checkpoint_dir(ws.output)).rows_of(intents)
    assert sorted(held[ROW_KEY].to_list()) == INPUT_IDS


def test_a_file_sent_again_is_its_own_intent_and_a_kill_after_its_upload_adopts_its_own_batch(
    ws: Workspace,
) -> None:
    """Every line answered with a 5xx: the same rows go out again in a new file, attempt
    after attempt. Killed with the second file stored and its answer withheld, the rerun
    must find that file and create its batch, not take the first file's batch for it."""
    attempts, rows = 3, 10
    config = SimConfig(batch_delay_s=0.1, batch_line_faults={"server_error": 1.0})
    with start_in_thread(config) as sim:
        ws.write_input(reviews(rows))
        job = ws.job(
            sim.base_url,
            input={"id_column": "id"},
            limits={"max_attempts": attempts},
            endpoint={"kind": "batch", "batch_rows": BATCH_ROWS, "poll_s": 0.1},
        )
        reached = sim.hold("uploaded", after=1)
        with running(ws, job) as proc:
            wait_for(proc, "the second upload", reached.is_set)
            proc.kill()
            proc.wait()
        sim.release()

        result = ws.run("run", str(job), "-q")
        assert result.code == 0, result.err
        assert ws.read_output()["status"].to_list() == ["failed"] * rows

        server = sim.batch_ledger
        assert server is not None
        intents = Ledger(checkpoint_dir(ws.output)).intents()
        assert len(intents) == attempts  # one a try
        assert server.filenames_uploaded_twice() == []
        assert sorted(u.filename for u in server.uploads) == sorted(i.filename for i in intents)
        assert sorted(b.batch_id for b in server.batches) == sorted(i.batch_id for i in intents)
        assert Counter(b.metadata[METADATA_KEY] for b in server.batches) == {
            i.key: 1 for i in intents
        }
        sent = Counter(cid for b in server.batches for cid in b.custom_ids)
        assert set(sent.values()) == {attempts}  # each row sent once a try
