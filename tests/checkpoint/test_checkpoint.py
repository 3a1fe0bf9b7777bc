"""The checkpoint folder: atomic sorted segments, last result wins, tiered merges that never
count a commit twice, spend, the lock, the upgrade of old folders, and the walks."""

from __future__ import annotations

import random
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.checkpoint import walk as walk_module
from batchrun.checkpoint.folder import Checkpoint
from batchrun.checkpoint.segments import current_segments, segment_name, write_atomic_table
from batchrun.checkpoint.walk import FAILED_MARK, merge_segments
from batchrun.core import sizes
from batchrun.errors import UserError
from batchrun.protocol.result import CHECKPOINT_SCHEMA, RowResult

from ..conftest import latest_results, merge_all


def result(
    key: str, fp: str = "f", status: str = "ok", cost: float = 0.01, position: int | None = None
) -> RowResult:
    at = int(key.strip("k") or 0) if position is None else position
    return RowResult(key, at, fp, status, 1, time.time(), cost_usd=cost)


def finish_merges(cp: Checkpoint) -> None:
    """Stop the background merger, then do what it had left, here: a wait on the merger
    could not tell "done" from "between two merges"."""
    cp.stop_merging()
    while (due := cp.merger.due()) is not None:
        cp.merger.merge(due)


