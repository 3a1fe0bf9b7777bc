"""Every error a user can cause in the job or the input: one sentence, exit 2, nothing sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun.sim import SimServer

from ..conftest import Workspace, reviews


def csv_with_bad_byte(ws: Workspace) -> Path:
    rows = [f"r{i},fine text {i}\n".encode() for i in range(5000)]
    rows.insert(4000, b"r-bad,caf\xe9 latin-1 text\n")
    path = ws.root / "input.csv"
    path.write_bytes(b"id,text\n" + b"".join(rows))
    return path


def ragged_csv(ws: Workspace) -> Path:
    path = ws.root / "input.csv"
    path.write_text('id,text\n1,"fine"\n2,"unterminated\n', encoding="utf-8")
    return path


CASES: list[tuple[str, Callable[[Workspace], object], dict[str, object], str]] = [
    ("missing file", lambda ws: None, {}, "does not exist"),
    (
        "missing id column",
        lambda ws: ws.write_input(reviews(3)),
        {"input": {"id_column": "rid"}},
        "'rid' is not in the input",
    ),
    (
        "missing template column",
        lambda ws: ws.write_input(reviews(3)),
        {"prompt": {"user": "Say {body}"}},
        "'body'",
    ),
    (
        "duplicate ids",
        lambda ws: ws.write_input(pl.DataFrame({"id": ["a", "b", "a"], "text": ["x", "y", "z"]})),
        {"input": {"id_column": "id"}},
        "duplicates ('a' appears 2 times)",
    ),
    (
        "null ids",
        lambda ws: ws.write_input(pl.DataFrame({"id": ["a", None], "text": ["x", "y"]})),
        {"input": {"id_column": "id"}},
        "is empty in 1 row",
    ),
    ("non-UTF-8 CSV", csv_with_bad_byte, {"input": {"path": "input.csv"}}, "UTF-8"),
    ("ragged CSV", ragged_csv, {"input": {"path": "input.csv"}}, "cannot be read"),
    (
        "not a Parquet file",
        lambda ws: (ws.root / "input.parquet").write_bytes(b"PAR1garbage"),
        {},
        "cannot be read",
    ),
    (
        "wrong extension",
        lambda ws: (ws.root / "input.json").write_text("{}"),
        {"input": {"path": "input.json"}},
        "neither .parquet nor .csv",
    ),
    (
        "empty folder",
        lambda ws: (ws.root / "parts").mkdir(),
        {"input": {"path": "parts"}},
        "holds no .parquet or .csv",
    ),
    (
        "glob matching nothing",
        lambda ws: None,
        {"input": {"path": "nothing-*.csv"}},
        "No input file matches",
    ),
    (
        "column clash",
        lambda ws: ws.write_input(pl.DataFrame({"text": ["x"], "response": ["y"]})),
        {},
        "already has a column named 'response'",
    ),
    (
        "unknown job key",
        lambda ws: ws.write_input(reviews(3)),
        {"limits": {"rpm": 5}},
        "unknown key [limits] rpm",
    ),
    (
        "wrong type",
        lambda ws: ws.write_input(reviews(3)),
        {"limits": {"concurrency": "many"}},
        "[limits] concurrency",
    ),
    (
        "bad template",
        lambda ws: ws.write_input(reviews(3)),
        {"prompt": {"user": "{text"}},
        "literal braces",
    ),
]


@pytest.mark.parametrize(
    ("name", "prepare", "sections", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_user_errors_end_in_one_sentence_and_exit_2(
    ws: Workspace,
    sim: SimServer,
    name: str,
    prepare: Callable[[Workspace], object],
    sections: dict[str, object],
    message: str,
) -> None:
    prepare(ws)
    result = ws.run("run", str(ws.job(sim.base_url, **sections)), "-q")
    assert result.code == 2, result
    assert message in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchrun: ")
    assert "Traceback" not in result.err
    assert sim.requests == []
    assert not ws.output.exists()


def test_a_missing_key_variable_names_it(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHRUN_TEST_KEY")
    ws.write_input(reviews(3))
    result = ws.run("run", str(ws.job("http://127.0.0.1:9/v1")), "-q")
    assert result.code == 2
    assert "BATCHRUN_TEST_KEY is not set" in result.err


def test_a_missing_job_file_and_bad_set(ws: Workspace) -> None:
    result = ws.run("run", str(ws.root / "nope.toml"))
    assert result.code == 2 and "does not exist" in result.err
    ws.write_input(reviews(3))
    result = ws.run("run", str(ws.job("sim")), "--set", "limits")
    assert result.code == 2 and "section.key=value" in result.err
