"""Deterministic completions: the same request always gets the same id, content and usage."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batchrun.core.tokens import counter_for

from .config import Dialect
from .request import ChatRequest
from .schema import fill_schema
from .sentiment import find_label_set, label
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
    request: ChatRequest,
    dialect: Dialect,
    *,
    with_usage: bool = True,
    style: str | None = None,
    noise: float = 0.0,
) -> Completion:
    """The simulator's answer to a request; a `style` (a content fault) changes its wording:
    `bad_json` fences JSON-mode content, `chatty` wraps the answer in forgivable chatter,
    `off_format` answers outside the format asked for. `noise` is the share of labels given
    wrong on purpose (the same rows for the same model and question)."""
    verdict = label(request.instructions, request.last_user_text, int(request.content_key[:8], 16))
    if verdict is not None and noise > 0:
        verdict = _misjudge(request, verdict, noise)
    choices = tuple(_choice(request, i, verdict, style) for i in range(request.n))
    return Completion(
        id="chatcmpl-" + request.key[:29],
        created=_CREATED_BASE + int(request.key[29:37], 16) % _CREATED_SPREAD,
        model=served_model(request.model, dialect),
        fingerprint=None if dialect == "bcwhkj" else "fp_sim" + stable_hash(request.model)[:8],
        choices=choices,
        usage=_usage(request, choices, dialect) if with_usage else None,
    )


def _misjudge(request: ChatRequest, verdict: str, noise: float) -> str:
    """Another label of the set, for a `noise` share of questions (drawn per model and text)."""
    rng = rng_for(request.model, request.instructions, "noise")
    labels = find_label_set(request.instructions)
    others = [w for w in labels.words() if w != verdict] if labels is not None else []
    if not others or rng.random() >= noise:
        return verdict
    return rng.choice(others)


def served_model(model: str, dialect: Dialect) -> str:
    """The model a gateway reports serving: bcwhkj quietly serves gpt-3.5 as gpt-4o-mini."""
    if dialect == "bcwhkj" and model.startswith("gpt-3.5"):
        return "gpt-4o-mini"
    return model


def _choice(request: ChatRequest, index: int, verdict: str | None, style: str | None) -> Choice:
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
    content = _content(request, rng, verdict, style)
    cut, tokens = fit_tokens(content, limit)
    return Choice(index, cut, None, "stop" if cut == content else "length", tokens)


def _content(
    request: ChatRequest, rng: random.Random, verdict: str | None, style: str | None
) -> str:
    chinese = mostly_chinese(request.last_user_text)
    if request.json_mode is None:
        if style == "off_format":
            return _OFF_LABEL[chinese] if verdict else _OFF_TEXT[chinese]
        if style == "chatty" and verdict is not None:
            return f"标签：{verdict}。" if chinese else f'Label: "{verdict.capitalize()}".'
        return verdict or filler(rng, chinese)
    if request.schema is not None:
        document: Any = fill_schema(request.schema, rng, verdict)
    elif verdict is not None:
        document = {"label": verdict, "confidence": round(rng.uniform(0.6, 0.99), 2)}
    else:
        document = {"answer": filler(rng, chinese)}
    if style == "off_format":
        if request.schema is None or not isinstance(document, dict) or not document:
            return _OFF_TEXT[chinese]
        return orjson.dumps(_break_schema(document, request.schema)).decode()
    text = orjson.dumps(document).decode()
    # A model that ignores JSON mode wraps its JSON in a Markdown fence.
    return f"```json\n{text}\n```" if style in ("bad_json", "chatty") else text


# What an off-format answer says: to a labeling prompt, and to anything else (by language).
_OFF_LABEL = {False: "Mixed, I would say.", True: "说不好，好坏参半。"}
_OFF_TEXT = {False: "Sure! Here is what I think about it.", True: "好的，我的看法如下。"}


def _break_schema(document: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """The document without its first required field, or with its first field mistyped."""
    required = [r for r in schema.get("required", ()) if r in document]
    broken = dict(document)
    if required:
        del broken[required[0]]
    else:
        first = next(iter(broken))
        broken[first] = [broken[first]]
    return broken


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
