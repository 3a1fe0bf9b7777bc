"""The canary: the API key never shows up anywhere batchrun writes, logs or raises.

Whole jobs run with a canary key (`FAKE_KEY`), logging at DEBUG for every logger, against
the simulator (faults, a rejected key, the bcwhkj dialect's rejected key) and against a
gateway that echoes the key back in its error messages. Then every log record, stdout,
stderr, every file in the workspace and every exception is searched for the key, every
prefix of it of 8 characters or more, and its distinctive middle part.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import batchrun.engine.local
from batchrun.config.job import load_job
from batchrun.core.secrets import Secret
from batchrun.sim import SimConfig, SimServer, start_in_thread

from ..conftest import FAKE_KEY, Result, Workspace, reviews

KEY_ENV = "BATCHRUN_TEST_KEY"  # the variable the `ws` fixture sets to FAKE_KEY
RIGHT_KEY = "sk-the-right-key-7f3a9c0d2b4e6f8a1c3e5d7b"
NEEDLES = [FAKE_KEY[:n] for n in range(8, len(FAKE_KEY) + 1)] + ["CANARY"]
LOGGERS = [None, "batchrun", "aiohttp", "asyncio"]  # None: the root logger

SIM_CASES = [
    pytest.param(
        SimConfig(faults={"server_error": 0.2, "content_filter": 0.05}, seed=1), 0, id="faults"
    ),
    pytest.param(SimConfig(api_key=RIGHT_KEY), 3, id="wrong-key"),
    pytest.param(SimConfig(dialect="bcwhkj", api_key=RIGHT_KEY), 3, id="bcwhkj-wrong-key"),
]


def leaks(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        return [n for n in NEEDLES if n.encode() in text]
    return [n for n in NEEDLES if n in text]


def assert_nothing_leaks(where: dict[str, str | bytes]) -> None:
    found = {name: leaks(text) for name, text in where.items()}
    found = {name: needles for name, needles in found.items() if needles}
    names = sorted(found)
    assert not found, f"the key appears in {len(names)} places, e.g. {names[:5]}: {found}"


def files_of(root: Path) -> dict[str, str | bytes]:
    """Every file under root as bytes, and every Parquet file's content as text too."""
    texts: dict[str, str | bytes] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        texts[name] = path.read_bytes()
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            texts[name + " (rows)"] = "\n".join(str(row) for row in frame.iter_rows())
    return texts


