"""The Python API: `batchrun.run` and `batchrun.map` (and their async forms) against the simulator.

Every call goes through the engine over loopback HTTP, either to a simulator the run starts
itself (`endpoint="sim"`) or to the `sim` fixture's, whose request log tells what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest

import batchrun
from batchrun import api
from batchrun.engine.interrupts import InterruptRelay
from batchrun.sim import SimConfig, SimServer, start_in_thread

from .conftest import FAKE_KEY, Workspace, reviews

FAST = {"requests_per_minute": 600_000, "concurrency": 8}
PROMPT = {
    "prompt": "Review: {text}",
    "system": "Label the review as positive, negative or neutral.",
    "model": "gpt-4o-mini",
    "request": {"max_tokens": 8},
}
KEY_ENV = "BATCHRUN_TEST_KEY"


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)


def via(sim: SimServer) -> dict[str, Any]:
    """map's arguments that send to the fixture's simulator with the test key."""
    return {"endpoint": sim.base_url, "api_key_env": KEY_ENV}


def test_map_a_polars_frame_keeps_its_rows_and_columns_and_adds_the_answers() -> None:
    frame = reviews(30).with_columns(pl.Series("n", range(30)))
    out = batchrun.map(frame, **PROMPT, endpoint="sim", id_column="id", quiet=True, **FAST)
    assert isinstance(out, pl.DataFrame)
    assert out.columns[:3] == ["id", "text", "n"]
    assert out.select(frame.columns).equals(frame)
    assert {"response", "status", "attempts", "cost_usd"} <= set(out.columns)
    assert out["status"].to_list() == ["ok"] * 30
    assert out["response"].to_list()[:3] == ["positive", "negative", "neutral"]


def test_map_parses_and_scores_like_a_job() -> None:
    frame = pl.DataFrame(
        {
            "text": ["I love it, works great", "Broken on arrival, terrible [[sim:chatty]]"],
            "gold": ["positive", "positive"],
        }
    )
    out = batchrun.map(
        frame,
        **PROMPT,
        endpoint="sim",
        parse={"format": "label", "labels": ["positive", "negative", "neutral"]},
        eval={"expected_column": "gold", "scorer": "label"},
        quiet=True,
        **FAST,
    )
    assert out["response"].to_list() == ["positive", 'Label: "Negative".']
    assert out["parsed"].to_list() == ["positive", "negative"]
    assert out["score"].to_list() == [1.0, 0.0]


def test_map_a_pandas_frame_returns_a_pandas_frame_with_its_index() -> None:
    frame = pd.DataFrame({"text": ["I love it", "Broken, terrible", "okay"]}, index=[7, 7, 3])
    out = batchrun.map(frame, **PROMPT, endpoint="sim", quiet=True, **FAST)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns[:1]) == ["text"] and "response" in out.columns
    pd.testing.assert_frame_equal(out[["text"]], frame)
    assert list(out["response"]) == ["positive", "negative", "neutral"]
    assert list(out["status"]) == ["ok"] * 3


def test_map_and_run_work_inside_a_running_event_loop(ws: Workspace, sim: SimServer) -> None:
    frame = reviews(6)
    ws.write_input(frame)
    job = ws.job(sim.base_url)

    async def main() -> tuple[pl.DataFrame, pl.DataFrame, batchrun.RunResult]:
        blocking = batchrun.map(frame, **PROMPT, **via(sim), quiet=True, **FAST)
        awaited = await batchrun.map_async(frame, **PROMPT, **via(sim), quiet=True, **FAST)
        return blocking, awaited, batchrun.run(job, quiet=True)

    blocking, awaited, result = asyncio.run(main())
    assert blocking.equals(awaited.with_columns(blocking.select("response_id", "latency_s")))
    assert blocking["status"].to_list() == ["ok"] * 6 and result.ok == 6
    assert len(sim.requests) == 18


def test_run_async_is_awaited_on_the_callers_loop(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(4))
    result = asyncio.run(batchrun.run_async(ws.job(sim.base_url), quiet=True))
    assert (result.total, result.ok, result.failed, result.pending) == (4, 4, 0, 0)


def test_a_checkpoint_folder_resumes_without_paying_twice(tmp_path: Path, sim: SimServer) -> None:
    frame = reviews(12)
    folder = tmp_path / "progress"
    first = batchrun.map(frame, **PROMPT, **via(sim), checkpoint=folder, quiet=True, **FAST)
    assert len(sim.requests) == 12
    again = batchrun.map(frame, **PROMPT, **via(sim), checkpoint=folder, quiet=True, **FAST)
    assert len(sim.requests) == 12  # nothing sent
    assert again.equals(first)
    changed = frame.with_columns(
        text=pl.when(pl.col("id") == "r0003").then(pl.lit("new")).otherwise("text")
    )
    third = batchrun.map(changed, **PROMPT, **via(sim), checkpoint=folder, quiet=True, **FAST)
    assert len(sim.requests) == 13  # only the row whose request changed
    assert third["text"].to_list() == changed["text"].to_list()


def test_without_a_checkpoint_nothing_is_left_behind(
    tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    batchrun.map(reviews(3), **PROMPT, **via(sim), quiet=True, **FAST)
    batchrun.map(reviews(3), **PROMPT, **via(sim), quiet=True, **FAST)
    assert len(sim.requests) == 6  # each call pays: nothing was kept
    assert list(tmp_path.iterdir()) == []


def test_run_a_job_file_with_typed_overrides(ws: Workspace, sim: SimServer) -> None:
    ws.write_input(reviews(20))
    job = ws.job(sim.base_url, input={"id_column": "id"})
    result = batchrun.run(
        job, limit=5, quiet=True, limits__concurrency=4, overrides={"request.seed": 11}
    )
    assert isinstance(result, batchrun.RunResult)
    assert (result.total, result.ok, result.failed, result.pending, result.ran) == (5, 5, 0, 0, 5)
    assert result.tokens > 0 and result.spend > 0 and result.output_path == ws.output
    assert result.read()["id"].to_list() == reviews(5)["id"].to_list()
    assert {r.body["seed"] for r in sim.requests if r.body} == {11}
    again = batchrun.run(job, quiet=True, request__seed=11, overrides={"request.seed": 3})
    assert (again.total, again.ran) == (20, 15)  # the keywords win; 5 rows were done
    assert {r.body["seed"] for r in sim.requests[5:] if r.body} == {11}


def test_wrong_arguments_raise_the_user_errors_with_one_sentence(ws: Workspace) -> None:
    ws.write_input(reviews(3))
    job = ws.job("sim")
    with pytest.raises(batchrun.JobError, match=r"unknown key \[limits\] speed") as caught:
        batchrun.run(job, limits__speed=3)
    assert str(job) in str(caught.value)
    with pytest.raises(batchrun.JobError, match=r"\[limits\] concurrency"):
        batchrun.run(job, overrides={"limits.concurrency": 0})
    with pytest.raises(batchrun.UserError, match="drop retry_failed"):
        batchrun.run(job, fresh=True, retry_failed=True)
    with pytest.raises(batchrun.UserError, match="limit must be"):
        batchrun.run(job, limit=0)
    with pytest.raises(batchrun.UserError, match="engine must be 'local' or 'ray', not 'spark'"):
        batchrun.run(job, engine="spark")
    with pytest.raises(batchrun.JobError, match="does not exist"):
        batchrun.run(ws.root / "nope.toml")
    frame = reviews(3)
    with pytest.raises(batchrun.JobError, match=r"^batchrun.map: unknown key \[limits\] speed"):
        batchrun.map(frame, **PROMPT, endpoint="sim", speed=3)
    with pytest.raises(batchrun.JobError, match="endpoint must be"):
        batchrun.map(frame, **PROMPT, endpoint="api.302.ai")
    with pytest.raises(batchrun.JobError, match="model as model="):
        batchrun.map(frame, **{**PROMPT, "request": {"model": "x"}}, endpoint="sim")
    with pytest.raises(batchrun.InputError, match="polars or pandas DataFrame"):
        batchrun.map(frame.to_dicts(), **PROMPT, endpoint="sim")
    with pytest.raises(batchrun.InputError, match="'title'"):
        batchrun.map(frame, **{**PROMPT, "prompt": "{title}"}, endpoint="sim")
    with pytest.raises(batchrun.InputError, match="'response'"):
        batchrun.map(frame.with_columns(response=pl.lit("x")), **PROMPT, endpoint="sim")


def test_a_bad_key_raises_the_stop_with_the_summary(ws: Workspace) -> None:
    frame = reviews(40)
    sim = {"api_key": "sk-the-right-one-000000"}
    with pytest.raises(batchrun.BadKey, match=KEY_ENV) as caught:
        batchrun.map(frame, **PROMPT, endpoint="sim", sim=sim, api_key_env=KEY_ENV, **FAST)
    stop = caught.value
    assert isinstance(stop, batchrun.RunStopped) and FAKE_KEY not in str(stop)
    assert stop.summary is not None and stop.summary.ok == 0 and stop.summary.pending == 40
    assert any("checkpoint=" in note for note in stop.__notes__)
    ws.write_input(frame)
    job = ws.job("sim", sim=sim)
    with pytest.raises(batchrun.BadKey) as caught:
        batchrun.run(job, quiet=True)
    assert caught.value.summary is not None and caught.value.summary.total == 40
    assert caught.value.summary.output_path == ws.output


@pytest.mark.parametrize("in_loop", [False, True], ids=["script", "running-loop"])
def test_ctrl_c_keeps_the_finished_rows_and_the_next_call_completes(
    tmp_path: Path, in_loop: bool
) -> None:
    """Ctrl-C reaches the run through its signal handler (a script) or through the thread
    that waits for the worker (a running loop, as in Jupyter, where KeyboardInterrupt is
    raised in the waiting thread)."""
    frame = reviews(200)
    folder = tmp_path / "progress"
    limits = {"requests_per_minute": 600_000, "concurrency": 4}
    with start_in_thread(SimConfig(latency_ms=20)) as sim:

        def call() -> pl.DataFrame:
            return batchrun.map(
                frame, **PROMPT, **via(sim), checkpoint=folder, quiet=True, **limits
            )

        with (
            interrupt_after(lambda: len(sim.requests) >= 20),
            pytest.raises(batchrun.Interrupted) as caught,
        ):
            in_a_running_loop(call) if in_loop else call()
        summary = caught.value.summary
        assert summary is not None and 20 <= summary.ok < 200 and summary.pending > 0
        sent = len(sim.requests)
        assert sent == summary.ok  # requests in flight finished and were kept
        out = call()
        assert (
            out["status"].to_list() == ["ok"] * 200 and out["id"].to_list() == frame["id"].to_list()
        )
        assert len(sim.requests) == 200  # no row paid for twice


def in_a_running_loop(call: Callable[[], pl.DataFrame]) -> pl.DataFrame:
    """`call()` from a coroutine, as a notebook cell runs: a loop runs in this thread, and
    SIGINT raises KeyboardInterrupt (asyncio.run would turn the first one into a cancel)."""

    async def main() -> pl.DataFrame:
        return call()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


@contextlib.contextmanager
def interrupt_after(ready: Callable[[], bool]) -> Iterator[None]:
    """Send SIGINT to the main thread, as Ctrl-C does, once `ready()` holds."""
    leaving = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not ready():
            if leaving.wait(0.005) or time.monotonic() > deadline:
                return
        main = threading.main_thread().ident
        assert main is not None
        signal.pthread_kill(main, signal.SIGINT)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        leaving.set()
        watcher.join()


def test_an_interrupt_before_the_run_listens_is_held_for_it() -> None:
    heard: list[str] = []

    async def main() -> None:
        relay = InterruptRelay()
        relay.interrupt()  # while the input is still being written, say
        with relay.route(lambda: heard.append("early")):
            assert heard == ["early"]
            relay.interrupt()
            await asyncio.sleep(0)
            assert heard == ["early", "early"]
        relay.interrupt()  # after the run: nobody to tell
        await asyncio.sleep(0)
        assert heard == ["early", "early"]

    asyncio.run(main())


def test_the_public_names_are_exported_and_documented() -> None:
    for name in batchrun.__all__:
        assert hasattr(batchrun, name), name
        if name != "__version__":
            assert inspect.getdoc(getattr(batchrun, name)), name
    assert isinstance(batchrun.__version__, str)
    assert batchrun.map is api.map and batchrun.map.__name__ == "map"
    assert batchrun.run is api.run and batchrun.RunResult is api.RunResult
    assert inspect.iscoroutinefunction(batchrun.map_async)
    assert inspect.iscoroutinefunction(batchrun.run_async)
    assert set(batchrun.__all__) <= set(dir(batchrun))
    assert issubclass(batchrun.BadKey, batchrun.RunStopped)
    assert issubclass(batchrun.JobError, batchrun.UserError)


def test_import_is_cheap_and_map_needs_no_pandas() -> None:
    code = """
