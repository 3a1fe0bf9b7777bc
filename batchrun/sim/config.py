"""The simulator's settings: one immutable object that checks itself when it is made."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, get_args

Dialect = Literal["openai", "302ai", "bcwhkj", "anyapi"]
LatencyDist = Literal["fixed", "uniform", "lognormal"]

DIALECTS: tuple[str, ...] = get_args(Dialect)
LATENCY_DISTS: tuple[str, ...] = get_args(LatencyDist)

# Every way the simulator can misbehave, with the one-line explanation `--help` shows.
# Each kind can be given a per-request rate, or forced with `[[sim:KIND]]` in a prompt.
FAULT_KINDS: Mapping[str, str] = MappingProxyType(
    {
        "server_error": "HTTP 500, 502, 503 and 504 in turn, with an OpenAI error body",
        "cf_bad_gateway": 'the {"error": {"type": "cf_bad_gateway"}} body, '
        "at HTTP 200 in bcwhkj and 502 elsewhere",
        "html_error": "HTTP 502 with an nginx HTML error page",
        "reset": "the connection is dropped without any response",
        "hang": "no answer for hang_s seconds, then the connection is dropped",
        "malformed": "HTTP 200 whose body is not a completion (cut JSON, or no choices)",
        "truncated_stream": "a stream cut before finish_reason and [DONE]; "
        "cut JSON when not streaming",
        "rate_limit": "HTTP 429 rate_limit_exceeded with Retry-After",
        "content_filter": "a content-safety refusal (bcwhkj codes 402; elsewhere HTTP 400)",
        "illegal_chars": "an illegal-characters refusal (bcwhkj codes 400; elsewhere HTTP 400)",
        "slow_stream": "stream chunks 20 times slower than chunk_delay_ms (at least 5 ms)",
        "bad_json": "JSON-mode content that is not valid JSON",
        "chatty": 'the answer wrapped in chatter a parser forgives (Label: "Positive".; '
        "fenced JSON)",
        "off_format": "an answer outside the asked-for format: a word outside the label set, "
        "JSON that breaks the schema, prose instead of JSON",
        "context_length": "HTTP 400 context_length_exceeded",
        "model_not_found": "HTTP 404 model_not_found",
        "quota": "the dialect's quota-exhausted answer",
    }
)
# The fault kinds a line of a batch can be answered with: those whose answer is a JSON body
# (an error, or a completion worded off), since a batch's output file holds only JSON.
BATCH_LINE_FAULTS: tuple[str, ...] = (
    "server_error",
    "rate_limit",
    "quota",
    "context_length",
    "content_filter",
    "illegal_chars",
    "model_not_found",
    "bad_json",
    "chatty",
    "off_format",
)


@dataclass(frozen=True)
class SimConfig:
    """How the simulator answers and misbehaves; every field has a harmless default.

    The Files and Batches API (`sim.batches`) has its own settings. `batch_delay_s` is how
    long a batch stays `validating` (and `cancelling`) and `batch_line_ms` the time each of
    its lines takes. Its faults: `batch_line_faults` (kind to share of lines, kinds from
    BATCH_LINE_FAULTS) answers lines with errors or off-format answers; `batch_expire_after`
    (a share, 0 to 1) expires every batch once that share of its lines is answered;
    `batch_enqueued_tokens` caps, per model, the prompt and max_tokens tokens of the batches
    not yet ended, a batch beyond it fails with `token_limit_exceeded`;
    `batch_unknown_status` (e.g. "in_queue") is reported instead of `validating`;
    `batch_poll_errors` is the share of GETs on batches answered with a 5xx; and a file
    younger than `file_visible_after_s` is not found yet.
    """

    dialect: Dialect = "openai"
    latency_ms: float = 0.0
    latency_dist: LatencyDist = "fixed"
    ttft_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    seed: int = 0
    api_key: str | None = field(default=None, repr=False)
    max_in_flight: int | None = None
    rpm_limit: int | None = None
    ratelimit_headers: bool = False
    quota_window: tuple[float, float] | None = None
    faults: Mapping[str, float] = field(default_factory=dict)
    hang_s: float = 300.0
    no_usage: bool = False
    # Per model (a name or an fnmatch pattern): the share of sentiment labels it gets wrong on
    # purpose, beyond the labeler's own mistakes, so that two models' answers differ.
    label_noise: Mapping[str, float] = field(default_factory=dict)
    batch_delay_s: float = 1.0
    batch_line_ms: float = 0.0
    batch_line_faults: Mapping[str, float] = field(default_factory=dict)
    batch_expire_after: float | None = None
    batch_enqueued_tokens: int | None = None
    batch_unknown_status: str | None = None
    batch_poll_errors: float = 0.0
    file_visible_after_s: float = 0.0

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {self.dialect!r}")
        if self.latency_dist not in LATENCY_DISTS:
            raise ValueError(
                f"latency_dist must be one of {', '.join(LATENCY_DISTS)}, not {self.latency_dist!r}"
            )
        for name in ("latency_ms", "ttft_ms", "chunk_delay_ms"):
            _require(getattr(self, name) >= 0, f"{name} must be zero or more")
        _require(self.hang_s > 0, "hang_s must be more than zero")
        for name in ("max_in_flight", "rpm_limit"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"{name} must be at least 1 (or None)")
        if self.api_key is not None:
            _require(bool(self.api_key.strip()), "api_key must not be empty (or None)")
        if self.quota_window is not None:
            start, end = (float(x) for x in self.quota_window)
            _require(0 <= start < end, "quota_window must be (start, end) with 0 <= start < end")
            object.__setattr__(self, "quota_window", (start, end))
        faults = {str(kind): float(rate) for kind, rate in self.faults.items()}
        for kind, rate in faults.items():
            _require(kind in FAULT_KINDS, f"unknown fault kind {kind!r}; known: {_kinds()}")
            _require(0 <= rate <= 1, f"the rate of fault {kind!r} must be between 0 and 1")
        _require(math.fsum(faults.values()) <= 1 + 1e-9, "the fault rates must add up to 1 or less")
        object.__setattr__(self, "faults", MappingProxyType(faults))
        noise = {str(model): float(share) for model, share in self.label_noise.items()}
        for model, share in noise.items():
            _require(0 <= share <= 1, f"the label_noise of {model!r} must be between 0 and 1")
        object.__setattr__(self, "label_noise", MappingProxyType(noise))
        self._check_batch_settings()

    def _check_batch_settings(self) -> None:
        for name in ("batch_delay_s", "batch_line_ms", "file_visible_after_s"):
            _require(getattr(self, name) >= 0, f"{name} must be zero or more")
        line_faults = {str(kind): float(rate) for kind, rate in self.batch_line_faults.items()}
        for kind, rate in line_faults.items():
            _require(
                kind in BATCH_LINE_FAULTS,
                f"unknown batch line fault {kind!r}; known: {', '.join(BATCH_LINE_FAULTS)}",
            )
            _require(
                0 <= rate <= 1, f"the rate of batch line fault {kind!r} must be between 0 and 1"
            )
        _require(
            math.fsum(line_faults.values()) <= 1 + 1e-9,
            "the batch line fault rates must add up to 1 or less",
        )
        object.__setattr__(self, "batch_line_faults", MappingProxyType(line_faults))
        if self.batch_expire_after is not None:
            _require(
                0 <= self.batch_expire_after <= 1, "batch_expire_after must be between 0 and 1"
            )
        if self.batch_enqueued_tokens is not None:
            _require(self.batch_enqueued_tokens >= 1, "batch_enqueued_tokens must be at least 1")
        if self.batch_unknown_status is not None:
            _require(
                bool(self.batch_unknown_status.strip()),
                "batch_unknown_status must not be empty (or None)",
            )
        _require(0 <= self.batch_poll_errors <= 1, "batch_poll_errors must be between 0 and 1")

    def noise_for(self, model: str) -> float:
        """The share of labels `model` gets wrong on purpose (the first pattern that fits)."""
        for pattern, share in self.label_noise.items():
            if fnmatch.fnmatchcase(model, pattern):
                return share
        return 0.0

    def __repr__(self) -> str:
        changed = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("faults", "label_noise", "batch_line_faults"):
                if value:
                    changed.append(f"{f.name}={dict(value)!r}")
            elif f.name == "api_key":
                if value is not None:
                    changed.append("api_key='***'")
            elif value != _default(f.name):
                changed.append(f"{f.name}={value!r}")
        return f"SimConfig({', '.join(changed)})"

    def __hash__(self) -> int:
        values = [getattr(self, f.name) for f in fields(self)]
        return hash(
            tuple(tuple(sorted(v.items())) if isinstance(v, Mapping) else v for v in values)
        )


def _default(name: str) -> Any:
    """The default value of one SimConfig field."""
    f = SimConfig.__dataclass_fields__[name]
    return f.default_factory() if callable(f.default_factory) else f.default


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _kinds() -> str:
    return ", ".join(FAULT_KINDS)
