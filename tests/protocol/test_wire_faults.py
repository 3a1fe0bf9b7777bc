"""`batchrun run` through a proxy that breaks responses on the wire: resets, early closes,
stalls and trickles, mid-response and mid-stream (see faultproxy.py).

The simulator answers the same request the same way every time, so each row's answer through
the proxy must be the one a clean run, straight to the simulator, gets for that row.
"""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from batchrun.sim import SimConfig, start_in_thread

from ..conftest import Workspace, reviews
from ..faultproxy import FAULTS, fault_proxy

ROWS = 300
# 8% of responses broken, a quarter of them each way; seed 11's first 300 decisions hold
# 5 to 7 of each kind, so every kind shows up in every run.
RATES = dict.fromkeys(FAULTS, 0.02)
SEED = 11
LIMITS = {"idle_timeout_s": 1, "request_timeout_s": 5, "max_attempts": 8, "concurrency": 16}
# What must match a clean run, row for row.
ANSWER = ["id", "text", "status", "response", "response_id", "finish_reason", "total_tokens"]


def run_job(ws: Workspace, base_url: str, stream: bool) -> pl.DataFrame:
    ws.write_input(reviews(ROWS))
    job = ws.job(base_url, input={"id_column": "id"}, limits=LIMITS, request={"stream": stream})
    result = ws.run("run", str(job), "-q")
    assert result.code == 0, result.err
    return ws.read_output()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_broken_on_the_wire_are_retried_into_each_rows_own_answer(
    ws: Workspace, stream: bool
) -> None:
    with start_in_thread(SimConfig()) as sim:
        clean_root = ws.root / "clean"
        clean_root.mkdir()
        clean = run_job(Workspace(clean_root, ws.capsys), sim.base_url, stream)
        sent_clean = len(sim.requests)
        with fault_proxy(sim.base_url, RATES, SEED) as proxy:
            out = run_job(ws, proxy.base_url, stream)
        sent = len(sim.requests) - sent_clean

    assert clean["status"].to_list() == ["ok"] * ROWS and sent_clean == ROWS
    assert out["id"].to_list() == reviews(ROWS)["id"].to_list()  # each once, in order
    assert_frame_equal(out.select(ANSWER), clean.select(ANSWER))
    assert out["response"].null_count() == 0 and out["response_id"].n_unique() == ROWS

    injected = proxy.injected
    assert all(injected[kind] > 0 for kind in FAULTS), injected
    # Every attempt went through the proxy to the simulator and came back (broken or not);
    # only resets, closes and stalls cost an attempt: a trickle is slow but whole.
    broken = injected["reset"] + injected["close"] + injected["stall"]
    assert proxy.responses == sent == out["attempts"].sum() == ROWS + broken, injected


def test_the_proxy_passes_clean_traffic_through_untouched(ws: Workspace) -> None:
    with start_in_thread(SimConfig()) as sim, fault_proxy(sim.base_url, {}, SEED) as proxy:
        out = run_job(ws, proxy.base_url, stream=True)
    assert proxy.responses == ROWS and sum(proxy.injected.values()) == 0
    assert out["status"].to_list() == ["ok"] * ROWS and out["attempts"].sum() == ROWS
