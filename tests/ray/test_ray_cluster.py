"""The Ray engine on a cluster of several nodes (`ray.cluster_utils.Cluster`, all on this
machine): a node lost mid-run, and the driver killed and run again, each leave every row
answered once in the output, and nothing committed asked again.

The cluster starts once for the module (starting takes seconds), with the test key in its
environment: the nodes' workers read the key from their own environment, never from Ray.
"""

from __future__ import annotations

import contextlib
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

import pytest

from batchrun.config.job import load_job
from batchrun.ray.driver import LOOPBACK, on_loopback
from batchrun.rows.plan import RunOptions
from batchrun.sim import SimConfig, start_in_thread

from ..conftest import (
    ENV,
    FAKE_KEY,
    Workspace,
    beyond_loopback,
    latest_results,
    process_tree,
    ray_cli_env,
    reviews,
)
from ..s3server import BUCKET, FAKE_KEY_ID, FAKE_SECRET, moto_server

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROWS = 3000
SHARD_ROWS = 300
WORKERS = 3
CONCURRENCY = 18  # six requests in flight for each worker
LATENCY_MS = 15
KILL_AFTER = 600  # rows committed before the node or the driver goes
WAIT_S = 120  # for a run to reach KILL_AFTER, or to end, at most (the machine may be busy)
LIMITS = {"requests_per_minute": 60_000, "concurrency": CONCURRENCY, "commit_interval_s": 0.2}
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head and two worker nodes of one CPU each; this process is a driver on it."""
    from ray.cluster_utils import Cluster

    given = {"RAY_USAGE_STATS_ENABLED": "0", "BATCHRUN_TEST_KEY": FAKE_KEY, **S3_CREDENTIALS}
    saved = {name: os.environ.get(name) for name in given}
    os.environ.update(given)  # before any node starts: workers inherit them
    # Every node on loopback only, as batchrun's own local instance (batchrun.ray.on_loopback).
    head = {
        "num_cpus": 1,
        "include_dashboard": False,
        "node_ip_address": LOOPBACK,
        # A node that goes is found dead in about a second rather than fifteen.
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 2},
    }
    with on_loopback():  # else the nodes listen on loopback but name the network address
        nodes = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(2):
            add_node(nodes)
        nodes.wait_for_nodes()
        with on_loopback():  # else Ray looks for the head at the network address
            ray.init(address=nodes.address, logging_level="ERROR", log_to_driver=False)
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def add_node(nodes: Any) -> Any:
    """A node of one CPU, on loopback only."""
    with on_loopback():
        return nodes.add_node(num_cpus=1, node_ip_address=LOOPBACK)


def row_of(record: Any) -> int:
    """The input row a simulator request was for (its review text ends in `#i`)."""
    return int(record.body["messages"][-1]["content"].rsplit("#", 1)[1])


def run_actors() -> list[dict[str, Any]]:
    """Every batchrun desk and worker actor the cluster knows, alive or dead, of any job."""
    return [
        actor
        for actor in ray._private.state.actors().values()
        if str(actor.get("Name", "")).startswith("batchrun-desk-")
    ]


def wait_for_commits(
    folder: Path, rows: int, alive: Any = lambda: True, refresh: Any = lambda: None
) -> set[int]:
    """Wait until `rows` rows are committed in the checkpoint folder (after `refresh`, which
    copies an S3 checkpoint there); returns their keys."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and alive():
        refresh()
        committed = latest_results(folder)
        if len(committed) >= rows:
            return {int(key) for key in committed}  # keys are input positions here
        time.sleep(0.05)
    raise AssertionError(f"{rows} rows were not committed in time")


def check_output(ws: Workspace) -> None:
    out = ws.read_output()
    assert out.height == ROWS
    assert out["id"].n_unique() == ROWS
    assert out["status"].to_list() == ["ok"] * ROWS
    assert out["response"].null_count() == 0


