"""OpenAI Batch files: export-batch and import-batch against the simulator.

The Batch API is played by `answer`: it POSTs each exported body to the simulator and writes
what came back in the Batch output format (answers) and error format (refusals, and lines
that ran out of time), as the API does.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.batchfiles import commands as batchfiles
from batchrun.batchfiles.commands import (
    BATCH_PRICE_FACTOR,
    ID_FINGERPRINT_CHARS,
    MAX_BYTES,
    MAX_REQUESTS,
    export_batch,
    split_custom_id,
)
from batchrun.config.job import load_job
from batchrun.core import sizes
from batchrun.errors import UserError
from batchrun.sim import SimConfig, SimServer, start_in_thread

from ..conftest import Workspace, reviews
from ..core.test_secrets import leaks

SKIP = {"latency_s", "ttft_s", "attempts"}  # what a Batch answer cannot carry over
REFUSAL = {"message": "Invalid request.", "type": "invalid_request_error", "param": None}
EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


def exported(folder: Path) -> list[dict[str, Any]]:
    """Every line of the Batch input files in `folder`, in file order."""
    return [
        json.loads(line)
        for path in sorted(folder.glob("batch-*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def key_of(line: dict[str, Any]) -> str:
    parsed = split_custom_id(line["custom_id"])
    assert parsed is not None
    return parsed[0]


def post(base_url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def answer(folder: Path, base_url: str, expire: Collection[str] = ()) -> tuple[Path, Path]:
    """Play the Batch API: answers in output.jsonl, failures and expired rows in errors.jsonl."""
    out, err = [], []
    for n, line in enumerate(exported(folder)):
        record: dict[str, Any] = {"id": f"batch_req_{n}", "custom_id": line["custom_id"]}
        if key_of(line) in expire:
            err.append({**record, "response": None, "error": EXPIRED})
            continue
        status, body = post(base_url, line["body"])
        response = {"status_code": status, "request_id": f"req_{n}", "body": body}
        (out if status == 200 else err).append({**record, "response": response, "error": None})
    paths = folder / "output.jsonl", folder / "errors.jsonl"
    for path, records in zip(paths, (out, err), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return paths


def marked_reviews(n: int, marks: dict[int, str]) -> pl.DataFrame:
    """reviews(n) with the simulator's fault markers (or an empty text) in some rows."""
    frame = reviews(n)
    texts = frame["text"].to_list()
    for i, mark in marks.items():
        texts[i] = "" if mark == "empty" else f"[[sim:{mark}]] {texts[i]}"
    return frame.with_columns(pl.Series("text", texts))


