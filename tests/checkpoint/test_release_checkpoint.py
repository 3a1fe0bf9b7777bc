"""A checkpoint written by the release before issue 23's restructuring still reads the same.

`tests/data/release-0.1/` holds a job, its input, its output and its checkpoint folder as
batchrun wrote them at that release (see `tests/data/make_release_checkpoint.py`, which made
them): a merged tier (`seg-…1-…4`) holding local commits, a realignment, an `import-batch`
commit and `--retry-failed` results superseding failures, then two commits of Ray workers,
with the notes a run leaves. `expected.json` holds what `status --json` and
`report --json` said of it then. Today's batchrun must give the same figures, and a run of
the job must ask nothing again and write every row once, with the committed answers.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.sim import SimServer

from ..conftest import Workspace

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "release-0.1"
SEGMENTS = [
    "seg-000000000001-000000000004.parquet",  # the merged tier
    "seg-000000000005-000000000005.parquet",  # a Ray worker's commit
    "seg-000000000006-000000000006.parquet",  # the other worker's
]
NOTES = ["aligned.json", "endpoints.json", "gateway.json", "lock"]
# The only figure that depends on the run: where the output is (recorded relative to the
# job's folder). Nothing else is left out: every other figure comes from what is on disk.
RUN_DEPENDENT = {("report", "output")}


@pytest.fixture
def job(ws: Workspace) -> Path:
    """A copy of the fixture in the test's folder; its job file."""
    shutil.copytree(FIXTURE, ws.root / "release")
    return ws.root / "release" / "job.toml"


def expected() -> dict[str, Any]:
    figures: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text("utf-8"))
    return figures


def figures(ws: Workspace, command: str, job: Path) -> dict[str, Any]:
    result = ws.run(command, str(job), "--json")
    assert result.code == 0, result.err
    assert "warning" not in result.err, result.err  # no segment skipped as damaged
    found: dict[str, Any] = json.loads(result.out)
    # Keys added since the release, empty for its checkpoint (it ran no batch lane).
    for name, empty in ADDED_SINCE[command].items():
        assert found.pop(name) == empty
    return found


# What `status --json` and `report --json` hold that the release's did not, and their value
# for a job that never used the batch lane (issue 24).
ADDED_SINCE: dict[str, dict[str, Any]] = {"status": {"batches": []}, "report": {"batch_lane": None}}


def test_the_fixture_holds_what_it_is_meant_to() -> None:
    folder = FIXTURE / "result" / "answers.parquet.checkpoint"
    assert sorted(p.name for p in folder.iterdir()) == sorted(SEGMENTS + NOTES)
    assert sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file()) < 100_000
    assert '"sim"' in (FIXTURE / "job.toml").read_text("utf-8")


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_and_report_give_the_release_s_figures(
    ws: Workspace, job: Path, command: str
) -> None:
    found = figures(ws, command, job)
    wanted = expected()[command]
    for section, name in RUN_DEPENDENT:
        if section == command:
            where = found.pop(name)
            assert Path(where).resolve() == (job.parent / wanted.pop(name)).resolve()
    assert found == wanted


def test_a_run_asks_nothing_again_and_writes_every_row_once(
    ws: Workspace, job: Path, sim: SimServer
) -> None:
    # Both endpoints at a simulator that counts what it is sent.
    text = job.read_text("utf-8")
    pointed = f'base_url = "{sim.base_url}"\napi_key_env = "BATCHRUN_TEST_KEY"'
    text, count = re.subn(r'^base_url = "sim"$', pointed, text, flags=re.M)
    assert count == 2
    job.write_text(text, "utf-8")
    output = job.parent / "result" / "answers.parquet"
    output.unlink()  # written again from the checkpoint alone

    result = ws.run("run", str(job), "--quiet")
    assert result.code == 0, result.err
    assert sim.requests == []  # nothing asked again
    written = pl.read_parquet(output)
    assert written["id"].n_unique() == written.height == 30
    released = pl.read_parquet(FIXTURE / "result" / "answers.parquet")
    assert written.sort("id").equals(released.sort("id"))  # the committed answers, as then
    assert figures(ws, "status", job) == expected()["status"]
