"""Turning input rows into request bodies, and the fingerprint that identifies a request."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl
import polars_hash  # noqa: F401  (registers the `chash` namespace on expressions)

from ..config.job import PromptSpec
from ..errors import InputError, JobError

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

    def expression(self, dtypes: Mapping[str, pl.DataType]) -> pl.Expr:
        """The rendered text of a whole batch; null where a placeholder's value is null."""
        parts: list[pl.Expr] = []
        for literal, field in self.pieces:
            if literal:
                parts.append(pl.lit(literal))
            if field is not None:
                parts.append(_as_text(field, dtypes[field]))
        return pl.concat_str(parts, ignore_nulls=False) if parts else pl.lit("")


# One rendered row: its key, its position, its request fingerprint, what its messages are
# made of (system and user text, or the message list), and why it cannot be sent (or None).
Rendered = tuple[str, int, str, Any, str | None]
# The columns of a rendered frame (see `Renderer.render_frame`).
KEY, POSITION, FP, PAYLOAD, REASON = "key", "position", "__batchrun_fp", "payload", "reason"


class Renderer:
    """Renders rows into chat-completion request bodies for one job."""

    def __init__(
        self, prompt: PromptSpec, request: Mapping[str, Any], columns: Collection[str]
    ) -> None:
        self._system = _Template.parse(prompt.system, "system") if prompt.system else None
        self._user = _Template.parse(prompt.user, "user") if prompt.user is not None else None
        self._messages_column = prompt.messages_column
        self._request = dict(request)
        # What every body carries besides model and messages: [request] as given, and for a
        # stream the usage chunk asked for (gateways send no usage in streams otherwise).
        self._params = {k: v for k, v in request.items() if k != "model"}
        if self._params.get("stream") is True and "stream_options" not in self._params:
            self._params["stream_options"] = {"include_usage": True}
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
        # Every request of the job shares its parameters: they are hashed once, and each
        # row's fingerprint hashes them with the row's own messages.
        self._prefix = fingerprint(self._request).encode()
        # The most a request can produce (None without max_tokens), and what pacing assumes.
        self.completion_ceiling = completion_ceiling(request)
        self.completion_estimate = self.completion_ceiling or (
            DEFAULT_COMPLETION_ESTIMATE * _choices(request)
        )

    def render_frame(self, batch: pl.DataFrame, key: str, position: str) -> pl.DataFrame:
        """A batch rendered: its rows' key, position and request fingerprint (`KEY`,
        `POSITION`, `FP`) and what their messages are made of (`PAYLOAD`: system and user
        text, or the message list), or why they cannot be sent (`REASON`).

        Templates are rendered and fingerprinted in polars, a whole batch at a time; rows
        whose placeholder values are null or blank come out with a reason instead. Callers
        filter the frame (rows already settled, say) before `rows` goes through it one by
        one.
        """
        ids = batch.select(pl.col(key).alias(KEY), pl.col(position).cast(pl.Int64).alias(POSITION))
        if self._messages_column is not None:
            fps: list[str] = []
            payloads: list[list[dict[str, Any]] | None] = []
            reasons: list[str | None] = []
            for value in batch[self._messages_column].to_list():
                try:
                    messages = _message_list(value)
                except RowInvalid as exc:
                    fps.append(self._digest(str(exc).encode(), b"!"))
                    payloads.append(None)
                    reasons.append(str(exc))
                    continue
                fps.append(self._digest(orjson.dumps(messages)))
                payloads.append(messages)
                reasons.append(None)
            return ids.with_columns(
                pl.Series(FP, fps, pl.String),
                pl.Series(PAYLOAD, payloads, pl.Object),
                pl.Series(REASON, reasons, pl.String),
            )
        assert self._user is not None
        dtypes = dict(batch.schema)
        blank = [
            pl.when(_as_text(c, dtypes[c]).str.strip_chars().fill_null("") == "").then(pl.lit(c))
            for c in self.columns
        ]
        why = {c: f"the column {c!r} is empty in this row" for c in self.columns}
        frame = batch.select(
            system=self._system.expression(dtypes) if self._system else pl.lit(None, pl.String),
            user=self._user.expression(dtypes),
            blank=pl.coalesce(blank) if blank else pl.lit(None, pl.String),
        ).with_columns(pl.col("blank").replace_strict(why, default=None, return_dtype=pl.String))
        prefix = self._prefix.decode()
        reason = pl.col("blank")
        text = pl.concat_str(
            pl.when(pl.col("system").is_null())
            .then(pl.lit(prefix + "u"))
            .otherwise(pl.lit(prefix + "s")),
            pl.col("system").fill_null(""),
            pl.lit("\x00"),
            pl.col("user").fill_null(""),
        )
        digest = pl.when(reason.is_null()).then(text).otherwise(pl.lit(prefix + "!") + reason)
        rendered = frame.select(
            _sha256(digest).alias(FP),
            pl.when(reason.is_null())
            .then(pl.struct(system=pl.col("system"), user=pl.col("user")))
            .alias(PAYLOAD),
            reason.alias(REASON),
        )
        return ids.hstack(rendered)

    def rows(self, frame: pl.DataFrame) -> Iterator[Rendered]:
        """The rows of a rendered frame (see `render_frame`), one by one."""
        columns = (frame[c].to_list() for c in (KEY, POSITION, FP, PAYLOAD, REASON))
        for k, p, fp, payload, reason in zip(*columns, strict=True):
            if isinstance(payload, dict):
                payload = (payload["system"], payload["user"])
            yield k, p, fp, payload, reason

    def body(self, payload: Any) -> dict[str, Any]:
        """The request body of a rendered row: model, messages, then [request] as given."""
        return {
            "model": self._request["model"],
            "messages": self.to_messages(payload),
            **self._params,
        }

    def to_messages(self, payload: Any) -> list[dict[str, Any]]:
        """The message list of a rendered row's payload."""
        if isinstance(payload, tuple):
            system, user = payload
            messages = [{"role": "system", "content": system}] if system is not None else []
            messages.append({"role": "user", "content": user})
            return messages
        return list(payload)

    def _digest(self, content: bytes, kind: bytes = b"m") -> str:
        return hashlib.sha256(self._prefix + kind + content).hexdigest()[:32]


