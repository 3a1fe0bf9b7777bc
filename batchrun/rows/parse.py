"""Parsing answers (`[parse]`): matched to a label set, read as JSON, or cut out by a regex.

A parse never fails a row: the answer stays in `response`, and `parsed` is null with a
`parse_error` saying why. The same `Parser` decides in the engine whether an answer is asked
again (`retry_invalid`) and, when the output is written, what `parsed` holds, so both always
agree; parsing again when the output is rewritten also means a changed `[parse]` applies to
committed answers without paying for them again.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl

from ..config.job import FieldType, ParseSpec
from ..errors import JobError

PARSED, PARSE_ERROR = "parsed", "parse_error"
# A leading "Label:" (or "**Answer**:", "标签：") in front of the label itself.
_LABEL_PREFIX = re.compile(
    r"^(?:the\s+)?(?:final\s+)?(?:label|answer|category|class|sentiment|classification"
    r"|标签|答案|类别|分类|情感)\W*?\s*[:：]\s*",
    re.IGNORECASE,
)
# Punctuation trimmed from the ends of an answer besides brackets and quotes.
_EDGE_CHARS = frozenset(".,;:!?'\"`*_~…·。，、；：！？")
# A Markdown code fence around the whole answer: ```json ... ```
_FENCE = re.compile(r"^\s*```[\w+-]*[^\S\n]*\n?(.*?)\n?\s*```\s*$", re.DOTALL)
_SHOWN = 60  # characters of an answer quoted in a parse_error
# How the follow-up question after an unparseable answer begins (`retry_invalid`).
REASK_PREFIX = "Your answer could not be used"

_POLARS_TYPES: dict[FieldType, pl.DataType] = {
    "string": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
    "json": pl.String(),
}
_SCHEMA_TYPES: dict[str, FieldType] = {
    "string": "string",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
}


@dataclass(frozen=True, slots=True)
class Parsed:
    """One answer, parsed: the `parsed` value, or the `parse_error` that explains its absence.

    Exactly one of `value` and `error` is set; a JSON answer that parses but breaks the
    schema or a field's type keeps its `document`, so the fields that fit still fill their
    columns.
    """

    value: str | None
    error: str | None
    document: Any = None  # the JSON document (format json), for field columns and scoring


def normalize(text: str) -> str:
    """Text as label matching sees it: NFKC, case-folded, trimmed of sentence punctuation,
    quotes, brackets, Markdown emphasis and a leading "Label:", inner whitespace collapsed."""
    text = _trim(unicodedata.normalize("NFKC", text)).casefold()
    text = _trim(_LABEL_PREFIX.sub("", text, count=1))
    return " ".join(text.split())


def _trim(text: str) -> str:
    """`text` without the edge characters (`_edge`) at either end."""
    start, end = 0, len(text)
    while start < end and _edge(text[start]):
        start += 1
    while end > start and _edge(text[end - 1]):
        end -= 1
    return text[start:end]


def _edge(char: str) -> bool:
    """Whitespace, quotes, brackets, sentence punctuation, emphasis or an emoji: never a sign
    or symbol that tells labels apart (-1 and 1, C and C#, 5% and 5)."""
    return (
        char.isspace()
        or char in _EDGE_CHARS
        or unicodedata.category(char) in ("Ps", "Pe", "Pi", "Pf", "So")
    )


class Parser:
    """The job's `[parse]`: one answer in, a `Parsed` out."""

    def __init__(self, spec: ParseSpec, request: Mapping[str, Any]) -> None:
        self.spec = spec
        self._labels: dict[str, str] = {}  # normalized label -> the label as written
        self._pattern: re.Pattern[str] | None = None
        self._validator: Any = None  # a jsonschema validator, when the request has a schema
        self.fields: dict[str, FieldType] = {}  # expanded JSON fields and their types
        if spec.format == "label":
            self._labels = _label_table(spec.labels or [])
        elif spec.format == "regex":
            self._pattern = _compile(spec.pattern or "")
        else:
            schema = response_schema(request)
            if schema is not None:
                self._validator = _validator(schema)
            self.fields = {
                name: spec.types.get(name) or _schema_type(schema, name) for name in spec.columns
            }

    @property
    def labels(self) -> list[str]:
        """The label set, as written in the job."""
        return list(self._labels.values())

    @property
    def columns(self) -> dict[str, pl.DataType]:
        """The output columns parsing adds, with their types."""
        return {
            PARSED: pl.String(),
            PARSE_ERROR: pl.String(),
            **{name: _POLARS_TYPES[kind] for name, kind in self.fields.items()},
        }

    def parse(self, response: str | None, tool_calls: str | None = None) -> Parsed:
        """Parse one answer (for format json, a tool call's arguments when there is no text)."""
        if self.spec.format == "json" and response is None and tool_calls:
            response = _first_arguments(tool_calls)
        if response is None or not response.strip():
            return Parsed(None, "no answer to parse")
        if self.spec.format == "label":
            return self._label(response)
        if self.spec.format == "regex":
            return self._regex(response)
        return self._json(response)

    def reask(self, error: str) -> str:
        """The follow-up question sent after an answer that did not parse."""
        if self.spec.format == "label":
            wanted = f"Answer with exactly one of: {', '.join(self.labels)}."
        elif self.spec.format == "json":
            wanted = "Answer with the JSON document only"
            wanted += ", matching the schema." if self._validator is not None else "."
        else:
            wanted = "Answer again, in exactly the format asked for."
        return f"{REASK_PREFIX} ({error}). {wanted}"

    def match_label(self, text: str) -> str | None:
        """The label `text` names (forgiving case, punctuation, quotes, "Label:"), if any."""
        return self._labels.get(normalize(text))

    def field_values(self, parsed: Parsed) -> list[Any]:
        """The expanded fields' values, typed, in `columns` order (nulls if not parsed)."""
        if parsed.document is None:
            return [None] * len(self.fields)
        return [_typed(lookup(parsed.document, n), k)[0] for n, k in self.fields.items()]

    def _label(self, response: str) -> Parsed:
        label = self.match_label(response)
        if label is None:
            return Parsed(None, f"not one of the labels: {_shown(response)}")
        return Parsed(label, None)

    def _regex(self, response: str) -> Parsed:
        assert self._pattern is not None
        found = self._pattern.search(response)
        if found is None:
            return Parsed(None, f"no match for the pattern in {_shown(response)}")
        value = found.group(1) if self._pattern.groups else found.group(0)
        if value is None:
            return Parsed(None, f"the pattern's first group is empty in {_shown(response)}")
        return Parsed(value, None)

    def _json(self, response: str) -> Parsed:
        fenced = _FENCE.match(response)
        text = fenced.group(1) if fenced else response
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return Parsed(None, f"not JSON ({exc}): {_shown(response)}")
        if self._validator is not None:
            import jsonschema

            error = jsonschema.exceptions.best_match(self._validator.iter_errors(document))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path)
                at = f" at {where}" if where else ""
                return Parsed(None, f"does not match the schema{at}: {error.message}", document)
        for name, kind in self.fields.items():
            found = lookup(document, name)
            if found is MISSING:
                return Parsed(None, f"no field {name!r} in the answer", document)
            if _typed(found, kind)[1]:
                return Parsed(None, f"field {name!r} is not {_A[kind]}: {found!r}", document)
        return Parsed(orjson.dumps(document).decode(), None, document)


