"""Inputs as people have them: a GB18030 CSV, Excel's "Unicode text" export (UTF-16, tabs),
JSON Lines with nested fields (gzipped too) and an Excel sheet, through the command.

Each kind is run, estimated and looked at with `status`, exported as Batch files, imported
and evaluated (`report` with `[eval]`); each is killed mid-run and resumed, and the output
must hold every row once with its own answer (the simulator labels a review by its words, so
a row given another row's answer shows), and the prompt text the gateway got must be the
row's text exactly.

Tests `batchrun.rows.source`, `batchrun.rows.readers` and `batchrun.rows.encodings`.
"""

from __future__ import annotations

import gzip
import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.checkpoint.folder import checkpoint_dir
from batchrun.sim import SimServer

from ..batchfiles.test_batchfiles import answer, exported
from ..conftest import Workspace, latest_results
from ..engine.test_chaos import KEY_ENV, start_run
from ..simproc import SimProcess

ROWS = 40
SYSTEM = "Label the review as positive, negative or neutral."
GOOD = "物流很快，质量不错，非常满意, 第{i}条 𠮷"  # 𠮷: four bytes in GB18030, none in GBK
BAD = '质量太差，已经退货，很失望 "第{i}条"'


def chinese_reviews(n: int) -> pl.DataFrame:
    """n Chinese reviews with ids, every other one positive, with commas and quotes, and
    their gold labels."""
    texts = [(GOOD if i % 2 == 0 else BAD).format(i=i) for i in range(n)]
    return pl.DataFrame({"id": [f"{i:05d}" for i in range(n)], "text": texts, "gold": labels(n)})


def labels(n: int) -> list[str]:
    return ["positive" if i % 2 == 0 else "negative" for i in range(n)]


def write_gb18030_csv(ws: Workspace, frame: pl.DataFrame) -> tuple[str, dict[str, Any]]:
    (ws.root / "reviews.csv").write_bytes(frame.write_csv().encode("gb18030"))
    return "reviews.csv", {"encoding": "gb18030"}


def write_unicode_text(ws: Workspace, frame: pl.DataFrame) -> tuple[str, dict[str, Any]]:
    """As Excel's "Save as: Unicode text" writes it: UTF-16 with a byte order mark, tabs
    between fields, CRLF line ends."""
    text = frame.write_csv(separator="\t", line_terminator="\r\n")
    (ws.root / "reviews.txt").write_bytes(text.encode("utf-16"))
    return "reviews.txt", {"encoding": "utf-16"}


def nested_lines(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [
        {
            "id": row["id"],
            "review": {"text": row["text"], "stars": 5 - i % 2 * 4},
            "tags": ["zh"],
            "gold": row["gold"],
        }
        for i, row in enumerate(frame.iter_rows(named=True))
    ]


def write_jsonl(ws: Workspace, frame: pl.DataFrame) -> tuple[str, dict[str, Any]]:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in nested_lines(frame))
    (ws.root / "reviews.jsonl").write_text(lines, encoding="utf-8")
    return "reviews.jsonl", {}


def message_lines(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [
        {
            "id": row["id"],
            "gold": row["gold"],
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Review: {row['text']}"},
            ],
        }
        for row in frame.iter_rows(named=True)
    ]


def write_jsonl_gz(ws: Workspace, frame: pl.DataFrame) -> tuple[str, dict[str, Any]]:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in message_lines(frame))
    with gzip.open(ws.root / "chats.ndjson.gz", "wt", encoding="utf-8") as handle:
        handle.write(lines)
    return "chats.ndjson.gz", {}


def write_xlsx(ws: Workspace, frame: pl.DataFrame) -> tuple[str, dict[str, Any]]:
    """A workbook whose first sheet is not the reviews."""
    import xlsxwriter

    with xlsxwriter.Workbook(ws.root / "reviews.xlsx") as workbook:
        pl.DataFrame({"note": ["exported from the shop's back office"]}).write_excel(
            workbook, worksheet="Notes"
        )
        frame.write_excel(workbook, worksheet="Reviews")
    return "reviews.xlsx", {"sheet": "Reviews"}


# Each kind: how its file is written, and the [prompt] that reads it.
TEMPLATE = {"system": SYSTEM, "user": "Review: {text}"}
KINDS: dict[str, tuple[Callable[[Workspace, pl.DataFrame], tuple[str, dict[str, Any]]], Any]] = {
    "gb18030 csv": (write_gb18030_csv, TEMPLATE),
    "utf-16 unicode text": (write_unicode_text, TEMPLATE),
    "jsonl, nested": (write_jsonl, {"system": SYSTEM, "user": "Review: {review}"}),
    "ndjson.gz, messages": (
        write_jsonl_gz,
        {"system": None, "user": None, "messages_column": "messages"},
    ),
    "xlsx sheet": (write_xlsx, TEMPLATE),
}


