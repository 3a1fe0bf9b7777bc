"""One row's final result, built from a classified outcome: shared by the engine and by
`import-batch`, so a row answered through a Batch file reads exactly like one sent directly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from ..core.columns import RowResult
from ..core.completion import Usage
from ..core.tokens import TokenCounter
from ..protocol.outcome import Outcome


def success_result(
    key: str,
    position: int,
    fingerprint: str,
    outcome: Outcome,
    *,
    attempts: int,
    usage: Usage,
    usage_estimated: bool,
    cost: float | None,
    json_mode: bool,
    latency_s: float | None = None,
    ttft_s: float | None = None,
) -> RowResult:
    """The `ok` result of an answered row."""
    completion = outcome.completion
    assert completion is not None
    return RowResult(
        row_key=key,
        position=position,
        fingerprint=fingerprint,
        status="ok",
        attempts=attempts,
        finished_at=time.time(),
        response=completion.response,
        finish_reason=completion.finish_reason,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost_usd=cost,
        latency_s=latency_s,
        ttft_s=ttft_s,
        response_model=completion.response_model,
        response_id=completion.response_id,
        system_fingerprint=completion.system_fingerprint,
        tool_calls=completion.tool_calls,
        choices=list(completion.choices) if len(completion.choices) > 1 else None,
        usage_estimated=usage_estimated,
        json_valid=is_json(completion.response) if json_mode else None,
    )


def failure_result(
    key: str,
    position: int,
    fingerprint: str,
    outcome: Outcome,
    *,
    attempts: int,
    redact: Callable[[str], str],
    usage: Usage | None = None,
    usage_estimated: bool = False,
    cost: float | None = None,
) -> RowResult:
    """The `failed` result of a row; a billed refusal (or a row whose earlier answers were
    paid for) keeps what it used and cost."""
    result = RowResult(
        row_key=key,
        position=position,
        fingerprint=fingerprint,
        status="failed",
        attempts=attempts,
        finished_at=time.time(),
        error=outcome.error or "server_error",
        error_message=redact(outcome.message) if outcome.message else None,
    )
    if usage is not None:
        result.usage_estimated = usage_estimated
        result.prompt_tokens = usage.prompt_tokens
        result.completion_tokens = usage.completion_tokens
        result.total_tokens = usage.total_tokens
        result.cost_usd = cost
        if outcome.completion is not None:
            result.finish_reason = outcome.completion.finish_reason
    return result


def counted_usage(
    counter: TokenCounter, messages: Iterable[Mapping[str, Any]], choices: Iterable[str | None]
) -> Usage:
    """Usage counted locally, for an answer that came without any: the request's messages
    and every choice's content."""
    prompt = counter.chat(messages)
    completion = sum(counter.text(c or "") for c in choices)
    return Usage(prompt, completion, prompt + completion)


def is_json(text: str | None) -> bool:
    """Whether `text` parses as JSON."""
    if text is None:
        return False
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True