def status(ws: Workspace, job: Path, *argv: str) -> dict[str, Any]:
    result = ws.run("status", str(job), "--json", *argv)
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_round_trip_equals_a_direct_run(ws: Workspace, sim: SimServer) -> None:
    marks = {5: "content_filter", 17: "content_filter", 30: "content_filter"}
    marks |= {11: "server_error", 40: "server_error", 22: "empty"}
    ws.write_input(marked_reviews(48, marks))
    labels = {"format": "label", "labels": ["positive", "negative", "neutral"]}
    job = ws.job(sim.base_url, input={"id_column": "id"}, limits={"max_attempts": 2}, parse=labels)
    direct_path = ws.root / "direct.parquet"
    assert ws.run("run", str(job), "-q", "--set", f"output.path={direct_path}").code == 0

    folder = ws.root / "batches"
    result = ws.run("export-batch", str(job), str(folder))
    assert result.code == 0, result.err
    assert "47 of 48 rows written as 1 Batch input file(s)" in result.out
    assert "import-batch" in result.out and "1 rows that cannot become a request" in result.out
    lines = exported(folder)
    assert {(line["method"], line["url"]) for line in lines} == {("POST", "/v1/chat/completions")}
    direct_bodies = [r.body for r in sim.requests]
    assert all(line["body"] in direct_bodies for line in lines)  # the very requests run sends
    output, errors = answer(folder, sim.base_url, expire={"r0003"})

    result = ws.run("import-batch", str(job), str(output), str(errors))
    assert result.code == 0, result.err
    assert "imported 41 ok and 3 failed" in result.out
    assert "left pending for `batchrun run`: 3 (server_error 2, batch_expired 1)" in result.out
    assert "job: 48 rows: 41 ok, 3 failed, 4 pending" in result.out
    assert ws.read_output().height == 44  # the output shows the imported rows already
    assert ws.read_output()["parsed"].null_count() == 3  # parsed as a run's output is

    sent_before = len(sim.requests)
    assert ws.run("run", str(job), "-q").code == 0
    resent = {r.body["messages"][-1]["content"] for r in sim.requests[sent_before:] if r.body}
    assert resent == {f"Review: {t}" for t in ws.read_output()["text"].gather([3, 11, 40])}

    direct, batched = pl.read_parquet(direct_path), ws.read_output()
    assert batched.columns == direct.columns and batched.height == 48
    same = [c for c in direct.columns if c not in SKIP | {"cost_usd", "error_message"}]
    assert batched.select(same).equals(direct.select(same))
    # The server's message rotates with each 5xx it sends; the row's error is the same.
    retried = pl.col("error") == "server_error"
    assert batched.filter(~retried)["error_message"].equals(
        direct.filter(~retried)["error_message"]
    )
    # Imported answers cost half (the default --price-factor); rows run directly, full price.
    imported = ~pl.col("id").is_in(["r0003", "r0011", "r0022", "r0040"])
    half = pl.when(imported).then(pl.col("cost_usd") * 0.5).otherwise("cost_usd")
    expected = direct.select(half.fill_null(-1.0)).to_series().to_list()
    assert batched["cost_usd"].fill_null(-1.0).to_list() == pytest.approx(expected)
    assert batched.filter(pl.col("status") == "ok")["cost_usd"].min() > 0
    assert set(batched.filter(imported)["attempts"]) == {1}


