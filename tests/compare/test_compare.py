"""`batchrun compare` through the command line: the join, the figures, the disagreements, the
McNemar test, the --out file, and every error a user can cause."""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from batchrun.sim import SimServer

from ..conftest import Workspace, reviews

N = 100
IDS = [f"q{i:03d}" for i in range(N)]
# Who is right where (the gold answer is "yes" everywhere): both right on 70 rows, A alone on
# 10 (b), B alone on 2 (c), both wrong on 18; on one of those they are wrong differently.
A_RIGHT = set(range(80))
B_RIGHT = set(range(70)) | {80, 81}
DIFFERENTLY_WRONG = 82
DISAGREEING = [*range(70, 83)]  # in A's order
P_10_2 = 0.03857421875  # 2 · 79 / 4096


def output(
    ids: Sequence[Any],
    answers: Sequence[str | None],
    *,
    scores: Sequence[float | None] | None = None,
    parsed: bool = True,
    **columns: list[Any],
) -> pl.DataFrame:
    """An output table as `batchrun run` writes it, with the columns compare reads."""
    n = len(ids)
    failed = [a is None for a in answers]
    frame: dict[str, Any] = {
        "id": list(ids),
        "response": [None if a is None else f"The answer is: {a}." for a in answers],
        "status": ["failed" if f else "ok" for f in failed],
        "error": ["server_error" if f else None for f in failed],
        "prompt_tokens": [10] * n,
        "completion_tokens": [2] * n,
        "total_tokens": [12] * n,
        "cost_usd": [0.001] * n,
        "latency_s": [0.5] * n,
        "response_model": ["gpt-4o-mini"] * n,
    }
    if parsed:
        frame["parsed"] = list(answers)
    if scores is not None:
        frame["score"] = pl.Series(list(scores), dtype=pl.Float64)
    frame.update(columns)
    return pl.DataFrame(frame)


def write(frame: pl.DataFrame, path: Path, **metadata: Any) -> Path:
    """Write like batchrun's sink does: the metadata as JSON under the key `batchrun`."""
    frame.write_parquet(path, metadata={"batchrun": json.dumps(metadata)} if metadata else None)
    return path


def scored_pair(ws: Workspace) -> tuple[Path, Path]:
    """Two scored runs over the same 100 questions with known b = 10 and c = 2; B's rows are
    in another order."""

    def side(right: set[int], wrong_answer_82: str) -> pl.DataFrame:
        answers = ["yes" if i in right else "no" for i in range(N)]
        answers[DIFFERENTLY_WRONG] = wrong_answer_82
        return output(IDS, answers, scores=[1.0 if i in right else 0.0 for i in range(N)])

    a = side(A_RIGHT, "no")
    b = side(B_RIGHT, "maybe").sample(fraction=1.0, shuffle=True, seed=7)
    meta = {"id_column": "id", "job": "qa"}
    return (
        write(a, ws.root / "a.parquet", **meta, model="model-a"),
        write(b, ws.root / "b.parquet", **meta, model="model-b"),
    )


def compare_json(ws: Workspace, *argv: str) -> dict[str, Any]:
    result = ws.run("compare", *argv, "--json")
    assert result.code == 0, result.err
    parsed: dict[str, Any] = json.loads(result.out)
    return parsed


def test_scored_runs_figures_test_and_disagreements(ws: Workspace) -> None:
    a, b = scored_pair(ws)
    report = compare_json(ws, str(a), str(b))
    assert report["join"] == {"column": "id", "from": "metadata"}
    assert report["answer_column"] == "parsed"
    assert report["rows"] == {"both": N, "only_a": 0, "only_b": 0}
    assert (report["a"]["model"], report["b"]["model"]) == ("model-a", "model-b")
    assert (
        report["a"]["accuracy"]["accuracy"] == 0.80 and report["b"]["accuracy"]["accuracy"] == 0.72
    )
    assert report["a"]["accuracy"]["scored"] == N
    assert report["a"]["accuracy"]["low"] < 0.80 < report["a"]["accuracy"]["high"]
    assert report["difference"]["accuracy"] == pytest.approx(-0.08)
    paired = report["paired"]
    assert (paired["both_right"], paired["b"], paired["c"], paired["both_wrong"]) == (70, 10, 2, 18)
    assert paired["difference"] == pytest.approx(-0.08)
    assert paired["low"] < -0.08 < paired["high"] < 0
    assert paired["p_value"] == pytest.approx(P_10_2, rel=1e-12) and paired["significant"]
    disagreements = report["disagreements"]
    assert disagreements["rows"] == len(DISAGREEING)
    assert (disagreements["answers_differ"], disagreements["scores_differ"]) == (13, 12)
    sample = disagreements["sample"]
    assert [row["id"] for row in sample] == [IDS[i] for i in DISAGREEING[:10]]
    assert sample[0] == {
        "id": "q070",
        "answer_a": "yes",
        "answer_b": "no",
        "score_a": 1.0,
        "score_b": 0.0,
        "status_a": "ok",
        "status_b": "ok",
    }


