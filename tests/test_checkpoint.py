"""The checkpoint folder: atomic segments, last result wins, merges, spend, the lock."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchrun import checkpoint as checkpoint_module
from batchrun.checkpoint import FAILED_MARK, Checkpoint
from batchrun.columns import RowResult
from batchrun.errors import UserError


def result(key: str, fp: str = "f", status: str = "ok", cost: float = 0.01) -> RowResult:
    return RowResult(key, int(key.strip("k") or 0), fp, status, 1, time.time(), cost_usd=cost)


def test_last_result_wins_and_spend_counts_every_attempt(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp").open()
    cp.commit([result("k1", "a", "failed"), result("k2")])
    cp.commit([result("k1", "a", "ok")])
    cp.commit([result("k3", "b", "failed")])
    assert cp.index() == {"k1": "a", "k2": "f", "k3": FAILED_MARK + "b"}
    assert cp.spend() == pytest.approx(0.04)
    cp.close()


def test_merges_keep_order_rows_and_spend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "MERGE_NEW", 4)
    monkeypatch.setattr(checkpoint_module, "MERGE_ABOVE", 3)
    cp = Checkpoint(tmp_path / "cp").open()
    for i in range(10):
        cp.commit([result(f"k{i % 3}", fp=f"v{i}")])
        time.sleep(0.001)
    assert len(cp.segments()) < 10  # merged while running
    assert cp.index() == {"k0": "v9", "k1": "v7", "k2": "v8"}  # still the last of each
    assert cp.spend() == pytest.approx(0.10)
    cp.close()
    reopened = Checkpoint(tmp_path / "cp").open()
    assert len(reopened.segments()) == 1  # merged on close (more than MERGE_ABOVE)
    assert reopened.index() == {"k0": "v9", "k1": "v7", "k2": "v8"}
    reopened.commit([result("k1", fp="v10")])
    assert reopened.index()["k1"] == "v10"  # a new segment sorts after the merged one
    for segment in reopened.segments():
        pq.read_table(segment)
    reopened.close()


def test_a_kill_mid_merge_leaves_duplicates_that_change_nothing(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp").open()
    cp.commit([result("k1", fp="a")])
    cp.commit([result("k1", fp="b"), result("k2")])
    segments = cp.segments()
    # what a merge writes before it removes the merged files
    merged = segments[-1].with_name(segments[-1].name.replace(".parquet", ".m.parquet"))
    checkpoint_module.write_atomic_table(pq.read_table([str(s) for s in segments]), merged)
    assert cp.index() == {"k1": "b", "k2": "f"}
    assert cp.spend() == pytest.approx(0.03)
    cp.close()


def test_leftover_temporaries_are_removed_and_one_run_holds_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "cp"
    folder.mkdir()
    (folder / ".seg-000000000001.parquet.1.2.tmp").write_bytes(b"PAR1 torn")
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
    assert fresh.index() == {} and fresh.spend() == 0.0
    fresh.close()