def records_of(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = {}
    for i, record in enumerate(caplog.records):
        texts[f"log record {i} ({record.name})"] = "\n".join(
            [formatter.format(record), str(record.msg), repr(record.args)]
        )
    return texts


def exception_text(exc: BaseException) -> str:
    """An exception with everything chained to it, even a context hidden by `from None`."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += traceback.format_exception(current)
        parts += [repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.fixture
def raised(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The run's summary and every exception it raised or stopped on, as the CLI saw them."""
    seen: list[Any] = []
    original = batchrun.engine.local.run

    async def recording(*args: Any, **kwargs: Any) -> batchrun.engine.local.RunSummary:
        try:
            summary = await original(*args, **kwargs)
        except BaseException as exc:
            seen.append(exc)
            raise
        seen.append(summary)
        if summary.stopped is not None:
            seen.append(summary.stopped)
        return summary

    monkeypatch.setattr(batchrun.engine.local, "run", recording)
    return seen


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, captured; and no handler left behind by --log-level."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)


def run_in_process(ws: Workspace, job: Path, raised: list[Any]) -> tuple[Result, dict[str, str]]:
    try:
        result = ws.run("--log-level", "debug", "run", str(job))  # not quiet: progress too
    except BaseException as exc:
        pytest.fail(f"batchrun raised {type(exc).__name__} instead of exiting with a code")
    texts = {"stdout": result.out, "stderr": result.err}
    for i, item in enumerate(raised):
        if isinstance(item, BaseException):
            texts[f"exception {i}"] = exception_text(item)
        else:
            texts[f"summary {i}"] = repr(item)
    return result, texts


def check_the_job_and_its_key(job: Path) -> dict[str, str]:
    environ = {KEY_ENV: FAKE_KEY}
    loaded = load_job(job, [], environ)
    secret = loaded.endpoints[0].api_key(environ)
    assert isinstance(secret, Secret) and secret.reveal() == FAKE_KEY
    return {
        "repr(job)": repr(loaded),
        "str(job)": str(loaded),
        "repr(secret)": repr(secret),
        "str(secret)": str(secret),
        "f-string of secret": f"{secret} {secret!r} {[secret]} {dict(key=secret)}",
    }


@pytest.mark.parametrize(("config", "code"), SIM_CASES)
def test_the_key_appears_nowhere_in_process(
    ws: Workspace,
    debug_logs: pytest.LogCaptureFixture,
    raised: list[Any],
    config: SimConfig,
    code: int,
) -> None:
    ws.write_input(reviews(60))
    with start_in_thread(config) as sim:
        job = ws.job(sim.base_url, input={"id_column": "id"})
        result, texts = run_in_process(ws, job, raised)
        sent = sim.requests
        texts["the simulator's request log"] = repr(sent)
    assert result.code == code, result.err
    assert sent and all(
        {k.lower(): v for k, v in r.headers.items()}.get("authorization") for r in sent
    )  # the key was sent with every request
    if code == 3:
        assert KEY_ENV in result.err  # names the variable to fix
    else:
        out = ws.read_output()
        assert out.height == 60 and "content_refused" in out["error"].to_list()
    assert debug_logs.records, "nothing was logged: the canary proves nothing"
    texts.update(records_of(debug_logs))
    texts.update(files_of(ws.root))
    texts.update(check_the_job_and_its_key(job))
    assert_nothing_leaks(texts)


@pytest.mark.parametrize(("config", "code"), SIM_CASES)
def test_the_key_appears_nowhere_from_the_command_at_debug_level(
    ws: Workspace, config: SimConfig, code: int
) -> None:
    ws.write_input(reviews(60))
    env = {**os.environ, KEY_ENV: FAKE_KEY, "PYTHONASYNCIODEBUG": "1"}
    with start_in_thread(config) as sim:
        job = ws.job(sim.base_url, input={"id_column": "id"})
        proc = subprocess.run(
            [sys.executable, "-m", "batchrun.cli", "--log-level", "debug", "run", str(job)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert proc.returncode == code, proc.stderr
    assert "DEBUG" in proc.stderr  # the debug log went to stderr
    assert_nothing_leaks({"stdout": proc.stdout, "stderr": proc.stderr, **files_of(ws.root)})


class EchoingGateway(BaseHTTPRequestHandler):
    """A careless gateway: answers every request with an error that repeats the key.

    The status comes from the first path segment (`/401/v1/chat/completions`).
    """

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        status = int(self.path.split("/")[1])
        if status >= 500:
            body = f"upstream failed for Authorization: Bearer {token}".encode()
            kind = "text/plain"
        else:
            message = f"Invalid key {token} (hint: {token[:20]}…) for this request."
            error = {"message": message, "type": "invalid_request_error", "code": None}
            body, kind = json.dumps({"error": error}).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's own server stays quiet


@pytest.fixture
def echoing_gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, "invalid_request"), (401, None), (500, "server_error")],
    ids=["400-row-fails", "401-bad-key", "500-retried"],
)
def test_a_key_the_gateway_echoes_is_redacted_everywhere(
    ws: Workspace,
    debug_logs: pytest.LogCaptureFixture,
    raised: list[Any],
    echoing_gateway: str,
    status: int,
    error: str | None,
) -> None:
    ws.write_input(reviews(20))
    job = ws.job(
        f"{echoing_gateway}/{status}/v1",
        input={"id_column": "id"},
        limits={"max_attempts": 2, "concurrency": 4},
    )
    result, texts = run_in_process(ws, job, raised)
    texts.update(records_of(debug_logs))
    texts.update(files_of(ws.root))
    if error is None:
        assert result.code == 3 and KEY_ENV in result.err, result.err
        assert "Invalid key ***" in result.err  # the message is kept, the key masked
    else:
        out = ws.read_output()
        failed = out.filter(pl.col("status") == "failed")
        assert failed.height > 0 and set(failed["error"]) == {error}
        assert all("***" in m for m in failed["error_message"])  # redacted, not dropped
    assert_nothing_leaks(texts)


def test_a_key_given_as_the_variable_name_is_refused_without_repeating_it(
    ws: Workspace, sim: SimServer
) -> None:
    ws.write_input(reviews(3))
    job = ws.job(sim.base_url, endpoint={"base_url": sim.base_url, "api_key_env": FAKE_KEY})
    result = ws.run("run", str(job), "-q")
    assert result.code == 2
    assert "must be the NAME of an environment variable" in result.err
    assert_nothing_leaks({"stdout": result.out, "stderr": result.err})
    assert sim.requests == []
