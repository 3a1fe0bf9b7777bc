"""Input, output and checkpoint on S3 (a moto server on loopback): a run, a resume on
another machine (another cache), one run at a time by the lease, a driver killed and run
again, and what a user sees when S3 cannot be reached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.checkpoint.segments import _damage
from batchrun.sim import SimConfig, start_in_thread
from batchrun.storage.runlock import RunLock
from batchrun.storage.store import Remote, S3Spec, pull, put_whole

from ..conftest import FAKE_KEY, Workspace, latest_results, reviews
from ..s3server import BUCKET, FAKE_SECRET, aws_env

ROWS = 40
KILL_ROWS = 1500
KILL_AFTER = 300  # rows committed on S3 before the run is killed
WAIT_S = 120


@pytest.fixture
def prefix(s3: str) -> str:
    return f"{BUCKET}/{uuid.uuid4().hex}"


def upload_input(ws: Workspace, prefix: str, rows: int) -> str:
    """The reviews as a Parquet object on S3; returns its URL."""
    table = reviews(rows).to_arrow()
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=max(rows // 3, 1))
    put_whole(Remote(prefix).fs, f"{prefix}/input.parquet", sink.getvalue())
    return f"s3://{prefix}/input.parquet"


def s3_job(ws: Workspace, base_url: str, prefix: str, rows: int, **sections: Any) -> Path:
    storage = {"cache": str(ws.root / "cache"), **sections.pop("storage", {})}
    return ws.job(
        base_url,
        input_path=upload_input(ws, prefix, rows),
        output={"path": f"s3://{prefix}/out/result.parquet"},
        storage=storage,
        **sections,
    )


def read_s3(path: str) -> pa.Table:
    remote = Remote(path)
    with remote.fs.open_input_file(path) as handle:
        return pq.read_table(handle)


def committed_on_s3(prefix: str, scratch: Path) -> dict[str, str]:
    """The rows committed in the job's checkpoint on S3 (a copy pulled into `scratch`)."""
    remote = Remote(f"{prefix}/out/result.parquet.checkpoint")
    for _ in range(8):
        try:
            pull(remote, scratch, "seg-*.parquet")
            return latest_results(scratch)
        except FileNotFoundError:
            continue  # a merge removed a segment while it was listed
    raise AssertionError("the checkpoint kept changing under the pull")


def test_a_run_reads_and_writes_s3_and_another_machine_resumes_from_it(
    ws: Workspace, prefix: str
) -> None:
    with start_in_thread(SimConfig()) as server:
        job = s3_job(ws, server.base_url, prefix, ROWS, limits={"commit_interval_s": 0.05})
        first = ws.run("run", str(job), "--quiet")
        assert first.code == 0, first.err
        out = read_s3(f"{prefix}/out/result.parquet")
        assert out.column("id").to_pylist() == [f"r{i:04d}" for i in range(ROWS)]
        assert out.column("status").to_pylist() == ["ok"] * ROWS
        names = Remote(f"{prefix}/out/result.parquet.checkpoint").names()
        assert any(name.startswith("seg-") for name in names)
        assert "lease.json" not in names  # given up at the end of the run
        sent = len(server.requests)
        assert sent == ROWS
        # Another machine: nothing of the first one's copies. It sends nothing, and its
        # status and report count every row.
        elsewhere = ["--set", f"storage.cache={ws.root / 'elsewhere'}"]
        again = ws.run("run", str(job), "--quiet", *elsewhere)
        assert again.code == 0, again.err
        assert len(server.requests) == sent
        status = ws.run("status", str(job), "--set", f"storage.cache={ws.root / 'third'}")
        assert status.code == 0, status.err
        assert f"done     {ROWS}" in status.out
        report = ws.run(
            "report", str(job), "--json", "--set", f"storage.cache={ws.root / 'fourth'}"
        )
        assert report.code == 0, report.err
        assert f'"ok": {ROWS}' in report.out.replace("\n", " ") or f'"ok":{ROWS}' in report.out
        # compare reads S3 outputs too.
        url = f"s3://{prefix}/out/result.parquet"
        compared = ws.run("compare", url, url, "--json")
        assert compared.code == 0, compared.err
        assert json.loads(compared.out)["rows"]["both"] == ROWS
    for result in (first, again, status, report, compared):
        assert FAKE_SECRET not in result.out + result.err
        assert FAKE_KEY not in result.out + result.err


