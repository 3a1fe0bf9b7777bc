"""Every path of a run over more rows than one input batch, one commit buffer, one output
batch and one row group, with segments merging as they come: the same rows and figures as
ever (each row once, in input order, the last result winning)."""

from __future__ import annotations

import polars as pl
import pytest

from batchrun.checkpoint import segments as checkpoint_module
from batchrun.checkpoint import walk as walk_module
from batchrun.checkpoint.folder import checkpoint_dir
from batchrun.core import sizes
from batchrun.sim import SimConfig, start_in_thread

from ..conftest import Workspace, latest_results, reviews

ROWS = 500


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sizes, "READ_ROWS", 37)
    monkeypatch.setattr(sizes, "COMMIT_ROWS", 23)
    monkeypatch.setattr(sizes, "OUTPUT_ROWS", 41)
    monkeypatch.setattr(sizes, "ROW_GROUP_ROWS", 16)
    monkeypatch.setattr(walk_module, "WINDOW", 29)
    monkeypatch.setattr(sizes, "SMALLEST", 10)


def asked(sim_requests: list) -> list[str]:  # type: ignore[type-arg]
    return [r.body["messages"][-1]["content"] for r in sim_requests if r.body]


def test_run_retry_failed_changed_request_and_early_stop_over_many_batches(
    ws: Workspace,
) -> None:
    frame = reviews(ROWS)
    ws.write_input(frame)
    faulty = SimConfig(faults={"content_filter": 0.1}, seed=4)
    with start_in_thread(faulty) as sim:
        job = ws.job(sim.base_url, input={"id_column": "id"})
        assert ws.run("run", str(job), "-q").code == 0
        first = len(sim.requests)
    out = ws.read_output()
    assert out["id"].to_list() == frame["id"].to_list()
    failed = out.filter(pl.col("status") == "failed")
    assert 20 < failed.height < 90 and set(failed["error"]) == {"content_refused"}
    assert first == ROWS
    assert len(checkpoint_module.current_segments(checkpoint_dir(ws.output))) < ROWS // 23

    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, input={"id_column": "id"})
        status = ws.run("status", str(job)).out
        assert f"failed   {failed.height}" in status and "pending  0" in status
        assert ws.run("run", str(job), "-q", "--retry-failed").code == 0
        assert sorted(asked(sim.requests)) == sorted(f"Review: {t}" for t in failed["text"])
    retried = ws.read_output()
    assert retried["id"].to_list() == frame["id"].to_list()
    assert set(retried["status"]) == {"ok"}
    kept = retried.filter(~pl.col("id").is_in(failed["id"].implode()))
    assert (
        kept["response_id"].to_list()
        == out.filter(pl.col("status") == "ok")["response_id"].to_list()
    )

    # the request changes: a run of the first 120 rows, then an early stop's output
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, input={"id_column": "id"}, request={"max_tokens": 9})
        assert ws.run("run", str(job), "-q", "--limit", "120").code == 0
        partial = ws.read_output()
        assert partial["id"].to_list() == frame["id"].to_list()[:120]
        assert not set(partial["response_id"]) & set(retried["response_id"])  # all new answers
        status = ws.run("status", str(job)).out
        assert "done     120" in status and "pending  380 (380 for a changed request)" in status
        estimate = ws.run("estimate", str(job)).out
        assert "120 done, 380 to send" in estimate
        assert ws.run("run", str(job), "-q").code == 0
        assert len(sim.requests) == ROWS  # the limited run's 120, then the other 380
    final = ws.read_output()
    assert final["id"].to_list() == frame["id"].to_list()
    assert final["response_id"].n_unique() == ROWS
    assert final.head(120)["response_id"].to_list() == partial["response_id"].to_list()
    # every committed result stays, superseded ones included: 500 + the retried + 500
    committed = pl.scan_parquet(checkpoint_module.current_segments(checkpoint_dir(ws.output)))
    assert committed.select(pl.len()).collect().item() == 2 * ROWS + failed.height
    assert len(latest_results(checkpoint_dir(ws.output))) == ROWS


def test_a_resume_sends_new_rows_and_changed_rows_once_each(ws: Workspace) -> None:
    """A resume's two feeds: rows that hold no result (inserted between committed ones) are
    sent without waiting on the check of the others; rows that hold one are counted as done
    or, edited since, sent again. Each row once, in input order, unchanged answers kept."""
    frame = reviews(ROWS)
    first_rows = frame.filter(pl.int_range(ROWS) % 5 != 0)  # every fifth row comes later
    ws.write_input(first_rows)
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, input={"id_column": "id"})
        assert ws.run("run", str(job), "-q").code == 0
    before = ws.read_output()
    edited = {f"r{i:04d}" for i in range(3, ROWS, 41) if i % 5}
    changed = frame.with_columns(
        pl.when(pl.col("id").is_in(list(edited)))
        .then(pl.col("text") + " (edited)")
        .otherwise(pl.col("text"))
        .alias("text")
    )
    ws.write_input(changed)
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, input={"id_column": "id"})
        result = ws.run("run", str(job), "-q")
        assert result.code == 0
        inserted = frame.filter(pl.int_range(ROWS) % 5 == 0)
        expected = [f"Review: {t}" for t in inserted["text"]]
        expected += [
            f"Review: {t}" for t in changed.filter(pl.col("id").is_in(list(edited)))["text"]
        ]
        assert sorted(asked(sim.requests)) == sorted(expected)
    assert f"{ROWS:,} rows: {ROWS:,} ok, 0 failed, 0 pending" in result.out
    after = ws.read_output()
    assert after["id"].to_list() == frame["id"].to_list()
    assert after["text"].to_list() == changed["text"].to_list()
    untouched = before.filter(~pl.col("id").is_in(list(edited)))
    kept = after.join(untouched.select("id", "response_id"), on="id", suffix="_before")
    assert kept.height == untouched.height
    assert kept["response_id"].to_list() == kept["response_id_before"].to_list()
    assert after["response_id"].n_unique() == ROWS


def test_without_an_id_rows_that_moved_are_asked_again_where_their_prompt_changed(
    ws: Workspace,
) -> None:
    """Without an id_column a row is its position: after rows are inserted and removed,
    each position whose prompt now differs is asked again, the others keep their answers."""
    frame = reviews(ROWS)
    ws.write_input(frame)
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url)
        assert ws.run("run", str(job), "-q").code == 0
    before = ws.read_output()
    moved = pl.concat(
        [
            frame.slice(0, 100),
            reviews(3).with_columns(pl.col("text") + " new"),
            frame.slice(100, 200),
            frame.slice(310),
        ]
    )  # 3 in, 10 out
    ws.write_input(moved)
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url)
        assert ws.run("run", str(job), "-q").code == 0
        asked_now = sorted(asked(sim.requests))
    after = ws.read_output()
    assert after["text"].to_list() == moved["text"].to_list()
    assert after["input_row"].to_list() == list(range(moved.height))
    changed = [
        f"Review: {t}"
        for i, t in enumerate(moved["text"])
        if i >= before.height or before["text"][i] != t
    ]
    assert asked_now == sorted(changed)
    same = [
        i for i in range(min(before.height, moved.height)) if before["text"][i] == moved["text"][i]
    ]
    assert (
        after["response_id"].gather(same).to_list() == before["response_id"].gather(same).to_list()
    )
