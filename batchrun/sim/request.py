"""A chat-completion request body, checked and reduced to what the answer depends on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .text import stable_hash

JsonMode = Literal["json_object", "json_schema"]
MAX_CHOICES = 128
# How batchrun's re-ask after an unparseable answer begins (`batchrun.rows.parse.REASK_PREFIX`):
# the question is still the user message before it.
REASK_PREFIX = "Your answer could not be used"
# Fields that change how an answer is delivered, not what it is.
_DELIVERY_FIELDS = frozenset({"stream", "stream_options"})
# Fields that cut or multiply an answer without changing it: a cut answer is a prefix of the
# full one, and choice 0 of n is the answer to n = 1.
_SHAPE_FIELDS = frozenset({"max_tokens", "max_completion_tokens", "n"})


class InvalidRequest(ValueError):
    """The body is not a valid chat-completion request; `param` names the culprit."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What an answer is computed from; equal bodies (ignoring streaming) give equal keys."""

    key: str  # hash of the body without delivery fields: the answer's id
    content_key: str  # hash without shape fields either: seeds the content
    model: str
    messages: Sequence[Mapping[str, Any]]
    n: int
    max_tokens: int | None
    json_mode: JsonMode | None
    schema: Mapping[str, Any] | None
    tool: Mapping[str, Any] | None
    stream: bool
    include_usage: bool

    @property
    def instructions(self) -> str:
        """The system and user text together, where a task is described."""
        return "\n".join(
            _text(m.get("content")) for m in self.messages if m.get("role") != "assistant"
        )

    @property
    def last_user_text(self) -> str:
        """The last user message that asks something (a re-ask after a bad answer does not)."""
        for message in reversed(self.messages):
            text = _text(message.get("content"))
            if message.get("role") == "user" and not text.startswith(REASK_PREFIX):
                return text
        return ""


def parse_request(body: Mapping[str, Any]) -> ChatRequest:
    """Check a decoded body; raises InvalidRequest the way the API would answer 400."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    if not all(isinstance(m, Mapping) for m in messages):
        raise InvalidRequest("each of 'messages' must be an object", "messages")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
        raise InvalidRequest(f"'n' must be an integer from 1 to {MAX_CHOICES}", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise InvalidRequest("'max_tokens' must be an integer of at least 1", "max_tokens")
    json_mode, schema = _response_format(body.get("response_format"))
    options = body.get("stream_options")
    answer = {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS}
    content = {k: v for k, v in answer.items() if k not in _SHAPE_FIELDS}
    return ChatRequest(
        key=stable_hash(orjson.dumps(answer, option=orjson.OPT_SORT_KEYS)),
        content_key=stable_hash(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)),
        model=model,
        messages=messages,
        n=n,
        max_tokens=max_tokens,
        json_mode=json_mode,
        schema=schema,
        tool=_tool_to_call(body.get("tools"), body.get("tool_choice")),
        stream=body.get("stream") is True,
        include_usage=isinstance(options, Mapping) and options.get("include_usage") is True,
    )


def _response_format(value: Any) -> tuple[JsonMode | None, Mapping[str, Any] | None]:
    if not isinstance(value, Mapping):
        return None, None
    kind = value.get("type")
    if kind == "json_object":
        return "json_object", None
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidRequest(
                "response_format.json_schema.schema must be an object", "response_format"
            )
        return "json_schema", schema
    return None, None


def _tool_to_call(tools: Any, choice: Any) -> Mapping[str, Any] | None:
    """The function definition the answer calls, or None when it answers in text."""
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    functions = [
        t["function"]
        for t in tools
        if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)
    ]
    if not functions:
        raise InvalidRequest("each of 'tools' must have a 'function' object", "tools")
    if isinstance(choice, Mapping):
        forced = choice.get("function")
        name = forced.get("name") if isinstance(forced, Mapping) else None
        for function in functions:
            if function.get("name") == name:
                return function
        raise InvalidRequest(f"tool_choice names an unknown function {name!r}", "tool_choice")
    return functions[0]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return ""
