"""Classifying what came back (status, headers, body, or a transport failure) into one action.

An `Outcome` is one attempt's, not the row's: the engine retries, pauses or stops on it; the
row's result, made once the row is done, is `protocol.result`'s. The answer's body an outcome
carries is a `core.completion.Completion`.

Gateways send errors with HTTP 200, so the body decides as much as the status:

| what came back                                           | action        | error              |
| -------------------------------------------------------- | ------------- | ------------------ |
| a chat completion (any 2xx)                              | OK            |                    |
| finish_reason content_filter                             | FAIL          | content_refused    |
| 500/502/503/504, cf_bad_gateway, HTML page, other 5xx    | RETRY         | server_error       |
| 200 that is not a completion, cut JSON, unknown error    | RETRY         | malformed_response |
| a body or stream past the cap once decoded               | RETRY         | too_large          |
| reset connection / a timeout (the proxy's too)           | RETRY         | server_error, timeout |
| untrusted TLS certificate, proxy refused its credentials | BAD_ROUTE     | bad_route          |
| 429 rate limit, rate_limit_exceeded                      | RATE_LIMITED  | rate_limited       |
| insufficient_quota, billing errors, codes 300            | QUOTA         | quota_exhausted    |
| 401, 403, invalid_api_key, codes 900                     | BAD_KEY       | bad_key            |
| codes 400 / 402, content filter errors                   | FAIL          | content_refused    |
| context_length_exceeded                                  | FAIL          | context_length     |
| 404, model_not_found                                     | FAIL          | model_not_found    |
| other 4xx                                                | FAIL          | invalid_request    |

A quota, a key or a route (certificate, proxy login) never ends a row (the run pauses or
stops), so their errors never reach the output; they are the kinds each endpoint's failed
attempts are counted by (`report`), where a quota counted as a rate limit would say the
opposite of what happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import enum
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..core.completion import ChunkAssembler, Completion, NotACompletion, parse_completion
from . import ratelimit

# A Retry-After longer than this is treated as this (a gateway asking for an hour is not
# honoured row by row; the quota logic handles long outages).
MAX_RETRY_AFTER_S = 120.0
_MESSAGE_LIMIT = 500


class Action(enum.Enum):
    """What the engine does with an outcome."""

    OK = "ok"  # record the answer
    RETRY = "retry"  # back off and try this row again
    RATE_LIMITED = "rate_limited"  # slow the whole run, then retry
    QUOTA = "quota"  # pause the whole run and probe
    BAD_KEY = "bad_key"  # stop the run at once
    BAD_ROUTE = "bad_route"  # stop the run at once: a certificate or the proxy's login
    FAIL = "fail"  # record the row as failed; never retry


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's classified result."""

    action: Action
    error: str | None = None  # the output's `error` value when this ends the row; the kind
    # of failed attempt it is counted as per endpoint, whatever the action
    message: str | None = None  # the provider's message (unredacted: the engine redacts)
    retry_after_s: float | None = None  # what the gateway asked us to wait
    completion: Completion | None = None


_BAD_KEY_CODES = {"invalid_api_key", "invalid_authentication", "authentication_error", "401"}
_QUOTA_CODES = {
    "insufficient_quota",
    "billing_hard_limit_reached",
    "billing_not_active",
    "quota_exceeded",
    "insufficient_balance",
    "insufficient_user_quota",
}
_RATE_CODES = {"rate_limit_exceeded", "rate_limit_error", "requests", "tokens", "too_many_requests"}
_FILTER_CODES = {
    "content_filter",
    "content_policy_violation",
    "content_filtered",
    "data_inspection_failed",
    "sensitive_words_detected",
}
_SERVER_TYPES = {
    "cf_bad_gateway",
    "server_error",
    "api_error",
    "overloaded_error",
    "upstream_error",
    "service_unavailable",
    "internal_error",
    "bad_gateway",
}


def classify(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: Callable[[], float] = time.time,
) -> Outcome:
    """Classify one HTTP exchange; see the module docstring for the table."""
    outcome = _classify(status, headers, body, retry_after_seconds(headers, now()))
    if outcome.action is Action.RATE_LIMITED and outcome.retry_after_s is None:
        # A rate limit's wait where gateways put it besides Retry-After: their reset
        # headers, or the message text ("Please try again in 20s").
        wait = _reset_header(headers)
        if wait is None:
            wait = wait_in_message(outcome.message)
        if wait is not None:
            outcome = dataclasses.replace(outcome, retry_after_s=wait)
    return outcome