def prepare(ws: Workspace, kind: str, base_url: str, n: int, **sections: Any) -> Path:
    """The input of `kind` (n Chinese reviews) and a job reading it."""
    write, prompt = KINDS[kind]
    path, reading = write(ws, chinese_reviews(n))
    return ws.job(
        base_url, input={"path": path, "id_column": "id", **reading}, prompt=prompt, **sections
    )


def expected_prompts(kind: str, frame: pl.DataFrame) -> list[str]:
    """The user message each row's request must carry, character for character."""
    if kind == "jsonl, nested":
        compact = (",", ":")
        return [
            "Review: " + json.dumps(line["review"], ensure_ascii=False, separators=compact)
            for line in nested_lines(frame)
        ]
    return [f"Review: {text}" for text in frame["text"]]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_gives_each_row_its_own_answer_and_its_exact_text(
    ws: Workspace, sim: SimServer, kind: str
) -> None:
    job = prepare(ws, kind, sim.base_url, ROWS)
    result = ws.run("run", str(job), "-q")
    assert result.code == 0, result.err

    frame = chinese_reviews(ROWS)
    out = ws.read_output()
    assert out["id"].to_list() == frame["id"].to_list()  # "00001" stays text, in order
    assert out["status"].to_list() == ["ok"] * ROWS
    assert out["response"].to_list() == labels(ROWS)  # each row its own answer
    sent = sorted(r.body["messages"][-1]["content"] for r in sim.requests if r.body)
    assert sent == sorted(expected_prompts(kind, frame))  # the text round-trips exactly
    if kind == "jsonl, nested":  # nested fields reach the output as they were
        assert out["review"].to_list() == [line["review"] for line in nested_lines(frame)]
        assert out["tags"].to_list() == [["zh"]] * ROWS
    elif kind == "ndjson.gz, messages":
        bodies = sorted((r.body["messages"] for r in sim.requests if r.body), key=str)
        assert bodies == sorted((line["messages"] for line in message_lines(frame)), key=str)
    else:
        assert out["text"].to_list() == frame["text"].to_list()


@pytest.mark.parametrize("kind", list(KINDS))
def test_estimate_and_status_read_each_kind(ws: Workspace, sim: SimServer, kind: str) -> None:
    job = prepare(ws, kind, sim.base_url, ROWS)
    estimate = ws.run("estimate", str(job))
    assert estimate.code == 0, estimate.err
    assert f"{ROWS} (0 done, {ROWS} to send" in estimate.out, estimate.out
    assert ws.run("run", str(job), "-q", "--limit", "10").code == 0
    status = ws.run("status", str(job))
    assert status.code == 0, status.err
    assert re.search(r"done\s+10\n", status.out), status.out
    assert re.search(rf"pending\s+{ROWS - 10}\n", status.out), status.out
    assert len(sim.requests) == 10  # estimate and status sent nothing


@pytest.mark.parametrize("kind", list(KINDS))
def test_batch_files_and_the_evaluation_read_each_kind(
    ws: Workspace, sim: SimServer, kind: str
) -> None:
    parse = {"format": "label", "labels": ["positive", "negative", "neutral"]}
    grade = {"expected_column": "gold", "scorer": "label"}
    job = prepare(ws, kind, sim.base_url, ROWS, parse=parse, eval=grade)
    folder = ws.root / "batches"
    result = ws.run("export-batch", str(job), str(folder))
    assert result.code == 0, result.err
    sent = sorted(line["body"]["messages"][-1]["content"] for line in exported(folder))
    assert sent == sorted(expected_prompts(kind, chinese_reviews(ROWS)))
    output, errors = answer(folder, sim.base_url)
    result = ws.run("import-batch", str(job), str(output), str(errors))
    assert result.code == 0, result.err
    assert f"imported {ROWS} ok and 0 failed" in result.out
    report = json.loads(ws.run("report", str(job), "--json").out)["evaluation"]
    assert (report["accuracy"]["scored"], report["accuracy"]["correct"]) == (ROWS, ROWS)