def test_importing_the_same_files_again_changes_nothing(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(marked_reviews(12, {4: "content_filter"}))
    job = ws.job(sim.base_url)
    folder = ws.root / "b"
    assert ws.run("export-batch", str(job), str(folder)).code == 0
    files = [str(p) for p in answer(folder, sim.base_url)]
    assert ws.run("import-batch", str(job), *files).code == 0
    spend = status(ws, job)["spend_usd"]
    result = ws.run("import-batch", str(job), *files)
    assert "imported 0 ok and 0 failed" in result.out
    assert "not imported: 12 already committed for the same request" in result.out
    assert status(ws, job)["spend_usd"] == spend > 0
    assert status(ws, job)["done"] == 11 and status(ws, job)["failed"] == 1


def test_files_are_split_at_the_request_and_byte_limits(ws: Workspace, sim: SimServer) -> None:
    assert (MAX_REQUESTS, MAX_BYTES, BATCH_PRICE_FACTOR) == (50_000, 200_000_000, 0.5)
    ws.write_input(reviews(23))
    job = load_job(ws.job(sim.base_url))
    by_count = export_batch(job, ws.root / "n", max_requests=7)
    assert [f.requests for f in by_count.files] == [7, 7, 7, 2]
    assert [f.path.name for f in by_count.files][-1] == "batch-0004.jsonl"
    lines = exported(ws.root / "n")
    assert [key_of(line) for line in lines] == [str(i) for i in range(23)]  # each row once

    raw = b"".join(f.path.read_bytes() for f in by_count.files).splitlines(keepends=True)
    limit = sum(len(line) for line in raw[:5]) + 1  # the first five lines fit, six do not
    by_size = export_batch(job, ws.root / "b", max_bytes=limit)
    groups: list[int] = []
    size = limit  # a file holds lines in order until the next one would pass the limit
    for line in raw:
        if size + len(line) > limit:
            groups.append(0)
            size = 0
        groups[-1] += 1
        size += len(line)
    assert [f.requests for f in by_size.files] == groups and groups[0] == 5 and len(groups) > 4
    for file in by_size.files:
        assert file.size == file.path.stat().st_size <= limit
    assert exported(ws.root / "b") == lines
    assert not list((ws.root / "b").glob(".*.tmp"))

    with pytest.raises(UserError, match=r"row '0' takes .* bytes, more than the 100"):
        export_batch(job, ws.root / "c", max_bytes=100, force=True)
    assert not list((ws.root / "c").iterdir())  # nothing half-exported


def test_only_pending_rows_are_exported(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(marked_reviews(30, {2: "content_filter"}))
    job = ws.job(sim.base_url, input={"id_column": "id"})
    assert ws.run("run", str(job), "-q", "--limit", "10").code == 0  # r0000-r0009 committed
    folder = ws.root / "b"
    assert ws.run("export-batch", str(job), str(folder)).code == 0
    assert [key_of(line) for line in exported(folder)] == [f"r{i:04d}" for i in range(10, 30)]

    refused = ws.run("export-batch", str(job), str(folder))
    assert refused.code == 2 and "--force" in refused.err and refused.err.count("\n") == 1

    output, _ = answer(folder, sim.base_url)
    half = output.read_text().splitlines()[:8]  # the answers of r0010-r0017 only
    output.write_text("\n".join(half) + "\n")
    assert ws.run("import-batch", str(job), str(output)).code == 0
    assert ws.run("export-batch", str(job), str(folder), "--force").code == 0
    assert [key_of(line) for line in exported(folder)] == [f"r{i:04d}" for i in range(18, 30)]

    assert ws.run("export-batch", str(job), str(folder), "--force", "--retry-failed").code == 0
    keys = [key_of(line) for line in exported(folder)]
    assert keys == ["r0002", *(f"r{i:04d}" for i in range(18, 30))]


def test_failed_rows_exported_again_take_their_new_answers(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(30))
    with start_in_thread(SimConfig(faults={"content_filter": 0.3}, seed=5)) as flaky:
        assert ws.run("run", str(ws.job(flaky.base_url)), "-q").code == 0
    failed = ws.read_output().filter(pl.col("status") == "failed")["id"].to_list()
    assert 3 <= len(failed) < 30
    job, folder = ws.job(sim.base_url), ws.root / "b"
    result = ws.run("export-batch", str(job), str(folder), "--retry-failed")
    assert result.code == 0, result.err
    assert len(exported(folder)) == len(failed)
    result = ws.run("import-batch", str(job), *map(str, answer(folder, sim.base_url)))
    assert f"imported {len(failed)} ok and 0 failed" in result.out
    assert set(ws.read_output()["status"]) == {"ok"}
    again = ws.run("export-batch", str(job), str(ws.root / "c"), "--set", "output.path=x y.pq")
    assert "import-batch " + f"{job} --set 'output.path=x y.pq' FILE" in again.out


def test_stale_unknown_duplicate_and_error_lines_are_counted_not_committed(
    ws: Workspace, sim: SimServer
) -> None:
    ws.write_input(reviews(6))
    job = ws.job(sim.base_url, input={"id_column": "id"})
    folder = ws.root / "b"
    assert ws.run("export-batch", str(job), str(folder)).code == 0
    output, errors = answer(folder, sim.base_url, expire={"r0005"})

    changed = ["--set", "prompt.user=Text: {text}"]
    result = ws.run("import-batch", str(job), str(output), str(errors), *changed)
    assert result.code == 0, result.err
    assert "not imported: 6 stale" in result.out
    assert status(ws, job, *changed)["pending"] == 6 and status(ws, job)["pending"] == 6

    answers = output.read_text().splitlines()
    odd = [
        json.loads(answers[0]) | {"custom_id": "r0099@" + "0" * ID_FINGERPRINT_CHARS},
        json.loads(answers[1]) | {"custom_id": "no-separator"},
        json.loads(answers[2]),  # a duplicate of the line above it
        {
            "id": "vllm-1",
            "custom_id": json.loads(answers[3])["custom_id"],
            "response": {"status_code": 400, "request_id": "vllm-batch-1", "body": None},
            "error": "Request must not be sent in stream mode",
        },
    ]
    mixed = ws.root / "mixed.jsonl"
    mixed.write_text("\n".join([*answers[:3], *(json.dumps(o) for o in odd)]) + "\n")
    result = ws.run("import-batch", str(job), str(mixed), str(errors))
    assert result.code == 0, result.err
    assert "8 lines in 2 file(s): imported 3 ok and 1 failed" in result.out
    assert "left pending for `batchrun run`: 1 (batch_expired 1)" in result.out
    assert "not imported: 2 unknown custom_id" in result.out
    assert "not imported: 1 duplicate" in result.out
    out = ws.read_output()
    assert out["id"].to_list() == ["r0000", "r0001", "r0002", "r0003"]
    assert out["error"].to_list() == [None, None, None, "invalid_request"]
    assert out["error_message"][3] == "Request must not be sent in stream mode"
    assert status(ws, job)["pending"] == 2


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"custom_id": "0@abc", "response": null, "error": {"code": "x"}}\nnot json\n', "line 2"),
        (b'{"custom_id": "0@abc", "method": "POST", "body": {}}\n', "neither a response"),
        (b"[1, 2]\n", "line 1"),
    ],
)
def test_a_file_that_is_not_batch_output_is_refused(
    ws: Workspace, sim: SimServer, content: bytes, why: str
) -> None:
    ws.write_input(reviews(3))
    job = ws.job(sim.base_url)
    bad = ws.root / "bad.jsonl"
    bad.write_bytes(content)
    result = ws.run("import-batch", str(job), str(bad))
    assert result.code == 2
    assert str(bad) in result.err and why in result.err and result.err.count("\n") == 1
    assert not ws.output.exists()
    missing = ws.run("import-batch", str(job), str(ws.root / "nope.jsonl"))
    assert missing.code == 2 and "does not exist" in missing.err


