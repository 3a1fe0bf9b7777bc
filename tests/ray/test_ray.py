"""The Ray engine on a local Ray instance: the same output as a local run, one rate limit for
the cluster, exactly once when a worker dies, a bad key and the budget reaching every worker.

Ray starts once for the module (start and stop take seconds), with the test key in its
environment: workers read the key from their own machine's environment, never from Ray.

Tests `batchrun.ray`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.config.job import load_job
from batchrun.ray.driver import LOOPBACK, on_loopback
from batchrun.rows.plan import RunOptions
from batchrun.sim import SimConfig, SimServer, start_in_thread

from ..conftest import (
    ENV,
    FAKE_KEY,
    Listener,
    Workspace,
    beyond_loopback,
    busiest,
    latest_results,
    listeners,
    process_tree,
    ray_cli_env,
    reviews,
)
from ..s3server import BUCKET, FAKE_KEY_ID, FAKE_SECRET, moto_server

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

WORKERS = 2
# Columns that must agree row for row between a local and a Ray run (times and latencies
# differ by nature).
SAME = ["id", "text", "input_row", "status", "response"]
SAME += ["prompt_tokens", "completion_tokens", "cost_usd"]
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
}


@pytest.fixture(scope="module", autouse=True)
def ray_instance() -> Iterator[None]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["BATCHRUN_TEST_KEY"] = FAKE_KEY
    # The S3 test's credentials, before Ray starts: workers read them from their own
    # environment, as they do the key (the endpoint is the job's own [storage] key).
    saved = {name: os.environ.get(name) for name in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    # On loopback, as batchrun starts a local instance (see batchrun.ray.on_loopback).
    with on_loopback():
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            _node_ip_address=LOOPBACK,
        )
    try:
        yield
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ray_job(ws: Workspace, base_url: str, **sections: Any) -> Path:
    engine = {"kind": "ray", "workers": WORKERS, **sections.pop("engine", {})}
    return ws.job(base_url, engine=engine, **sections)


def ray_run(job_path: Path, **options: Any) -> Any:
    from batchrun.ray import driver as ray_engine

    job = load_job(job_path, environ=ENV)
    return ray_engine.run(job, RunOptions(quiet=True, **options), ENV)


def row_of(record: Any) -> int:
    """The input row a simulator request was for (its review text ends in `#i`)."""
    return int(record.body["messages"][-1]["content"].rsplit("#", 1)[1])


def test_a_ray_run_gives_the_local_run_s_output_row_for_row(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(2400))
    local = ws.job(sim.base_url, output={"path": "out/local.parquet"})
    assert ws.run("run", str(local), "--quiet").code == 0
    job = ray_job(ws, sim.base_url, engine={"shard_rows": 500})
    summary = ray_run(job)
    assert summary.stopped is None
    assert (summary.ok, summary.failed, summary.pending, summary.ran) == (2400, 0, 0, 2400)
    a = pl.read_parquet(ws.root / "out" / "local.parquet").select(SAME)
    b = ws.read_output().select(SAME)
    assert b.equals(a)  # row for row, in input order
    assert summary.workers["count"] == WORKERS
    # Both workers ran shards (five of 500 rows for two workers): one peak per process.
    assert len(summary.workers["peak_rss_mb"]) == WORKERS
    # A resume asks nothing again.
    before = len(sim.requests)
    again = ray_run(job)
    assert (again.ok, again.ran) == (2400, 0)
    assert len(sim.requests) == before


def test_ray_workers_read_a_gb18030_csv_as_the_local_run_does(
    ws: Workspace, sim: SimServer
) -> None:
    frame = reviews(1200).with_columns(pl.col("text") + "，物流很快 𠮷")
    (ws.root / "reviews.csv").write_bytes(frame.write_csv().encode("gb18030"))
    reading = {"path": "reviews.csv", "encoding": "gb18030"}
    local = ws.job(sim.base_url, input=reading, output={"path": "out/local.parquet"})
    assert ws.run("run", str(local), "--quiet").code == 0
    job = ray_job(ws, sim.base_url, input=reading, engine={"shard_rows": 300})
    summary = ray_run(job)
    assert (summary.ok, summary.failed, summary.ran) == (1200, 0, 1200)
    a = pl.read_parquet(ws.root / "out" / "local.parquet").select(SAME)
    b = ws.read_output().select(SAME)
    assert b.equals(a)  # row for row, in input order
    assert b["text"].to_list() == frame["text"].to_list()


def test_a_ray_run_with_everything_on_s3_gives_the_local_run_s_output(
    ws: Workspace, sim: SimServer
) -> None:
    import pyarrow.parquet as pq

    from batchrun.storage.store import Remote, S3Spec, put_whole

    rows = 900
    ws.write_input(reviews(rows))
    local = ws.job(sim.base_url, output={"path": "out/local.parquet"})
    assert ws.run("run", str(local), "--quiet").code == 0
    with moto_server() as endpoint:
        spec = S3Spec(region="us-east-1", endpoint_url=endpoint)
        prefix = f"{BUCKET}/ray-run"
        put_whole(
            Remote(prefix, spec).fs,
            f"{prefix}/input.parquet",
            (ws.root / "input.parquet").read_bytes(),
        )
        storage = {"region": "us-east-1", "endpoint_url": endpoint, "cache": str(ws.root / "cache")}
        job = ray_job(
            ws,
            sim.base_url,
            input={"path": f"s3://{prefix}/input.parquet"},
            output={"path": f"s3://{prefix}/out/result.parquet"},
            storage=storage,
            engine={"shard_rows": 150, "workers": 3},  # two shards a worker
            limits={"commit_interval_s": 0.1},
        )
        summary = ray_run(job)
        assert summary.stopped is None
        assert (summary.ok, summary.ran) == (rows, rows)
        remote = Remote(f"{prefix}/out/result.parquet", spec)
        with remote.fs.open_input_file(remote.path) as handle:
            b = pl.from_arrow(pq.read_table(handle)).select(SAME)
        a = pl.read_parquet(ws.root / "out" / "local.parquet").select(SAME)
        assert b.equals(a)  # row for row, in input order, from the workers' S3 commits
        # Another machine resumes from S3 alone, and asks nothing again.
        before = len(sim.requests)
        elsewhere = load_job(job, environ=ENV, values={"storage.cache": str(ws.root / "other")})
        from batchrun.ray import driver as ray_engine

        again = ray_engine.run(elsewhere, RunOptions(quiet=True), ENV)
        assert (again.ok, again.ran) == (rows, 0)
        assert len(sim.requests) == before
        # The same job as a pipeline stage answers its batches, and leaves the job's own
        # output on S3 as it was.
        written = remote.fs.get_file_info(remote.path)
        dataset = ray.data.from_arrow(reviews(20).to_arrow()).repartition(3)
        staged = ray_engine.run(elsewhere, dataset=dataset)
        assert pa_concat(staged).num_rows == 20
        after = remote.fs.get_file_info(remote.path)
        assert (after.size, after.mtime_ns) == (written.size, written.mtime_ns)


def test_the_cluster_never_passes_the_job_s_requests_and_tokens_a_minute(
    ws: Workspace,
) -> None:
    rpm, tpm = 1800, 60_000  # 30 requests a second; tokens allow about 25 of these a second
    with start_in_thread(SimConfig()) as server:
        ws.write_input(reviews(240))
        job = ray_job(
            ws,
            server.base_url,
            engine={"shard_rows": 40, "workers": 3},
            limits={"requests_per_minute": rpm, "tokens_per_minute": tpm, "concurrency": 24},
        )
        summary = ray_run(job)
        records = server.requests
    assert summary.stopped is None and summary.ok == 240
    times = [r.t for r in records]
    # The local pacer's promise, for the cluster: no second carries more than 1.1 times its
    # share (the GCRA's tolerance), the run as a whole no more than the limit.
    assert busiest(times, 1.0) <= rpm / 60 * 1.1 + 1
    span = times[-1] - times[0]
    assert len(times) - 1 <= rpm / 60 * span * 1.05 + 3
    tokens = sum(r.body["max_tokens"] for r in records)  # the sim's usage is prompt + answer
    used = pl.read_parquet(ws.output)["total_tokens"].sum()
    assert used <= tpm / 60 * (span + 1) * 1.1 + tokens  # within a minute's limit, paced
    assert summary.workers["count"] == 3


def test_a_worker_killed_mid_run_leaves_every_row_once_and_nothing_paid_twice(
    ws: Workspace,
) -> None:
    with start_in_thread(SimConfig(latency_ms=20)) as server:
        ws.write_input(reviews(3000))
        job = ray_job(
            ws,
            server.base_url,
            engine={"shard_rows": 300},
            limits={"requests_per_minute": 60_000, "concurrency": 16, "commit_interval_s": 0.2},
        )
        folder = ws.output.with_name(ws.output.name + ".checkpoint")
        killed: dict[str, Any] = {}

        def kill_one() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(latest_results(folder)) < 600:
                time.sleep(0.1)
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
            worker = sorted(n for n in names if "-worker-" in n)[0]
            killed["committed"] = set(latest_results(folder))
            killed["at"] = time.monotonic()
            ray.kill(ray.get_actor(worker), no_restart=False)

        killer = threading.Thread(target=kill_one)
        killer.start()
        summary = ray_run(job)
        killer.join()
        records = server.requests
    assert "at" in killed, "the worker was not killed"
    assert summary.stopped is None
    out = ws.read_output()
    assert out.height == 3000 and out["id"].n_unique() == 3000
    assert out["status"].to_list() == ["ok"] * 3000
    # No row committed before the kill was asked again after it.
    committed = {int(key) for key in killed["committed"]}  # keys are positions here
    again = [row_of(r) for r in records if r.t > killed["at"] + 0.5 and row_of(r) in committed]
    assert again == []
    # Rows asked twice are at most those in flight or not yet committed at the kill.
    twice = [row for row, n in Counter(row_of(r) for r in records).items() if n > 1]
    assert len(twice) <= 16 + 300


def test_a_bad_key_stops_every_worker(ws: Workspace) -> None:
    with start_in_thread(SimConfig(api_key="sk-the-right-one-000000")) as server:
        ws.write_input(reviews(2000))
        job = ray_job(ws, server.base_url, engine={"shard_rows": 200, "workers": 3})
        summary = ray_run(job)
        records = server.requests
    from batchrun.errors import BadKey

    assert isinstance(summary.stopped, BadKey)
    assert "BATCHRUN_TEST_KEY" in str(summary.stopped)
    assert FAKE_KEY not in str(summary.stopped)
    # The first 401 stops every worker within a sync: far fewer requests than rows.
    assert len(records) < 200
    assert summary.ok == 0


def test_the_budget_holds_across_workers(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(3000))
    budget = 0.05
    job = ray_job(
        ws,
        sim.base_url,
        engine={"shard_rows": 200, "workers": 3},
        cost={"budget_usd": budget, "prices": {"gpt-4o-mini": {"input": 15.0, "output": 60.0}}},
    )
    summary = ray_run(job)
    from batchrun.errors import BudgetReached

    assert isinstance(summary.stopped, BudgetReached)
    out = ws.read_output()
    spent = float(out["cost_usd"].sum())
    assert 0 < spent <= budget
    assert 0 < out.height < 3000
    # The checkpoint's spend (every attempt paid) is within the budget too.
    from batchrun.checkpoint.folder import Checkpoint

    folder = ws.output.with_name(ws.output.name + ".checkpoint")
    assert Checkpoint(folder).spend() <= budget


def test_the_key_is_nowhere_in_the_cluster_s_logs(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(300))
    job = ray_job(ws, sim.base_url, engine={"shard_rows": 100})
    summary = ray_run(job)
    assert summary.ok == 300
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    for path in session.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_a_ray_data_pipeline_puts_batchrun_between_its_read_and_write(ws: Workspace) -> None:
    """`batchrun.ray.run(job, dataset=ds)`: a pool of ChatStage actors, one rate limit."""
    from batchrun.ray import driver as ray_engine

    rpm = 1200  # 20 a second for the pool, whatever its size
    with start_in_thread(SimConfig()) as server:
        job_path = ray_job(
            ws, server.base_url, limits={"requests_per_minute": rpm, "concurrency": 8}
        )
        job = load_job(job_path, environ=ENV)
        dataset = ray.data.from_arrow(reviews(200).to_arrow()).repartition(8)
        answered = ray_engine.run(job, dataset=dataset)
        frame = pl.from_arrow(pa_concat(answered))
        records = server.requests
    assert frame.height == 200
    assert sorted(frame["id"].to_list()) == sorted(reviews(200)["id"].to_list())
    assert set(frame["status"].to_list()) == {"ok"}
    assert frame["response"].null_count() == 0
    times = [r.t for r in records]
    assert len(times) == 200
    # One limit across the pool's actors (one desk each would let twice as many through).
    # Over four seconds: the simulator shares the driver's process with Ray Data's
    # executor, and its arrival stamps bunch when its thread waits (a second once held 30
    # stamps, two seconds 47, where the clients' starts were 20 a second).
    assert busiest(times, 4.0) <= 4 * rpm / 60 * 1.1 + 1
    assert len(times) - 1 <= rpm / 60 * (times[-1] - times[0]) * 1.05 + 3


def pa_concat(dataset: Any) -> Any:
    import pyarrow as pa

    return pa.concat_tables(ray.get(dataset.to_arrow_refs()))


def test_a_quota_that_never_returns_stops_every_worker_within_quota_wait(
    ws: Workspace,
) -> None:
    with start_in_thread(SimConfig(quota_window=(0.0, float("inf")))) as server:
        ws.write_input(reviews(2000))
        job = ray_job(
            ws,
            server.base_url,
            engine={"shard_rows": 200, "workers": 3},
            limits={"quota_wait_s": 3, "concurrency": 18},
        )
        summary = ray_run(job)
        records = server.requests
    from batchrun.errors import QuotaExhausted

    assert isinstance(summary.stopped, QuotaExhausted)
    assert "within 3 s" in str(summary.stopped)
    assert summary.ok == 0
    # Each worker's first wave (six in flight each), then a probe at growing intervals
    # while every other start is held: no storm of refused requests.
    first, last = records[0].t, records[-1].t
    assert last - first < 3 + 3
    assert len(records) <= 18 + 3 * 6


def test_a_multi_endpoint_job_holds_each_endpoint_s_own_limit_across_the_cluster(
    ws: Workspace,
) -> None:
    """Two endpoints, each with its own requests a minute, paced by the desk for the
    whole cluster: every row once, each naming its endpoint, each endpoint's log within
    its own limit over the run and in every second. The simulators run in their own
    processes, so that the driver's work in this one cannot bunch their arrivals."""
    from ..engine.test_endpoints import POOLED, assert_within_rate, entry
    from ..simproc import SimProcess

    limits = {"fast": 1800, "slow": 600}
    with SimProcess() as fast, SimProcess() as slow:
        ws.write_input(reviews(240))
        job = ws.job(
            base=POOLED,
            endpoints=[
                entry("fast", fast, requests_per_minute=limits["fast"], concurrency=8),
                entry("slow", slow, requests_per_minute=limits["slow"], concurrency=8),
            ],
            strategy="spread",
            engine={"kind": "ray", "workers": 3, "shard_rows": 40},
        )
        summary = ray_run(job)
    assert summary.stopped is None and summary.ok == 240
    out = pl.read_parquet(ws.output)
    assert out["id"].n_unique() == 240 and out["status"].to_list() == ["ok"] * 240
    counts = dict(out.group_by("endpoint").len().iter_rows())
    for name, server in (("fast", fast), ("slow", slow)):
        times = server.times
        assert counts[name] == len(times) > 0
        # The pacer's promise, per endpoint for the cluster: 1.1 times a second's share.
        assert_within_rate(times, limits[name], tolerance=1.1)
    # The report's figures of the run's endpoints are the whole cluster's.
    report = json.loads(ws.run("report", str(job), "--json").out)
    runs = {e["name"]: e["last_run"] for e in report["endpoints"]}
    for name, server in (("fast", fast), ("slow", slow)):
        assert runs[name]["requests"] == len(server.times)
        assert runs[name]["answers"] == counts[name] and runs[name]["state"] == "serving"