def test_scored_runs_in_the_terminal(ws: Workspace) -> None:
    a, b = scored_pair(ws)
    result = ws.run("compare", str(a), str(b))
    assert result.code == 0, result.err
    text = result.out
    assert "job qa, model model-a, 100 rows" in text
    assert "joined on 'id' (from the runs' metadata); answers from 'parsed'" in text
    assert "A is more accurate than B by 8.0 points on the 100 rows scored in both" in text
    assert "A right and B wrong on 10 rows, A wrong and B right on 2" in text
    assert "McNemar exact p = 0.0386, unlikely to be chance at the 5% level" in text
    assert "80.0%" in text and "72.0%" in text and "-8.0 pts" in text
    assert "Disagreements: 13 rows (answers differ in 13, scores in 12)" in text
    assert "the first 10 in A's order" in text
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("q070"))
    assert [line.split()[0] for line in lines[first : first + 10]] == IDS[70:80]
    assert "q080" not in text  # beyond the sample


@pytest.mark.parametrize("name", ["disagreements.parquet", "disagreements.csv"])
def test_out_holds_every_disagreeing_row(ws: Workspace, name: str) -> None:
    a, b = scored_pair(ws)
    out = ws.root / "sub" / name
    result = ws.run("compare", str(a), str(b), "--out", str(out))
    assert result.code == 0, result.err
    assert f"every disagreeing row (13) written to {out}" in result.out
    rows = pl.read_csv(out) if name.endswith(".csv") else pl.read_parquet(out)
    assert rows.columns == [
        "id",
        "answer_a",
        "answer_b",
        "score_a",
        "score_b",
        "status_a",
        "status_b",
    ]
    assert rows["id"].to_list() == [IDS[i] for i in DISAGREEING]
    last = rows.row(-1, named=True)
    assert (last["answer_a"], last["answer_b"], last["score_a"], last["score_b"]) == (
        "no",
        "maybe",
        0.0,
        0.0,
    )
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_rows_only_in_one_file_are_counted_and_left_out(ws: Workspace) -> None:
    a_ids, b_ids = IDS[:90], IDS[5:]
    random.Random(3).shuffle(b_ids)
    a_answers: list[str | None] = ["yes"] * 90
    a_answers[10] = None  # a failed row
    a = output(a_ids, a_answers, cost_usd=[None if i < 3 else 0.5 for i in range(90)])
    b = output(b_ids, ["no" if i == "q050" else "yes" for i in b_ids])
    report = compare_json(
        ws, str(write(a, ws.root / "a.parquet")), str(write(b, ws.root / "b.parquet")), "--id", "id"
    )
    assert report["join"] == {"column": "id", "from": "--id"}
    assert report["rows"] == {"both": 85, "only_a": 5, "only_b": 10}
    assert (report["a"]["rows"], report["b"]["rows"]) == (90, 95)
    assert (report["a"]["ok"], report["a"]["failed"]) == (84, 1)
    assert (report["b"]["ok"], report["b"]["failed"]) == (85, 0)
    assert report["difference"]["failed"] == -1
    # Costs of the shared rows only: A's rows 0-4 are not in B, so none of its nulls count.
    assert report["a"]["cost_usd"] == pytest.approx(85 * 0.5) and report["a"]["no_cost"] == 0
    assert report["b"]["cost_usd"] == pytest.approx(85 * 0.001)
    assert report["a"]["tokens"] == {"prompt": 850, "completion": 170, "total": 1020}
    assert report["a"]["latency_s"] == {"mean": 0.5, "p50": 0.5, "p95": 0.5}
    assert report["paired"] is None and report["a"]["accuracy"] is None
    ids = [row["id"] for row in report["disagreements"]["sample"]]
    assert ids == ["q010", "q050"]  # the failed row, then the different answer, in A's order
    assert report["disagreements"]["sample"][0]["answer_a"] is None


