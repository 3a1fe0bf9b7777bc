"""The pieces a Ray worker's shard stands on, without Ray: reading a range of the input,
walking the checkpoint from a position, commits numbered by someone else, and the desk's
leases of start times."""

from __future__ import annotations

import itertools
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from batchrun.checkpoint.folder import Checkpoint
from batchrun.checkpoint.segments import current_segments
from batchrun.checkpoint.walk import Positions, Walk
from batchrun.core.sizes import FANOUT
from batchrun.protocol.result import RowResult
from batchrun.ray.desk import Desk
from batchrun.rows.source import POSITION, ROW_KEY, open_source


def result(position: int, fingerprint: str = "f") -> RowResult:
    return RowResult(
        row_key=str(position),
        position=position,
        fingerprint=fingerprint,
        status="ok",
        attempts=1,
        finished_at=1.0,
    )


@pytest.mark.parametrize("kind", ["parquet", "csv", "gb18030 csv", "xlsx"])
@pytest.mark.parametrize(("start", "end"), [(0, 95), (7, 40), (30, 31), (33, 95), (90, None)])
def test_a_shard_reads_exactly_its_range_of_the_input(
    tmp_path: Path, kind: str, start: int, end: int | None
) -> None:
    frame = pl.DataFrame({"id": [f"r{i}" for i in range(95)], "text": [f"t{i}" for i in range(95)]})
    if kind == "parquet":  # two files of several row groups each
        pq.write_table(frame.head(50).to_arrow(), tmp_path / "a.parquet", row_group_size=16)
        pq.write_table(frame.tail(45).to_arrow(), tmp_path / "b.parquet", row_group_size=16)
        source = open_source(str(tmp_path / "*.parquet"), "id")
    elif kind == "csv":
        frame.write_csv(tmp_path / "in.csv")
        source = open_source(str(tmp_path / "in.csv"), "id")
    elif kind == "gb18030 csv":  # two files, read by pyarrow in pieces of ~10 rows
        (tmp_path / "a.csv").write_bytes(frame.head(50).write_csv().encode("gb18030"))
        (tmp_path / "b.csv").write_bytes(frame.tail(45).write_csv().encode("gb18030"))
        source = open_source(str(tmp_path / "*.csv"), "id", encoding="gb18030")
    else:
        frame.write_excel(tmp_path / "in.xlsx")
        source = open_source(str(tmp_path / "in.xlsx"), "id")
    got = pl.concat(list(source.batches(["text"], 10, start=start, end=end)))
    stop = 95 if end is None else end
    assert got[POSITION].to_list() == list(range(start, stop))
    assert got[ROW_KEY].to_list() == [f"r{i}" for i in range(start, stop)]
    assert got["text"].to_list() == [f"t{i}" for i in range(start, stop)]
    limited = source.batches(["text"], 10, 60, start=start, end=end)
    assert [p for b in limited for p in b[POSITION]] == list(range(start, min(stop, 60)))


def test_a_walk_from_a_position_gives_what_a_walk_from_the_start_gives_there(
    tmp_path: Path,
) -> None:
    checkpoint = Checkpoint(tmp_path / "ck").open()
    try:
        checkpoint.commit(result(p) for p in range(0, 30_000, 3))  # several row groups
        checkpoint.commit(result(p, "g") for p in range(1, 30_000, 7))
        segments = checkpoint.segments()
        for start in (0, 1, 8191, 12_000, 29_999, 40_000):
            with Walk(segments, ["fingerprint"]) as whole, Walk(segments, ["fingerprint"]) as part:
                whole.until(start)
                part.seek(start)
                assert part.until(start + 5000).equals(whole.until(start + 5000))
            with Positions(segments) as whole_p, Positions(segments) as part_p:
                whole_p.until(start)
                part_p.seek(start)
                assert (part_p.until(None) == whole_p.until(None)).all()
    finally:
        checkpoint.close()


def test_merges_never_span_a_commit_number_whose_segment_is_not_in_place(
    tmp_path: Path,
) -> None:
    """Workers take commit numbers from the desk and write their segments when they can: a
    merge over a number still being written would supersede that segment when it lands."""
    holder = Checkpoint(tmp_path / "ck").open()
    numbers = iter([1, 2, 4, 5, 6, 7, 8])  # 3 is given to a worker still writing it
    writer = Checkpoint(tmp_path / "ck").attach(lambda: next(numbers))
    for i in range(7):
        writer.commit([result(i)])
    try:
        due = holder.merger.due()
        assert (
            due is not None
            and [p.name for p in due]
            == [f"seg-{n:012d}-{n:012d}.parquet" for n in (4, 5, 6, 7)][:FANOUT]
        )
        holder.merger.merge(due)
        late = Checkpoint(tmp_path / "ck").attach(lambda: 3)
        late.commit([result(99)])
        names = [p.name for p in current_segments(tmp_path / "ck")]
        assert "seg-000000000003-000000000003.parquet" in names  # not superseded
        with holder.walk() as walk:
            rows = pl.concat(list(walk.windows()))
        assert sorted(rows["position"].to_list()) == [*range(7), 99]
    finally:
        holder.close()


def test_the_desk_leases_starts_at_the_cluster_s_pace_whoever_asks() -> None:
    now = [1000.0]
    desk = Desk({"e": (600.0, None)}, clock=lambda: now[0])  # 10 a second
    starts: list[float] = []
    for worker in ["a", "b", "a", "c"] * 5:
        got, _ = desk.lease("e", worker, 8)
        assert 1 <= len(got) <= 8
        starts += got
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1 - 1e-9  # one interval apart, across workers and leases
    # Three workers share the pace: a lease is about a third of half a second's starts.
    assert max(len(desk.lease("e", w, 100)[0]) for w in "abc") <= 2
    # A 429 pauses every lease until the cool-down ends.
    until = desk.cool_down("e", 5.0, now[0])
    got, paused = desk.lease("e", "a", 4)
    assert paused == until and min(got) >= until


def test_the_desk_never_grants_more_money_than_is_left() -> None:
    desk = Desk({"e": (600.0, None)}, budget_usd=1.0, spent=0.25)
    assert desk.allow(0.5) == 0.5
    assert desk.allow(0.5) == 0.25
    assert desk.allow(0.1) == 0.0
    desk.give_back(0.05)
    assert desk.allow(1.0) == pytest.approx(0.05)


def test_stops_and_commit_numbers_are_one_for_the_cluster() -> None:
    desk = Desk({"e": (600.0, None)}, next_commit=41)
    assert [desk.commit_number() for _ in range(3)] == [41, 42, 43]
    assert desk.halt("BadKey", "first") == ("BadKey", "first")
    assert desk.halt("BudgetReached", "second") == ("BadKey", "first")
    assert desk.sync(0, "x", {}).stop == ("BadKey", "first")
    assert desk.lease("e", "a", 4)[0] == []  # no start after a stop


def test_a_storm_the_run_ends_in_still_gives_what_got_through() -> None:
    now = [1000.0]
    desk = Desk({"e": (600.0, None)}, clock=lambda: now[0])
    starts: list[float] = []
    while len(starts) < 20:  # two seconds of starts, taken as they come due
        got, _ = desk.lease("e", "a", 10)
        starts += got
        now[0] = max(now[0], got[-1])
    desk.lease("e", "a", 1, successes=starts)  # all of them answered
    desk.cool_down("e", 2.0, now[0])
    assert desk.totals()["endpoints"]["e"]["allowed_rps"] is None
    desk.settle()  # the run ended inside the pause
    assert desk.totals()["endpoints"]["e"]["allowed_rps"] is not None