def test_one_run_at_a_time_on_s3(ws: Workspace, prefix: str) -> None:
    with start_in_thread(SimConfig()) as server:
        job = s3_job(ws, server.base_url, prefix, ROWS)
        remote = Remote(f"{prefix}/out/result.parquet.checkpoint")
        with RunLock(remote.fs, remote.child("lease.json"), "the other machine", 60):
            taken = ws.run("run", str(job), "--quiet")
        assert taken.code == 2
        assert "Another batchrun run (the other machine) has held" in taken.err
        assert "Traceback" not in taken.err
        assert server.requests == []
        free = ws.run("run", str(job), "--quiet")  # released: the next run goes
        assert free.code == 0, free.err


def test_an_unreachable_s3_is_one_sentence(ws: Workspace, prefix: str) -> None:
    with start_in_thread(SimConfig()) as server:
        job = s3_job(ws, server.base_url, prefix, ROWS)
        lost = ws.run("run", str(job), "--set", "storage.endpoint_url=http://127.0.0.1:9")
    assert lost.code == 2
    assert "check the bucket, the credentials and the endpoint" in lost.err
    assert len(lost.err.strip().splitlines()) == 1
    assert FAKE_SECRET not in lost.err


def test_a_run_killed_on_s3_resumes_elsewhere_with_every_row_once(
    ws: Workspace, s3: str, prefix: str
) -> None:
    with start_in_thread(SimConfig(latency_ms=10)) as server:
        job = s3_job(
            ws,
            server.base_url,
            prefix,
            KILL_ROWS,
            limits={"requests_per_minute": 60_000, "concurrency": 8, "commit_interval_s": 0.1},
            storage={"lease_s": 2},
        )
        env = {
            "BATCHRUN_TEST_KEY": FAKE_KEY,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **{k: v for k, v in os.environ.items() if k in ("HOME", "PYTHONPATH")},
            **aws_env(s3),
        }
        command = [sys.executable, "-m", "batchrun.cli", "run", str(job), "--quiet"]
        log = ws.root / "first.log"
        with log.open("wb") as sink:
            first = subprocess.Popen(command, env=env, cwd=ws.root, stdout=sink, stderr=sink)
            deadline = time.monotonic() + WAIT_S
            committed: dict[str, str] = {}
            while time.monotonic() < deadline and first.poll() is None:
                committed = committed_on_s3(prefix, ws.root / "peek")
                if len(committed) >= KILL_AFTER:
                    break
                time.sleep(0.1)
            assert first.poll() is None, log.read_text(errors="replace")
            first.send_signal(signal.SIGKILL)
            first.wait()
        killed_at = time.monotonic()
        # Committed is what S3 holds after the kill (a commit under way may have landed).
        committed = committed_on_s3(prefix, ws.root / "peek")
        assert KILL_AFTER <= len(committed) < KILL_ROWS
        # Another machine (another cache) while the killed run's lease has not lapsed: told
        # to wait; then, once it lapsed, the resume.
        elsewhere = [*command, "--set", f"storage.cache={ws.root / 'elsewhere'}"]
        early = subprocess.run(elsewhere, env=env, cwd=ws.root, capture_output=True, text=True)
        if time.monotonic() - killed_at < 1.5:  # surely before the 2-second lease lapsed
            assert early.returncode == 2, early.stderr
            assert "Another batchrun run" in early.stderr
        time.sleep(2.5)
        restarted_at = time.monotonic()
        second = subprocess.run(
            elsewhere, env=env, cwd=ws.root, capture_output=True, text=True, timeout=WAIT_S
        )
        records = server.requests
    assert second.returncode == 0, second.stderr
    out = read_s3(f"{prefix}/out/result.parquet")
    assert out.column("id").to_pylist() == [f"r{i:04d}" for i in range(KILL_ROWS)]
    assert out.column("status").to_pylist() == ["ok"] * KILL_ROWS
    row_of = lambda record: f"r{int(record.body['messages'][-1]['content'].rsplit('#', 1)[1]):04d}"  # noqa: E731
    again = [row_of(r) for r in records if r.t >= restarted_at and row_of(r) in committed]
    assert again == []  # nothing committed before the kill was asked (or paid) again
    asked = Counter(row_of(r) for r in records)
    assert set(asked) == {f"r{i:04d}" for i in range(KILL_ROWS)}
    assert set(asked.values()) <= {1, 2}  # twice: in flight or uncommitted at the kill
    assert sum(n - 1 for n in asked.values()) <= 8 * 2 + 200  # concurrency, commit buffer