def test_costs_without_a_price_are_counted(ws: Workspace) -> None:
    a = output(IDS, ["yes"] * N, cost_usd=[None] * 30 + [0.25] * 70)
    b = output(IDS, ["yes"] * N)
    a_path, b_path = write(a, ws.root / "a.parquet"), write(b, ws.root / "b.parquet")
    report = compare_json(ws, str(a_path), str(b_path))
    assert (report["a"]["cost_usd"], report["a"]["no_cost"]) == (17.5, 30)
    assert report["difference"]["cost_usd"] == pytest.approx(0.1 - 17.5)
    text = ws.run("compare", str(a_path), str(b_path)).out
    assert "rows without cost" in text
    assert "No disagreements: the 100 rows in both have the same answers and scores." in text


def test_metadata_id_column_is_honoured(ws: Workspace) -> None:
    keys = [f"k{i}" for i in range(N)]
    a = output(IDS, ["yes"] * N, key=keys)
    b = output(IDS, ["yes"] * N, key=keys)
    # Rows in another order; the `id` column is misleading (reversed), the `key` column is right.
    b = b.with_columns(pl.Series("id", IDS[::-1]))[::-1]
    b = b.with_columns(
        pl.when(pl.col("key") == "k7").then(pl.lit("no")).otherwise("parsed").alias("parsed")
    )
    a_path = write(a, ws.root / "a.parquet", id_column="key")
    b_path = write(b, ws.root / "b.parquet", id_column="key")
    report = compare_json(ws, str(a_path), str(b_path))
    assert report["join"] == {"column": "key", "from": "metadata"}
    assert report["disagreements"]["rows"] == 1
    assert report["disagreements"]["sample"][0]["id"] == "k7"


def test_a_file_without_metadata_goes_along_with_the_other(ws: Workspace) -> None:
    a = output(IDS, ["yes"] * N)
    b = output(IDS[::-1], ["yes"] * N)
    a_path = write(a, ws.root / "a.parquet", id_column="id")
    b_path = write(b, ws.root / "b.parquet")
    report = compare_json(ws, str(a_path), str(b_path))
    assert report["join"] == {"column": "id", "from": "metadata"}
    assert report["disagreements"]["rows"] == 0


def test_runs_keyed_differently_need_id(ws: Workspace) -> None:
    a = output(IDS, ["yes"] * N, key=IDS)
    a_path = write(a, ws.root / "a.parquet", id_column="id")
    b_path = write(a, ws.root / "b.parquet", id_column="key")
    result = ws.run("compare", str(a_path), str(b_path))
    assert result.code == 2
    assert "identify rows differently" in result.err and "pass --id COLUMN" in result.err
    assert ws.run("compare", str(a_path), str(b_path), "--id", "key").code == 0


def test_ids_of_different_types_are_matched_as_text(ws: Workspace) -> None:
    a = output(list(range(N)), ["yes"] * N)
    b = output([str(i) for i in range(N)][::-1], ["yes"] * N)
    report = compare_json(
        ws, str(write(a, ws.root / "a.parquet")), str(write(b, ws.root / "b.parquet")), "--id", "id"
    )
    assert report["rows"]["both"] == N


def test_without_ids_rows_are_matched_by_position(ws: Workspace) -> None:
    answers = ["yes"] * N
    other = ["no" if i in (3, 40) else "yes" for i in range(N)]
    a = output(IDS, answers, parsed=False)
    b = output(IDS, other, parsed=False, response_model=["gpt-4.1"] * N)
    a_path, b_path = write(a, ws.root / "a.parquet"), write(b, ws.root / "b.parquet")
    out = ws.root / "d.parquet"
    report = compare_json(ws, str(a_path), str(b_path), "--out", str(out))
    assert report["join"] == {"column": None, "from": "position"}
    assert report["answer_column"] == "response"
    assert (report["a"]["model"], report["b"]["model"]) == ("gpt-4o-mini", "gpt-4.1")
    assert [row["id"] for row in report["disagreements"]["sample"]] == [3, 40]
    assert pl.read_parquet(out)["position"].to_list() == [3, 40]
    result = ws.run("compare", str(a_path), str(b_path))
    assert "matched by position (no id column)" in result.out
    assert "Accuracy: not compared (a score column is needed in both files)." in result.out


