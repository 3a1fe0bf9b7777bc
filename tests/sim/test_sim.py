"""The embedded simulator, over real loopback HTTP: answers, streams, dialects and faults."""

from __future__ import annotations

import argparse
import asyncio
import csv
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import batchrun.sim
from batchrun.core.tokens import counter_for
from batchrun.core.tokens import estimate_text as count_text
from batchrun.sim import (
    FAULT_KINDS,
    SimConfig,
    SimServer,
    add_sim_arguments,
    config_from_args,
    start_in_thread,
)
from batchrun.sim.gateway_limits import QuotaWindow, RequestRate, format_duration
from batchrun.sim.latency import Latency
from batchrun.sim.sentiment import label, score

LABEL_SYSTEM = "Label the review as positive, negative or neutral. Answer with one word."
KEY = "sk-test-0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content(self) -> str | None:
        content: str | None = self.json()["choices"][0]["message"]["content"]
        return content


def post(
    sim: SimServer, body: Any, headers: Mapping[str, str] | None = None, path: str = ""
) -> Reply:
    url = (sim.base_url + path) if path else sim.base_url + "/chat/completions"
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, dict(exc.headers), exc.read())


def chat(user: str, system: str | None = None, **fields: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return {"model": "gpt-4o-mini", "messages": messages, **fields}


def events(reply: Reply) -> list[str]:
    """The data payloads of an event stream, in order."""
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    return [
        block.removeprefix("data: ")
        for block in reply.body.decode().split("\n\n")
        if block.startswith("data: ")
    ]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with start_in_thread(SimConfig()) as server:
        yield server


def test_public_names() -> None:
    assert sorted(batchrun.sim.__all__) == sorted(
        [
            "FAULT_KINDS",
            "RequestRecord",
            "SimConfig",
            "SimServer",
            "add_sim_arguments",
            "config_from_args",
            "serve_forever",
            "start_in_thread",
        ]
    )
    for name in batchrun.sim.__all__:
        assert getattr(batchrun.sim, name) is not None


def test_base_url_and_port(sim: SimServer) -> None:
    assert sim.port > 0
    assert sim.base_url == f"http://127.0.0.1:{sim.port}/v1"


# --- deterministic answers -------------------------------------------------------------------


def test_same_body_gets_same_answer(sim: SimServer) -> None:
    first = post(sim, chat("Summarise the quarterly report.")).json()
    again = post(sim, chat("Summarise the quarterly report.")).json()
    other = post(sim, chat("Summarise the annual report.")).json()
    assert first["id"] == again["id"] and first["id"].startswith("chatcmpl-")
    assert first["choices"] == again["choices"]
    assert first["usage"] == again["usage"]
    assert first["created"] == again["created"]
    assert other["id"] != first["id"]


def test_generic_answer_and_usage(sim: SimServer) -> None:
    body = chat("Describe a good table design.", system="You are terse.")
    reply = post(sim, body).json()
    content = reply["choices"][0]["message"]["content"]
    assert reply["object"] == "chat.completion"
    assert reply["model"] == "gpt-4o-mini"
    assert reply["system_fingerprint"].startswith("fp_sim")
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert 5 <= count_text(content) <= 82
    usage = reply["usage"]
    # prompts are counted with the model's own encoding, exactly as batchrun estimates them
    assert usage["prompt_tokens"] == counter_for("gpt-4o-mini").chat(body["messages"])
    assert usage["completion_tokens"] == count_text(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {
        "cached_tokens": usage["prompt_tokens"] // 2 // 16 * 16,
        "audio_tokens": 0,
    }
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


@pytest.mark.parametrize(
    ("review", "label"),
    [
        ("I love it, works great and I would recommend it.", "positive"),
        ("Broke after two days. Terrible, I want a refund.", "negative"),
        ("It is a phone case in blue.", "neutral"),
        ("Not good at all.", "negative"),
        ("Nice colour but it stopped working and I am disappointed.", "negative"),
        ("质量很好，非常满意，推荐购买！", "positive"),
        ("太差了，不好用，已经退货。", "negative"),
    ],
)
def test_labeler_answers_one_word(sim: SimServer, review: str, label: str) -> None:
    reply = post(sim, chat(f"Review: {review}", system=LABEL_SYSTEM, max_tokens=8))
    assert reply.content == label
    assert reply.json()["choices"][0]["finish_reason"] == "stop"


def test_labeler_answers_in_the_prompts_label_words(sim: SimServer) -> None:
    system = "判断这条评论的情感，只回答：正面、负面或中性。"
    assert post(sim, chat("评论：物流很快，东西不错，很喜欢", system=system)).content == "正面"
    assert post(sim, chat("评论：做工粗糙，非常失望", system=system)).content == "负面"
    binary = "Is this review positive or negative?"
    assert post(sim, chat("Review: awful", system=binary)).content == "negative"


def test_sentiment_handles_negation_softeners_and_contrast() -> None:
    assert score("not good").score < 0
    assert score("not bad").score > 0
    assert score("would not recommend").score < 0
    assert score("no issues at all").score > 0
    assert score("不好").score < 0
    assert score("不错").score > 0
    assert score("没有问题").score > 0
    assert score("有点重").score == -0.5
    assert score("Nice colour but it broke").score == -1
    assert score("Sound is fine.").hedges == 1


def test_max_tokens_cuts_the_answer(sim: SimServer) -> None:
    full = post(sim, chat("Explain caching.")).json()
    cut = post(sim, chat("Explain caching.", max_tokens=3)).json()
    content = cut["choices"][0]["message"]["content"]
    assert cut["choices"][0]["finish_reason"] == "length"
    assert count_text(content) <= 3
    assert full["choices"][0]["message"]["content"].startswith(content)
    assert cut["usage"]["completion_tokens"] == count_text(content)
    via_new_name = post(sim, chat("Explain caching.", max_completion_tokens=3)).json()
    assert via_new_name["choices"][0]["finish_reason"] == "length"


def test_n_choices_differ(sim: SimServer) -> None:
    reply = post(sim, chat("Name a colour.", n=3)).json()
    choices = reply["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert len({c["message"]["content"] for c in choices}) == 3
    total = sum(count_text(c["message"]["content"]) for c in choices)
    assert reply["usage"]["completion_tokens"] == total


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "units": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "days"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


def test_tools_give_tool_calls(sim: SimServer) -> None:
    body = chat("Weather in Paris?", tools=[SEARCH_TOOL, WEATHER_TOOL])
    forced = {"type": "function", "function": {"name": "get_weather"}}
    reply = post(sim, {**body, "tool_choice": forced}).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert isinstance(arguments["city"], str)
    assert 1 <= arguments["days"] <= 7
    assert arguments["units"] in ("c", "f")
    assert reply["usage"]["completion_tokens"] == count_text(call["function"]["arguments"])
    first_tool = post(sim, body).json()["choices"][0]["message"]["tool_calls"][0]
    assert first_tool["function"]["name"] == "search"
    no_tools = post(sim, {**body, "tool_choice": "none"}).json()["choices"][0]
    assert no_tools["finish_reason"] == "stop" and no_tools["message"]["content"]


def test_json_object_content_parses(sim: SimServer) -> None:
    json_mode = {"type": "json_object"}
    plain = post(sim, chat("Reply in JSON.", response_format=json_mode)).content
    assert isinstance(json.loads(plain or ""), dict)
    labeled = post(sim, chat("Review: great", system=LABEL_SYSTEM, response_format=json_mode))
    document = json.loads(labeled.content or "")
    assert document["label"] == "positive"
    assert 0 <= document["confidence"] <= 1


def test_json_schema_content_fills_the_schema(sim: SimServer) -> None:
    schema = {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "spam": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "author": {"$ref": "#/$defs/person"},
        },
        "required": ["sentiment", "score", "stars", "spam", "tags", "author"],
        "additionalProperties": False,
        "$defs": {"person": {"type": "object", "properties": {"name": {"type": "string"}}}},
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    body = chat("Review: I hate it", system=LABEL_SYSTEM, response_format=response_format)
    document = json.loads(post(sim, body).content or "")
    assert document["sentiment"] == "negative"
    assert 0 <= document["score"] <= 1
    assert document["stars"] in range(1, 6)
    assert isinstance(document["spam"], bool)
    assert document["tags"] and all(isinstance(t, str) for t in document["tags"])
    assert isinstance(document["author"]["name"], str)


def test_bad_json_fault_spoils_json_mode(sim: SimServer) -> None:
    body = chat("Reply in JSON. [[sim:bad_json]]", response_format={"type": "json_object"})
    with pytest.raises(json.JSONDecodeError):
        json.loads(post(sim, body).content or "")


@pytest.mark.parametrize(
    ("user", "system", "fields", "content"),
    [
        ("Review: I love it [[sim:chatty]]", LABEL_SYSTEM, {}, 'Label: "Positive".'),
        (
            "评论：这个产品非常好用，质量很好，推荐大家购买 [[sim:chatty]]",
            LABEL_SYSTEM,
            {},
            "标签：positive。",
        ),
        ("Review: I love it [[sim:off_format]]", LABEL_SYSTEM, {}, "Mixed, I would say."),
        ("Say something. [[sim:off_format]]", None, {}, "Sure! Here is what I think about it."),
        (
            "Reply in JSON. [[sim:off_format]]",
            None,
            {"response_format": {"type": "json_object"}},
            "Sure! Here is what I think about it.",
        ),
    ],
)
def test_content_faults_change_the_wording(
    sim: SimServer, user: str, system: str | None, fields: dict[str, Any], content: str
) -> None:
    assert post(sim, chat(user, system, max_tokens=20, **fields)).content == content


def test_chatty_fences_json_and_off_format_breaks_the_schema(sim: SimServer) -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["label"],
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    fenced = post(sim, chat("Go. [[sim:chatty]]", response_format=response_format)).content
    assert fenced is not None and fenced.startswith("```json\n") and fenced.endswith("\n```")
    broken = post(sim, chat("Go. [[sim:off_format]]", response_format=response_format)).content
    assert "label" not in json.loads(broken or "")  # the required field is gone


def test_a_reask_is_answered_as_the_question_before_it(sim: SimServer) -> None:
    body = chat("Review: I love it, works great [[sim:off_format]]", LABEL_SYSTEM)
    first = post(sim, body).content
    body["messages"] += [
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Your answer could not be used (why). Answer again."},
    ]
    assert post(sim, body).content == first  # the marker is in the question: off again
    plain = chat("Review: I love it, works great", LABEL_SYSTEM)
    plain["messages"] += body["messages"][-2:]
    assert post(sim, plain).content == "positive"


def test_label_noise_gets_a_share_of_labels_wrong_per_model() -> None:
    reviews = [f"Review: I love it, works great, number {i}" for i in range(400)]
    noisy = {"gpt-3.5*": 0.25}
    with start_in_thread(SimConfig(label_noise=noisy)) as server:
        answers = {
            model: [
                post(server, {**chat(r, LABEL_SYSTEM), "model": model}).content for r in reviews
            ]
            for model in ("gpt-4o-mini", "gpt-3.5-turbo")
        }
        again = [
            post(server, {**chat(r, LABEL_SYSTEM), "model": "gpt-3.5-turbo"}).content
            for r in reviews[:50]
        ]
    assert answers["gpt-4o-mini"] == ["positive"] * 400
    wrong = sum(a != "positive" for a in answers["gpt-3.5-turbo"])
    assert 60 < wrong < 140  # about a quarter
    assert set(answers["gpt-3.5-turbo"]) <= {"positive", "negative", "neutral"}
    assert again == answers["gpt-3.5-turbo"][:50]  # the same rows every time
    with pytest.raises(ValueError, match="label_noise"):
        SimConfig(label_noise={"x": 2})


def test_reasoning_models_count_reasoning_tokens(sim: SimServer) -> None:
    reply = post(sim, {**chat("Think about caching."), "model": "o3-mini"}).json()
    visible = count_text(reply["choices"][0]["message"]["content"])
    usage = reply["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 2 * visible
    assert usage["completion_tokens"] == 3 * visible


# --- streaming -----------------------------------------------------------------------------


def test_stream_reassembles_to_the_plain_answer(sim: SimServer) -> None:
    body = chat("Tell me about queues.", n=2)
    whole = post(sim, body).json()
    streamed = events(
        post(sim, {**body, "stream": True, "stream_options": {"include_usage": True}})
    )
    assert streamed[-1] == "[DONE]"
    chunks = [json.loads(e) for e in streamed[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == whole["id"] for c in chunks)
    texts = ["", ""]
    finishes = {}
    for c in chunks[:-1]:
        (part,) = c["choices"]
        texts[part["index"]] += part["delta"].get("content") or ""
        if part["finish_reason"]:
            finishes[part["index"]] = part["finish_reason"]
    assert texts == [c["message"]["content"] for c in whole["choices"]]
    assert finishes == {0: "stop", 1: "stop"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_stream_without_include_usage_has_no_usage_chunk(sim: SimServer) -> None:
    streamed = events(post(sim, chat("Hello", stream=True)))
    assert streamed[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in streamed[:-1])


def test_stream_tool_call_arguments_reassemble(sim: SimServer) -> None:
    body = chat("Weather?", tools=[WEATHER_TOOL])
    whole = post(sim, body).json()["choices"][0]["message"]["tool_calls"][0]
    chunks = [json.loads(e) for e in events(post(sim, {**body, "stream": True}))[:-1]]
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert (first["id"], first["function"]["name"]) == (whole["id"], "get_weather")
    arguments = "".join(
        d["tool_calls"][0]["function"]["arguments"]
        for c in chunks
        if (d := c["choices"][0]["delta"]).get("tool_calls")
    )
    assert arguments == whole["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_truncated_stream_never_finishes(sim: SimServer) -> None:
    body = chat("Tell me a story. [[sim:truncated_stream]]", stream=True)
    for _ in range(2):  # a clean end without [DONE], then a dropped connection
        try:
            reply = post(sim, body)
        except http.client.IncompleteRead as exc:
            text = exc.partial.decode()
        else:
            text = reply.body.decode()
        assert "[DONE]" not in text and '"finish_reason":"stop"' not in text
        assert text.startswith("data: ")


# --- dialects ------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["openai", "302ai", "anyapi"])
def test_bad_key_openai_shape_masks_the_key(dialect: str) -> None:
    with start_in_thread(SimConfig(dialect=dialect, api_key=KEY)) as server:  # type: ignore[arg-type]
        wrong = "sk-wrong-0123456789abcdefghijklmnopqrstuvwxyz"
        reply = post(server, chat("hi"), {"Authorization": f"Bearer {wrong}"})
        assert reply.status == 401
        error = reply.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
        assert error["message"].startswith("Incorrect API key provided: sk-wr")
        assert wrong not in reply.body.decode() and KEY not in reply.body.decode()
        assert post(server, chat("hi")).status == 401
        assert post(server, chat("hi"), {"Authorization": f"Bearer {KEY}"}).status == 200


def test_bad_key_bcwhkj_is_http_200() -> None:
    with start_in_thread(SimConfig(dialect="bcwhkj", api_key=KEY)) as server:
        reply = post(server, chat("hi"), {"Authorization": "Bearer nope"})
        assert reply.status == 200
        assert reply.json() == {
            "codes": 900,
            "mess": "密钥错误或已过期，请通过微信访问yewu.bcwhkj.cn个人中心获取",
            "data": "token",
        }


@pytest.mark.parametrize(
    ("dialect", "status", "body"),
    [
        (
            "openai",
            429,
            {
                "error": {
                    "message": "You exceeded your current quota, please check your plan and "
                    "billing details.",
                    "type": "insufficient_quota",
                    "param": None,
                    "code": "insufficient_quota",
                }
            },
        ),
        ("bcwhkj", 200, {"codes": 300, "mess": "当前额度不足，请充值后继续使用", "data": ""}),
    ],
)
def test_quota_window(dialect: str, status: int, body: Any) -> None:
    config = SimConfig(dialect=dialect, quota_window=(0, math.inf))  # type: ignore[arg-type]
    with start_in_thread(config) as server:
        reply = post(server, chat("hi"))
        assert (reply.status, reply.json()) == (status, body)
        assert server.requests[0].status == status


def test_quota_window_opens_and_closes() -> None:
    quota = QuotaWindow((10.0, 20.0))
    assert not quota.exhausted(100.0)  # the first request sets the origin
    assert not quota.exhausted(109.9)
    assert quota.exhausted(110.0)
    assert quota.exhausted(119.9)
    assert not quota.exhausted(120.0)


@pytest.mark.parametrize(
    ("dialect", "status", "code"),
    [("openai", 400, "content_filter"), ("302ai", 400, "content_filter"), ("bcwhkj", 200, 402)],
)
def test_content_filter(dialect: str, status: int, code: Any) -> None:
    with start_in_thread(SimConfig(dialect=dialect)) as server:  # type: ignore[arg-type]
        reply = post(server, chat("something [[sim:content_filter]]"))
        assert reply.status == status
        body = reply.json()
        assert (body["codes"] if dialect == "bcwhkj" else body["error"]["code"]) == code


def test_bcwhkj_illegal_chars_and_cf_bad_gateway_at_http_200() -> None:
    with start_in_thread(SimConfig(dialect="bcwhkj")) as server:
        illegal = post(server, chat("x [[sim:illegal_chars]]"))
        assert (illegal.status, illegal.json()["codes"]) == (200, 400)
        gateway = post(server, chat("x [[sim:cf_bad_gateway]]"))
        assert gateway.status == 200
        assert gateway.json() == {
            "error": {
                "code": 502,
                "message": "Bad gateway.",
                "param": None,
                "type": "cf_bad_gateway",
            }
        }


def test_cf_bad_gateway_is_502_elsewhere(sim: SimServer) -> None:
    reply = post(sim, chat("x [[sim:cf_bad_gateway]]"))
    assert (reply.status, reply.json()["error"]["type"]) == (502, "cf_bad_gateway")


def test_bcwhkj_serves_gpt35_as_gpt4o_mini_and_basic_usage() -> None:
    with start_in_thread(SimConfig(dialect="bcwhkj")) as server:
        reply = post(server, {**chat("hi"), "model": "gpt-3.5-turbo-0125"}).json()
        assert reply["model"] == "gpt-4o-mini"
        assert "system_fingerprint" not in reply
        assert set(reply["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        assert server.requests[0].model == "gpt-3.5-turbo-0125"


def test_anyapi_gizmo_models_pass_through() -> None:
    with start_in_thread(SimConfig(dialect="anyapi")) as server:
        reply = post(server, {**chat("你是谁"), "model": "gpt-4-gizmo-g-B3hgivKK9"}).json()
        assert reply["model"] == "gpt-4-gizmo-g-B3hgivKK9"
        assert set(reply["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_no_usage() -> None:
    with start_in_thread(SimConfig(no_usage=True)) as server:
        assert "usage" not in post(server, chat("hi")).json()
        body = chat("hi", stream=True, stream_options={"include_usage": True})
        assert all('"usage":{' not in e for e in events(post(server, body)))


# --- limits and faults ---------------------------------------------------------------------


def test_rpm_limit_answers_429_with_retry_after() -> None:
    with start_in_thread(SimConfig(rpm_limit=60, ratelimit_headers=True)) as server:
        first = post(server, chat("one"))
        second = post(server, chat("two"))
        assert first.status == 200
        assert first.headers["x-ratelimit-limit-requests"] == "60"
        assert first.headers["x-ratelimit-remaining-requests"] == "59"
        assert first.headers["x-ratelimit-limit-tokens"] == "60000"
        assert second.status == 429
        assert second.headers["Retry-After"] == "1"
        assert 0 < int(second.headers["retry-after-ms"]) <= 1000
        assert second.json()["error"]["code"] == "rate_limit_exceeded"
        assert second.json()["error"]["type"] == "requests"
        assert [r.status for r in server.requests] == [200, 429]


def test_request_rate_is_enforced_per_second() -> None:
    rate = RequestRate(120)
    assert rate.admit(0.0) is None
    assert rate.admit(0.1) is None
    assert rate.admit(0.2) == pytest.approx(0.8)
    assert rate.admit(1.0) is None
    slow = RequestRate(30)  # one request per two seconds
    assert slow.admit(0.0) is None
    assert slow.admit(1.5) == pytest.approx(0.5)
    assert slow.admit(2.0) is None


def test_ratelimit_header_durations() -> None:
    assert format_duration(0.12) == "120ms"
    assert format_duration(1) == "1s"
    assert format_duration(17.5) == "17.5s"
    assert format_duration(360) == "6m0s"
    rate = RequestRate(600)
    for t in range(3):
        rate.admit(t * 0.5)
    rate.spend(1.0, 1500)
    headers = rate.headers(1.0)
    assert headers["x-ratelimit-remaining-requests"] == "597"
    assert headers["x-ratelimit-reset-requests"] == "300ms"
    assert headers["x-ratelimit-remaining-tokens"] == "598500"


def test_max_in_flight_refuses_the_excess() -> None:
    async def both(url: str) -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(text: str) -> int:
                async with session.post(url, json=chat(text)) as response:
                    await response.read()
                    return response.status

            return sorted(await asyncio.gather(one("a"), one("b")))

    with start_in_thread(SimConfig(max_in_flight=1, latency_ms=50)) as server:
        assert asyncio.run(both(server.base_url + "/chat/completions")) == [200, 429]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("server_error", 500),
        ("html_error", 502),
        ("rate_limit", 429),
        ("context_length", 400),
        ("model_not_found", 404),
        ("illegal_chars", 400),
    ],
)
def test_marker_forces_a_fault(sim: SimServer, kind: str, status: int) -> None:
    reply = post(sim, chat(f"Hello [[sim:{kind}]]"))
    assert reply.status == status
    if kind == "html_error":
        assert reply.headers["Content-Type"].startswith("text/html")
    else:
        assert reply.json()["error"]
    if kind == "context_length":
        assert reply.json()["error"]["code"] == "context_length_exceeded"
    if kind == "rate_limit":
        assert reply.headers["Retry-After"] == "1"


def test_missing_model_is_not_found(sim: SimServer) -> None:
    reply = post(sim, {**chat("hi"), "model": "missing-model"})
    assert (reply.status, reply.json()["error"]["code"]) == (404, "model_not_found")


def test_server_errors_rotate_and_malformed_alternates() -> None:
    with start_in_thread(SimConfig()) as server:
        statuses = [post(server, chat("x [[sim:server_error]]")).status for _ in range(4)]
        assert statuses == [500, 502, 503, 504]
        bodies = [post(server, chat("x [[sim:malformed]]")) for _ in range(2)]
        assert all(b.status == 200 for b in bodies)
        with pytest.raises(json.JSONDecodeError):
            bodies[0].json()
        assert "choices" not in bodies[1].json()


def test_reset_drops_the_connection(sim: SimServer) -> None:
    with pytest.raises(ConnectionError):
        post(sim, chat("hi [[sim:reset]]"))
    assert post(sim, chat("hi")).status == 200


def test_hang_holds_then_drops() -> None:
    with start_in_thread(SimConfig(hang_s=0.02)) as server:
        with pytest.raises(ConnectionError):
            post(server, chat("hi [[sim:hang]]"))
        assert server.requests[-1].fault == "hang"


def test_fault_rates_follow_the_seeded_request_sequence() -> None:
    config = SimConfig(faults={"server_error": 0.5}, seed=7)

    def statuses() -> list[int]:
        with start_in_thread(config) as server:
            return [post(server, chat("same question")).status for _ in range(12)]

    first = statuses()
    assert first == statuses()
    assert 200 in first and any(s >= 500 for s in first)


def test_requests_are_recorded(sim: SimServer) -> None:
    before = len(sim.requests)
    post(sim, chat("log me", stream=True), {"Authorization": "Bearer sk-secret-value"})
    post(sim, chat("log me [[sim:content_filter]]"))
    post(sim, {"model": "gpt-4o-mini"})
    records = sim.requests[before:]
    assert [(r.status, r.fault, r.stream) for r in records] == [
        (200, None, True),
        (400, "content_filter", False),
        (400, None, False),
    ]
    assert records[0].body == chat("log me", stream=True)
    assert records[0].model == "gpt-4o-mini"
    assert records[0].headers["Authorization"] == "<redacted>"
    assert records[0].t <= records[1].t <= records[2].t


def test_models_and_paths_without_v1(sim: SimServer) -> None:
    url = f"http://127.0.0.1:{sim.port}"
    with urllib.request.urlopen(url + "/v1/models", timeout=5) as response:
        models = json.loads(response.read())
    assert models["object"] == "list" and "gpt-4o-mini" in [m["id"] for m in models["data"]]
    request = urllib.request.Request(
        url + "/chat/completions", json.dumps(chat("hi")).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["object"] == "chat.completion"


def test_invalid_bodies_get_400(sim: SimServer) -> None:
    request = urllib.request.Request(
        sim.base_url + "/chat/completions", b"{not json", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    with caught.value as error:
        assert error.code == 400
    assert post(sim, {"messages": []}).status == 400
    assert post(sim, chat("hi", n=0)).status == 400


# --- configuration and command line --------------------------------------------------------


def test_config_validates_itself() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        SimConfig(faults={"gremlins": 0.1})
    with pytest.raises(ValueError, match="add up"):
        SimConfig(faults={"reset": 0.6, "hang": 0.6})
    with pytest.raises(ValueError, match="latency_ms"):
        SimConfig(latency_ms=-1)
    with pytest.raises(ValueError, match="dialect"):
        SimConfig(dialect="azure")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quota_window"):
        SimConfig(quota_window=(5, 5))


def test_config_repr_shows_changes_and_hides_the_key() -> None:
    assert repr(SimConfig()) == "SimConfig()"
    config = SimConfig(dialect="bcwhkj", api_key=KEY, faults={"reset": 0.1})
    assert repr(config) == "SimConfig(dialect='bcwhkj', api_key='***', faults={'reset': 0.1})"
    assert KEY not in repr(config)
    assert hash(config) == hash(SimConfig(dialect="bcwhkj", api_key=KEY, faults={"reset": 0.1}))


def test_latency_draws_are_seeded() -> None:
    assert Latency(100, "fixed", 0).sample() == pytest.approx(0.1)
    uniform = [Latency(100, "uniform", 3).sample() for _ in range(2)]
    assert uniform[0] == uniform[1]
    draws = Latency(100, "lognormal", 1)
    samples = [draws.sample() for _ in range(20_000)]
    assert sum(samples) / len(samples) == pytest.approx(0.1, rel=0.03)
    assert Latency(0, "lognormal", 1).sample() == 0


def test_cli_round_trip() -> None:
    parser = argparse.ArgumentParser(prog="batchrun sim")
    add_sim_arguments(parser)
    ns = parser.parse_args(
        [
            "--port=0",
            "--dialect=bcwhkj",
            "--latency-ms=20",
            "--latency-dist=lognormal",
            "--ttft-ms=5",
            "--chunk-delay-ms=1",
            "--seed=3",
            f"--api-key={KEY}",
            "--max-in-flight=8",
            "--rpm-limit=600",
            "--ratelimit-headers",
            "--quota-window=30:",
            "--fault=reset=0.1",
            "--fault",
            "cf_bad_gateway=0.05",
            "--hang-s=2",
            "--no-usage",
            "--label-noise=gpt-3.5*=0.2",
        ]
    )
    assert (ns.host, ns.port) == ("127.0.0.1", 0)
    assert config_from_args(ns) == SimConfig(
        dialect="bcwhkj",
        latency_ms=20,
        latency_dist="lognormal",
        ttft_ms=5,
        chunk_delay_ms=1,
        seed=3,
        api_key=KEY,
        max_in_flight=8,
        rpm_limit=600,
        ratelimit_headers=True,
        quota_window=(30, math.inf),
        faults={"reset": 0.1, "cf_bad_gateway": 0.05},
        hang_s=2,
        no_usage=True,
        label_noise={"gpt-3.5*": 0.2},
    )
    defaults = parser.parse_args([])
    assert (defaults.port, config_from_args(defaults)) == (8000, SimConfig())


def test_cli_help_lists_every_option_and_fault_kind() -> None:
    parser = argparse.ArgumentParser(prog="batchrun sim")
    add_sim_arguments(parser)
    text = " ".join(parser.format_help().split())
    for name in SimConfig.__dataclass_fields__:
        option = "--fault" if name == "faults" else "--" + name.replace("_", "-")
        assert option in text
    for kind in FAULT_KINDS:
        assert f"{kind}:" in text


def test_cli_rejects_bad_faults(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="batchrun sim")
    add_sim_arguments(parser)
    for bad in ("gremlins=0.1", "reset", "reset=2"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--fault", bad])
    assert "unknown fault kind 'gremlins'" in capsys.readouterr().err


def test_serve_forever_announces_and_stops_on_sigterm() -> None:
    code = "from batchrun.sim import SimConfig, serve_forever; serve_forever(SimConfig(), port=0)"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("batchrun sim listening on http://127.0.0.1:")
        url = line.split()[-1]
        with urllib.request.urlopen(url + "/models", timeout=5) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert err == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_labels_of_the_sample_reviews_look_like_a_labelers() -> None:
    path = Path(__file__).resolve().parents[2] / "sample_data" / "reviews.csv"
    if not path.exists():
        pytest.skip("no sample data")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    agree = sum(
        label(LABEL_SYSTEM, f"Review: {row['text']}", 0) == row["gold_label"] for row in rows
    )
    assert agree / len(rows) >= 0.75