def _classify(
    status: int, headers: Mapping[str, str], body: bytes, retry_after: float | None
) -> Outcome:
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
        text = body[:_MESSAGE_LIMIT].decode("utf-8", "replace").strip()
        if text.startswith("<") and not 400 <= status < 500:
            # An HTML error page (a proxy's 502, a maintenance page), whatever its status.
            message = _html_title(text) or f"HTTP {status}, an HTML page"
            return Outcome(Action.RETRY, "server_error", message, retry_after)
        if status >= 500:
            return _by_status(status, retry_after, text or f"HTTP {status}")
        if status < 300:
            return Outcome(Action.RETRY, "malformed_response", "the body is not JSON", retry_after)
        return _by_status(status, retry_after, text or f"HTTP {status}")
    if isinstance(obj, Mapping):
        if "codes" in obj and "choices" not in obj:
            return _bcwhkj(obj, status, retry_after)
        if obj.get("error") is not None and "choices" not in obj:
            return _error_object(obj["error"], status, retry_after)
    if 200 <= status < 300:
        try:
            completion = parse_completion(obj)
        except NotACompletion as exc:
            return Outcome(Action.RETRY, "malformed_response", str(exc), retry_after)
        if completion.finish_reason == "content_filter":
            return Outcome(
                Action.FAIL, "content_refused", "the answer was filtered", completion=completion
            )
        return Outcome(Action.OK, completion=completion)
    return _by_status(status, retry_after, f"HTTP {status}")


def classify_stream(status: int, headers: Mapping[str, str], stream: ChunkAssembler) -> Outcome:
    """Classify a streamed answer: an error event like an error body, a cut stream retried."""
    if stream.error is not None:
        return classify(status, headers, orjson.dumps(stream.error))
    try:
        completion = stream.completion()
    except NotACompletion as exc:
        return Outcome(Action.RETRY, "truncated_stream", str(exc))
    if completion.finish_reason == "content_filter":
        return Outcome(
            Action.FAIL, "content_refused", "the answer was filtered", completion=completion
        )
    return Outcome(Action.OK, completion=completion)


def classify_failure(kind: str, message: str) -> Outcome:
    """Classify a transport failure (no HTTP response): worth another attempt, unless the
    way to the gateway itself is refused (its certificate, the proxy's login)."""
    if kind in ("certificate", "proxy_auth"):
        return Outcome(Action.BAD_ROUTE, "bad_route", message)
    if kind == "timeout":
        return Outcome(Action.RETRY, "timeout", message)
    if kind == "too_large":
        return Outcome(Action.RETRY, "too_large", message)
    return Outcome(Action.RETRY, "server_error", message)


def _by_status(status: int, retry_after: float | None, message: str) -> Outcome:
    if status == 429:
        return Outcome(Action.RATE_LIMITED, "rate_limited", message, retry_after)
    if status in (401, 403):
        return Outcome(Action.BAD_KEY, "bad_key", message)
    if status == 404:
        return Outcome(Action.FAIL, "model_not_found", message)
    if status == 408:
        return Outcome(Action.RETRY, "timeout", message, retry_after)
    if status == 413:
        return Outcome(Action.FAIL, "context_length", message)
    if 400 <= status < 500:
        return Outcome(Action.FAIL, "invalid_request", message)
    if status < 300:
        return Outcome(Action.RETRY, "malformed_response", message, retry_after)
    return Outcome(Action.RETRY, "server_error", message, retry_after)


def _bcwhkj(obj: Mapping[str, Any], status: int, retry_after: float | None) -> Outcome:
    """The 冰橙 dialect: {"codes": N, "mess": "...", "data": ...}, usually with HTTP 200."""
    code = str(obj.get("codes"))
    message = str(obj.get("mess") or obj.get("message") or f"codes {code}")
    if code == "900":
        return Outcome(Action.BAD_KEY, "bad_key", message)
    if code == "300":
        return Outcome(Action.QUOTA, "quota_exhausted", message, retry_after)
    if code in ("400", "402"):
        return Outcome(Action.FAIL, "content_refused", message)
    if code == "429":
        return Outcome(Action.RATE_LIMITED, "rate_limited", message, retry_after)
    if status >= 300:
        return _by_status(status, retry_after, message)
    return Outcome(Action.RETRY, "server_error", message, retry_after)