def test_an_explicit_null_id_column_in_metadata_means_position(ws: Workspace) -> None:
    a = output(IDS, ["yes"] * N)
    a_path = write(a, ws.root / "a.parquet", id_column=None, job="x")
    b_path = write(a, ws.root / "b.parquet", id_column=None, job="y")
    report = compare_json(ws, str(a_path), str(b_path))
    assert report["join"]["from"] == "position"
    assert (report["a"]["job"], report["b"]["job"]) == ("x", "y")


def test_equal_accuracy_is_not_distinguishable_from_chance(ws: Workspace) -> None:
    def side(wrong: set[int]) -> pl.DataFrame:
        answers = ["no" if i in wrong else "yes" for i in range(N)]
        return output(IDS, answers, scores=[0.0 if i in wrong else 1.0 for i in range(N)])

    a_path = write(side({1, 2, 3}), ws.root / "a.parquet")
    b_path = write(side({4, 5, 6}), ws.root / "b.parquet")
    result = ws.run("compare", str(a_path), str(b_path))
    assert result.code == 0, result.err
    assert "A and B are equally accurate on the 100 rows scored in both" in result.out
    assert "McNemar exact p = 1.00, not distinguishable from chance" in result.out


def test_rows_scored_in_one_file_only_stay_out_of_the_test(ws: Workspace) -> None:
    scores_a: list[float | None] = [1.0] * N
    scores_b: list[float | None] = [None] * 10 + [1.0] * (N - 10)
    a_path = write(output(IDS, ["yes"] * N, scores=scores_a), ws.root / "a.parquet")
    b_path = write(output(IDS, ["yes"] * N, scores=scores_b), ws.root / "b.parquet")
    report = compare_json(ws, str(a_path), str(b_path))
    assert report["paired"]["rows"] == N - 10
    assert report["b"]["accuracy"]["scored"] == N - 10
    assert report["disagreements"]["scores_differ"] == 10


def not_parquet(ws: Workspace) -> list[str]:
    path = ws.root / "notes.parquet"
    path.write_text("id,response\n1,yes\n", encoding="utf-8")
    return [str(path), str(write(output(IDS, ["yes"] * N), ws.root / "b.parquet"))]


def without_status(ws: Workspace) -> list[str]:
    a = write(output(IDS, ["yes"] * N).drop("status"), ws.root / "a.parquet")
    return [str(a), str(write(output(IDS, ["yes"] * N), ws.root / "b.parquet"))]


def duplicate_ids(ws: Workspace) -> list[str]:
    ids = [*IDS[:-1], IDS[0]]
    a = write(output(ids, ["yes"] * N), ws.root / "a.parquet")
    return [str(a), str(write(output(IDS, ["yes"] * N), ws.root / "b.parquet")), "--id", "id"]


def null_ids(ws: Workspace) -> list[str]:
    a = write(output([*IDS[:-1], None], ["yes"] * N), ws.root / "a.parquet", id_column="id")
    return [str(a), str(write(output(IDS, ["yes"] * N), ws.root / "b.parquet"))]


def missing_id_column(ws: Workspace) -> list[str]:
    a = write(output(IDS, ["yes"] * N), ws.root / "a.parquet")
    return [str(a), str(write(output(IDS, ["yes"] * N), ws.root / "b.parquet")), "--id", "qid"]


def unequal_rows(ws: Workspace) -> list[str]:
    a = write(output(IDS, ["yes"] * N), ws.root / "a.parquet")
    return [str(a), str(write(output(IDS[:50], ["yes"] * 50), ws.root / "b.parquet"))]


def out_over_input(ws: Workspace) -> list[str]:
    a = write(output(IDS, ["yes"] * N), ws.root / "a.parquet")
    b = write(output(IDS, ["no"] * N), ws.root / "b.parquet")
    return [str(a), str(b), "--out", str(b)]