def test_json_lines_parts_have_every_key_of_every_line(ws: Workspace, sim: SimServer) -> None:
    """A key first seen on a late line, or only in the second part, is a column; an id that
    is a number in one part and text in the other is text."""
    frame = chinese_reviews(300)
    lines = [{"id": i, "text": t} for i, t in enumerate(frame["text"])]
    lines[-1]["note"] = "late"
    (ws.root / "parts").mkdir()
    with open(ws.root / "parts" / "a.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    with open(ws.root / "parts" / "b.jsonl", "w", encoding="utf-8") as handle:
        late = {"id": "x1", "text": frame["text"][0], "stars": 5}
        handle.write(json.dumps(late, ensure_ascii=False) + "\n")
    job = ws.job(sim.base_url, input={"path": "parts", "id_column": "id"})
    assert ws.run("run", str(job), "-q").code == 0
    out = ws.read_output()
    assert out["id"].to_list() == [str(i) for i in range(300)] + ["x1"]
    assert out["note"].to_list() == [None] * 299 + ["late", None]
    assert out["stars"].to_list() == [None] * 300 + [5]
    assert out["response"].to_list() == [*labels(300), "positive"]


def test_a_gb18030_csv_without_its_encoding_stops_naming_it(ws: Workspace, sim: SimServer) -> None:
    frame = chinese_reviews(200)
    (ws.root / "reviews.csv").write_bytes(frame.write_csv().encode("gb18030"))
    job = ws.job(sim.base_url, input={"path": "reviews.csv", "id_column": "id"})
    result = ws.run("run", str(job))
    assert result.code == 2
    assert "is not UTF-8" in result.err
    assert 'set encoding = "gb18030" in [input]' in result.err
    assert not sim.requests


def test_a_utf16_export_without_its_encoding_stops_naming_it(ws: Workspace, sim: SimServer) -> None:
    path, _ = write_unicode_text(ws, chinese_reviews(5))
    job = ws.job(sim.base_url, input={"path": path, "id_column": "id"})
    result = ws.run("estimate", str(job))
    assert result.code == 2
    assert 'set encoding = "utf-16" in [input]' in result.err
    assert not sim.requests


def test_a_file_not_in_the_encoding_given_stops_before_any_request(
    ws: Workspace, sim: SimServer
) -> None:
    (ws.root / "reviews.csv").write_bytes(chinese_reviews(50).write_csv().encode("utf-16"))
    job = ws.job(sim.base_url, input={"path": "reviews.csv", "encoding": "gb18030"})
    result = ws.run("run", str(job))
    assert result.code == 2
    assert "is not valid gb18030 text" in result.err
    assert not sim.requests


def test_a_utf8_csv_with_a_bom_keeps_working(ws: Workspace, sim: SimServer) -> None:
    frame = chinese_reviews(6)
    (ws.root / "reviews.csv").write_bytes(frame.write_csv().encode("utf-8-sig"))
    job = ws.job(sim.base_url, input={"path": "reviews.csv", "id_column": "id"})
    assert ws.run("run", str(job), "-q").code == 0
    assert ws.read_output()["id"].to_list() == frame["id"].to_list()


@pytest.mark.parametrize(
    ("input_keys", "message"),
    [
        ({"encoding": "no-such-codec"}, "[input] encoding"),
        ({"separator": "||"}, "[input] separator"),
    ],
)
def test_a_wrong_reading_key_is_named(
    ws: Workspace, input_keys: dict[str, str], message: str
) -> None:
    job = ws.job("sim", input=input_keys)
    result = ws.run("run", str(job))
    assert result.code == 2
    assert message in result.err


def test_a_missing_sheet_is_named_with_the_sheets_there_are(ws: Workspace, sim: SimServer) -> None:
    path, _ = write_xlsx(ws, chinese_reviews(3))
    job = ws.job(sim.base_url, input={"path": path, "sheet": "Sheet1"})
    result = ws.run("run", str(job))
    assert result.code == 2
    assert "no sheet named 'Sheet1' (it has: Notes, Reviews)" in result.err


# Paced so that the run takes a few seconds and a kill lands in the middle of it.
KILL_ROWS = 240
PACED = {"requests_per_minute": 3600, "concurrency": 16}


@pytest.fixture
def sim_apart() -> Iterator[str]:
    """A simulator in its own process, which a killed run leaves standing: its URL."""
    with SimProcess() as server:
        yield server.base_url


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_run_killed_and_resumed_sends_each_row_once(
    ws: Workspace, sim_apart: str, kind: str
) -> None:
    job = prepare(ws, kind, sim_apart, KILL_ROWS, endpoint={"api_key_env": KEY_ENV}, limits=PACED)
    folder = checkpoint_dir(ws.output)
    proc = start_run(job)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # logged once the run starts sending
        assert "batchrun" in line, line + proc.communicate()[1]
        deadline = time.monotonic() + 20
        while len(latest_results(folder)) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    before = len(latest_results(folder))
    assert 0 < before < KILL_ROWS

    resumed = start_run(job)
    out_text, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    ran = re.search(r"this run ([\d,]+) rows", out_text)
    assert ran is not None, out_text
    assert int(ran[1].replace(",", "")) == KILL_ROWS - before  # committed rows not sent again

    out = ws.read_output()
    assert out["id"].to_list() == chinese_reviews(KILL_ROWS)["id"].to_list()
    assert out["status"].to_list() == ["ok"] * KILL_ROWS
    assert out["response"].to_list() == labels(KILL_ROWS)
