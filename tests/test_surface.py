"""The chat-completions surface in each gateway dialect, streaming and not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import polars as pl
import pytest

from batchrun.sim import SimConfig, SimServer, start_in_thread

from .conftest import Workspace, reviews

DIALECTS = ["openai", "302ai", "bcwhkj", "anyapi"]
DETAILED_USAGE = {"openai", "302ai"}


@pytest.fixture(params=DIALECTS)
def dialect_sim(request: pytest.FixtureRequest) -> Iterator[SimServer]:
    with start_in_thread(SimConfig(dialect=request.param)) as server:
        yield server


def run(ws: Workspace, sim: SimServer, rows: int = 8, **sections: Any) -> pl.DataFrame:
    if not (ws.root / "input.parquet").exists():
        ws.write_input(reviews(rows))
    result = ws.run("run", str(ws.job(sim.base_url, **sections)), "-q", "--fresh")
    assert result.code == 0, result.err
    return ws.read_output()


@pytest.mark.parametrize("stream", [False, True])
def test_answers_and_usage_in_each_dialect(
    ws: Workspace, dialect_sim: SimServer, stream: bool
) -> None:
    dialect = dialect_sim.config.dialect
    out = run(ws, dialect_sim, request={"stream": stream})
    assert set(out["status"]) == {"ok"}
    assert set(out["response"]) <= {"positive", "negative", "neutral"}
    assert set(out["finish_reason"]) == {"stop"}
    assert (out["total_tokens"] == out["prompt_tokens"] + out["completion_tokens"]).all()
    assert not out["usage_estimated"].any()
    if dialect in DETAILED_USAGE:
        assert out["cached_tokens"].null_count() == 0 and out["reasoning_tokens"].null_count() == 0
    else:
        assert out["cached_tokens"].null_count() == 8 and out["reasoning_tokens"].null_count() == 8
    if stream:
        assert out["ttft_s"].null_count() == 0 and (out["ttft_s"] <= out["latency_s"]).all()
        bodies = [r.body for r in dialect_sim.requests if r.body]
        assert all(b["stream_options"] == {"include_usage": True} for b in bodies)
    else:
        assert out["ttft_s"].null_count() == 8


def test_streaming_and_not_give_the_same_answers(ws: Workspace, sim: SimServer) -> None:
    plain = run(ws, sim, request={"max_tokens": 40}, prompt={"system": None})
    streamed = run(ws, sim, request={"max_tokens": 40, "stream": True}, prompt={"system": None})
    assert streamed["response"].to_list() == plain["response"].to_list()
    assert streamed["completion_tokens"].to_list() == plain["completion_tokens"].to_list()
    assert streamed["finish_reason"].to_list() == plain["finish_reason"].to_list()


def test_a_gateway_without_usage_is_counted_locally_and_says_so(ws: Workspace) -> None:
    with start_in_thread(SimConfig(no_usage=True)) as sim:
        for stream in (False, True):
            out = run(ws, sim, request={"stream": stream})
            assert out["usage_estimated"].all() and (out["prompt_tokens"] > 10).all()


def test_reasoning_tokens_of_reasoning_models(ws: Workspace, sim: SimServer) -> None:
    out = run(ws, sim, request={"model": "o4-mini", "max_tokens": 60})
    assert (out["reasoning_tokens"] > 0).all()


@pytest.mark.parametrize("stream", [False, True])
def test_n_fills_choices_and_response_is_the_first(
    ws: Workspace, dialect_sim: SimServer, stream: bool
) -> None:
    sim = dialect_sim
    out = run(
        ws, sim, request={"n": 3, "stream": stream, "max_tokens": 30}, prompt={"system": None}
    )
    assert out.schema["choices"] == pl.List(pl.String)
    assert all(len(c) == 3 for c in out["choices"])
    assert out["response"].to_list() == [c[0] for c in out["choices"]]
    assert any(len(set(c)) > 1 for c in out["choices"])


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "record_label",
            "description": "Record the review's label",
            "parameters": {
                "type": "object",
                "properties": {
                    "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                    "confidence": {"type": "number"},
                },
                "required": ["label"],
            },
        },
    }
]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_are_recorded_as_json(
    ws: Workspace, dialect_sim: SimServer, stream: bool
) -> None:
    sim = dialect_sim
    request = {"tools": TOOLS, "tool_choice": "auto", "stream": stream, "max_tokens": 60}
    out = run(ws, sim, request=request)
    assert set(out["finish_reason"]) == {"tool_calls"}
    assert out["response"].null_count() == 8
    for text in out["tool_calls"]:
        [call] = orjson.loads(text)
        assert call["type"] == "function" and call["id"]
        assert call["function"]["name"] == "record_label"
        assert orjson.loads(call["function"]["arguments"])["label"] in {
            "positive",
            "negative",
            "neutral",
        }
    body = next(r.body for r in sim.requests if r.body)
    assert body["tools"] == TOOLS and body["tool_choice"] == "auto"


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
            "required": ["label", "score"],
        },
    },
}


@pytest.mark.parametrize("response_format", [{"type": "json_object"}, SCHEMA])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_json_mode_flags_answers_that_are_not_json(
    ws: Workspace, response_format: dict[str, Any], stream: bool, dialect: str
) -> None:
    config = SimConfig(dialect=dialect, faults={"bad_json": 0.4}, seed=2)
    with start_in_thread(config) as sim:
        out = run(
            ws,
            sim,
            rows=30,
            request={"response_format": response_format, "stream": stream, "max_tokens": 60},
        )
    assert out.schema["json_valid"] == pl.Boolean
    valid = out.filter(pl.col("json_valid"))
    invalid = out.filter(~pl.col("json_valid"))
    assert valid.height > 0 and invalid.height > 0
    assert set(invalid["status"]) == {"ok"}  # flagged, not silently dropped or retried
    for text in valid["response"]:
        assert isinstance(orjson.loads(text), dict)
    for text in invalid["response"]:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(text)


def test_parameters_and_gizmo_models_pass_through_untouched(ws: Workspace, sim: SimServer) -> None:
    request = {
        "model": "gpt-4-gizmo-g-B3hgivKK9",
        "stop": ["\n\n", "END"],
        "seed": 11,
        "logit_bias": {"50256": -100},
        "user": "labeler-7",
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "top_p": 0.9,
        "temperature": 0.2,
        "max_tokens": 8,
    }
    out = run(ws, sim, request=request)
    assert set(out["response_model"]) == {"gpt-4-gizmo-g-B3hgivKK9"}
    for record in sim.requests:
        assert record.body is not None
        assert {k: record.body[k] for k in request} == request


@pytest.mark.parametrize("dialect", DIALECTS)
def test_truncated_streams_are_retried_then_failed(ws: Workspace, dialect: str) -> None:
    with start_in_thread(SimConfig(dialect=dialect)) as sim:
        ws.write_input(pl.DataFrame({"text": ["fine", "[[sim:truncated_stream]] cut"]}))
        out = run(ws, sim, request={"stream": True}, limits={"max_attempts": 3})
        assert out["status"].to_list() == ["ok", "failed"]
        assert out["error"][1] == "truncated_stream" and out["attempts"][1] == 3
        assert out["response"][1] is None


def test_truncated_streams_that_recover_are_recorded_once(ws: Workspace) -> None:
    with start_in_thread(SimConfig(faults={"truncated_stream": 0.3}, seed=4)) as sim:
        out = run(ws, sim, rows=40, request={"stream": True}, limits={"max_attempts": 10})
        assert set(out["status"]) == {"ok"}
        assert out["attempts"].sum() == len(sim.requests) > 40


def test_time_to_first_token_follows_the_gateway(ws: Workspace) -> None:
    with start_in_thread(SimConfig(ttft_ms=150, chunk_delay_ms=20)) as sim:
        out = run(
            ws, sim, rows=4, request={"stream": True, "max_tokens": 30}, prompt={"system": None}
        )
    assert (out["ttft_s"] >= 0.15).all()
    assert (out["latency_s"] - out["ttft_s"] >= 0.02).all()  # the rest of the stream took time