def test_a_streaming_job_is_exported_without_streaming_and_imported_as_done(
    ws: Workspace, sim: SimServer
) -> None:
    ws.write_input(reviews(8))
    job = ws.job(sim.base_url, request={"stream": True})
    folder = ws.root / "b"
    assert ws.run("export-batch", str(job), str(folder)).code == 0
    bodies = [line["body"] for line in exported(folder)]
    assert all("stream" not in b and "stream_options" not in b for b in bodies)
    assert ws.run("import-batch", str(job), *map(str, answer(folder, sim.base_url))).code == 0
    sent = len(sim.requests)
    assert ws.run("run", str(job), "-q").code == 0
    assert len(sim.requests) == sent  # the answers count for the streaming request
    out = ws.read_output()
    assert set(out["status"]) == {"ok"} and out["ttft_s"].null_count() == 8


def test_answers_without_usage_are_counted_locally(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(5))
    job = ws.job(sim.base_url)
    folder = ws.root / "b"
    assert ws.run("export-batch", str(job), str(folder)).code == 0
    with start_in_thread(SimConfig(no_usage=True)) as bare:
        files = answer(folder, bare.base_url)
    assert ws.run("import-batch", str(job), *map(str, files), "--price-factor", "1").code == 0
    out = ws.read_output()
    assert out["usage_estimated"].all() and (out["prompt_tokens"] > 10).all()
    assert ws.run("run", str(job), "-q", "--set", "output.path=direct.parquet").code == 0
    direct = pl.read_parquet(ws.root / "direct.parquet")
    assert out["prompt_tokens"].to_list() == direct["prompt_tokens"].to_list()