ERRORS = [
    (
        "missing file",
        lambda ws: [str(ws.root / "nope.parquet"), str(ws.root / "b.parquet")],
        "does not exist",
    ),
    ("a folder", lambda ws: [str(ws.root), str(ws.root)], "is a folder"),
    ("not Parquet", not_parquet, "is not a Parquet file"),
    ("no status column", without_status, "has no status column"),
    ("duplicate ids", duplicate_ids, "duplicate ids in 'id' (e.g. 'q000')"),
    ("null ids", null_ids, "1 rows without a value in 'id'"),
    ("--id column missing", missing_id_column, "has no column 'qid' (--id)"),
    ("position, unequal rows", unequal_rows, "pass --id COLUMN"),
    ("--out over an input", out_over_input, "would overwrite a file being compared"),
]


@pytest.mark.parametrize(("make", "says"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_user_errors_are_one_sentence_and_exit_2(ws: Workspace, make: Any, says: str) -> None:
    result = ws.run("compare", *make(ws))
    assert result.code == 2, result.out
    assert says in result.err
    assert result.err.startswith("batchrun: ") and result.err.count("\n") == 1
    assert "Traceback" not in result.err and not result.out


def test_two_runs_through_the_simulator(ws: Workspace, sim: SimServer) -> None:
    """Two jobs over the same reviews, one with a different prompt, compared end to end."""
    ws.write_input(reviews(30))
    outputs = {}
    for name, user in (("a", "Review: {text}"), ("b", "Review: {text} but terrible")):
        job = ws.job(
            sim.base_url,
            input={"id_column": "id"},
            prompt={"user": user},
            output={"path": f"out/{name}.parquet"},
        )
        assert ws.run("run", str(job), "-q").code == 0
        outputs[name] = ws.root / "out" / f"{name}.parquet"
    a, b = (pl.read_parquet(outputs[name]) for name in "ab")
    differ = [
        row_id for row_id, x, y in zip(a["id"], a["response"], b["response"], strict=True) if x != y
    ]
    assert 0 < len(differ) < 30
    out = ws.root / "differ.csv"
    report = compare_json(ws, str(outputs["a"]), str(outputs["b"]), "--id", "id", "--out", str(out))
    assert report["rows"] == {"both": 30, "only_a": 0, "only_b": 0}
    assert (
        report["disagreements"]["rows"] == report["disagreements"]["answers_differ"] == len(differ)
    )
    assert pl.read_csv(out)["id"].to_list() == differ
    assert report["a"]["ok"] == report["b"]["ok"] == 30
    assert report["a"]["tokens"]["prompt"] == a["prompt_tokens"].sum()
    assert report["b"]["tokens"]["prompt"] > report["a"]["tokens"]["prompt"]  # a longer prompt
    assert report["a"]["cost_usd"] == pytest.approx(a["cost_usd"].sum())
    assert report["a"]["model"] == "gpt-4o-mini"
    # Without --id: by the metadata's id column when the run wrote one, else by position.
    assert compare_json(ws, str(outputs["a"]), str(outputs["b"]))["disagreements"]["rows"] == len(
        differ
    )


def test_files_without_a_row_in_common(ws: Workspace) -> None:
    a_path = write(output(IDS, ["yes"] * N), ws.root / "a.parquet")
    b_path = write(output([f"x{i}" for i in range(N)], ["yes"] * N), ws.root / "b.parquet")
    result = ws.run("compare", str(a_path), str(b_path), "--id", "id")
    assert result.code == 0, result.err
    assert "rows: 0 in both, 100 only in A, 100 only in B" in result.out
    assert "No row is in both files" in result.out


def test_dates_as_ids_and_ints_against_floats(ws: Workspace) -> None:
    import datetime as dt

    days = [dt.date(2026, 1, d) for d in (1, 2, 3)]
    a = write(output(days, ["x", "y", "z"]), ws.root / "a.parquet")
    b = write(output(days, ["x", "y", "w"]), ws.root / "b.parquet")
    result = ws.run("compare", str(a), str(b), "--id", "id", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["disagreements"]["sample"][0]["id"] == "2026-01-03"
    ints = write(output([1, 2, 3], ["x", "y", "z"]), ws.root / "i.parquet")
    floats = write(output([1.0, 2.0, 3.0], ["x", "y", "w"]), ws.root / "f.parquet")
    report = json.loads(ws.run("compare", str(ints), str(floats), "--id", "id", "--json").out)
    assert report["rows"] == {"both": 3, "only_a": 0, "only_b": 0}


def test_what_polars_cannot_do_is_one_sentence(ws: Workspace) -> None:
    nested = [[1], [2], [3]]
    a = write(output(nested, ["x", "y", "z"]), ws.root / "a.parquet")
    b = write(output(nested, ["x", "y", "w"]), ws.root / "b.parquet")
    result = ws.run("compare", str(a), str(b), "--id", "id", "--out", str(ws.root / "d.csv"))
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "cannot" in result.err and "Traceback" not in result.err


def test_a_partial_output_is_not_matched_by_position(ws: Workspace) -> None:
    a = write(output([0, 1, 2], ["x", "y", "z"]), ws.root / "a.parquet", id_column=None)
    partial = output([0, 1, 2], ["x", "y", "w"])
    b = write(partial, ws.root / "b.parquet", id_column=None, input_rows=5)
    result = ws.run("compare", str(a), str(b))
    assert result.code == 2 and result.err.count("\n") == 1
    assert "holds 3 of its job's 5 rows" in result.err and "--id" in result.err
    whole = write(partial, ws.root / "c.parquet", id_column=None, input_rows=3)
    assert ws.run("compare", str(a), str(whole)).code == 0


def test_runs_write_the_metadata_compare_reads(ws: Workspace) -> None:
    from batchrun.sim import SimConfig, start_in_thread

    ws.write_input(pl.DataFrame({"id": ["a", "b", "c"], "text": ["good", "bad", "fine"]}))
    with start_in_thread(SimConfig()) as sim:
        job = ws.job(sim.base_url, input={"path": "input.parquet", "id_column": "id"})
        assert ws.run("run", str(job), "-q", "--limit", "2").code == 0
    stored = pq.ParquetFile(ws.output).metadata.metadata[b"batchrun"]
    assert json.loads(stored) == {
        "job": "test-job",
        "input_rows": 2,
        "model": "gpt-4o-mini",
        "id_column": "id",
        "parse": None,
        "labels": None,
        "expected_column": None,
        "scorer": None,
    }


def test_partial_runs_are_matched_by_input_row(ws: Workspace, sim: SimServer) -> None:
    """Two runs of a job without an id column that finished different rows, as a run that
    stopped early leaves them: same row counts, different rows; matched by `input_row`."""
    ws.write_input(reviews(30))
    job = ws.job(sim.base_url, output={"path": "out/whole.parquet"})
    assert ws.run("run", str(job), "-q").code == 0
    whole = ws.root / "out" / "whole.parquet"
    stored = json.loads(pq.ParquetFile(whole).metadata.metadata[b"batchrun"])
    assert stored["id_column"] is None and stored["input_rows"] == 30
    finished = pl.read_parquet(whole)
    assert finished["input_row"].to_list() == list(range(30))
    # A finished input rows 0-19, B rows 10-29 in another order (and answered 12 and 25
    # otherwise): 20 rows each, so by position B's first row would meet A's first.
    a = write(finished.filter(pl.col("input_row") < 20), ws.root / "a.parquet", **stored)
    b_rows = finished.filter(pl.col("input_row") >= 10).sample(fraction=1.0, shuffle=True, seed=1)
    b_rows = b_rows.with_columns(
        pl.when(pl.col("input_row").is_in([12, 25]))
        .then(pl.lit("neutral"))
        .otherwise(pl.col("response"))
        .alias("response")
    )
    b = write(b_rows, ws.root / "b.parquet", **stored)
    report = compare_json(ws, str(a), str(b))
    assert report["join"] == {"column": "input_row", "from": "input_row"}
    assert report["rows"] == {"both": 10, "only_a": 10, "only_b": 10}
    assert report["a"]["ok"] == report["b"]["ok"] == 10
    both = finished.filter(pl.col("input_row").is_between(10, 19))
    assert report["a"]["tokens"]["prompt"] == both["prompt_tokens"].sum()
    assert report["disagreements"]["rows"] == 1
    assert report["disagreements"]["sample"][0]["id"] == 12
    assert report["disagreements"]["sample"][0]["answer_b"] == "neutral"
    text = ws.run("compare", str(a), str(b)).out
    assert "joined on 'input_row' (the rows' positions in the input)" in text
    # The whole run against itself: every row, by input_row too.
    report = compare_json(ws, str(whole), str(b))
    assert report["rows"] == {"both": 20, "only_a": 10, "only_b": 0}


def test_an_output_without_input_row_is_matched_by_position(ws: Workspace) -> None:
    """An output of an older batchrun (no input_row) against a newer one: by position, which
    refuses a partial output as before."""
    old = write(output(IDS[:3], ["x", "y", "z"]), ws.root / "old.parquet", id_column=None)
    new = output(IDS[:3], ["x", "y", "w"], input_row=[0, 1, 2])
    new_path = write(new, ws.root / "new.parquet", id_column=None, input_rows=3)
    report = compare_json(ws, str(old), str(new_path))
    assert report["join"] == {"column": None, "from": "position"}
    assert [row["id"] for row in report["disagreements"]["sample"]] == [2]
    partial = write(new[[0, 2]], ws.root / "partial.parquet", id_column=None, input_rows=3)
    old = write(output(IDS[:2], ["x", "y"]), ws.root / "old.parquet", id_column=None)
    result = ws.run("compare", str(old), str(partial))
    assert result.code == 2 and "holds 2 of its job's 3 rows" in result.err


def rounded(value: Any) -> Any:
    """The value with every float rounded to 12 places, in dicts and lists too."""
    if isinstance(value, float):
        return round(value, 12)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def test_many_partitions_give_the_same_figures_in_any_order(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With parts of 7 rows (15 of them), shuffled files give one partition's figures; the
    sample and --out follow A's order; the temporary files are gone afterwards."""
    from batchrun.core import sizes  # the join's parts are sized there

    a_path, b_path = scored_pair(ws)
    rng = random.Random(5)
    latencies = [None if rng.random() < 0.1 else rng.expovariate(2.0) for _ in range(N)]
    for path in (a_path, b_path):
        frame = pl.read_parquet(path).with_columns(
            latency_s=pl.Series([latencies[int(i[1:])] for i in pl.read_parquet(path)["id"]])
        )
        write(frame, path, **json.loads(pq.ParquetFile(path).metadata.metadata[b"batchrun"]))
    whole = compare_json(ws, str(a_path), str(b_path))
    spill = ws.root / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    monkeypatch.setattr(sizes, "COMPARE_PART_ROWS", 7)
    out = ws.root / "d.parquet"
    parted = compare_json(ws, str(a_path), str(b_path), "--out", str(out))
    parted["disagreements"]["out"] = None
    assert rounded(parted) == rounded(whole)  # sums over parts may differ in the last bit
    expected = pl.Series(latencies, dtype=pl.Float64)  # what polars gives, to the bit
    assert whole["a"]["latency_s"]["p95"] == expected.quantile(0.95, "linear")
    assert whole["a"]["latency_s"]["p50"] == expected.quantile(0.5, "linear")
    assert pl.read_parquet(out)["id"].to_list() == [IDS[i] for i in DISAGREEING]
    # A shuffled too: the same figures; the sample and --out in A's new order.
    shuffled_a = pl.read_parquet(a_path).sample(fraction=1.0, shuffle=True, seed=11)
    meta = json.loads(pq.ParquetFile(a_path).metadata.metadata[b"batchrun"])
    a_shuffled = write(shuffled_a, ws.root / "a2.parquet", **meta)
    again = compare_json(ws, str(a_shuffled), str(b_path), "--out", str(out))
    for key in ("rows", "paired", "difference"):
        assert rounded(again[key]) == rounded(whole[key])
    assert rounded({**again["a"], "path": None}) == rounded({**whole["a"], "path": None})
    in_a_order = [i for i in shuffled_a["id"] if int(i[1:]) in DISAGREEING]
    assert [row["id"] for row in again["disagreements"]["sample"]] == in_a_order[:10]
    assert pl.read_parquet(out)["id"].to_list() == in_a_order
    # Duplicates are found across parts; every temporary file is gone, after errors too.
    duplicated = write(output([*IDS[:-1], IDS[40]], ["yes"] * N), ws.root / "dup.parquet")
    result = ws.run("compare", str(duplicated), str(b_path), "--id", "id")
    assert result.code == 2 and "duplicate ids in 'id' (e.g. 'q040')" in result.err
    assert not list(spill.iterdir())
