"""What a row's result is: the record the checkpoint commits, the columns it fills, and how
one is made.

`RowResult` is one row's final result; its fields are the checkpoint's columns
(`CHECKPOINT_SCHEMA`), and the output shows its result columns (`RESULT_SCHEMA`, as
`output_columns` chooses them for a job). `success_result` makes one from an answer,
`failure_result` from a failure, each with what the row used and cost (`counted_usage` when the
gateway sent no usage, `plus_cost` across a row's answers). The engine and `import-batch` both
make theirs here, so a row answered through a Batch file reads exactly like one sent directly.

Beside it: `protocol.outcome` classifies one attempt (a row may take several before it has a
result); `core.completion` is what an answer's body holds; `rows.request` is the row's request
on its way through the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import orjson
import pyarrow as pa

from ..core.completion import Usage
from ..core.tokens import TokenCounter
from .outcome import Outcome

# The columns of PRODUCT.md, in output order, with their Arrow types.
RESULT_SCHEMA = pa.schema(
    [
        ("response", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("reasoning_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("error_message", pa.string()),
        ("attempts", pa.int32()),
        ("latency_s", pa.float64()),
        ("response_model", pa.string()),
        ("response_id", pa.string()),
        ("system_fingerprint", pa.string()),
        ("tool_calls", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("ttft_s", pa.float64()),
        ("usage_estimated", pa.bool_()),
        ("json_valid", pa.bool_()),
        ("endpoint", pa.string()),
    ]
)
RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)

# Columns that only appear when the request asks for them.
CHOICES_COLUMN = "choices"  # only when n > 1
JSON_VALID_COLUMN = "json_valid"  # only in JSON mode
ENDPOINT_COLUMN = "endpoint"  # only for a job with [[endpoints]]
# Checkpoint columns that segments written before them lack: read as nulls there.
ADDED_COLUMNS = frozenset({ENDPOINT_COLUMN})

# The row's position in the input, written to outputs of jobs without an id_column (where the
# position is the row's identity), so that the rows of a partial output are known.
INPUT_ROW = "input_row"

# What the checkpoint keeps beside the result: the row's identity and when it finished.
KEY, POSITION, FINGERPRINT, FINISHED_AT = "row_key", "position", "fingerprint", "finished_at"
CHECKPOINT_SCHEMA = pa.schema(
    [
        (KEY, pa.string()),
        (POSITION, pa.int64()),
        (FINGERPRINT, pa.string()),
        *zip(RESULT_SCHEMA.names, RESULT_SCHEMA.types, strict=True),
        (FINISHED_AT, pa.float64()),
    ]
)


@dataclass(slots=True)
class RowResult:
    """One row's final result, as committed to the checkpoint."""

    row_key: str
    position: int
    fingerprint: str
    status: str
    attempts: int
    finished_at: float
    response: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    error: str | None = None
    error_message: str | None = None
    latency_s: float | None = None
    response_model: str | None = None
    response_id: str | None = None
    system_fingerprint: str | None = None
    tool_calls: str | None = None
    choices: list[str | None] | None = None
    ttft_s: float | None = None
    usage_estimated: bool | None = None
    json_valid: bool | None = None
    endpoint: str | None = None  # the name of the endpoint that gave the result

    def as_record(self) -> dict[str, object]:
        """The row as a dict keyed by checkpoint column names."""
        # Not dataclasses.asdict: it deep-copies every value, which took half the time of
        # committing 200,000 imported results.
        return {name: getattr(self, name) for name in _RECORD_FIELDS}


_RECORD_FIELDS = tuple(f.name for f in fields(RowResult))


def output_columns(n: int, json_mode: bool, pooled: bool = False) -> list[str]:
    """The result columns this job's output carries."""
    return [
        c
        for c in RESULT_COLUMNS
        if (c != CHOICES_COLUMN or n > 1)
        and (c != JSON_VALID_COLUMN or json_mode)
        and (c != ENDPOINT_COLUMN or pooled)
    ]


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


def unsendable_result(key: str, position: int, fingerprint: str, why: str) -> RowResult:
    """The `failed` result of a row that cannot become a request (`why`: an empty prompt),
    recorded without anything sent, whichever lane would have taken it."""
    return RowResult(
        row_key=key,
        position=position,
        fingerprint=fingerprint,
        status="failed",
        attempts=0,
        finished_at=time.time(),
        error="invalid_request",
        error_message=why,
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


def plus_cost(cost: float | None, paid: float | None) -> float | None:
    """A cost plus what was paid before; unknown if either is."""
    return None if cost is None or paid is None else cost + paid
