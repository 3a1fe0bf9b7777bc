"""Every error shape of the seed gateways and of OpenAI, at HTTP 200 and at its own status."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import orjson
import pytest

from batchrun.protocol.outcome import MAX_RETRY_AFTER_S, Action, classify, retry_after_seconds

OK_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "positive"},
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 20,
        "completion_tokens": 1,
        "total_tokens": 21,
        "prompt_tokens_details": {"cached_tokens": 16},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
    "system_fingerprint": "fp_x",
}


def err(type_: str, code: str | int | None = None, message: str = "m") -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "code": code, "param": None}}


# (body, status it normally comes with, action, error)
CASES = [
    (
        {"codes": 900, "mess": "密钥错误或已过期", "data": "token"},
        200,
        Action.BAD_KEY,
        "bad_key",
    ),
    ({"codes": 400, "mess": "非法字符。请勿提交", "data": ""}, 200, Action.FAIL, "content_refused"),
    (
        {"codes": 402, "mess": "提交问题涉及内容安全，请修改问题", "data": ""},
        200,
        Action.FAIL,
        "content_refused",
    ),
    (
        {"codes": 300, "mess": "当前额度不足，请充值后继续使用", "data": ""},
        200,
        Action.QUOTA,
        "quota_exhausted",
    ),
    (
        {
            "error": {
                "code": 502,
                "message": "Bad gateway.",
                "param": None,
                "type": "cf_bad_gateway",
            }
        },
        502,
        Action.RETRY,
        "server_error",
    ),
    (
        err("insufficient_quota", "insufficient_quota", "You exceeded your current quota"),
        429,
        Action.QUOTA,
        "quota_exhausted",
    ),
    (
        err("requests", "rate_limit_exceeded", "Rate limit reached"),
        429,
        Action.RATE_LIMITED,
        "rate_limited",
    ),
    (
        err("invalid_request_error", "invalid_api_key", "Incorrect API key provided: sk-ab***yz"),
        401,
        Action.BAD_KEY,
        "bad_key",
    ),
    (
        err(
            "invalid_request_error",
            "context_length_exceeded",
            "This model's maximum context length is 128000 tokens",
        ),
        400,
        Action.FAIL,
        "context_length",
    ),
    (
        err("invalid_request_error", "model_not_found", "The model `x` does not exist"),
        404,
        Action.FAIL,
        "model_not_found",
    ),
    (
        err("invalid_request_error", "content_filter", "filtered by content management policy"),
        400,
        Action.FAIL,
        "content_refused",
    ),
    (err("invalid_request_error", "content_policy_violation"), 400, Action.FAIL, "content_refused"),
    (err("server_error", None, "The server had an error"), 500, Action.RETRY, "server_error"),
    (
        err("invalid_request_error", "invalid_value", "temperature too high"),
        400,
        Action.FAIL,
        "invalid_request",
    ),
]


@pytest.mark.parametrize(("body", "status", "action", "error"), CASES)
@pytest.mark.parametrize("at_200", [True, False])
def test_error_bodies_are_classified_at_200_and_at_their_status(
    body: dict[str, object], status: int, action: Action, error: str, at_200: bool
) -> None:
    if at_200 and action is Action.FAIL and error == "invalid_request":
        at_200 = False  # a bare "invalid_value" at 200 is ambiguous: covered at its status only
    outcome = classify(200 if at_200 else status, {}, orjson.dumps(body))
    assert (outcome.action, outcome.error) == (action, error)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_without_a_body_is_retried(status: int) -> None:
    assert classify(status, {}, b"").action is Action.RETRY


def test_html_error_page_is_a_server_error_with_its_title() -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    for status in (200, 502):
        outcome = classify(status, {}, page)
        assert (outcome.action, outcome.error) == (Action.RETRY, "server_error")
        assert outcome.message == "502 Bad Gateway"


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "x", "choices": [{"message": {"content": "hal',
        b'{"object": "chat.completion"}',
        b"[1, 2]",
        b"plain text",
        b'{"choices": []}',
    ],
)
def test_bodies_that_are_not_completions_are_retried_as_malformed(body: bytes) -> None:
    outcome = classify(200, {}, body)
    assert (outcome.action, outcome.error) == (Action.RETRY, "malformed_response")


def test_a_completion_is_parsed_with_detailed_usage() -> None:
    outcome = classify(200, {}, orjson.dumps(OK_BODY))
    assert outcome.action is Action.OK and outcome.completion is not None
    c = outcome.completion
    assert (c.response, c.finish_reason, c.response_model, c.system_fingerprint) == (
        "positive",
        "stop",
        "gpt-4o-mini",
        "fp_x",
    )
    assert c.usage is not None and (c.usage.cached_tokens, c.usage.reasoning_tokens) == (16, 0)


def test_content_filter_finish_reason_fails_the_row() -> None:
    body = {
        **OK_BODY,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "content_filter",
            }
        ],
    }
    outcome = classify(200, {}, orjson.dumps(body))
    assert (outcome.action, outcome.error) == (Action.FAIL, "content_refused")


@pytest.mark.parametrize(
    ("status", "action", "error"),
    [
        (401, Action.BAD_KEY, "bad_key"),
        (403, Action.BAD_KEY, "bad_key"),
        (404, Action.FAIL, "model_not_found"),
        (429, Action.RATE_LIMITED, "rate_limited"),
        (408, Action.RETRY, "timeout"),
        (422, Action.FAIL, "invalid_request"),
    ],
)
def test_bare_statuses(status: int, action: Action, error: str) -> None:
    outcome = classify(status, {}, b"")
    assert (outcome.action, outcome.error) == (action, error)


def test_retry_after_forms_and_cap() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds({"retry-after-ms": "1500"}, now) == 1.5
    assert retry_after_seconds({"retry-after": "7"}, now) == 7.0
    date = format_datetime(datetime.fromtimestamp(now + 30, tz=UTC), usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now) == pytest.approx(30, abs=1)
    assert retry_after_seconds({"retry-after": "86400"}, now) == MAX_RETRY_AFTER_S
    assert retry_after_seconds({"retry-after": "soon"}, now) is None
    assert retry_after_seconds({"retry-after-ms": "x", "retry-after": "2"}, now) == 2.0
    outcome = classify(
        429, {"retry-after": "3"}, orjson.dumps(err("requests", "rate_limit_exceeded"))
    )
    assert outcome.retry_after_s == 3.0
