"""Shared fixtures: job files on disk, the simulator on loopback, the CLI in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.checkpoint.folder import Checkpoint
from batchrun.cli import main
from batchrun.config.job import load_job
from batchrun.engine.lifecycle import RunSummary
from batchrun.engine.local import run
from batchrun.rows.plan import RunOptions
from batchrun.sim import SimConfig, SimServer, start_in_thread

FAKE_KEY = "sk-test-CANARY-0123456789abcdefXYZ"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_dumps(doc: dict[str, Any]) -> str:
    """A job as TOML: plain keys first, then a `[table]` for each dict (a dict within it
    inline), then an `[[array]]` of tables for each list of dicts."""

    def is_tables(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    def body(table: dict[str, Any]) -> list[str]:
        return [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]

    lines = body({k: v for k, v in doc.items() if not isinstance(v, dict) and not is_tables(v)})
    for section, table in doc.items():
        if isinstance(table, dict):
            lines += [f"\n[{section}]", *body(table)]
    for section, tables in doc.items():
        if is_tables(tables):
            for table in tables:
                lines += [f"\n[[{section}]]", *body(table)]
    return "\n".join(lines) + "\n"


@dataclass
class Result:
    code: int
    out: str
    err: str


class Workspace:
    """A temporary folder with an input table and a job file pointing at a simulator."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capsys = capsys
        self.output = root / "out" / "result.parquet"

    def write_input(self, frame: pl.DataFrame, name: str = "input.parquet") -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".csv"):
            frame.write_csv(path)
        else:
            frame.write_parquet(path)
        return path

    def job(
        self,
        base_url: str | None = None,
        *,
        input_path: str = "input.parquet",
        file: str = "job.toml",
        base: dict[str, Any] | None = None,
        **sections: Any,
    ) -> Path:
        """Write a job file (`file`, under the workspace; folders made as needed) and return
        its path: every test's job goes through here.

        The job starts as one labelling the reviews at `input_path` through `[endpoint]`
        `base_url` (no `[endpoint]` without it: give `endpoints=[{...}, ...]` for
        `[[endpoints]]`). Then `base` and then `sections` change it, each key a top-level
        key or section: a dict is merged into the section of that name (a None value drops
        that key), None drops the section or key, and anything else (a list of dicts for an
        array of tables, a plain value) replaces it."""
        doc: dict[str, Any] = {
            "name": "test-job",
            "input": {"path": input_path},
            "prompt": {
                "system": "Label the review as positive, negative or neutral.",
                "user": "Review: {text}",
            },
            "request": {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 8},
            "endpoint": {"base_url": base_url, "api_key_env": "BATCHRUN_TEST_KEY"},
            "limits": {"requests_per_minute": 60000, "concurrency": 16, "max_attempts": 4},
            "output": {"path": "out/result.parquet"},
        }
        if base_url is None:
            del doc["endpoint"]
        for changes in (base or {}, sections):
            for section, values in changes.items():
                if values is None:
                    doc.pop(section, None)
                elif isinstance(values, dict) and isinstance(doc.get(section), dict):
                    merged = {**doc[section], **values}
                    doc[section] = {k: v for k, v in merged.items() if v is not None}
                else:
                    doc[section] = values
        path = self.root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(toml_dumps(doc), encoding="utf-8")
        return path

    def run(self, *argv: str) -> Result:
        self.capsys.readouterr()
        code = main(list(argv))
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def read_output(self) -> pl.DataFrame:
        return pl.read_parquet(self.output)


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to loopback servers directly: a developer's proxy variables (either case)
    must not route them; the proxy tests set their own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def ws(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Workspace:
    monkeypatch.setenv("BATCHRUN_TEST_KEY", FAKE_KEY)
    return Workspace(tmp_path, capsys)


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A moto S3 server on loopback (see `tests.s3server`), with the AWS variables pointing
    at it for the module's tests; yields its endpoint URL."""
    from .s3server import aws_env, moto_server

    with moto_server() as endpoint, pytest.MonkeyPatch.context() as env:
        for name in ("AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        for name, value in aws_env(endpoint).items():
            env.setenv(name, value)
        yield endpoint


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with start_in_thread(SimConfig()) as server:
        yield server


def reviews(n: int) -> pl.DataFrame:
    """n short reviews with ids, half of them positive."""
    words = ["I love it, works great", "Broken on arrival, terrible", "It is okay I guess"]
    return pl.DataFrame(
        {"id": [f"r{i:04d}" for i in range(n)], "text": [f"{words[i % 3]} #{i}" for i in range(n)]}
    )


def busiest(times: list[float], window_s: float) -> int:
    """The most of `times` (sorted) in any window of `window_s`."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


def merge_all(checkpoint: Checkpoint) -> None:
    """Merge every current segment of an open checkpoint into one, the merger's rules aside."""
    with checkpoint._writing:
        current = checkpoint.segments()
    if len(current) > 1:
        checkpoint.merger.merge(current)


def latest_results(folder: Path) -> dict[str, str]:
    """Each row's latest committed result in a checkpoint folder: key -> fingerprint, marked
    when the result is a failure (a test's oracle; batchrun itself never builds this)."""
    from batchrun.checkpoint.folder import Checkpoint
    from batchrun.checkpoint.walk import marked_fingerprint

    found: dict[str, str] = {}
    if not folder.exists():
        return found
    with Checkpoint(folder).walk(["fingerprint", "status"]) as walk:
        for window in walk.windows():
            frame = window.select("row_key", marked_fingerprint())
            found.update(
                zip(frame["row_key"].to_list(), frame["fingerprint"].to_list(), strict=True)
            )
    return found


ENV = {"BATCHRUN_TEST_KEY": FAKE_KEY}


class FakeClock:
    """Monotonic seconds that move only when the engine sleeps on them."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def run_faked(job_path: Path, clock: FakeClock) -> RunSummary:
    """`batchrun run` of a job file through the engine, on `clock`."""
    job = load_job(job_path, environ=ENV)
    options = RunOptions(quiet=True)
    return asyncio.run(run(job, options, ENV, sleep=clock.sleep, clock=clock))


# -- listening sockets of a process tree (Ray's, to check it stays on loopback) ---------------


@dataclass(frozen=True)
class Listener:
    """A socket a process listens on: TCP in LISTEN, or a UDP socket bound with no peer."""

    pid: int
    process: str  # its name (a Ray worker's says what it runs)
    kind: str  # "tcp" or "udp"
    ip: str
    port: int

    @property
    def on_loopback(self) -> bool:
        """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (gRPC's `::ffff:127.0.0.1`)."""
        import ipaddress

        address = ipaddress.ip_address(self.ip.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback


def process_tree(root: int) -> list[Any]:
    """The process `root` and all its descendants (psutil processes), and any other process
    of a Ray session one of them runs (a process Ray detached from its parent)."""
    import psutil

    top = psutil.Process(root)
    tree = {p.pid: p for p in [top, *top.children(recursive=True)]}
    sessions = set()
    for process in tree.values():
        with contextlib.suppress(psutil.Error):
            sessions.update(
                part.split("/session_", 1)[1].split("/", 1)[0]
                for part in process.cmdline()
                if "/session_" in part
            )
    if sessions:
        for process in psutil.process_iter(["cmdline"]):
            line = " ".join(process.info["cmdline"] or [])
            if process.pid not in tree and any(f"/session_{s}" in line for s in sessions):
                tree[process.pid] = process
    return list(tree.values())


def listeners(processes: list[Any]) -> list[Listener]:
    """Every listening socket (TCP and UDP, IPv4 and IPv6) of these processes; one that
    ended meanwhile is skipped."""
    import psutil

    found = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            name = process.name()
            for conn in process.net_connections(kind="inet"):
                if conn.type == socket.SOCK_STREAM and conn.status != psutil.CONN_LISTEN:
                    continue
                if conn.type == socket.SOCK_DGRAM and conn.raddr:
                    continue  # a UDP socket connected to a peer: a client's, not a server's
                kind = "tcp" if conn.type == socket.SOCK_STREAM else "udp"
                found.append(Listener(process.pid, name, kind, conn.laddr.ip, conn.laddr.port))
    return found


def beyond_loopback(processes: list[Any]) -> list[Listener]:
    """The listening sockets of these processes that another machine could reach."""
    return [s for s in listeners(processes) if not s.on_loopback]


def ray_cli_env() -> dict[str, str]:
    """The environment of a `batchrun run` in a process of its own that uses Ray: the test
    key, no usage stats, and the cluster's token authentication as this process has it (a
    local `ray.init` earlier in the session turns it on: RAY_AUTH_MODE=token, the token in
    ~/.ray)."""
    env = {
        "BATCHRUN_TEST_KEY": FAKE_KEY,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    passed = ("HOME", "PYTHONPATH")
    env.update((k, v) for k, v in os.environ.items() if k.startswith("RAY_AUTH") or k in passed)
    return env
