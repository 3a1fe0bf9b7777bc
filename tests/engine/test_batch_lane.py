"""The batch lane through the `batchrun` command, against the simulator's Files and Batches
API: every row answered once at the batch price, the deadline's hand-over, `--detach`,
Ctrl-C and `cancel-batches`, each fault of the simulator, the budget and a bad key.

Each test checks exactly-once from both sides: the output and the checkpoint hold each row
once, and the simulator's ledger shows no file uploaded twice and no row in two batches
(where a test makes a batch end without answering rows, the ones it left are sent again).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.checkpoint.batches import Intent, Ledger
from batchrun.sim import SimConfig, SimServer, start_in_thread
from batchrun.sim.ledger import BatchLedger

from ..conftest import FAKE_KEY, Workspace, reviews

ROWS = 30
ENDED = ("completed", "failed", "expired", "cancelled")


def batch(server: SimServer, **settings: Any) -> dict[str, Any]:
    """A batch endpoint at `server`, polled often, ten lines a file unless `settings` say."""
    return {
        "name": "batch",
        "base_url": server.base_url,
        "api_key_env": "BATCHRUN_TEST_KEY",
        "kind": "batch",
        "batch_rows": 10,
        "poll_s": 0.05,
        **settings,
    }


def direct(server: SimServer) -> dict[str, Any]:
    return {"name": "direct", "base_url": server.base_url, "api_key_env": "BATCHRUN_TEST_KEY"}


@pytest.fixture
def started() -> Iterator[Callable[..., SimServer]]:
    """Starts simulators with the given settings; stops them after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **settings: stack.enter_context(start_in_thread(SimConfig(**settings)))


def ledger_of(server: SimServer) -> BatchLedger:
    """What the simulator's Files and Batches API was asked to do."""
    assert server.batch_ledger is not None
    return server.batch_ledger


def checkpoint(ws: Workspace) -> Path:
    return ws.output.parent / (ws.output.name + ".checkpoint")


def committed(ws: Workspace) -> pl.DataFrame:
    """Every result committed into the job's checkpoint, in commit order."""
    return pl.read_parquet(sorted(checkpoint(ws).glob("seg-*.parquet")))


def intents(ws: Workspace) -> list[Intent]:
    """The lane's ledger: one intent per Batch file."""
    return Ledger(checkpoint(ws)).intents()


def assert_answered_once(ws: Workspace, n: int = ROWS) -> pl.DataFrame:
    """Every row `ok` in the output, once; the checkpoint holds one `ok` result a row."""
    out = ws.read_output()
    assert out.height == n
    assert out["id"].n_unique() == n
    assert out["status"].to_list() == ["ok"] * n
    oks = committed(ws).filter(pl.col("status") == "ok").group_by("row_key").len()
    assert oks.height == n
    assert oks["len"].max() == 1
    return out


def assert_never_twice(server: SimServer, statuses: tuple[str, ...] | None = None) -> None:
    """No file uploaded twice, no row in two batches (of those `statuses`)."""
    ledger = ledger_of(server)
    assert ledger.uploads
    assert ledger.filenames_uploaded_twice() == []
    assert ledger.custom_ids_in_two_batches(statuses) == []


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


# -- the lane alone -----------------------------------------------------------------------


def test_a_batch_endpoint_alone_answers_every_row_once_at_half_the_direct_cost(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.05)
    ws.write_input(reviews(ROWS))
    job = ws.job(endpoints=[batch(server)])
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    assert f"{ROWS} ok, 0 failed, 0 pending" in result.out
    by_batch = assert_answered_once(ws)
    assert set(by_batch["endpoint"]) == {"batch"}
    assert_never_twice(server)
    assert len(ledger_of(server).batches) == ROWS // 10
    assert [i.collected["ok"] for i in intents(ws)] == [10, 10, 10]

    # The same rows through a direct endpoint of the same model: each costs twice as much.
    ws.output = ws.root / "direct" / "result.parquet"
    direct_job = ws.job(
        endpoints=[direct(server)], output={"path": "direct/result.parquet"}, file="direct.toml"
    )
    assert ws.run("run", str(direct_job)).code == 0
    by_direct = assert_answered_once(ws)
    assert set(by_direct["endpoint"]) == {"direct"}
    costs = by_batch.join(by_direct, on="id", suffix="_direct")
    assert costs["completion_tokens"].to_list() == costs["completion_tokens_direct"].to_list()
    assert costs["cost_usd"].min() > 0
    assert costs["cost_usd"].to_list() == pytest.approx(
        (costs["cost_usd_direct"] * 0.5).to_list(), rel=1e-9
    )