RUN = [sys.executable, "-m", "batchrun.cli", "run"]  # `batchrun run`, in a process of its own


def test_the_tests_own_ray_instance_listens_on_loopback_only() -> None:
    assert beyond_loopback(process_tree(os.getpid())) == []


def _alive(processes: list[Any]) -> list[Any]:
    import psutil

    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.cmdline()
            alive.append(process)
    return alive


def run_desks() -> set[str]:
    """The names of every batchrun desk actor this Ray instance has had (one per Ray run)."""
    return {
        name
        for actor in ray._private.state.actors().values()
        if (name := str(actor.get("Name", ""))).startswith("batchrun-desk-")
        and "-worker-" not in name
    }


def test_batchrun_run_honours_engine_ray_and_engine_local_overrides_it(
    ws: Workspace, sim: SimServer
) -> None:
    """`batchrun.run` runs a job with `[engine] kind = "ray"` on Ray, as `batchrun run`
    does, and `engine="local"` runs it in this process, as `--engine local` does."""
    import batchrun

    ws.write_input(reviews(300))
    job = ray_job(ws, sim.base_url, engine={"shard_rows": 100})
    before = run_desks()
    result = batchrun.run(job, quiet=True)
    assert (result.ok, result.failed, result.pending, result.ran) == (300, 0, 0, 300)
    assert len(run_desks() - before) == 1  # the run's desk: it ran on Ray
    assert sorted(row_of(r) for r in sim.requests) == list(range(300))  # each row asked once
    out = ws.read_output()
    assert out["id"].n_unique() == out.height == 300
    assert out["status"].to_list() == ["ok"] * 300

    before, asked = run_desks(), len(sim.requests)
    again = ray_job(
        ws,
        sim.base_url,
        file="again.toml",
        engine={"shard_rows": 100},
        output={"path": "out/again.parquet"},
    )
    local = asyncio.run(batchrun.run_async(again, quiet=True, engine="local"))
    assert (local.ok, local.ran) == (300, 300)
    assert run_desks() == before  # no Ray run
    assert sorted(row_of(r) for r in sim.requests[asked:]) == list(range(300))
    assert pl.read_parquet(local.output_path).select(SAME).equals(out.select(SAME))


