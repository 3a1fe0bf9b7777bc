"""Which fault a request gets, and the error answers each gateway dialect sends.

Error answers come in two shapes. OpenAI, 302.ai and anyapi send
`{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status; bcwhkj sends
`{"codes": N, "mess": "…", "data": …}` with HTTP 200 for its own refusals (bad key 900,
illegal characters 400, content safety 402, quota 300) and passes upstream errors through.
"""

from __future__ import annotations

import hmac
import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .config import FAULT_KINDS, Dialect

# Faults that change how an answer is delivered instead of replacing it with an error.
DELIVERY_FAULTS = frozenset(
    {"reset", "hang", "truncated_stream", "slow_stream", "bad_json", "chatty", "off_format"}
)
# Faults that change what the answer says, and so what a parser makes of it.
CONTENT_FAULTS = frozenset({"bad_json", "chatty", "off_format"})
_MARKER = re.compile(r"\[\[sim:([a-z_]+)\]\]")
_SERVER_ERRORS = (
    (500, "The server had an error while processing your request. Sorry about that!"),
    (502, "Bad gateway."),
    (503, "The engine is currently overloaded, please try again later."),
    (504, "Gateway timeout."),
)
_NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
CONTEXT_WINDOW = 128_000
# A model name that never exists, so tests can provoke model_not_found without a marker.
MISSING_MODEL = "missing-model"
# How long a request refused for the in-flight cap is told to wait.
IN_FLIGHT_RETRY_MS = 100


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An answer that is not a completion: status, raw body and headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


class FaultPicker:
    """Draws at most one fault kind per request from the configured rates.

    Faults of delivery and errors follow the request sequence (seeded by config, drawn once
    per request, so a run's fault sequence repeats exactly, and a retry of the same request
    draws again). Content faults follow the request itself: the same request always gets
    the same wording, as the simulator promises the same answer; a changed request (a
    re-ask after an unparseable answer) draws anew.
    """

    def __init__(self, rates: Mapping[str, float], seed: int) -> None:
        # Cumulative (upper bound, kind) pairs over [0, 1); a draw above the last is no fault.
        self._table = _cumulative(rates, lambda kind: kind not in CONTENT_FAULTS)
        self._content = _cumulative(rates, lambda kind: kind in CONTENT_FAULTS)
        self._seed = seed
        self._rng = random.Random(f"faults:{seed}")

    def pick(self, request_key: str) -> str | None:
        """The fault for the next request, whose answer-determining hash is `request_key`."""
        drawn = _lookup(self._table, self._rng.random()) if self._table else None
        if drawn is None and self._content:
            draw = random.Random(f"content:{self._seed}:{request_key}").random()
            drawn = _lookup(self._content, draw)
        return drawn


def _cumulative(rates: Mapping[str, float], keep: Callable[[str], bool]) -> list[tuple[float, str]]:
    table: list[tuple[float, str]] = []
    total = 0.0
    for kind, rate in rates.items():
        if rate > 0 and keep(kind):
            total += rate
            table.append((total, kind))
    return table


def _lookup(table: list[tuple[float, str]], draw: float) -> str | None:
    for bound, kind in table:
        if draw < bound:
            return kind
    return None


def marked_fault(text: str) -> str | None:
    """The fault a prompt forces with `[[sim:KIND]]`, if it names a known kind."""
    for kind in _MARKER.findall(text):
        if kind in FAULT_KINDS:
            return kind
    return None


def fault_reply(
    kind: str, dialect: Dialect, model: str, turn: int, prompt_tokens: int
) -> ErrorReply:
    """The error answer for a fault that replaces the completion; `turn` rotates variants."""
    if kind == "server_error":
        status, message = _SERVER_ERRORS[turn % len(_SERVER_ERRORS)]
        return _openai(status, message, "server_error", None)
    if kind == "cf_bad_gateway":
        body = {"code": 502, "message": "Bad gateway.", "param": None, "type": "cf_bad_gateway"}
        return _json(200 if dialect == "bcwhkj" else 502, {"error": body})
    if kind == "html_error":
        return ErrorReply(502, _NGINX_502, "text/html")
    if kind == "malformed":
        if turn % 2:
            return _json(200, {"object": "chat.completion"})
        return ErrorReply(200, b'{"id": "chatcmpl-sim", "object": "chat.completion", "choi')
    if kind == "rate_limit":
        return rate_limited(model, None, 1.0)
    if kind == "content_filter":
        return _content_filter(dialect)
    if kind == "illegal_chars":
        if dialect == "bcwhkj":
            return _codes(400, "非法字符。请勿提交")
        return _openai(400, "Invalid characters in 'messages'.", "invalid_request_error", None)
    if kind == "context_length":
        return _openai(
            400,
            f"This model's maximum context length is {CONTEXT_WINDOW} tokens. However, your "
            f"messages resulted in {max(prompt_tokens, CONTEXT_WINDOW + 1)} tokens. Please "
            "reduce the length of the messages.",
            "invalid_request_error",
            "context_length_exceeded",
            param="messages",
        )
    if kind == "model_not_found":
        return model_not_found(model)
    if kind == "quota":
        return quota_exhausted(dialect)
    raise ValueError(f"fault {kind!r} does not replace the answer")


