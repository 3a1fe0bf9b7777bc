"""Values that satisfy a JSON schema, for `json_schema` answers and tool-call arguments."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

# Property names that hold a label, so a labeling prompt's verdict goes there.
_LABEL_NAMES = frozenset({"label", "sentiment", "category", "class", "classification", "verdict"})
_WORDS = (
    "alpha",
    "beta",
    "gamma",
    "delta",
    "sample",
    "value",
    "result",
    "item",
    "note",
    "detail",
)
# Nesting deeper than this is cut short with an empty value, so recursive schemas end.
_MAX_DEPTH = 8


def fill_schema(schema: Mapping[str, Any], rng: random.Random, label: str | None = None) -> Any:
    """A value valid against `schema`, chosen by `rng`; `label` fills label-like strings."""
    return _Filler(schema, rng, label).value(schema, "", 0)


class _Filler:
    def __init__(self, root: Mapping[str, Any], rng: random.Random, label: str | None) -> None:
        # The whole schema, for resolving "#/..." references.
        self._root = root
        # Chooses every free value, so equal seeds give equal documents.
        self._rng = rng
        # The labeler's verdict, if the prompt asked for one.
        self._label = label

    def value(self, schema: Mapping[str, Any], name: str, depth: int) -> Any:
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._choose(schema["enum"])
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.value(_first_not_null(options), name, depth)
        kind = _type_of(schema)
        if depth > _MAX_DEPTH:
            return {"object": {}, "array": [], "string": ""}.get(kind)
        if kind == "object":
            properties = schema.get("properties")
            if not isinstance(properties, Mapping):
                return {}
            return {key: self.value(sub, key, depth + 1) for key, sub in properties.items()}
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "string":
            return self._string(schema, name)
        if kind == "integer":
            low, high = _bounds(schema, 0, 100)
            return self._rng.randint(int(low), max(int(low), int(high)))
        if kind == "number":
            low, high = _bounds(schema, 0.0, 1.0)
            return round(self._rng.uniform(low, high), 2)
        if kind == "boolean":
            return self._rng.random() < 0.5
        return None

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return schema
        node: Any = self._root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        return node if isinstance(node, Mapping) else {}

    def _choose(self, options: list[Any]) -> Any:
        if self._label is not None and self._label in options:
            return self._label
        return options[self._rng.randrange(len(options))]

    def _array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        low = int(schema.get("minItems", 1))
        high = max(low, int(schema.get("maxItems", max(low, 3))))
        items = schema.get("items")
        item_schema = items if isinstance(items, Mapping) else {"type": "string"}
        count = self._rng.randint(low, high)
        return [self.value(item_schema, name, depth + 1) for _ in range(count)]

    def _string(self, schema: Mapping[str, Any], name: str) -> str:
        if self._label is not None and name.lower() in _LABEL_NAMES:
            return self._label
        fmt = schema.get("format")
        if fmt == "date":
            return f"2024-{self._rng.randint(1, 12):02d}-{self._rng.randint(1, 28):02d}"
        if fmt == "date-time":
            return f"2024-{self._rng.randint(1, 12):02d}-{self._rng.randint(1, 28):02d}T12:00:00Z"
        if fmt == "email":
            return f"{self._rng.choice(_WORDS)}@example.com"
        if fmt in ("uri", "url"):
            return f"https://example.com/{self._rng.choice(_WORDS)}"
        text = " ".join(self._rng.choice(_WORDS) for _ in range(self._rng.randint(1, 4)))
        low = int(schema.get("minLength", 0))
        text = text.ljust(low, "x")
        high = schema.get("maxLength")
        return text[: int(high)] if isinstance(high, int) else text


def _type_of(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _first_not_null(options: list[Any]) -> Mapping[str, Any]:
    for option in options:
        if isinstance(option, Mapping) and option.get("type") != "null":
            return option
    first = options[0]
    return first if isinstance(first, Mapping) else {}


def _bounds(schema: Mapping[str, Any], low: float, high: float) -> tuple[float, float]:
    lower = schema.get("minimum", schema.get("exclusiveMinimum", low))
    upper = schema.get("maximum", schema.get("exclusiveMaximum", max(high, lower)))
    if isinstance(schema.get("exclusiveMinimum"), int | float) and "minimum" not in schema:
        lower += 1 if schema.get("type") == "integer" else 0.01
    if isinstance(schema.get("exclusiveMaximum"), int | float) and "maximum" not in schema:
        upper -= 1 if schema.get("type") == "integer" else 0.01
    return float(lower), float(max(lower, upper))