def response_schema(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a `json_schema` response_format, if the request has one."""
    response_format = request.get("response_format")
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return None
    wrapper = response_format.get("json_schema")
    schema = wrapper.get("schema") if isinstance(wrapper, Mapping) else None
    return dict(schema) if isinstance(schema, Mapping) else None


_INT64 = (-(2**63), 2**63 - 1)  # what an int column holds
MISSING: Any = object()  # what `lookup` gives for a field the document does not have
_A = {"string": "a string", "int": "a 64-bit integer", "float": "a number", "bool": "a boolean"}
_A["json"] = "JSON"


def lookup(document: Any, dotted: str) -> Any:
    """A field of a JSON document by its dotted path ("a.b"), or MISSING."""
    for key in dotted.split("."):
        if not isinstance(document, dict) or key not in document:
            return MISSING
        document = document[key]
    return document


def _typed(value: Any, kind: FieldType) -> tuple[Any, bool]:
    """The value as its column holds it, and whether it did not fit the type."""
    if value is MISSING or value is None:
        return None, False
    if kind == "string":
        return (value if isinstance(value, str) else orjson.dumps(value).decode()), False
    if kind == "json":
        return orjson.dumps(value).decode(), False
    if kind == "bool":
        return (value, False) if isinstance(value, bool) else (None, True)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, True
    if kind == "int":
        whole = float(value).is_integer() and _INT64[0] <= value <= _INT64[1]
        return (int(value), False) if whole else (None, True)
    return float(value), False


def _schema_type(schema: Mapping[str, Any] | None, dotted: str) -> FieldType:
    """A field's column type from the schema's `type` (string unless it says otherwise)."""
    node: Any = schema
    for key in dotted.split("."):
        properties = node.get("properties") if isinstance(node, Mapping) else None
        node = properties.get(key) if isinstance(properties, Mapping) else None
    declared = node.get("type") if isinstance(node, Mapping) else None
    if isinstance(declared, list):
        named = [t for t in declared if t != "null"]
        declared = named[0] if len(named) == 1 else None
    if declared in ("object", "array"):
        return "json"
    return _SCHEMA_TYPES.get(str(declared), "string")


def _label_table(labels: list[str]) -> dict[str, str]:
    table: dict[str, str] = {}
    for label in labels:
        key = normalize(label)
        if not key:
            raise JobError(f"[parse] label {label!r} is empty once punctuation is trimmed.")
        if key in table:
            raise JobError(
                f"[parse] labels {table[key]!r} and {label!r} read the same once case and "
                f"punctuation are ignored: make them distinct."
            )
        table[key] = label
    return table


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise JobError(f"[parse] pattern {pattern!r} is not a valid regex ({exc}).") from None


def _validator(schema: dict[str, Any]) -> Any:
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise JobError(
            f"[request] response_format's JSON schema is not valid ({exc.message}): fix it."
        ) from None
    return cls(schema)


def _first_arguments(tool_calls: str) -> str | None:
    try:
        calls = orjson.loads(tool_calls)
        arguments = calls[0]["function"]["arguments"]
    except (orjson.JSONDecodeError, LookupError, TypeError):
        return None
    return arguments if isinstance(arguments, str) else None


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…")