import sys

class NoPandas:  # as if pandas were not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoPandas())
import batchrun
heavy = {"asyncio", "polars", "pydantic", "batchrun.api"} & set(sys.modules)
assert not heavy, heavy
import polars as pl
out = batchrun.map(pl.DataFrame({"text": ["good"]}), prompt="{text}", model="gpt-4o-mini",
                   endpoint="sim", quiet=True)
assert out["status"].to_list() == ["ok"], out
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_key_passed_as_the_endpoint_is_not_printed_back() -> None:
    with pytest.raises(batchrun.JobError) as caught:
        batchrun.map(reviews(2), **PROMPT, endpoint=FAKE_KEY, quiet=True)
    assert FAKE_KEY not in str(caught.value) and FAKE_KEY[:12] not in str(caught.value)
    assert "endpoint must be" in str(caught.value)


def test_pandas_result_types_do_not_depend_on_failures() -> None:
    texts = ["I love it", "Broken [[sim:context_length]]", "Fine"]
    out = batchrun.map(pd.DataFrame({"text": texts}), **PROMPT, endpoint="sim", **FAST)
    assert out["status"].tolist() == ["ok", "failed", "ok"]
    assert str(out["prompt_tokens"].dtype) == "Int64" and out["prompt_tokens"].isna().sum() == 1
    assert str(out["attempts"].dtype) == "Int32"
    assert str(out["usage_estimated"].dtype) == "boolean"
    assert str(out["response"].dtype) == "string"


def test_a_second_call_on_a_busy_checkpoint_folder_is_refused_untouched(tmp_path: Path) -> None:
    import fcntl
    import os

    folder = tmp_path / "progress"
    batchrun.map(reviews(3), **PROMPT, endpoint="sim", checkpoint=folder, quiet=True, **FAST)
    before = (folder / "input.parquet").read_bytes()
    fd = os.open(folder / "map.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a call in progress holds it
    try:
        with pytest.raises(batchrun.UserError, match=r"Another batchrun\.map call"):
            batchrun.map(reviews(5), **PROMPT, endpoint="sim", checkpoint=folder, **FAST)
    finally:
        os.close(fd)
    assert (folder / "input.parquet").read_bytes() == before