def census(run: subprocess.Popen[str]) -> tuple[dict[tuple[int, str, int], Listener], bool]:
    """Every listening socket of the run's process tree, sampled until the run ends, and
    whether a sample was taken while its workers were up (with the raylet and the GCS)."""
    seen: dict[tuple[int, str, int], Listener] = {}
    mid_run = False
    while run.poll() is None:
        tree = process_tree(run.pid)
        names = " ".join(p.name() + " " + " ".join(p.cmdline()) for p in _alive(tree))
        found = listeners(tree)
        if "ShardWorker" in names and "raylet" in names and "gcs_server" in names:
            mid_run = True
        seen.update(((s.pid, s.ip, s.port), s) for s in found)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.wait(timeout=0.2)
    return seen, mid_run


def test_ctrl_c_stops_a_ray_run_of_the_command_which_the_same_command_resumes(
    ws: Workspace,
) -> None:
    """`batchrun run --engine ray` hears Ctrl-C on its event loop while the Ray driver runs
    on a worker thread: exit 130, the committed rows kept, and the same command asks only
    the others.

    The command, with no address, starts Ray for the run: while the resume's workers
    answer, no process of it (the batchrun driver, the GCS, the raylet, the agents, the
    desk and the workers) listens on anything but loopback, TCP or UDP. (The census rides
    on the resume: each run of the command costs a Ray start.)"""
    ws.write_input(reviews(400))
    with start_in_thread(SimConfig(latency_ms=100)) as server:
        limits = {"concurrency": 8, "commit_interval_s": 0.2}
        job = ray_job(ws, server.base_url, limits=limits)
        command = [*RUN, str(job), "--quiet"]
        first = subprocess.Popen(
            command, env=ray_cli_env(), cwd=ws.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        folder = ws.output.with_name(ws.output.name + ".checkpoint")
        deadline = time.monotonic() + 120
        while len(latest_results(folder)) < 40 and first.poll() is None:
            assert time.monotonic() < deadline, "no rows were committed in time"
            with contextlib.suppress(subprocess.TimeoutExpired):
                first.wait(timeout=0.2)
        assert first.poll() is None, "the run ended before it was interrupted"
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
        asked = len(server.requests)
        second = subprocess.Popen(
            command,
            env=ray_cli_env(),
            cwd=ws.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen, mid_run = census(second)
        out, second_err = second.communicate(timeout=120)
        records = server.requests
    assert first.returncode == 130, err
    assert b"Interrupted: finished rows are saved" in err
    assert second.returncode == 0, second_err
    assert "400 ok, 0 failed, 0 pending" in out
    assert asked < 400
    assert sorted(row_of(r) for r in records) == list(range(400))  # each row asked once
    assert mid_run, "no sample caught the run's Ray processes"
    assert seen, "no listening socket was seen at all"
    wide = [s for s in seen.values() if not s.on_loopback]
    assert wide == [], f"listening beyond loopback: {wide}"


@pytest.mark.parametrize("outage", ["passing", "for-good", "taken-over"])
def test_s3_out_of_reach_under_ray_is_waited_out_or_told_truly(ws: Workspace, outage: str) -> None:
    """The workers commit to S3 through a proxy that refuses every connection for a while
    (`tests.s3proxy`): they wait it out and the run ends with every row once, nothing
    asked twice; or, S3 gone for good, the run stops (exit 3, never 1) counting the
    answers no worker could commit; or, another run having taken the lapsed lease over
    meanwhile, the run stops and no worker writes anything more."""
    import re

    from batchrun.checkpoint.segments import SEGMENT_GLOB
    from batchrun.errors import RunStopped, StoreFailed
    from batchrun.storage.store import Remote, S3Spec, pull, put_whole

    from ..s3proxy import outage_proxy

    rows = 1500
    ws.write_input(reviews(rows))
    with (
        moto_server() as endpoint,
        outage_proxy(endpoint) as proxy,
        start_in_thread(SimConfig(latency_ms=20)) as sim,
    ):
        spec = S3Spec(region="us-east-1", endpoint_url=endpoint)  # straight at moto
        prefix = f"{BUCKET}/ray-outage-{outage}"  # moto's buckets outlive its servers
        put_whole(
            Remote(prefix, spec).fs,
            f"{prefix}/input.parquet",
            (ws.root / "input.parquet").read_bytes(),
        )
        checkpoint = Remote(f"{prefix}/out/result.parquet.checkpoint", spec)

        def committed() -> dict[str, str]:
            for _ in range(8):
                try:
                    pull(checkpoint, ws.root / "peek", SEGMENT_GLOB)
                    return latest_results(ws.root / "peek")
                except FileNotFoundError:
                    continue  # a merge removed a segment while it was listed
            raise AssertionError("the checkpoint kept changing under the pull")

        seen: dict[str, Any] = {}

        def go_away() -> None:
            deadline = time.monotonic() + 120
            while len(committed()) < 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            proxy.set("refuse")
            if outage == "taken-over":
                time.sleep(3)  # the lease (2 s) lapsed; another run takes it over
                now = time.time()
                figures = {"holder": "the other machine", "since": now, "expires": now + 60}
                put_whole(
                    checkpoint.fs, checkpoint.child("lease.json"), json.dumps(figures).encode()
                )
                seen["segments"] = set(checkpoint.names(SEGMENT_GLOB))
                proxy.set("pass")
            elif outage == "passing":
                # Long enough that every worker's commits fail and are tried again (after 1,
                # then 2 s more), far short of storage_wait_s: back in time either way.
                time.sleep(4)
                proxy.set("pass")

        storage: dict[str, Any] = {
            "region": "us-east-1",
            "endpoint_url": proxy.url,
            "cache": str(ws.root / "c"),
            **({"lease_s": 2} if outage == "taken-over" else {}),
        }
        job = ray_job(
            ws,
            sim.base_url,
            input={"path": f"s3://{prefix}/input.parquet"},
            output={"path": f"s3://{prefix}/out/result.parquet"},
            storage=storage,
            engine={"shard_rows": 500, "workers": 2},
            limits={
                "commit_interval_s": 0.1,
                "concurrency": 8,
                "storage_wait_s": 3 if outage == "for-good" else 60,
            },
        )
        thread = threading.Thread(target=go_away, daemon=True)
        thread.start()
        summary = ray_run(job)
        thread.join()
        proxy.set("pass")
        asked = Counter(str(row_of(r)) for r in sim.requests)
        held = committed()
        segments = set(checkpoint.names(SEGMENT_GLOB))
        output_there = "result.parquet" in Remote(f"{prefix}/out", spec).names()
    if outage == "taken-over":
        assert isinstance(summary.stopped, RunStopped), summary.stopped
        assert "lost its lease" in str(summary.stopped), summary.stopped
        assert "the other machine" in str(summary.stopped)
        assert segments == seen["segments"]  # no worker wrote under the lost lease
        assert not output_there
        return
    if outage == "passing":
        assert summary.stopped is None, summary.stopped
        assert (summary.ok, summary.ran) == (rows, rows)
        assert set(asked.values()) == {1}  # nothing paid twice
        assert len(held) == rows
        return
    stop = summary.stopped
    assert isinstance(stop, StoreFailed), stop
    assert stop.exit_code == 3
    sentence = str(stop)
    assert "S3 could not be reached for 3 s" in sentence
    assert "every answer" not in sentence
    count = re.search(r"up to ([\d,]+) answers could not be committed", sentence)
    assert count is not None, sentence
    # Up to: a commit S3 took but never answered (the proxy cut it) is counted, and held.
    assert int(count[1].replace(",", "")) >= len(set(asked) - set(held)) > 0


def test_a_lost_desk_stops_the_run_with_exit_3_in_one_sentence() -> None:
    """The desk's node gone (here: the actor killed) is a run-wide stop a user can meet,
    never exit 1."""
    from batchrun.errors import ClusterLost
    from batchrun.ray.driver import _desk_call

    @ray.remote(num_cpus=0)
    class Gone:
        def totals(self) -> dict[str, int]:
            return {}

    actor = Gone.remote()  # type: ignore[attr-defined]
    assert _desk_call(ray, actor.totals) == {}
    ray.kill(actor)
    # The kill goes through the GCS: a call made before it lands is still answered (seen
    # on a busy machine), so the call waits until the actor is dead, as a lost node's is.
    deadline = time.monotonic() + 60
    while ray._private.state.actors(actor._actor_id.hex())["State"] != "DEAD":
        assert time.monotonic() < deadline, "the killed actor did not die"
        time.sleep(0.05)
    with pytest.raises(ClusterLost) as caught:
        _desk_call(ray, actor.totals)
    assert caught.value.exit_code == 3
    assert "run the same command to resume" in str(caught.value)
