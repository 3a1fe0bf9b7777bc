"""The simulator's Files and Batches API, over real loopback HTTP: endpoints, paging, faults,
cancel, expiry, the ledger, and a file of 50,000 lines that the server never holds whole."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from batchrun.sim import (
    SimConfig,
    SimServer,
    add_sim_arguments,
    batch_files,
    config_from_args,
    start_in_thread,
)

KEY = "sk-sim-batches-0123456789"
LABEL_SYSTEM = (
    "Classify the sentiment of the review as positive, negative or neutral. Answer with one word."
)
ENDED = ("completed", "failed", "expired", "cancelled")


class Answering(Protocol):
    """A simulator, here or in another process: where it answers."""

    @property
    def base_url(self) -> str: ...


def call(
    sim: Answering,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    key: str | None = None,
) -> tuple[int, Any]:
    """One request; the status and the decoded JSON answer (bytes when it is not JSON)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(sim.base_url + path, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def line(custom_id: str, review: str, **fields: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": LABEL_SYSTEM}, {"role": "user", "content": review}]
    body = {"model": "gpt-4o-mini", "messages": messages, **fields}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def lines(n: int, prefix: str = "row") -> list[dict[str, Any]]:
    return [line(f"{prefix}-{i}", f"Review {i}: I love it, works great.") for i in range(n)]


def jsonl(items: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def upload(
    sim: Answering,
    content: bytes,
    filename: str = "input.jsonl",
    purpose: str = "batch",
    key: str | None = None,
) -> tuple[int, Any]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + content + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return call(sim, "POST", "/files", raw=body, headers=headers, key=key)


def create(sim: Answering, file_id: str, **fields: Any) -> tuple[int, Any]:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    return call(sim, "POST", "/batches", {**body, "completion_window": "24h", **fields})


def submit(sim: SimServer, items: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """Uploads `items` and creates a batch of them; the new Batch object."""
    status, stored = upload(sim, jsonl(items))
    assert status == 200, stored
    status, batch = create(sim, stored["id"], **fields)
    assert status == 200, batch
    return batch  # type: ignore[no-any-return]


def wait_until_ended(sim: Answering, batch_id: str, timeout_s: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, batch = call(sim, "GET", f"/batches/{batch_id}")
        if status == 200 and batch["status"] in ENDED:
            return batch  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not end in {timeout_s} s")


def content(sim: SimServer, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    status, payload = call(sim, "GET", f"/files/{file_id}/content")
    assert status == 200
    text = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return [json.loads(row) for row in text.splitlines()]


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with start_in_thread(SimConfig(batch_delay_s=0.05)) as server:
        yield server


def test_files_upload_get_list_content_and_delete(sim: SimServer) -> None:
    first = jsonl(lines(3))
    status, stored = upload(sim, first, filename="a.jsonl")
    assert status == 200
    assert stored["id"].startswith("file-")
    assert {k: stored[k] for k in ("object", "bytes", "filename", "purpose", "status")} == {
        "object": "file",
        "bytes": len(first),
        "filename": "a.jsonl",
        "purpose": "batch",
        "status": "processed",
    }
    assert isinstance(stored["created_at"], int)
    assert call(sim, "GET", f"/files/{stored['id']}") == (200, stored)
    status, payload = call(sim, "GET", f"/files/{stored['id']}/content")
    assert (status, payload) == (200, first)

    ids = [stored["id"]] + [upload(sim, jsonl(lines(1, f"f{i}")))[1]["id"] for i in range(4)]
    status, page = call(sim, "GET", "/files?limit=2")
    assert (page["object"], [f["id"] for f in page["data"]]) == ("list", ids[::-1][:2])
    assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[4], ids[3], True)
    status, page = call(sim, "GET", f"/files?limit=2&order=asc&after={ids[1]}")
    assert [f["id"] for f in page["data"]] == ids[2:4]
    status, page = call(sim, "GET", f"/files?order=asc&after={ids[3]}")
    assert ([f["id"] for f in page["data"]], page["has_more"]) == ([ids[4]], False)
    assert call(sim, "GET", "/files?purpose=batch_output")[1]["data"] == []
    assert call(sim, "GET", "/files?limit=0")[0] == 400

    assert call(sim, "DELETE", f"/files/{ids[0]}") == (
        200,
        {"id": ids[0], "object": "file", "deleted": True},
    )
    status, missing = call(sim, "GET", f"/files/{ids[0]}")
    assert (status, missing["error"]["code"]) == (404, "file_not_found")
    assert call(sim, "DELETE", f"/files/{ids[0]}")[0] == 404


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"custom_id": "a"\n', "Line 1 is not valid JSON"),
        (jsonl([{**line("a", "x"), "custom_id": None}]), "Line 1 has no custom_id"),
        (jsonl([line("a", "x"), line("a", "y")]), "Line 2 repeats custom_id 'a'"),
        (jsonl([{**line("a", "x"), "method": "GET"}]), "only 'POST'"),
        (jsonl([{**line("a", "x"), "url": "/v1/embeddings"}]), "only '/v1/chat/completions'"),
        (jsonl([{**line("a", "x"), "body": "hi"}]), "Line 1 has no body object"),
        (b"\n\n", "holds no requests"),
    ],
)
def test_an_upload_that_is_not_a_batch_file_is_refused(
    sim: SimServer, content: bytes, says: str
) -> None:
    status, answer = upload(sim, content)
    assert status == 400
    assert says in answer["error"]["message"]
    assert (answer["error"]["type"], answer["error"]["param"]) == ("invalid_request_error", "file")
    assert call(sim, "GET", "/files")[1]["data"] == []
    assert sim.batch_ledger is not None and sim.batch_ledger.uploads == []


def test_uploads_beyond_the_line_and_byte_limits_are_refused(
    sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_files, "MAX_FILE_LINES", 3)
    assert upload(sim, jsonl(lines(3)))[0] == 200
    status, answer = upload(sim, jsonl(lines(4)))
    assert (status, answer["error"]["message"]) == (
        400,
        "The file holds more than the maximum of 3 requests.",
    )
    monkeypatch.setattr(batch_files, "MAX_FILE_BYTES", 500)
    status, answer = upload(sim, jsonl(lines(3)))
    assert (status, "larger than the maximum of 500 bytes" in answer["error"]["message"]) == (
        400,
        True,
    )
    status, answer = upload(sim, jsonl(lines(1)), purpose="fine-tune")
    assert (status, answer["error"]["param"]) == (400, "purpose")


def test_the_api_key_is_checked_as_for_chat() -> None:
    with start_in_thread(SimConfig(api_key=KEY, batch_delay_s=0.05)) as sim:
        refused = call(sim, "POST", "/chat/completions", line("a", "x")["body"], key="sk-wrong")
        for method, path in (("GET", "/files"), ("GET", "/batches"), ("GET", "/files/file-x")):
            assert call(sim, method, path, key="sk-wrong") == refused
        assert upload(sim, jsonl(lines(1)), key="sk-wrong") == refused
        assert refused[0] == 401
        status, stored = upload(sim, jsonl(lines(1)), key=KEY)
        assert status == 200
        assert call(sim, "GET", "/files", key=KEY)[1]["data"] == [stored]


def test_a_batch_answers_each_line_as_chat_would(sim: SimServer) -> None:
    items = [*lines(5), line("json", "Meh.", response_format={"type": "json_object"})]
    batch = submit(sim, items, metadata={"job": "reviews", "part": "1"})
    assert batch["id"].startswith("batch_")
    assert (batch["object"], batch["status"], batch["endpoint"]) == (
        "batch",
        "validating",
        "/v1/chat/completions",
    )
    assert batch["metadata"] == {"job": "reviews", "part": "1"}
    assert batch["expires_at"] == batch["created_at"] + 24 * 3600
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}

    done = wait_until_ended(sim, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    assert done["error_file_id"] is None
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert done[stamp] >= done["created_at"]
    assert done["failed_at"] is done["cancelled_at"] is done["expired_at"] is None
    output = content(sim, done["output_file_id"])
    assert [row["custom_id"] for row in output] == [item["custom_id"] for item in items]
    for row, item in zip(output, items, strict=True):
        assert row["id"].startswith("batch_req_") and row["error"] is None
        assert row["response"]["status_code"] == 200
        assert row["response"]["request_id"].startswith("req_")
        assert row["response"]["body"] == call(sim, "POST", "/chat/completions", item["body"])[1]
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "positive"
    _status, stored = call(sim, "GET", f"/files/{done['output_file_id']}")
    assert (stored["purpose"], stored["filename"]) == (
        "batch_output",
        f"{batch['id']}_output.jsonl",
    )


def test_batches_are_listed_newest_first_in_pages(sim: SimServer) -> None:
    ids = [submit(sim, lines(1, f"b{i}"))["id"] for i in range(5)]
    status, page = call(sim, "GET", "/batches?limit=2")
    assert ([b["id"] for b in page["data"]], page["has_more"]) == (ids[::-1][:2], True)
    status, page = call(sim, "GET", f"/batches?after={page['last_id']}")
    assert ([b["id"] for b in page["data"]], page["has_more"]) == (ids[::-1][2:], False)
    status, missing = call(sim, "GET", "/batches/batch_nope")
    assert status == 404 and missing["error"]["code"] == "batch_not_found"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
    ],
)
def test_a_batch_request_out_of_bounds_is_refused(
    sim: SimServer, fields: dict[str, Any], param: str
) -> None:
    file_id = upload(sim, jsonl(lines(1)))[1]["id"]
    status, answer = create(sim, file_id, **fields)
    assert (status, answer["error"]["param"]) == (400, param)
    status, answer = create(sim, "file-unknown")
    assert (status, answer["error"]["code"]) == (404, "file_not_found")


def test_line_faults_answer_errors_and_the_rest_in_the_output() -> None:
    config = SimConfig(batch_delay_s=0.01, batch_line_faults={"server_error": 0.5}, seed=1)
    with start_in_thread(config) as sim:
        items = [*lines(20), line("too-long", "Review [[sim:context_length]] fine")]
        done = wait_until_ended(sim, submit(sim, items)["id"])
        output = content(sim, done["output_file_id"])
        errors = content(sim, done["error_file_id"])
    assert (len(output), len(errors)) == (
        done["request_counts"]["completed"],
        done["request_counts"]["failed"],
    )
    assert {row["custom_id"] for row in output + errors} == {i["custom_id"] for i in items}
    statuses = {row["response"]["status_code"] for row in errors if row["custom_id"] != "too-long"}
    assert statuses <= {500, 502, 503, 504} and statuses
    too_long = next(row for row in errors if row["custom_id"] == "too-long")
    assert too_long["response"]["status_code"] == 400
    assert too_long["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert all(row["error"] is None for row in errors)


def test_a_batch_expires_after_its_share_of_lines() -> None:
    with start_in_thread(SimConfig(batch_delay_s=0.01, batch_expire_after=0.5)) as sim:
        items = lines(10)
        done = wait_until_ended(sim, submit(sim, items)["id"])
        output = content(sim, done["output_file_id"])
        errors = content(sim, done["error_file_id"])
    assert done["status"] == "expired" and done["expired_at"] is not None
    assert done["completed_at"] is None
    assert done["request_counts"] == {"total": 10, "completed": 5, "failed": 0}
    assert [row["custom_id"] for row in output] == [i["custom_id"] for i in items[:5]]
    assert [row["custom_id"] for row in errors] == [i["custom_id"] for i in items[5:]]
    assert errors[0]["response"] is None
    assert errors[0]["error"]["code"] == "batch_expired"


def test_a_cancelled_batch_keeps_what_it_answered() -> None:
    with start_in_thread(SimConfig(batch_delay_s=0.05, batch_line_ms=20)) as sim:
        batch = submit(sim, lines(40))
        deadline = time.monotonic() + 5
        while call(sim, "GET", f"/batches/{batch['id']}")[1]["request_counts"]["completed"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, cancelling = call(sim, "POST", f"/batches/{batch['id']}/cancel")
        assert (status, cancelling["status"]) == (200, "cancelling")
        assert cancelling["cancelling_at"] is not None
        done = wait_until_ended(sim, batch["id"])
        output = content(sim, done["output_file_id"])
        errors = content(sim, done["error_file_id"])
        status, again = call(sim, "POST", f"/batches/{batch['id']}/cancel")
        assert status == 409 and "status 'cancelled'" in again["error"]["message"]
        ledger = sim.batch_ledger
    assert done["status"] == "cancelled" and done["cancelled_at"] is not None
    answered = done["request_counts"]["completed"]
    assert 3 <= answered < 40 and len(output) == answered
    assert len(errors) == 40 - answered
    assert {row["error"]["code"] for row in errors} == {"batch_cancelled"}
    assert ledger is not None
    assert [c.batch_id for c in ledger.cancels] == [batch["id"]]
    assert ledger.batches[0].status == "cancelled"


def test_a_batch_cancelled_while_validating_answers_nothing(sim: SimServer) -> None:
    batch = submit(sim, lines(3))
    assert call(sim, "POST", f"/batches/{batch['id']}/cancel")[1]["status"] == "cancelling"
    done = wait_until_ended(sim, batch["id"])
    assert (done["status"], done["output_file_id"]) == ("cancelled", None)
    assert len(content(sim, done["error_file_id"])) == 3


def test_batches_beyond_the_enqueued_token_cap_fail() -> None:
    config = SimConfig(batch_delay_s=0.05, batch_line_ms=5, batch_enqueued_tokens=1_000)
    with start_in_thread(config) as sim:
        items = [line(f"r{i}", "I love it.", max_tokens=100) for i in range(6)]
        first = submit(sim, items)
        second = submit(sim, [line("other", "Fine.", max_tokens=500)])
        failed = wait_until_ended(sim, second["id"])
        assert wait_until_ended(sim, first["id"])["status"] == "completed"
        third = wait_until_ended(sim, submit(sim, [line("again", "Fine.", max_tokens=500)])["id"])
    assert failed["status"] == "failed" and failed["failed_at"] is not None
    assert failed["errors"]["object"] == "list"
    [error] = failed["errors"]["data"]
    assert error["code"] == "token_limit_exceeded"
    assert "Enqueued token limit reached for gpt-4o-mini" in error["message"]
    assert failed["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert third["status"] == "completed"


def test_an_unknown_status_stands_in_for_validating() -> None:
    with start_in_thread(SimConfig(batch_delay_s=0.2, batch_unknown_status="in_queue")) as sim:
        batch = submit(sim, lines(2))
        assert batch["status"] == "in_queue"
        assert call(sim, "GET", f"/batches/{batch['id']}")[1]["status"] == "in_queue"
        assert wait_until_ended(sim, batch["id"])["status"] == "completed"


def test_some_polls_answer_a_server_error() -> None:
    with start_in_thread(SimConfig(batch_delay_s=0.01, batch_poll_errors=0.5)) as sim:
        batch = submit(sim, lines(1))
        answers = [call(sim, "GET", f"/batches/{batch['id']}") for _ in range(40)]
        listings = [call(sim, "GET", "/batches")[0] for _ in range(20)]
    statuses = [status for status, _ in answers]
    assert 8 <= statuses.count(200) <= 32
    assert set(statuses) - {200} <= {500, 502, 503, 504} and set(statuses) - {200}
    assert {status for status, answer in answers if status != 200} == {
        status for status, answer in answers if status >= 500 and "error" in answer
    }
    assert 200 in listings and set(listings) != {200}


def test_a_new_file_is_not_found_at_first() -> None:
    with start_in_thread(SimConfig(batch_delay_s=0.01, file_visible_after_s=0.3)) as sim:
        stored = upload(sim, jsonl(lines(2)))[1]
        status, missing = call(sim, "GET", f"/files/{stored['id']}")
        assert (status, missing["error"]["code"]) == (404, "file_not_found")
        status, missing = create(sim, stored["id"])
        assert (status, missing["error"]["code"]) == (404, "file_not_found")
        assert call(sim, "GET", "/files")[1]["data"] == []
        time.sleep(0.3)
        assert call(sim, "GET", f"/files/{stored['id']}") == (200, stored)
        done = wait_until_ended(sim, create(sim, stored["id"])[1]["id"])
        assert call(sim, "GET", f"/files/{done['output_file_id']}")[0] == 200


def test_the_ledger_shows_uploads_batches_and_repeats(sim: SimServer) -> None:
    first = submit(sim, lines(3), metadata={"part": "1"})
    _status, again = upload(sim, jsonl(lines(2)), filename="input.jsonl")
    second = wait_until_ended(sim, create(sim, again["id"])[1]["id"])
    wait_until_ended(sim, first["id"])
    ledger = sim.batch_ledger
    assert ledger is not None
    assert [u.custom_ids for u in ledger.uploads] == [
        ("row-0", "row-1", "row-2"),
        ("row-0", "row-1"),
    ]
    assert ledger.filenames_uploaded_twice() == ["input.jsonl"]
    [one, two] = ledger.batches
    assert (one.batch_id, one.input_file_id, dict(one.metadata), one.status) == (
        first["id"],
        first["input_file_id"],
        {"part": "1"},
        "completed",
    )
    assert (two.batch_id, two.custom_ids, two.status) == (
        second["id"],
        ("row-0", "row-1"),
        "completed",
    )
    assert ledger.custom_ids_in_two_batches() == ["row-0", "row-1"]
    assert ledger.custom_ids_in_two_batches(statuses=("failed",)) == []


def test_stopping_the_server_removes_its_files() -> None:
    before = set(Path(tempfile.gettempdir()).glob("batchrun-sim-*"))
    with start_in_thread(SimConfig(batch_delay_s=0.01, batch_line_ms=50)) as sim:
        wait_until_ended(sim, submit(sim, lines(1))["id"])
        submit(sim, lines(100))  # still running when the server stops
        # Its own folder: the one holding its files (other simulators, in this process or
        # another, may make theirs meanwhile).
        made = set(Path(tempfile.gettempdir()).glob("batchrun-sim-*")) - before
        [folder] = [f for f in made if len(list(f.iterdir())) == 3]  # two inputs, an output
    assert not folder.exists()


def test_settings_are_checked_and_taken_from_the_command_line() -> None:
    for bad in (
        {"batch_delay_s": -1},
        {"batch_line_faults": {"reset": 0.1}},
        {"batch_line_faults": {"server_error": 0.7, "rate_limit": 0.7}},
        {"batch_expire_after": 1.5},
        {"batch_enqueued_tokens": 0},
        {"batch_unknown_status": " "},
        {"batch_poll_errors": 2},
        {"file_visible_after_s": -0.1},
    ):
        with pytest.raises(ValueError):
            SimConfig(**bad)
    parser = argparse.ArgumentParser(prog="batchrun sim")
    add_sim_arguments(parser)
    ns = parser.parse_args(
        [
            "--batch-delay-s=0.5",
            "--batch-line-ms=2",
            "--batch-line-faults=server_error=0.05,context_length=0.01",
            "--batch-expire-after=0.5",
            "--batch-enqueued-tokens=90000",
            "--batch-unknown-status=in_queue",
            "--batch-poll-errors=0.2",
            "--file-visible-after-s=2",
        ]
    )
    assert config_from_args(ns) == SimConfig(
        batch_delay_s=0.5,
        batch_line_ms=2,
        batch_line_faults={"server_error": 0.05, "context_length": 0.01},
        batch_expire_after=0.5,
        batch_enqueued_tokens=90_000,
        batch_unknown_status="in_queue",
        batch_poll_errors=0.2,
        file_visible_after_s=2,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-line-faults=reset=0.1"])


# The child: a simulator whose peak memory the parent reads from /proc while it works.
_CHILD = """
import sys
from batchrun.sim import SimConfig, start_in_thread
with start_in_thread(SimConfig(batch_delay_s=0.01, batch_expire_after=0.1)) as server:
    print(server.base_url, flush=True)
    sys.stdin.read()
"""


def _peak_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(row for row in status.splitlines() if row.startswith("VmHWM:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_fifty_thousand_lines_go_through_without_the_server_holding_them() -> None:
    # The input is about 30 MB and the files the batch writes as much again; a server that
    # read the upload whole, or built the output in memory, would grow by more than that.
    # A tenth of the lines are answered (the batch expires), the rest written as expired,
    # to keep the test short: both kinds go through the same line-by-line writing.
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        url = child.stdout.readline().strip()
        sim = _Remote(url)
        review = "The battery lasts all day and the screen is bright. " * 8
        items = [line(f"row-{i:05d}", f"{review} ({i})") for i in range(50_000)]
        data = jsonl(items)
        assert len(data) > 25_000_000
        before = _peak_kib(child.pid)
        status, stored = upload(sim, data)
        assert status == 200, stored
        del data
        status, batch = create(sim, stored["id"])
        done = wait_until_ended(sim, batch["id"], timeout_s=60)
        assert done["request_counts"]["completed"] == 5_000
        total = 0
        for file_id in (done["output_file_id"], done["error_file_id"]):
            with urllib.request.urlopen(f"{url}/files/{file_id}/content") as response:
                while chunk := response.read(1 << 20):
                    total += chunk.count(b"\n")
        assert total == 50_000
        grown_mib = (_peak_kib(child.pid) - before) / 1024
        child.stdin.close()
    assert grown_mib < 20, f"the simulator grew by {grown_mib:.0f} MiB"


@dataclass(frozen=True)
class _Remote:
    """A simulator in another process."""

    base_url: str
