"""Turning input rows into request bodies, and the fingerprint that identifies a request."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import InputError, JobError
from .job import PromptSpec

# What a request is estimated to produce when it sets no max_tokens (pacing only; the
# usage that comes back corrects it).
DEFAULT_COMPLETION_ESTIMATE = 256


class RowInvalid(Exception):
    """This row cannot become a request (a null or empty prompt, a bad message list)."""


@dataclass(frozen=True)
class _Template:
    """A parsed `{column}` template: literal text and the columns between it."""

    pieces: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, text: str, where: str) -> _Template:
        pieces: list[tuple[str, str | None]] = []
        try:
            for literal, field, spec, conversion in string.Formatter().parse(text):
                if field is not None and (spec or conversion or field == ""):
                    shown = field + (f"!{conversion}" if conversion else "")
                    shown += f":{spec}" if spec else ""
                    raise JobError(
                        f"The {where} template has {{{shown}}}: placeholders are plain "
                        f"{{column}} names; write {{{{ and }}}} for literal braces."
                    )
                pieces.append((literal, field))
        except ValueError as exc:
            raise JobError(
                f"The {where} template is malformed ({exc}): "
                f"write {{{{ and }}}} for literal braces."
            ) from None
        return cls(tuple(pieces))

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f for _, f in self.pieces if f is not None)

    def render(self, row: Mapping[str, Any]) -> str:
        out: list[str] = []
        for literal, field in self.pieces:
            out.append(literal)
            if field is not None:
                value = row[field]
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise RowInvalid(f"the column {field!r} is empty in this row")
                out.append(str(value))
        return "".join(out)


class Renderer:
    """Renders rows into chat-completion request bodies for one job."""

    def __init__(
        self, prompt: PromptSpec, request: Mapping[str, Any], columns: Collection[str]
    ) -> None:
        self._system = _Template.parse(prompt.system, "system") if prompt.system else None
        self._user = _Template.parse(prompt.user, "user") if prompt.user is not None else None
        self._messages_column = prompt.messages_column
        self._request = dict(request)
        needed = list(self._system.columns if self._system else ())
        needed += self._user.columns if self._user else ()
        if self._messages_column:
            needed.append(self._messages_column)
        missing = [c for c in dict.fromkeys(needed) if c not in columns]
        if missing:
            raise InputError(
                f"The prompt uses column {missing[0]!r}, which is not in the input "
                f"(columns: {', '.join(columns)}): fix the template or the input."
            )
        self.columns: tuple[str, ...] = tuple(dict.fromkeys(needed))
        max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
        n = request.get("n", 1)
        self.completion_estimate = (
            int(max_tokens) if isinstance(max_tokens, int) else DEFAULT_COMPLETION_ESTIMATE
        ) * (int(n) if isinstance(n, int) and n > 0 else 1)

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The message list of one row; raises RowInvalid when the row cannot be sent."""
        if self._messages_column:
            return _message_list(row[self._messages_column])
        messages: list[dict[str, Any]] = []
        if self._system is not None:
            messages.append({"role": "system", "content": self._system.render(row)})
        assert self._user is not None
        messages.append({"role": "user", "content": self._user.render(row)})
        return messages

    def body(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The request body of one row: model and messages first, then [request] as given."""
        body: dict[str, Any] = {"model": self._request["model"], "messages": self.messages(row)}
        body.update((k, v) for k, v in self._request.items() if k != "model")
        return body


def fingerprint(body: Mapping[str, Any]) -> str:
    """A stable digest of a request body: equal bodies, equal fingerprints."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _message_list(value: Any) -> list[dict[str, Any]]:
    """A message list from JSON text or a list of structs, with null struct fields dropped."""
    if value is None:
        raise RowInvalid("the messages column is empty in this row")
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise RowInvalid("the messages column does not hold valid JSON") from None
    if not isinstance(value, list) or not value:
        raise RowInvalid("the messages column must hold a non-empty list of messages")
    messages = []
    for item in value:
        if not isinstance(item, Mapping) or not isinstance(item.get("role"), str):
            raise RowInvalid("every message needs a role")
        message = {k: _drop_nulls(v) for k, v in item.items() if v is not None}
        if "content" not in message and "tool_calls" not in message:
            raise RowInvalid(f"a {item['role']} message has no content")
        messages.append(message)
    return messages


def _drop_nulls(value: Any) -> Any:
    """Struct columns fill absent fields with null; the API wants them absent."""
    if isinstance(value, Mapping):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value
