"""A chat completion as batchrun records it, parsed from the gateway's JSON (whole, or
reassembled from a stream): what an answer's body holds. The row's result made from it, with
its usage and cost, is `protocol.result`'s; whether an attempt's body is an answer at all is
`protocol.outcome`'s to say."""

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

    def __add__(self, other: Usage) -> Usage:
        """Two answers' usage together (a detail is null only if both left it out)."""
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            _add(self.cached_tokens, other.cached_tokens),
            _add(self.reasoning_tokens, other.reasoning_tokens),
        )


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


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


class ChunkAssembler:
    """Reassembles a streamed completion from its `chat.completion.chunk` events.

    Content and tool-call deltas are joined per choice (tool calls by their index), each
    choice keeps its finish_reason, usage comes from the chunk that carries it (the last one
    when `stream_options.include_usage` is on). `problem` says why the stream cannot be
    trusted (a malformed event, no [DONE], a choice without finish_reason); `error` holds an
    error object the gateway sent inside the stream.
    """

    def __init__(self) -> None:
        self.done = False  # [DONE] arrived
        self.problem: str | None = None  # first reason the stream is not a whole completion
        self.error: Mapping[str, Any] | None = None  # an error object sent as an event
        self.started = False  # a chunk with choices arrived (for time to first token)
        self._contents: dict[int, list[str]] = {}  # content pieces by choice index
        self._finish: dict[int, str | None] = {}  # finish_reason by choice index
        self._calls: dict[int, dict[int, dict[str, Any]]] = {}  # tool calls by choice, index
        self._usage: Usage | None = None
        self._model: str | None = None
        self._id: str | None = None
        self._fingerprint: str | None = None

    def feed(self, data: str) -> None:
        """Take the data of one event."""
        if self.done or self.error is not None:
            return
        if data.strip() == "[DONE]":
            self.done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.problem = self.problem or "a stream event is not JSON"
            return
        if not isinstance(chunk, Mapping):
            self.problem = self.problem or "a stream event is not a JSON object"
            return
        if chunk.get("error") is not None or ("codes" in chunk and "choices" not in chunk):
            self.error = chunk
            return
        self._id = self._id or _text(chunk.get("id"))
        self._model = self._model or _text(chunk.get("model"))
        self._fingerprint = self._fingerprint or _text(chunk.get("system_fingerprint"))
        usage = parse_usage(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        for choice in chunk.get("choices") or ():
            if isinstance(choice, Mapping):
                self._choice(choice)

    def _choice(self, choice: Mapping[str, Any]) -> None:
        index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
        self.started = True
        self._contents.setdefault(index, [])
        self._finish.setdefault(index, None)
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            content = delta.get("content")
            if isinstance(content, str):
                self._contents[index].append(content)
            for call in delta.get("tool_calls") or ():
                if isinstance(call, Mapping):
                    self._tool_call(index, call)
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._finish[index] = finish

    def _tool_call(self, index: int, delta: Mapping[str, Any]) -> None:
        slot = delta.get("index", 0) if isinstance(delta.get("index"), int) else 0
        call = self._calls.setdefault(index, {}).setdefault(
            slot, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if isinstance(delta.get("id"), str):
            call["id"] = delta["id"]
        if isinstance(delta.get("type"), str):
            call["type"] = delta["type"]
        function = delta.get("function")
        if isinstance(function, Mapping):
            if isinstance(function.get("name"), str):
                call["function"]["name"] += function["name"]
            if isinstance(function.get("arguments"), str):
                call["function"]["arguments"] += function["arguments"]

    def cut(self, reason: str) -> None:
        """The connection ended before the stream did."""
        self.problem = self.problem or reason

    def completion(self) -> Completion:
        """The whole completion; raise NotACompletion if the stream was not whole."""
        if self.problem is not None:
            raise NotACompletion(self.problem)
        if not self._finish:
            raise NotACompletion("the stream carried no choices")
        missing = [i for i, reason in self._finish.items() if reason is None]
        if missing:
            raise NotACompletion(f"the stream ended before choice {missing[0]} finished")
        if not self.done:
            raise NotACompletion("the stream ended without [DONE]")
        indexes = sorted(self._finish)
        contents = tuple(
            "".join(self._contents[i]) if self._contents[i] or i not in self._calls else None
            for i in indexes
        )
        calls = self._calls.get(indexes[0])
        return Completion(
            response=contents[0],
            finish_reason=self._finish[indexes[0]],
            usage=self._usage,
            response_model=self._model,
            response_id=self._id,
            system_fingerprint=self._fingerprint,
            tool_calls=orjson.dumps([calls[k] for k in sorted(calls)]).decode() if calls else None,
            choices=contents,
        )
