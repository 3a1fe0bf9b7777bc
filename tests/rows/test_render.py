"""Rows into request bodies: templates, literal braces, message lists, fingerprints."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from batchrun.config.job import PromptSpec
from batchrun.errors import InputError, JobError
from batchrun.rows.render import Renderer, fingerprint

REQUEST = {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 8, "seed": 7}


def render(renderer: Renderer, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(fingerprint, messages or None, reason) of each row, through the batch renderer."""
    frame = (
        pl.DataFrame(rows, strict=False)
        .with_row_index("pos")
        .with_columns(key=pl.col("pos").cast(pl.String))
    )
    return [
        (fp, renderer.to_messages(payload) if reason is None else None, reason)
        for _, _, fp, payload, reason in renderer.rows(renderer.render_frame(frame, "key", "pos"))
    ]


def test_templates_fill_columns_and_keep_escaped_braces() -> None:
    prompt = PromptSpec(system='Answer as {{"label": ...}}', user="Review of {product}: {text}")
    renderer = Renderer(prompt, REQUEST, ["product", "text", "other"])
    [(_, messages, reason)] = render(
        renderer, [{"product": "Kettle", "text": "Boils fast {really}", "other": 1}]
    )
    assert reason is None
    assert messages == [
        {"role": "system", "content": 'Answer as {"label": ...}'},
        {"role": "user", "content": "Review of Kettle: Boils fast {really}"},
    ]
    assert renderer.columns == ("product", "text")


def test_values_of_any_type_are_rendered_as_text() -> None:
    renderer = Renderer(PromptSpec(user="{n} {x} {ok} {tags}"), REQUEST, ["n", "x", "ok", "tags"])
    [(_, messages, _)] = render(renderer, [{"n": 3, "x": 0.5, "ok": True, "tags": ["a", "b"]}])
    assert messages == [{"role": "user", "content": '3 0.5 true ["a","b"]'}]


def test_a_missing_column_is_an_input_error_naming_it() -> None:
    with pytest.raises(InputError, match="'txt'"):
        Renderer(PromptSpec(user="{txt}"), REQUEST, ["text"])


@pytest.mark.parametrize("template", ["{", "a }", "{text!r}", "{text:>10}", "{}"])
def test_malformed_templates_say_how_to_write_braces(template: str) -> None:
    with pytest.raises(JobError, match=r"\{\{"):
        Renderer(PromptSpec(user=template), REQUEST, ["text"])


def test_null_or_empty_values_make_the_row_invalid() -> None:
    renderer = Renderer(
        PromptSpec(system="Rate {product}", user="Review: {text}"), REQUEST, ["product", "text"]
    )
    rows = [{"product": "p", "text": v} for v in (None, "", "   ", "fine")]
    rows.append({"product": None, "text": "fine"})
    reasons = [reason for _, _, reason in render(renderer, rows)]
    assert reasons == [
        "the column 'text' is empty in this row",
        "the column 'text' is empty in this row",
        "the column 'text' is empty in this row",
        None,
        "the column 'product' is empty in this row",
    ]


def test_messages_column_from_json_text_and_from_structs() -> None:
    renderer = Renderer(PromptSpec(messages_column="m"), REQUEST, ["m"])

    def messages(value: Any) -> Any:
        frame = pl.DataFrame({"key": ["0"], "pos": [0], "m": [value]}, strict=False)
        [(_, _, _, payload, reason)] = renderer.rows(renderer.render_frame(frame, "key", "pos"))
        return payload if reason is None else reason

    text = (
        '[{"role": "user", "content": [{"type": "text", "text": "hi"}, '
        '{"type": "image_url", "image_url": {"url": "data:x"}}]}]'
    )
    assert messages(text)[0]["content"][1]["type"] == "image_url"
    structs = [
        {"role": "system", "content": "s", "name": None},
        {"role": "user", "content": "u", "name": "bob"},
    ]
    assert messages(structs) == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u", "name": "bob"},
    ]
    for bad in ("not json", "[]", '[{"content": "x"}]', '[{"role": "user"}]', "{}"):
        assert isinstance(messages(bad), str)


def test_fingerprints_follow_the_request_not_key_order() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    prompt = PromptSpec(system="S", user="U {text}")
    one = render(Renderer(prompt, REQUEST, ["text"]), [{"text": "x"}, {"text": "y"}])
    again = render(Renderer(prompt, dict(reversed(REQUEST.items())), ["text"]), [{"text": "x"}])
    other = render(Renderer(prompt, {**REQUEST, "seed": 8}, ["text"]), [{"text": "x"}])
    moved = render(Renderer(PromptSpec(user="SU {text}"), REQUEST, ["text"]), [{"text": "x"}])
    assert one[0][0] == again[0][0]
    assert len({one[0][0], one[1][0], other[0][0], moved[0][0]}) == 4


def test_completion_estimate_uses_max_tokens_and_n() -> None:
    renderer = Renderer(PromptSpec(user="{text}"), {**REQUEST, "n": 3}, ["text"])
    assert renderer.completion_estimate == 24