def shards_of(rows: list[int]) -> set[int]:
    return {row // SHARD_ROWS for row in rows}


def test_a_node_lost_mid_run_leaves_every_row_once_and_nothing_committed_asked_again(
    cluster: Any, ws: Workspace
) -> None:
    from batchrun.ray import driver as ray_engine

    with start_in_thread(SimConfig(latency_ms=LATENCY_MS)) as server:
        ws.write_input(reviews(ROWS))
        # A whole CPU for each worker: one worker on each of three nodes, so the node removed
        # holds exactly one, and the fourth node is the room its restart needs.
        add_node(cluster)  # here: Ray starts a node from the main thread only
        cluster.wait_for_nodes()
        engine = {
            "kind": "ray",
            "workers": WORKERS,
            "address": cluster.address,
            "shard_rows": SHARD_ROWS,
            "worker_cpus": 1,
        }
        job_path = ws.job(server.base_url, engine=engine, limits=LIMITS)
        folder = ws.output.with_name(ws.output.name + ".checkpoint")
        seen: dict[str, Any] = {}

        def remove_one() -> None:
            try:
                committed = wait_for_commits(folder, KILL_AFTER)
                alive = [a for a in run_actors() if a["State"] == "ALIVE"]
                desk = [a for a in alive if "-worker-" not in a["Name"]]
                workers = [a for a in alive if "-worker-" in a["Name"]]
                assert len(desk) == 1 and len(workers) == WORKERS, alive
                hosts = {a["Address"]["NodeID"] for a in workers}
                # Not the desk's node: the desk is the run's one actor that is not restarted.
                node = next(
                    n
                    for n in cluster.worker_nodes
                    if n.node_id in hosts and n.node_id != desk[0]["Address"]["NodeID"]
                )
                seen["worker"] = next(
                    a["Name"] for a in workers if a["Address"]["NodeID"] == node.node_id
                )
                seen["committed"] = committed
                seen["at"] = time.monotonic()
                cluster.remove_node(node, allow_graceful=False)
                seen["removed"] = time.monotonic()
            except BaseException as exc:
                seen["error"] = exc

        remover = threading.Thread(target=remove_one)
        remover.start()
        try:
            job = load_job(job_path, environ=ENV)
            summary = ray_engine.run(job, RunOptions(quiet=True), ENV)
        finally:
            remover.join()
        records = server.requests
        restarts = {a["Name"]: a["NumRestarts"] for a in run_actors() if "-worker-" in a["Name"]}
    assert "error" not in seen, seen.get("error")
    assert "at" in seen, "no node was removed"
    assert summary.stopped is None
    assert (summary.ok, summary.failed, summary.pending) == (ROWS, 0, 0)
    check_output(ws)
    assert restarts[seen["worker"]] >= 1  # the lost worker was restarted on another node
    # The shard the lost worker held was run again, once (the driver gives a restarting
    # worker work only once it answers).
    shards = -(-ROWS // SHARD_ROWS)
    assert summary.workers["shards"] == shards
    assert summary.workers["shard_attempts"] == shards + 1
    # No row committed before the node went was asked again after.
    committed = seen["committed"]
    again = [row_of(r) for r in records if r.t >= seen["at"] and row_of(r) in committed]
    assert again == []
    # Every row was asked; the rows asked twice are all in the one shard the lost worker held.
    asked = Counter(row_of(r) for r in records)
    assert set(asked) == set(range(ROWS))
    twice = [row for row, n in asked.items() if n > 1]
    assert len(shards_of(twice)) <= 1, sorted(twice)
    assert set(asked.values()) <= {1, 2}


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_driver_killed_and_run_again_ends_with_every_row_once(
    cluster: Any, ws: Workspace, storage: str
) -> None:
    """Local: the checkpoint in a folder on the driver's machine. S3: input, output and
    checkpoint on S3, and the second driver on "another machine" (a cache of its own)."""
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(start_in_thread(SimConfig(latency_ms=LATENCY_MS)))
        ws.write_input(reviews(ROWS))
        engine = {
            "kind": "ray",
            "workers": WORKERS,
            "address": cluster.address,
            "shard_rows": SHARD_ROWS,
        }
        sections: dict[str, Any] = {}
        folder = ws.output.with_name(ws.output.name + ".checkpoint")
        if storage == "s3":
            from batchrun.storage.store import Remote, S3Spec, pull, put_whole

            endpoint = stack.enter_context(moto_server())
            spec = S3Spec(region="us-east-1", endpoint_url=endpoint)
            prefix = f"{BUCKET}/driver-killed"
            remote = Remote(f"{prefix}/out/result.parquet.checkpoint", spec)
            put_whole(
                remote.fs, f"{prefix}/input.parquet", (ws.root / "input.parquet").read_bytes()
            )
            sections = {
                "input": {"path": f"s3://{prefix}/input.parquet"},
                "output": {"path": f"s3://{prefix}/out/result.parquet"},
                "storage": {
                    "region": "us-east-1",
                    "endpoint_url": endpoint,
                    "cache": str(ws.root / "first-machine"),
                    "lease_s": 2,  # the killed driver's lease lapses before the rerun
                },
            }
            peek = ws.root / "peek"
            folder = peek

            def copy_checkpoint() -> None:
                with contextlib.suppress(FileNotFoundError):  # merged meanwhile: next time
                    pull(remote, peek, "seg-*.parquet")
        else:

            def copy_checkpoint() -> None:
                pass

        job_path = ws.job(server.base_url, engine=engine, limits=LIMITS, **sections)
        env = {**ray_cli_env(), **S3_CREDENTIALS}
        command = [sys.executable, "-m", "batchrun.cli", "run", str(job_path), "--quiet"]
        log = ws.root / "first.log"
        with log.open("wb") as sink:
            first = subprocess.Popen(command, env=env, cwd=ws.root, stdout=sink, stderr=sink)
            try:
                committed = wait_for_commits(
                    folder, KILL_AFTER, lambda: first.poll() is None, copy_checkpoint
                )
            except AssertionError:
                first.kill()
                first.wait()
                raise AssertionError(log.read_text(errors="replace")) from None
            assert first.poll() is None, "the first run ended before it was killed"
            killed_at = time.monotonic()
            first.send_signal(signal.SIGKILL)
            first.wait()
        # The first driver's desk and workers die with it: none of its workers is left
        # asking once Ray has noticed (within two seconds here).
        time.sleep(4)
        left = [a["Name"] for a in run_actors() if a["State"] != "DEAD"]
        restarted_at = time.monotonic()
        lingering = [r for r in server.requests if killed_at + 2 < r.t < restarted_at]
        assert lingering == [], f"{len(lingering)} requests after the driver was killed"
        assert left == []
        if storage == "s3":
            command += ["--set", f"storage.cache={ws.root / 'second-machine'}"]
        second = subprocess.run(
            command, env=env, cwd=ws.root, capture_output=True, text=True, timeout=WAIT_S
        )
        records = server.requests
        assert second.returncode == 0, second.stderr
        assert f"{ROWS:,} ok, 0 failed, 0 pending" in second.stdout
        if storage == "s3":
            import pyarrow.parquet as pq

            with remote.fs.open_input_file(f"{prefix}/out/result.parquet") as handle:
                ws.output.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pq.read_table(handle), ws.output)  # for check_output
    check_output(ws)
    # No row committed at the kill was asked again by the second run.
    again = [row_of(r) for r in records if r.t >= restarted_at and row_of(r) in committed]
    assert again == []
    # Every row was asked; those asked twice were in flight or not yet committed at the
    # kill: in the shards the workers held then, one each at most.
    asked = Counter(row_of(r) for r in records)
    assert set(asked) == set(range(ROWS))
    twice = [row for row, n in asked.items() if n > 1]
    assert len(shards_of(twice)) <= WORKERS, sorted(twice)
    assert set(asked.values()) <= {1, 2}


def test_the_cluster_s_nodes_listen_on_loopback_only(cluster: Any) -> None:
    assert beyond_loopback(process_tree(os.getpid())) == []
