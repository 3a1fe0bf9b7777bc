"""Rows that move in the input between a run and its resume keep their answers.

With an `id_column`, a row is its id wherever it stands: reordering, inserting or removing
rows re-asks nothing already answered, and a removed row that comes back finds its answer.
Without one, a row is its position, and the row now standing there is asked if its request
differs.
"""

from __future__ import annotations

import polars as pl
import pytest

from batchrun.checkpoint.folder import checkpoint_dir
from batchrun.core import sizes
from batchrun.rows import anchor as anchor_module
from batchrun.sim import SimServer

from ..conftest import Workspace, latest_results, reviews


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several input batches, segments, row groups and realignment parts."""
    monkeypatch.setattr(sizes, "READ_ROWS", 17)
    monkeypatch.setattr(sizes, "COMMIT_ROWS", 11)
    monkeypatch.setattr(sizes, "CHECK_ROWS", 13)
    monkeypatch.setattr(sizes, "ANCHOR_PART_ROWS", 25)
    monkeypatch.setattr(sizes, "ROW_GROUP_ROWS", 7)
    monkeypatch.setattr(sizes, "SMALLEST", 5)


def sent(sim: SimServer) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in sim.requests if r.body]


def check_output(ws: Workspace, frame: pl.DataFrame) -> pl.DataFrame:
    out = ws.read_output()
    assert out["id"].to_list() == frame["id"].to_list()  # input order, each row once
    assert set(out["status"]) == {"ok"}
    assert out["response_id"].n_unique() == out.height
    return out


def test_reordered_inserted_and_removed_rows_are_not_asked_again(
    ws: Workspace, sim: SimServer
) -> None:
    frame = reviews(90)
    ws.write_input(frame)
    job = ws.job(sim.base_url, input={"id_column": "id"})
    assert ws.run("run", str(job), "-q", "--limit", "60").code == 0
    first = {r["id"]: r["response_id"] for r in ws.read_output().iter_rows(named=True)}
    asked = len(sim.requests)

    # shuffle, drop ten answered rows, add five new ones in the middle
    moved = frame.sample(fraction=1.0, shuffle=True, seed=3)
    moved = moved.filter(~pl.col("id").is_in([f"r{i:04d}" for i in range(10, 20)]))
    new = pl.DataFrame(
        {"id": [f"n{i}" for i in range(5)], "text": [f"brand new {i}" for i in range(5)]}
    )
    moved = pl.concat([moved.head(40), new, moved.slice(40)])
    ws.write_input(moved)
    result = ws.run("run", str(job), "-q")
    assert result.code == 0, result.err
    out = check_output(ws, moved)
    # only rows never answered were sent: the 30 beyond the first run's limit, and the new
    expected = {f"Review: {t}" for t in moved.filter(~pl.col("id").is_in(list(first)))["text"]}
    assert set(sent(sim)[asked:]) == expected and len(sent(sim)) - asked == 35
    for row in out.iter_rows(named=True):
        if row["id"] in first:
            assert row["response_id"] == first[row["id"]]  # the same answer, not a new one

    # a removed row comes back: its answer is found where it was kept
    asked = len(sim.requests)
    ws.write_input(frame)
    assert ws.run("run", str(job), "-q").code == 0
    assert len(sim.requests) == asked
    back = check_output(ws, frame)
    assert back.filter(pl.col("id") == "r0012")["response_id"].item() == first["r0012"]
    # the removed rows' results were kept all along (their spend with them)
    assert len(latest_results(checkpoint_dir(ws.output))) == 95


def test_status_sees_moved_rows_as_done(ws: Workspace, sim: SimServer) -> None:
    frame = reviews(40)
    ws.write_input(frame)
    job = ws.job(sim.base_url, input={"id_column": "id"})
    assert ws.run("run", str(job), "-q").code == 0
    ws.write_input(frame.reverse())
    status = ws.run("status", str(job))
    assert status.code == 0
    assert "done     40" in status.out and "pending  0" in status.out


def test_without_an_id_a_row_is_its_position(ws: Workspace, sim: SimServer) -> None:
    frame = reviews(30).select("text")
    ws.write_input(frame)
    job = ws.job(sim.base_url)
    assert ws.run("run", str(job), "-q").code == 0
    asked = len(sim.requests)
    inserted = pl.concat([frame.head(10), pl.DataFrame({"text": ["a new row"]}), frame.slice(10)])
    ws.write_input(inserted)
    assert ws.run("run", str(job), "-q").code == 0
    out = ws.read_output()
    assert out["text"].to_list() == inserted["text"].to_list()
    assert out["input_row"].to_list() == list(range(31))
    # rows 10 to 30 now hold other prompts than when they ran: asked again
    assert len(sim.requests) - asked == 21


def test_the_check_is_skipped_while_the_input_files_stay_the_same(
    ws: Workspace, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = reviews(40)
    ws.write_input(frame)
    job = ws.job(sim.base_url, input={"id_column": "id"})
    assert ws.run("run", str(job), "-q", "--limit", "20").code == 0
    checks: list[int] = []
    real = anchor_module.aligned

    def counted(*args: object, **kwargs: object) -> bool:
        checks.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(anchor_module, "aligned", counted)
    assert ws.run("run", str(job), "-q", "--limit", "30").code == 0
    assert ws.run("run", str(job), "-q").code == 0
    assert len(checks) == 1  # the second run stamped the input; the third found it the same
    ws.write_input(frame.reverse())
    assert ws.run("status", str(job)).code == 0
    assert len(checks) == 2 and "done     40" in ws.run("status", str(job)).out
    assert len(checks) == 2