# -- the deadline -------------------------------------------------------------------------


def test_at_the_deadline_the_batch_is_cancelled_its_finished_rows_kept_the_rest_sent_direct(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    # 20 lines of 0.1 s each: about 8 of them are answered when the deadline comes at 1 s;
    # the batch is cancelled within 0.05 s, well before the lane's last look at it.
    server = started(batch_delay_s=0.05, batch_line_ms=100)
    ws.write_input(reviews(20))
    job = ws.job(
        endpoints=[batch(server, batch_rows=20, poll_s=0.2), direct(server)],
        limits={"deadline_s": 1.0},
    )
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    out = assert_answered_once(ws, 20)
    (intent,) = intents(ws)
    assert intent.status == "cancelled"
    assert intent.handed_over_at is not None and intent.collected_at is not None
    finished = intent.counts["completed"]
    assert 0 < finished < 20
    # The batch answers its lines in order: its finished ones stand, the rest went direct.
    endpoints = out.sort("input_row")["endpoint"].to_list()
    assert endpoints == ["batch"] * finished + ["direct"] * (20 - finished)
    assert intent.collected["ok"] == finished
    assert intent.collected["already"] == 0
    assert intent.collected["late_cost"] == 0
    assert [c.batch_id for c in ledger_of(server).cancels] == [intent.batch_id]
    assert_never_twice(server)


def test_answers_of_a_cancelled_batch_after_its_rows_went_direct_are_paid_twice_not_recorded(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    # The batch takes 2 s to validate and 2 s to cancel: it answers about 8 lines before the
    # deadline, and its answers come after the lane's last look, so the rows all go direct.
    server = started(batch_delay_s=2.0, batch_line_ms=100)
    ws.write_input(reviews(20))
    job = ws.job(
        endpoints=[batch(server, batch_rows=20), direct(server)],
        limits={"deadline_s": 3.0},
    )
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    before = assert_answered_once(ws, 20)
    assert set(before["endpoint"]) == {"direct"}
    wait_for(lambda: ledger_of(server).batches[0].status == "cancelled")

    # The next run collects the cancelled batch: nothing is recorded again, and what its
    # answers cost is counted as paid twice.
    again = ws.run("run", str(job))
    assert again.code == 0, again.err
    after = assert_answered_once(ws, 20)
    assert after.sort("id").equals(before.sort("id"))
    (intent,) = intents(ws)
    finished = intent.counts["completed"]
    assert 0 < finished < 20
    assert intent.collected["ok"] == 0
    assert intent.collected["already"] == 20  # its answers and its unanswered lines
    paid_direct = before.sort("input_row")["cost_usd"].head(finished).sum()
    assert intent.collected["late_cost"] == pytest.approx(paid_direct * 0.5, rel=1e-9)
    assert intent.collected["late_cost"] > 0
    assert_never_twice(server)


def test_at_the_deadline_a_file_the_provider_refused_is_handed_over_whole(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    # The provider takes one file of ten lines at once, the lane's cap two: when the
    # deadline comes, the second file has no batch; its rows go direct, and it is done with.
    server = started(batch_delay_s=0.05, batch_line_ms=100, batch_enqueued_tokens=500)
    ws.write_input(reviews(20))
    job = ws.job(
        endpoints=[batch(server, batch_enqueued_tokens=1000, poll_s=0.2), direct(server)],
        limits={"deadline_s": 0.5},
    )
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    out = assert_answered_once(ws, 20)
    running, refused = intents(ws)
    assert refused.refused and refused.batch_id is None
    assert refused.collected == {"cancelled": True}
    assert running.collected["ok"] == out.filter(pl.col("endpoint") == "batch").height
    assert Ledger(checkpoint(ws)).open() == []
    assert_never_twice(server, ("completed", "cancelled"))


def test_without_a_direct_endpoint_the_deadline_stops_the_run_and_the_batch_keeps_running(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.05, batch_line_ms=100)
    ws.write_input(reviews(20))
    job = ws.job(endpoints=[batch(server, batch_rows=20)], limits={"deadline_s": 0.5})
    result = ws.run("run", str(job))
    assert result.code == 3, result.err
    assert result.err.strip() == (
        "batchrun: The deadline (0.5 s, limits.deadline_s) passed with no direct endpoint to "
        "take the rows left: 20 rows are in 1 batches still running at batch (they are paid "
        "for); run the same command to collect them, or `batchrun cancel-batches` to cancel "
        "them."
    )
    assert ledger_of(server).cancels == []
    (intent,) = intents(ws)
    assert intent.live

    wait_for(lambda: ledger_of(server).batches[0].status == "completed")
    again = ws.run("run", str(job))
    assert again.code == 0, again.err
    assert set(assert_answered_once(ws, 20)["endpoint"]) == {"batch"}
    assert_never_twice(server)


# -- detach, Ctrl-C, cancel-batches -------------------------------------------------------


def test_detach_submits_and_exits_then_run_collects(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.3)
    ws.write_input(reviews(ROWS))
    job = ws.job(endpoints=[batch(server)])
    result = ws.run("run", str(job), "--detach")
    assert result.code == 0, result.err
    assert f"0 ok, 0 failed, {ROWS} pending" in result.out
    assert (
        f"batches: {ROWS} rows are in 3 batches still running; run the same command to "
        f"collect them, or `batchrun cancel-batches` to cancel them"
    ) in result.out
    assert len(ledger_of(server).batches) == 3
    assert all(i.batch_id is not None and i.collected_at is None for i in intents(ws))

    again = ws.run("run", str(job))
    assert again.code == 0, again.err
    assert f"{ROWS} ok, 0 failed, 0 pending" in again.out
    assert set(assert_answered_once(ws)["endpoint"]) == {"batch"}
    assert len(ledger_of(server).batches) == 3
    assert_never_twice(server)


def test_rows_in_batches_still_running_are_sent_no_other_way(
    ws: Workspace, started: Callable[..., SimServer], tmp_path: Path
) -> None:
    """While batches run, a run of the job without its batch endpoint is refused before
    anything is sent, and export-batch writes only the rows no batch holds."""
    server = started(batch_delay_s=30)
    ws.write_input(reviews(ROWS))
    job = ws.job(endpoints=[batch(server, batch_rows=20)], limits={"max_attempts": 1})
    assert ws.run("run", str(job), "--detach", "--limit", "20").code == 0
    held = sum(i.rows for i in intents(ws))
    assert held == 20

    without = ws.job(endpoints=[direct(server)], file="direct.toml")
    refused = ws.run("run", str(without))
    assert refused.code == 2, refused.err
    assert (
        f"{held} rows of this job are in 1 batch(es) still running at endpoint 'batch', and a "
        f"run without that endpoint would pay for them twice" in refused.err
    )
    assert server.requests == []  # nothing sent directly

    exported = ws.run("export-batch", str(job), str(tmp_path / "files"))
    assert exported.code == 0, exported.err
    lines = (tmp_path / "files" / "batch-0001.jsonl").read_text().splitlines()
    assert len(lines) == ROWS - held
    assert f"{held} rows in the batch lane's batches still running" in exported.out


def test_ctrl_c_while_waiting_leaves_the_batches_running_and_run_collects(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.05, batch_line_ms=300)
    ws.write_input(reviews(20))
    job = ws.job(endpoints=[batch(server)])
    env = {**os.environ, "BATCHRUN_TEST_KEY": FAKE_KEY}
    with subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", "run", str(job), "--quiet"],
        cwd=ws.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        wait_for(lambda: len(ledger_of(server).batches) == 2 or child.poll() is not None)
        assert child.poll() is None, child.communicate()
        time.sleep(0.2)  # the lane waits on its batches
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "0 ok, 0 failed, 20 pending" in out
    assert "Traceback" not in err
    assert (
        "Interrupted: 20 rows are in 2 batches still running at batch (they are paid for); "
        "run the same command to collect them, or `batchrun cancel-batches` to cancel them."
    ) in err
    assert ledger_of(server).cancels == []

    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    assert set(assert_answered_once(ws, 20)["endpoint"]) == {"batch"}
    assert len(ledger_of(server).batches) == 2
    assert_never_twice(server)


def test_cancel_batches_collects_the_finished_lines_and_a_later_run_answers_the_rest(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.05, batch_line_ms=150)
    ws.write_input(reviews(20))
    job = ws.job(endpoints=[batch(server, batch_rows=20)])
    assert ws.run("run", str(job), "--detach").code == 0
    time.sleep(0.6)  # a few lines answered

    cancelled = ws.run("cancel-batches", str(job))
    assert cancelled.code == 0, cancelled.err
    (first,) = ledger_of(server).batches
    assert first.status == "cancelled"
    (intent,) = intents(ws)
    finished = intent.collected["ok"]
    assert 0 < finished < 20
    assert intent.collected["pending"] == {"batch_cancelled": 20 - finished}
    assert f"{finished} ok, 0 failed, {20 - finished} pending" in cancelled.out
    out = ws.read_output()
    assert out.filter(pl.col("status") == "ok").height == finished

    again = ws.run("run", str(job))
    assert again.code == 0, again.err
    assert_answered_once(ws, 20)
    batches = ledger_of(server).batches
    assert len(batches) == 2
    assert len(batches[1].custom_ids) == 20 - finished
    assert set(batches[1].custom_ids).isdisjoint(
        set(first.custom_ids[:finished])
    )  # the lines it finished are not sent again
    assert_never_twice(server, ("completed",))


# -- the simulator's faults ---------------------------------------------------------------


def test_lines_answered_with_a_retryable_error_go_into_a_later_batch(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.05, batch_line_faults={"server_error": 0.3})
    ws.write_input(reviews(ROWS))
    job = ws.job(endpoints=[batch(server)], limits={"max_attempts": 8})
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    assert set(assert_answered_once(ws)["endpoint"]) == {"batch"}
    # Each line answered with a 5xx went into a later batch, once; no other line went again.
    sent_again = sum(i.collected["pending"].get("server_error", 0) for i in intents(ws))
    assert sent_again > 0
    batches = ledger_of(server).batches
    assert sum(len(b.custom_ids) for b in batches) == ROWS + sent_again
    assert ledger_of(server).filenames_uploaded_twice() == []


def test_lines_answered_with_a_retryable_error_go_direct_where_there_is_a_direct_endpoint(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.05, batch_line_faults={"rate_limit": 0.3})
    ws.write_input(reviews(ROWS))
    job = ws.job(endpoints=[batch(server), direct(server)])
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    out = assert_answered_once(ws)
    sent_again = sum(i.collected["pending"].get("rate_limited", 0) for i in intents(ws))
    assert sent_again > 0
    assert out["endpoint"].value_counts().sort("endpoint").rows() == [
        ("batch", ROWS - sent_again),
        ("direct", sent_again),
    ]
    assert len(ledger_of(server).batches) == 3
    assert_never_twice(server)


def test_a_line_answered_with_a_final_error_is_a_failed_row(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.05)
    rows = reviews(10).with_columns(
        pl.when(pl.col("id") == "r0003")
        .then(pl.col("text") + " [[sim:context_length]]")
        .otherwise(pl.col("text"))
        .alias("text")
    )
    ws.write_input(rows)
    job = ws.job(endpoints=[batch(server), direct(server)])
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    assert "9 ok, 1 failed, 0 pending" in result.out
    out = ws.read_output()
    failed = out.filter(pl.col("status") == "failed")
    assert failed["id"].to_list() == ["r0003"]
    assert failed["error"].to_list() == ["context_length"]
    assert failed["endpoint"].to_list() == ["batch"]
    assert len(ledger_of(server).batches) == 1
    assert_never_twice(server)


def test_a_batch_that_expires_part_done_has_the_rest_resubmitted(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    # Every batch expires with half its lines answered: 16 rows go in 16, 8, 4 and 2 lines;
    # the row left on its fourth attempt fails (limits.max_attempts).
    server = started(batch_delay_s=0.05, batch_expire_after=0.5)
    ws.write_input(reviews(16))
    job = ws.job(endpoints=[batch(server, batch_rows=16)], limits={"max_attempts": 4})
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    assert "15 ok, 1 failed, 0 pending" in result.out
    batches = ledger_of(server).batches
    assert [len(b.custom_ids) for b in batches] == [16, 8, 4, 2]
    assert {b.status for b in batches} == {"expired"}
    for earlier, later in itertools.pairwise(batches):
        assert set(later.custom_ids) == set(earlier.custom_ids[len(later.custom_ids) :])
    out = ws.read_output()
    assert out.filter(pl.col("status") == "failed")["error"].to_list() == ["batch_expired"]
    assert ledger_of(server).filenames_uploaded_twice() == []


def test_a_batch_refused_for_the_enqueued_token_cap_is_created_again_once_there_is_room(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    # Ten lines hold about 380 tokens: the lane's cap lets two files run at once, the
    # provider's only one; a refused batch waits for the running one and goes again.
    server = started(batch_delay_s=0.2, batch_enqueued_tokens=500)
    ws.write_input(reviews(ROWS))
    job = ws.job(endpoints=[batch(server, batch_enqueued_tokens=1000)])
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    assert f"{ROWS} ok, 0 failed, 0 pending" in result.out
    assert set(assert_answered_once(ws)["endpoint"]) == {"batch"}
    records = intents(ws)
    assert all(0 < i.tokens <= 1000 for i in records)
    assert any(i.refused for i in records)
    assert sum(i.collected["failed"] for i in records) == 0
    batches = ledger_of(server).batches
    refused = [b for b in batches if b.status == "failed"]
    completed = [b for b in batches if b.status == "completed"]
    assert refused
    assert {b.input_file_id for b in refused} <= {b.input_file_id for b in completed}
    assert sum(len(b.custom_ids) for b in completed) == ROWS
    assert_never_twice(server, ("completed",))


def test_an_unknown_status_is_taken_as_still_running_with_one_warning(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.4, batch_unknown_status="in_queue")
    ws.write_input(reviews(ROWS))
    job = ws.job(endpoints=[batch(server)])
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    assert_answered_once(ws)
    warnings = [line for line in result.err.splitlines() if "'in_queue'" in line]
    assert len(warnings) == 1, result.err
    assert "a status batchrun does not know; it is taken as still running" in warnings[0]
    assert_never_twice(server)


def test_5xx_on_polling_are_retried(ws: Workspace, started: Callable[..., SimServer]) -> None:
    server = started(batch_delay_s=0.05, batch_poll_errors=0.5)
    ws.write_input(reviews(ROWS))
    job = ws.job(endpoints=[batch(server)])
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    assert set(assert_answered_once(ws)["endpoint"]) == {"batch"}
    assert len(ledger_of(server).batches) == 3
    assert_never_twice(server)


def test_a_file_not_found_just_after_upload_is_retried(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.05, file_visible_after_s=0.2)
    ws.write_input(reviews(ROWS))
    job = ws.job(endpoints=[batch(server)])
    result = ws.run("run", str(job))
    assert result.code == 0, result.err
    assert_answered_once(ws)
    assert len(ledger_of(server).uploads) == 3
    assert len(ledger_of(server).batches) == 3
    assert_never_twice(server)


# -- the budget and the key ---------------------------------------------------------------


def test_the_budget_stops_the_run_before_a_file_that_could_pass_it_is_uploaded(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(batch_delay_s=0.05)
    ws.write_input(reviews(ROWS))
    # One file's worst case (about $0.00005 at the batch price) fits, two do not.
    job = ws.job(endpoints=[batch(server)], cost={"budget_usd": 0.00008})
    result = ws.run("run", str(job))
    assert result.code == 3, result.err
    assert "The budget of $0.00 is reached: the next Batch file of 10 rows could cost" in (
        result.err
    )
    assert "Traceback" not in result.err
    records = intents(ws)
    assert len(records) == 1
    assert records[0].reserved_usd <= 0.00008 < 2 * records[0].reserved_usd
    assert len(ledger_of(server).uploads) == 1


def test_a_bad_key_stops_the_lane_in_one_sentence_and_never_shows_the_key(
    ws: Workspace, started: Callable[..., SimServer]
) -> None:
    server = started(api_key="sk-the-right-one-0123456789")
    ws.write_input(reviews(ROWS))
    job = ws.job(endpoints=[batch(server)])
    result = ws.run("run", str(job))
    assert result.code == 3
    assert "Traceback" not in result.err
    message = [line for line in result.err.splitlines() if line.strip()]
    assert len(message) == 1, result.err
    assert "BATCHRUN_TEST_KEY" in message[0]
    assert FAKE_KEY not in result.out + result.err
    assert FAKE_KEY[-8:] not in result.out + result.err
    assert ledger_of(server).uploads == []
