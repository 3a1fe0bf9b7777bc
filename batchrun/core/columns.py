"""The result columns batchrun adds to every input row, and how one row's result is built."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pyarrow as pa

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