def test_last_result_wins_and_spend_counts_every_attempt(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp").open()
    cp.commit([result("k1", "a", "failed"), result("k2")])
    cp.commit([result("k1", "a", "ok")])
    cp.commit([result("k3", "b", "failed")])
    assert latest_results(cp.folder) == {"k1": "a", "k2": "f", "k3": FAILED_MARK + "b"}
    assert cp.spend() == pytest.approx(0.04)
    cp.close()


def test_a_commit_is_sorted_by_position(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp").open()
    cp.commit([result("k5"), result("k1"), result("k3")])
    [segment] = cp.segments()
    assert pq.read_table(segment).column("position").to_pylist() == [1, 3, 5]
    cp.close()


def test_merges_keep_the_last_result_every_row_and_spend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sizes, "SMALLEST", 1)
    monkeypatch.setattr(sizes, "ROW_GROUP_ROWS", 2)
    rng = random.Random(5)
    cp = Checkpoint(tmp_path / "cp").open()
    cp.start_merging()
    expected: dict[str, str] = {}
    for i in range(60):
        keys = rng.sample(range(12), 3)
        cp.commit([result(f"k{k}", fp=f"v{i}") for k in keys])
        expected.update({f"k{k}": f"v{i}" for k in keys})
    finish_merges(cp)
    assert len(cp.segments()) < 20  # merged while committing
    assert latest_results(cp.folder) == expected
    assert cp.spend() == pytest.approx(60 * 3 * 0.01)
    for segment in cp.segments():
        positions = pq.read_table(segment).column("position").to_pylist()
        assert positions == sorted(positions)
    cp.close()
    reopened = Checkpoint(tmp_path / "cp").open()
    reopened.commit([result("k1", fp="v99")])
    assert latest_results(reopened.folder)["k1"] == "v99"  # a new segment counts after
    merge_all(reopened)
    assert len(reopened.segments()) == 1
    assert latest_results(reopened.folder) == {**expected, "k1": "v99"}
    assert reopened.spend() == pytest.approx(181 * 0.01)
    reopened.close()


def test_a_kill_mid_merge_leaves_a_superseded_segment_that_nobody_reads(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp").open()
    cp.commit([result("k1", fp="a")])
    cp.commit([result("k1", fp="b"), result("k2")])
    old = cp.segments()
    # what a merge writes before it removes the merged files
    merged = cp.folder / segment_name(1, 2)
    write_atomic_table(pa.concat_tables([pq.read_table(s) for s in old]).take([0, 1, 2]), merged)
    assert current_segments(cp.folder) == [merged]
    assert latest_results(cp.folder) == {"k1": "b", "k2": "f"}
    assert cp.spend() == pytest.approx(0.03)  # not 0.06
    cp.close()
    Checkpoint(cp.folder).open().close()
    assert sorted(p.name for p in cp.folder.glob("seg-*")) == [merged.name]  # cleaned up


def test_closing_abandons_a_merge_and_leaves_the_folder_whole(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp").open()
    for i in range(3):
        cp.commit([result(f"k{i}")])
    segments = cp.segments()
    writer = pq.ParquetWriter(tmp_path / "x.parquet", CHECKPOINT_SCHEMA)
    with pytest.raises(walk_module.Stopped):
        merge_segments(segments, writer, stop=lambda: True)
    writer.close()
    assert cp.segments() == segments
    cp.close()


def test_leftover_temporaries_are_removed_and_one_run_holds_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "cp"
    folder.mkdir()
    (folder / ".seg-000000000001-000000000001.parquet.1.2.tmp").write_bytes(b"PAR1 torn")
    cp = Checkpoint(folder).open()
    assert not list(folder.glob("*.tmp"))
    with pytest.raises(UserError, match="Another batchrun run"):
        Checkpoint(folder).open()
    cp.close()
    Checkpoint(folder).open().close()


def test_fresh_forgets_results(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp").open()
    cp.commit([result("k1")])
    cp.close()
    fresh = Checkpoint(tmp_path / "cp").open(fresh=True)
    assert latest_results(fresh.folder) == {} and fresh.spend() == 0.0
    fresh.close()


def test_a_folder_of_the_old_layout_is_upgraded_once(tmp_path: Path) -> None:
    folder = tmp_path / "cp"
    folder.mkdir()

    def old(name: str, rows: list[RowResult]) -> None:
        table = pa.Table.from_pylist([r.as_record() for r in rows], schema=CHECKPOINT_SCHEMA)
        write_atomic_table(table, folder / name)

    first, second = result("k2", fp="a"), result("k1", fp="a", status="failed")
    old("seg-000000000001.parquet", [first, second])
    old("seg-000000000002.parquet", [result("k1", fp="b")])
    # a merge of 1 and 2 cut short: 1 and 2 are still there, and so is what they merged into
    old("seg-000000000002.m.parquet", [first, second])
    old("seg-000000000003.parquet", [result("k2", fp="c")])
    cp = Checkpoint(folder).open()
    assert [p.name for p in cp.segments()] == [segment_name(1, 3)]
    assert latest_results(folder) == {"k1": "b", "k2": "c"}
    assert cp.spend() == pytest.approx(0.04)
    cp.commit([result("k3")])
    assert cp.segments()[-1].name == segment_name(4, 4)
    cp.close()


def test_the_walk_gives_each_rows_latest_result_window_by_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sizes, "ROW_GROUP_ROWS", 3)
    rng = random.Random(7)
    cp = Checkpoint(tmp_path / "cp").open()
    expected: dict[int, str] = {}
    for i in range(40):
        positions = rng.sample(range(-3, 50), 5)
        cp.commit([result(f"k{p}", fp=f"v{i}", position=p) for p in positions])
        expected.update({p: f"v{i}" for p in positions})
        if i % 10 == 9:
            merge_all(cp)
    with cp.walk(["fingerprint"]) as walk:
        seen = {}
        for end in (0, 5, 6, 20, 33, 100):
            frame = walk.until(end)
            assert frame["position"].to_list() == sorted(frame["position"].to_list())
            assert frame["position"].is_unique().all()
            if end == 0:  # what stands below the input's first position is left out
                continue
            seen.update(zip(frame["position"], frame["fingerprint"], strict=True))
    assert seen == {p: fp for p, fp in expected.items() if p >= 0}
    with cp.walk(["fingerprint"]) as walk:
        frames = list(walk.windows(size=7))
    assert len(frames) > 3
    every = pl.concat(frames)
    assert dict(zip(every["position"], every["fingerprint"], strict=True)) == expected
    with cp.positions() as positions:  # the positions alone, as a run's first feed takes them
        pieces = [positions.until(end) for end in (0, 5, 6, 20, 33, 100)]
    assert set(pieces[0]) == {p for p in expected if p < 0}
    assert all(
        set(piece) <= set(range(a, b))
        for piece, a, b in zip(pieces[1:], (0, 5, 6, 20, 33), (5, 6, 20, 33, 100), strict=True)
    )
    assert {int(p) for piece in pieces for p in piece} == set(expected)
    cp.close()


def test_merges_take_fanout_neighbours_of_one_class_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sizes, "SMALLEST", 1)
    cp = Checkpoint(tmp_path / "cp").open()  # no merger: merger.due is asked directly
    for i in range(3):
        cp.commit([result(f"k{i}")])
    cp.commit([result(f"k{10 + i}") for i in range(40)])  # a bigger class in between
    for i in range(9):
        cp.commit([result(f"k{100 + i}")])
    names = [p.name for p in cp.segments()]
    due = cp.merger.due()
    assert due is not None and [p.name for p in due] == names[4:8]  # the oldest four of nine
    cp.merger.merge(due)
    due = cp.merger.due()
    assert due is not None and [p.name for p in due] == names[8:12]
    cp.close()
