"""A completion as server-sent events, the way OpenAI streams `chat.completion.chunk`s."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import orjson

from .answers import Choice, Completion
from .text import pieces

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """The events of one streamed answer; a cut stream sends only part of `body`."""

    body: tuple[bytes, ...]  # role, content and tool-call deltas, choices interleaved
    tail: tuple[bytes, ...]  # finish_reason per choice, the usage chunk, [DONE]


def plan_stream(completion: Completion, include_usage: bool) -> StreamPlan:
    """Every event of the stream, in the order they are sent."""
    header = completion.header("chat.completion.chunk")
    if include_usage:
        # OpenAI sends "usage": null on every chunk but the last once usage is asked for.
        header["usage"] = None
    per_choice = [_deltas(choice) for choice in completion.choices]
    body = tuple(
        _event(header, [_delta_json(index, delta, None)])
        for round_ in zip_longest(*per_choice)
        for index, delta in enumerate(round_)
        if delta is not None
    )
    tail = [_event(header, [_delta_json(c.index, {}, c.finish_reason)]) for c in completion.choices]
    if include_usage and completion.usage is not None:
        tail.append(_event({**header, "usage": completion.usage}, []))
    tail.append(DONE)
    return StreamPlan(body, tuple(tail))


def _deltas(choice: Choice) -> list[dict[str, Any]]:
    if choice.tool_call is not None:
        call = choice.tool_call
        first = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
            ],
        }
        return [first] + [
            {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            for piece in pieces(call.arguments)
        ]
    first = {"role": "assistant", "content": "", "refusal": None}
    return [first] + [{"content": piece} for piece in pieces(choice.content or "")]


def _delta_json(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def _event(header: dict[str, Any], choices: list[dict[str, Any]]) -> bytes:
    return b"data: " + orjson.dumps({**header, "choices": choices}) + b"\n\n"