def test_a_run_whose_lease_is_taken_over_stops_and_leaves_the_output_alone(
    ws: Workspace, prefix: str
) -> None:
    rows = 600
    remote = Remote(f"{prefix}/out/result.parquet.checkpoint")
    lease = remote.child("lease.json")

    def take_over() -> None:
        """Overwrite the lease once the run holds it, as a run on another machine that
        found it lapsed would (the run here cannot tell the difference)."""
        deadline = time.monotonic() + WAIT_S
        while "lease.json" not in remote.names() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        figures = {"holder": "the other machine", "since": time.time(), "expires": time.time() + 60}
        put_whole(remote.fs, lease, json.dumps(figures).encode())

    with start_in_thread(SimConfig(latency_ms=20)) as server:
        job = s3_job(
            ws,
            server.base_url,
            prefix,
            rows,
            limits={"concurrency": 4, "commit_interval_s": 0.1},
            storage={"lease_s": 1},
        )
        thief = threading.Thread(target=take_over)
        thief.start()
        lost = ws.run("run", str(job))
        thief.join()
        sent = len(server.requests)
    assert lost.code == 3, lost.err
    assert "lost its lease" in lost.err and "the other machine" in lost.err
    assert "Traceback" not in lost.err
    assert sent < rows  # it stopped at once, not at the end
    assert "result.parquet" not in Remote(f"{prefix}/out").names()  # not over the other's
    assert "lease.json" in remote.names()  # the other run's lease is left in place


@pytest.mark.parametrize("section", ["input", "output"])
def test_a_url_batchrun_cannot_reach_is_a_job_error(ws: Workspace, section: str) -> None:
    ws.write_input(reviews(3))
    job = ws.job("http://127.0.0.1:9/v1", **{section: {"path": "gs://bucket/rows.parquet"}})
    wrong = ws.run("run", str(job))
    assert wrong.code == 2
    assert (
        f"{section}.path 'gs://bucket/rows.parquet' is neither a local path nor an s3:// URL"
        in wrong.err
    )


def test_a_copy_damaged_on_this_machine_is_fetched_again_not_quarantined(
    ws: Workspace, prefix: str
) -> None:
    with start_in_thread(SimConfig()) as server:
        job = s3_job(ws, server.base_url, prefix, ROWS, limits={"commit_interval_s": 0.05})
        assert ws.run("run", str(job), "--quiet").code == 0
        copy = ws.root / "cache" / "s3" / prefix / "out" / "result.parquet.checkpoint"
        segment = sorted(copy.glob("seg-*.parquet"))[0]
        info = segment.stat()
        segment.write_bytes(b"\0" * info.st_size)  # the same size and time: a bad disk
        os.utime(segment, ns=(info.st_atime_ns, info.st_mtime_ns))
        _damage.cache_clear()  # what this process saw of the file before (a new one sees none)
        sent = len(server.requests)
        again = ws.run("run", str(job), "--quiet")
        assert again.code == 0, again.err
        assert "damaged" not in again.err
        assert len(server.requests) == sent  # nothing asked again
        assert not (copy / "quarantine").exists()
        assert pq.read_metadata(segment).num_rows > 0