def completion_ceiling(request: Mapping[str, Any]) -> int | None:
    """`max_completion_tokens` (or `max_tokens`) times `n`: the most tokens a request can
    produce; None when the request sets no limit."""
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    return max_tokens * _choices(request) if isinstance(max_tokens, int) else None


def _choices(request: Mapping[str, Any]) -> int:
    n = request.get("n", 1)
    return n if isinstance(n, int) and n > 0 else 1


def _sha256(text: pl.Expr) -> pl.Expr:
    """The first 32 hex digits of the SHA-256 of each text's UTF-8 bytes, as `_digest` gives
    them (polars-hash is stable across versions, where polars' own hash is not)."""
    hashed: pl.Expr = text.chash.sha2_256()  # type: ignore[attr-defined]
    return hashed.str.slice(0, 32)


def fingerprint(body: Mapping[str, Any]) -> str:
    """A stable digest of a request body: equal bodies, equal fingerprints."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _as_text(column: str, dtype: pl.DataType) -> pl.Expr:
    """A column as the text a template puts in: strings as they are, nested values as JSON."""
    col = pl.col(column)
    if dtype == pl.String:
        return col
    if dtype.is_nested() or dtype == pl.Object:
        return col.map_batches(_json_texts, return_dtype=pl.String)
    return col.cast(pl.String)


def _json_texts(values: pl.Series) -> pl.Series:
    """Nested values (lists, structs) as compact JSON; nulls stay null."""
    option = orjson.OPT_NON_STR_KEYS
    return pl.Series(
        [None if v is None else orjson.dumps(v, option=option).decode() for v in values.to_list()],
        dtype=pl.String,
    )


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
