"""Deterministic completions: the same request always gets the same id, content and usage."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson

from batchrun.tokens import counter_for

from .config import Dialect
from .request import ChatRequest
from .schema import fill_schema
from .sentiment import label
from .text import filler, fit_tokens, mostly_chinese, rng_for, stable_hash

_REASONING_PREFIXES = ("o1", "o3", "o4")
# Dialects whose usage carries the prompt/completion token details.
_DETAILED_USAGE = frozenset({"openai", "302ai"})
# The first second a `created` timestamp may name, and how far past it they spread.
_CREATED_BASE = 1_700_000_000
_CREATED_SPREAD = 50_000_000


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call in an answer; `arguments` is JSON text, possibly cut short."""

    id: str
    name: str
    arguments: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Choice:
    """One of an answer's `n` choices: text content, or a tool call."""

    index: int
    content: str | None
    tool_call: ToolCall | None
    finish_reason: str
    tokens: int  # of the content, or of the tool call's arguments


@dataclass(frozen=True, slots=True)
class Completion:
    """One answer, ready to be sent whole or as stream chunks."""

    id: str
    created: int
    model: str
    fingerprint: str | None
    choices: tuple[Choice, ...]
    usage: dict[str, Any] | None

    def header(self, kind: str) -> dict[str, Any]:
        """The fields the whole body and every chunk share, for `object` = kind."""
        fields: dict[str, Any] = {"id": self.id, "object": kind, "created": self.created}
        fields["model"] = self.model
        if self.fingerprint is not None:
            fields["system_fingerprint"] = self.fingerprint
        return fields

    def to_json(self) -> dict[str, Any]:
        body = self.header("chat.completion")
        body["choices"] = [_choice_json(c) for c in self.choices]
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def _choice_json(choice: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.content, "refusal": None}
    if choice.tool_call is not None:
        message["tool_calls"] = [choice.tool_call.to_json()]
    return {
        "index": choice.index,
        "message": message,
        "logprobs": None,
        "finish_reason": choice.finish_reason,
    }


def complete(
    request: ChatRequest, dialect: Dialect, *, with_usage: bool = True, bad_json: bool = False
) -> Completion:
    """The simulator's answer to a request; `bad_json` spoils JSON-mode content."""
    verdict = label(request.instructions, request.last_user_text, int(request.content_key[:8], 16))
    choices = tuple(_choice(request, i, verdict, bad_json) for i in range(request.n))
    return Completion(
        id="chatcmpl-" + request.key[:29],
        created=_CREATED_BASE + int(request.key[29:37], 16) % _CREATED_SPREAD,
        model=served_model(request.model, dialect),
        fingerprint=None if dialect == "bcwhkj" else "fp_sim" + stable_hash(request.model)[:8],
        choices=choices,
        usage=_usage(request, choices, dialect) if with_usage else None,
    )


def served_model(model: str, dialect: Dialect) -> str:
    """The model a gateway reports serving: bcwhkj quietly serves gpt-3.5 as gpt-4o-mini."""
    if dialect == "bcwhkj" and model.startswith("gpt-3.5"):
        return "gpt-4o-mini"
    return model


def _choice(request: ChatRequest, index: int, verdict: str | None, bad_json: bool) -> Choice:
    rng = rng_for(request.content_key, str(index))
    limit = request.max_tokens
    if limit is not None and _is_reasoning(request.model):
        # max_tokens bounds hidden reasoning too, and reasoning is twice the visible answer.
        limit //= 3
    if request.tool is not None:
        name = str(request.tool.get("name", "function"))
        parameters = request.tool.get("parameters")
        arguments = orjson.dumps(
            fill_schema(parameters, rng, verdict) if isinstance(parameters, dict) else {}
        ).decode()
        cut, tokens = fit_tokens(arguments, limit)
        call = ToolCall("call_" + stable_hash(request.key, "call", str(index))[:24], name, cut)
        return Choice(index, None, call, "tool_calls" if cut == arguments else "length", tokens)
    content = _content(request, rng, verdict, bad_json)
    cut, tokens = fit_tokens(content, limit)
    return Choice(index, cut, None, "stop" if cut == content else "length", tokens)


def _content(request: ChatRequest, rng: random.Random, verdict: str | None, bad_json: bool) -> str:
    if request.json_mode is None:
        return verdict or filler(rng, mostly_chinese(request.last_user_text))
    if request.schema is not None:
        document: Any = fill_schema(request.schema, rng, verdict)
    elif verdict is not None:
        document = {"label": verdict, "confidence": round(rng.uniform(0.6, 0.99), 2)}
    else:
        document = {"answer": filler(rng, mostly_chinese(request.last_user_text))}
    text = orjson.dumps(document).decode()
    # A model that ignores JSON mode wraps its JSON in a Markdown fence.
    return f"```json\n{text}\n```" if bad_json else text


def _usage(request: ChatRequest, choices: tuple[Choice, ...], dialect: Dialect) -> dict[str, Any]:
    prompt = counter_for(request.model).chat(request.messages)
    visible = sum(c.tokens for c in choices)
    reasoning = 2 * visible if _is_reasoning(request.model) else 0
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": visible + reasoning,
        "total_tokens": prompt + visible + reasoning,
    }
    if dialect in _DETAILED_USAGE:
        usage["prompt_tokens_details"] = {
            "cached_tokens": prompt // 2 // 16 * 16,
            "audio_tokens": 0,
        }
        usage["completion_tokens_details"] = {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return usage


def _is_reasoning(model: str) -> bool:
    return model.startswith(_REASONING_PREFIXES) or "reason" in model
