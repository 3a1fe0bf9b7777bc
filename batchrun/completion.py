"""A chat completion as batchrun records it, parsed from the gateway's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson


class NotACompletion(ValueError):
    """The body is JSON but not a chat completion."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the gateway reported them (or as counted locally)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """The parts of a chat completion that become output columns."""

    response: str | None
    finish_reason: str | None
    usage: Usage | None
    response_model: str | None
    response_id: str | None
    system_fingerprint: str | None
    tool_calls: str | None
    choices: tuple[str | None, ...]


def parse_completion(obj: Any) -> Completion:
    """Parse a decoded `chat.completion` object; raise NotACompletion if it is not one."""
    if not isinstance(obj, Mapping):
        raise NotACompletion("the body is not a JSON object")
    raw_choices = obj.get("choices")
    if not isinstance(raw_choices, list) or not raw_choices:
        raise NotACompletion("the body has no choices")
    ordered = sorted(
        (c for c in raw_choices if isinstance(c, Mapping)),
        key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0,
    )
    if len(ordered) != len(raw_choices):
        raise NotACompletion("a choice is not an object")
    contents: list[str | None] = []
    for choice in ordered:
        message = choice.get("message")
        if not isinstance(message, Mapping):
            raise NotACompletion("a choice has no message")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            content = orjson.dumps(content).decode()
        contents.append(content)
    first = ordered[0]
    message = first["message"]
    calls = message.get("tool_calls")
    return Completion(
        response=contents[0],
        finish_reason=_text(first.get("finish_reason")),
        usage=parse_usage(obj.get("usage")),
        response_model=_text(obj.get("model")),
        response_id=_text(obj.get("id")),
        system_fingerprint=_text(obj.get("system_fingerprint")),
        tool_calls=orjson.dumps(calls).decode() if calls else None,
        choices=tuple(contents),
    )


def parse_usage(raw: Any) -> Usage | None:
    """Usage with its details; None when the gateway sent none (or nonsense)."""
    if not isinstance(raw, Mapping):
        return None
    prompt, completion = _int(raw.get("prompt_tokens")), _int(raw.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    total = _int(raw.get("total_tokens"))
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total if total is not None else prompt + completion,
        cached_tokens=_int(prompt_details.get("cached_tokens"))
        if isinstance(prompt_details, Mapping)
        else None,
        reasoning_tokens=_int(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, Mapping)
        else None,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