def _error_object(error: Any, status: int, retry_after: float | None) -> Outcome:
    """OpenAI-style {"error": {"message", "type", "code"}} at any status."""
    if isinstance(error, Mapping):
        message = str(error.get("message") or "")
        kind = str(error.get("type") or "").lower()
        code = str(error.get("code") or "").lower()
    else:
        message, kind, code = str(error), "", ""
    names = {kind, code}
    lowered = message.lower()
    if kind == "cf_bad_gateway" or names & _SERVER_TYPES:
        return Outcome(Action.RETRY, "server_error", message or kind, retry_after)
    if names & _QUOTA_CODES or "exceeded your current quota" in lowered:
        return Outcome(Action.QUOTA, "quota_exhausted", message, retry_after)
    if names & _BAD_KEY_CODES or status in (401, 403) or ("api key" in lowered and status >= 400):
        return Outcome(Action.BAD_KEY, "bad_key", message)
    if names & _RATE_CODES or status == 429:
        return Outcome(Action.RATE_LIMITED, "rate_limited", message, retry_after)
    if code == "context_length_exceeded" or "maximum context length" in lowered:
        return Outcome(Action.FAIL, "context_length", message)
    if code == "model_not_found" or status == 404:
        return Outcome(Action.FAIL, "model_not_found", message)
    if names & _FILTER_CODES:
        return Outcome(Action.FAIL, "content_refused", message)
    if code.isdigit() and int(code) >= 500:
        return Outcome(Action.RETRY, "server_error", message, retry_after)
    if 400 <= status < 500:
        return Outcome(Action.FAIL, "invalid_request", message)
    # An unrecognised error at 200 or 5xx: assume the gateway's trouble, retry within bounds.
    return Outcome(Action.RETRY, "server_error", message or f"HTTP {status}", retry_after)


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """`retry-after-ms`, else `Retry-After` in seconds or as an HTTP date, else any other
    header naming a retry-after (`x-retry-after`, `x-ms-retry-after-ms`, ...); capped."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return _cap(float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        for name, value in headers.items():
            lower = name.lower()
            if "retry-after" in lower or "retry_after" in lower:
                with contextlib.suppress(ValueError):
                    number = float(value)
                    return _cap(number / 1000 if lower.endswith("ms") else number)
        return None
    try:
        return _cap(float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return _cap(when.timestamp() - now)


def _reset_header(headers: Mapping[str, str]) -> float | None:
    """The longer of `x-ratelimit-reset-requests` and `-tokens` ("1s", "6m0s", "20ms")."""
    waits = [
        wait
        for kind in ratelimit.KINDS
        if (wait := ratelimit.reset_after(headers, kind)) is not None
    ]
    return _cap(max(waits)) if waits else None


_WAIT_TEXT = re.compile(
    r"(?:try again|retry|wait|reset)\w*(?:\s+(?:in|after|for))?\s+(?:about\s+)?"
    r"(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?)\b"
    r"|(\d+(?:\.\d+)?)\s*秒",
    re.IGNORECASE,
)


def wait_in_message(message: str | None) -> float | None:
    """A wait written in a rate limit's message: "Please try again in 20s", "retry after
    1.5 seconds", "wait 500ms", "请在 20 秒后重试"; None when it names none."""
    if not message:
        return None
    match = _WAIT_TEXT.search(message)
    if match is None:
        return None
    if match[3] is not None:
        return _cap(float(match[3]))
    unit = match[2].lower()
    if unit in ("m", "min", "mins", "minute", "minutes"):
        scale = 60.0
    elif unit.startswith("m"):  # ms, millisecond(s)
        scale = 0.001
    else:
        scale = 1.0
    return _cap(float(match[1]) * scale)


def _cap(seconds: float) -> float | None:
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _html_title(text: str) -> str:
    lower = text.lower()
    start = lower.find("<title>")
    end = lower.find("</title>")
    if start >= 0 and end > start:
        return text[start + 7 : end].strip()
    return ""
