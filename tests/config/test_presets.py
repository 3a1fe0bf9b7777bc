"""Gateway presets: base URL, headers and billing quirks, each overridable key by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.config.job import Job, load_job
from batchrun.config.presets import PRESETS, priced_model
from batchrun.errors import JobError
from batchrun.sim import SimConfig, start_in_thread

from ..conftest import Workspace, reviews

JOB = """
[input]
path = "in.csv"
[prompt]
user = "{x}"
[request]
model = "gpt-3.5-turbo"
[output]
path = "o.parquet"
[endpoint]
"""


def load(tmp_path: Path, endpoint: str) -> Job:
    path = tmp_path / "job.toml"
    path.write_text(JOB + endpoint, encoding="utf-8")
    return load_job(path, environ={"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"})


def test_each_preset_sets_its_gateway(tmp_path: Path) -> None:
    for name, preset in PRESETS.items():
        job = load(tmp_path, f'preset = "{name}"')
        assert job.endpoints[0].base_url == preset.base_url.rstrip("/")
    job = load(tmp_path, 'preset = "302ai"\nheaders = { "X-Team" = "a" }')
    assert dict(job.endpoints[0].headers) == {"Accept": "application/json", "X-Team": "a"}
    job = load(tmp_path, 'preset = "bcwhkj"')
    assert dict(job.endpoints[0].price_as) == {"gpt-3.5*": "gpt-4o-mini"}
    assert job.endpoints[0].non_stream_price_factor == 0.5


def test_a_preset_is_overridable_key_by_key(tmp_path: Path) -> None:
    job = load(tmp_path, 'preset = "bcwhkj"\nbase_url = "http://127.0.0.1:9/v1"')
    assert job.endpoints[0].base_url == "http://127.0.0.1:9/v1"
    assert job.endpoints[0].non_stream_price_factor == 0.5
    job = load(tmp_path, 'preset = "bcwhkj"\nnon_stream_price_factor = 1.0\nprice_as = {}')
    assert job.endpoints[0].non_stream_price_factor == 1.0 and dict(job.endpoints[0].price_as) == {}
    job = load(tmp_path, "")
    assert job.endpoints[0].base_url == "http://127.0.0.1:1/v1"


def test_an_unknown_preset_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="302ai, bcwhkj"):
        load(tmp_path, 'preset = "azure"')


def test_model_patterns_billed_as_another_model() -> None:
    price_as = PRESETS["bcwhkj"].price_as
    assert priced_model("gpt-3.5-turbo-0125", price_as) == "gpt-4o-mini"
    assert priced_model("gpt-4o", price_as) == "gpt-4o"
    assert priced_model("gpt-4-gizmo-g-B3hgivKK9", price_as) == "gpt-4-gizmo-g-B3hgivKK9"


def mini_cost(prompt: int, completion: int) -> float:
    return (prompt * 0.15 + completion * 0.60) / 1_000_000


@pytest.mark.parametrize(("stream", "factor"), [(False, 0.5), (True, 1.0)])
def test_bcwhkj_remaps_gpt35_and_bills_non_streaming_at_half(
    ws: Workspace, stream: bool, factor: float
) -> None:
    with start_in_thread(SimConfig(dialect="bcwhkj")) as sim:
        ws.write_input(reviews(10))
        job = ws.job(
            sim.base_url,
            endpoint={"preset": "bcwhkj"},
            request={"model": "gpt-3.5-turbo", "stream": stream},
        )
        result = ws.run("run", str(job), "-q")
        assert result.code == 0, result.err
        assert "10 responses came from another model than requested" in result.out
    out = ws.read_output()
    assert set(out["response_model"]) == {"gpt-4o-mini"}
    for row in out.iter_rows(named=True):
        expected = mini_cost(row["prompt_tokens"], row["completion_tokens"]) * factor
        assert row["cost_usd"] == pytest.approx(expected)


def test_302ai_gets_the_headers_it_requires(ws: Workspace) -> None:
    with start_in_thread(SimConfig(dialect="302ai")) as sim:
        ws.write_input(reviews(3))
        job = ws.job(sim.base_url, endpoint={"preset": "302ai"})
        assert ws.run("run", str(job), "-q").code == 0
        for record in sim.requests:
            headers = {k.lower(): v for k, v in record.headers.items()}
            assert headers["accept"] == "application/json"
            assert headers["content-type"] == "application/json"
            assert headers["authorization"] == "<redacted>"  # sent, and never logged
    assert ws.read_output()["cached_tokens"].null_count() == 0


def test_anyapi_custom_gpts_have_no_made_up_price(ws: Workspace) -> None:
    with start_in_thread(SimConfig(dialect="anyapi")) as sim:
        ws.write_input(reviews(3))
        job = ws.job(
            sim.base_url,
            endpoint={"preset": "anyapi"},
            request={"model": "gpt-4-gizmo-g-2fkFE8rbu"},
        )
        assert ws.run("run", str(job), "-q").code == 0
    out = ws.read_output()
    assert set(out["response_model"]) == {"gpt-4-gizmo-g-2fkFE8rbu"}
    assert out["cost_usd"].null_count() == 3