def test_a_lease_that_cannot_be_renewed_holds_every_write_until_it_is(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 out of reach for the renewals: the run is not stopped for it (it waits S3 out),
    but nothing goes to S3 once the lease may have lapsed, until it is renewed."""
    from batchrun.checkpoint.folder import Checkpoint
    from batchrun.protocol.result import RowResult
    from batchrun.storage.store import S3Error

    remote = Remote(f"{prefix}/ckpt", S3Spec(lease_s=1))
    checkpoint = Checkpoint(tmp_path / "copy", remote).open()
    row = RowResult("r0", 0, "fp", "ok", 1, time.time(), response="positive")
    assert checkpoint.commit([row]) == 1
    renew = RunLock.renew

    def unreachable(self: RunLock) -> None:
        raise S3Error("S3 put_object failed: connection reset", transient=True)

    monkeypatch.setattr(RunLock, "renew", unreachable)
    time.sleep(1.2)  # past the lease's ttl: it may have lapsed
    assert checkpoint.lease_lost is None  # not a stop: S3 may come back
    second = RowResult("r1", 1, "fp", "ok", 1, time.time(), response="neutral")
    with pytest.raises(S3Error, match="connection reset"):
        checkpoint.commit([second])
    assert sorted(remote.names("seg-*.parquet")) == ["seg-000000000001-000000000001.parquet"]
    monkeypatch.setattr(RunLock, "renew", renew)  # S3 is back, and nobody took the lease
    assert checkpoint.commit([second]) == 1
    assert len(remote.names("seg-*.parquet")) == 2
    checkpoint.close()


def test_a_lease_taken_over_while_it_went_unrenewed_stops_the_next_write(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its renewals failed (no renewer here), it lapsed, another run took it: the next
    commit finds out before it writes, and writes nothing."""
    from batchrun.checkpoint.folder import Checkpoint
    from batchrun.checkpoint.remote import RemoteCopy
    from batchrun.errors import RunStopped
    from batchrun.protocol.result import RowResult

    monkeypatch.setattr(RemoteCopy, "_renew", lambda self: None)  # renewals that never land
    remote = Remote(f"{prefix}/ckpt", S3Spec(lease_s=1))
    checkpoint = Checkpoint(tmp_path / "copy", remote).open()
    assert checkpoint.commit([RowResult("r0", 0, "fp", "ok", 1, time.time(), response="a")]) == 1
    time.sleep(1.1)  # lapsed
    taken = {"holder": "the other machine", "since": time.time(), "expires": time.time() + 60}
    put_whole(remote.fs, remote.child("lease.json"), json.dumps(taken).encode())
    with pytest.raises(RunStopped, match=r"lost its lease .* \(the other machine\)"):
        checkpoint.commit([RowResult("r1", 1, "fp", "ok", 1, time.time(), response="b")])
    assert sorted(remote.names("seg-*.parquet")) == ["seg-000000000001-000000000001.parquet"]
    checkpoint.close()
    held = json.loads(remote.fs.open_input_stream(remote.child("lease.json")).read())
    assert held["holder"] == "the other machine"  # not released from under the other run


def test_an_input_prefix_is_copied_as_it_stands_now(ws: Workspace, prefix: str) -> None:
    from batchrun.storage.store import stage_input

    remote = Remote(f"{prefix}/parts")
    for name in ("a.parquet", "b.parquet"):
        put_whole(remote.fs, remote.child(name), b"x")
    local = Path(stage_input(remote, ws.root / "cache"))
    assert sorted(p.name for p in local.iterdir()) == ["a.parquet", "b.parquet"]
    Remote(prefix).fs.delete_file(remote.child("a.parquet"))
    put_whole(remote.fs, remote.child("c.parquet"), b"y")
    assert Path(stage_input(remote, ws.root / "cache")) == local
    assert sorted(p.name for p in local.iterdir()) == ["b.parquet", "c.parquet"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_output_inside_the_input_folder_is_refused(ws: Workspace, where: str) -> None:
    (ws.root / "rows").mkdir()
    ws.write_input(reviews(3), "rows/part.parquet")
    base = "s3://bucket/rows" if where == "s3" else "rows"
    job = ws.job("http://127.0.0.1:9/v1", input_path=base, output={"path": f"{base}/out.parquet"})
    wrong = ws.run("run", str(job))
    assert wrong.code == 2
    assert "is inside the input" in wrong.err and "write the output elsewhere" in wrong.err