def test_the_key_is_in_no_exported_file(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(4))
    job = ws.job(sim.base_url, endpoint={"headers": {"X-Team": "labels"}})
    folder = ws.root / "b"
    result = ws.run("export-batch", str(job), str(folder))
    assert result.code == 0
    files = list(folder.iterdir())
    assert files and not any(leaks(p.read_bytes()) for p in files)
    assert not leaks(result.out + result.err)
    assert all(b"X-Team" not in p.read_bytes() for p in files)


@pytest.mark.parametrize("command", ["export-batch", "import-batch"])
def test_both_commands_explain_themselves(ws: Workspace, command: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        ws.run(command, "--help")
    assert exit_.value.code == 0
    text = ws.capsys.readouterr().out
    assert f"usage: batchrun {command}" in text and "--set" in text and len(text) > 300


def test_an_answer_after_a_refusal_in_the_same_import_is_kept(
    ws: Workspace, sim: SimServer
) -> None:
    ws.write_input(reviews(2))
    job = ws.job(sim.base_url, input={"id_column": "id"})
    folder = ws.root / "b"
    assert ws.run("export-batch", str(job), str(folder)).code == 0
    output, _ = answer(folder, sim.base_url)
    answered = [json.loads(line) for line in output.read_text().splitlines()]
    refused = {
        **answered[0],
        "response": {"status_code": 400, "request_id": "r", "body": {"error": REFUSAL}},
    }
    first, second = ws.root / "first.jsonl", ws.root / "second.jsonl"
    first.write_text(json.dumps(refused) + "\n")  # an overlapping batch refused it ...
    second.write_text(json.dumps(answered[0]) + "\n")  # ... and a later one answered it
    result = ws.run("import-batch", str(job), str(first), str(second))
    assert result.code == 0, result.err
    assert "imported 1 ok and 0 failed" in result.out
    assert ws.read_output()["status"].to_list() == ["ok"]
    # The other way round, in one import: the answer stands, the refusal is a duplicate.
    ws.output.unlink()
    result = ws.run(
        "import-batch", str(job), "--set", "output.path=out/again.parquet", str(second), str(first)
    )
    assert "imported 1 ok and 0 failed" in result.out and "1 duplicate" in result.out
    assert pl.read_parquet(ws.root / "out" / "again.parquet")["status"].to_list() == ["ok"]


def test_force_replaces_only_the_files_export_wrote(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(3))
    job = ws.job(sim.base_url)
    folder = ws.root / "b"
    assert ws.run("export-batch", str(job), str(folder)).code == 0
    download = folder / "batch-0001-output.jsonl"  # answers saved beside their input file
    download.write_text("{}\n")
    result = ws.run("export-batch", str(job), str(folder), "--force")
    assert result.code == 0, result.err
    assert download.read_text() == "{}\n" and (folder / "batch-0001.jsonl").exists()


def test_an_import_taken_in_many_groups_equals_one_taken_at_once(
    ws: Workspace, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws.write_input(marked_reviews(12, {5: "content_filter", 7: "server_error"}))
    job = ws.job(sim.base_url, input={"id_column": "id"})
    folder = ws.root / "b"
    assert ws.run("export-batch", str(job), str(folder)).code == 0
    output, errors = answer(folder, sim.base_url, expire={"r0009"})
    answers = {key_of(line): line for line in map(json.loads, output.read_text().splitlines())}

    def refusal(key: str) -> dict[str, Any]:
        return answers[key] | {"response": {"status_code": 400, "body": {"error": REFUSAL}}}

    bare = json.loads(json.dumps(answers["r0006"]))
    del bare["response"]["body"]["usage"]  # an answer to count locally
    zeros = "0" * ID_FINGERPRINT_CHARS
    before = [answers["r0000"], refusal("r0008")]  # r0000 answered, r0008 failed before
    mixed = [
        refusal("r0001"),  # answered in a later group: the answer replaces it
        answers["r0002"] | {"custom_id": "r0099@" + zeros},  # unknown
        answers["r0003"] | {"custom_id": "r0003@" + zeros},  # stale
        *(bare if key == "r0006" else line for key, line in answers.items()),
        answers["r0002"],  # duplicates of rows answered in earlier groups
        refusal("r0004"),
        bare,
        refusal("r0008"),  # already failed before the import
        refusal("r0001"),  # a duplicate: answered in an earlier group
    ]
    first, second = ws.root / "before.jsonl", ws.root / "mixed.jsonl"
    first.write_text("".join(json.dumps(line) + "\n" for line in before))
    second.write_text("".join(json.dumps(line) + "\n" for line in mixed))

    def imported(name: str) -> tuple[str, pl.DataFrame]:
        setting = ["--set", f"output.path=out/{name}"]
        assert ws.run("import-batch", str(job), str(first), *setting).code == 0
        result = ws.run("import-batch", str(job), str(second), str(errors), *setting)
        assert result.code == 0, result.err
        assert not list((ws.root / "out" / f"{name}.checkpoint").glob("*.tmp"))
        return result.out.replace(name, "OUTPUT"), pl.read_parquet(ws.root / "out" / name)

    text, rows = imported("once.parquet")
    monkeypatch.setattr(batchfiles, "GROUP_LINES", 3)  # 7 groups of lines
    monkeypatch.setattr(batchfiles, "MATCH_ROWS", 4)  # 3 input batches a group
    monkeypatch.setattr(sizes, "IMPORT_COMMIT_ROWS", 2)
    grouped_text, grouped_rows = imported("grouped.parquet")
    assert grouped_text == text
    assert grouped_rows.equals(rows)
    assert "20 lines in 2 file(s): imported 8 ok and 1 failed" in text
    assert "left pending for `batchrun run`: 2 (" in text
    assert "batch_expired 1" in text and "server_error 1" in text
    for count in ("1 stale", "1 unknown", "4 duplicate", "2 already"):
        assert f"not imported: {count}" in text
    assert "job: 12 rows: 9 ok, 1 failed, 2 pending" in text
    assert rows["id"].to_list() == [f"r{i:04d}" for i in range(12) if i not in (7, 9)]
    assert rows.filter(pl.col("id") == "r0006")["usage_estimated"].to_list() == [True]
    assert rows.filter(pl.col("status") == "failed")["id"].to_list() == ["r0005"]


def test_answers_out_of_export_order_are_all_found_across_small_groups(
    ws: Workspace, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's pass begins where the group before it found its first row and goes round
    the input's end: answers in reverse order, and then in order, are all found."""
    ws.write_input(reviews(40))
    job = ws.job(sim.base_url, input={"id_column": "id"})
    folder = ws.root / "batches"
    assert ws.run("export-batch", str(job), str(folder)).code == 0
    output, _ = answer(folder, sim.base_url)
    lines = output.read_text(encoding="utf-8").splitlines(keepends=True)
    backwards = ws.root / "backwards.jsonl"
    backwards.write_text("".join(reversed(lines[:25])), encoding="utf-8")
    forwards = ws.root / "forwards.jsonl"
    forwards.write_text("".join(lines[25:]), encoding="utf-8")
    monkeypatch.setattr(batchfiles, "GROUP_LINES", 5)
    monkeypatch.setattr(batchfiles, "MATCH_ROWS", 4)
    result = ws.run("import-batch", str(job), str(backwards), str(forwards))
    assert result.code == 0, result.err
    assert "imported 40 ok and 0 failed" in result.out and "unknown" not in result.out
    out = ws.read_output()
    assert out["id"].to_list() == [f"r{i:04d}" for i in range(40)]
    assert out["status"].to_list() == ["ok"] * 40