def key_refusal(expected: str | None, dialect: Dialect, authorization: str) -> ErrorReply | None:
    """The answer to a request whose Authorization header lacks the `expected` key, or None
    when it bears it (or when any key will do)."""
    if expected is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), expected.encode()):
        return None
    return bad_key(dialect, token or None)


def bad_key(dialect: Dialect, provided: str | None) -> ErrorReply:
    """The answer to a missing or wrong key; it never repeats the key, only a masked form."""
    if dialect == "bcwhkj":
        return _codes(900, "密钥错误或已过期，请通过微信访问yewu.bcwhkj.cn个人中心获取", "token")
    if not provided:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        message = (
            f"Incorrect API key provided: {mask_key(provided)}. You can find your API key "
            "at https://platform.openai.com/account/api-keys."
        )
    return _openai(401, message, "invalid_request_error", "invalid_api_key")


def mask_key(key: str) -> str:
    """A key as OpenAI echoes it: a few characters at each end, stars between."""
    if len(key) < 12:
        return "***"
    return f"{key[:5]}{'*' * min(len(key) - 7, 40)}{key[-2:]}"


def quota_exhausted(dialect: Dialect) -> ErrorReply:
    if dialect == "bcwhkj":
        return _codes(300, "当前额度不足，请充值后继续使用")
    return _openai(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    )


def rate_limited(model: str, limit: int | None, retry_after_s: float) -> ErrorReply:
    """HTTP 429 with the wait in both the standard and OpenAI's millisecond header."""
    used = f"Limit {limit}, Used {limit}, Requested 1. " if limit else ""
    message = (
        f"Rate limit reached for {model} in organization org-sim on requests per min (RPM): "
        f"{used}Please try again in {retry_after_s:.3g}s. "
        "Visit https://platform.openai.com/account/rate-limits to learn more."
    )
    headers = {
        "Retry-After": str(max(1, math.ceil(retry_after_s))),
        "retry-after-ms": str(max(1, round(retry_after_s * 1000))),
    }
    body = {"message": message, "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    return ErrorReply(429, orjson.dumps({"error": body}), headers=headers)


def too_many_in_flight(model: str) -> ErrorReply:
    """HTTP 429 for a request beyond the cap on requests in flight."""
    message = f"Too many concurrent requests for {model}. Please try again shortly."
    body = {"message": message, "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    headers = {"Retry-After": "1", "retry-after-ms": str(IN_FLIGHT_RETRY_MS)}
    return ErrorReply(429, orjson.dumps({"error": body}), headers=headers)


def model_not_found(model: str) -> ErrorReply:
    return _openai(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )


def invalid_request(message: str, param: str | None) -> ErrorReply:
    return _openai(400, message, "invalid_request_error", None, param=param)


def _content_filter(dialect: Dialect) -> ErrorReply:
    if dialect == "bcwhkj":
        return _codes(402, "提交问题涉及内容安全，请修改问题")
    return _openai(
        400,
        "The response was filtered due to the prompt triggering the content management "
        "policy. Please modify your prompt and retry.",
        "invalid_request_error",
        "content_filter",
        param="prompt",
    )


def _openai(
    status: int, message: str, type_: str, code: str | None, param: str | None = None
) -> ErrorReply:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return _json(status, {"error": error})


def _codes(codes: int, mess: str, data: str = "") -> ErrorReply:
    return _json(200, {"codes": codes, "mess": mess, "data": data})


def _json(status: int, body: Any) -> ErrorReply:
    return ErrorReply(status, orjson.dumps(body))
