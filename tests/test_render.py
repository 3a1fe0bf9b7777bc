"""Rows into request bodies: templates, literal braces, message lists, fingerprints."""

from __future__ import annotations

import pytest

from batchrun.errors import InputError, JobError
from batchrun.job import PromptSpec
from batchrun.render import Renderer, RowInvalid, fingerprint

REQUEST = {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 8, "seed": 7}


def test_templates_fill_columns_and_keep_escaped_braces() -> None:
    prompt = PromptSpec(system='Answer as {{"label": ...}}', user="Review of {product}: {text}")
    renderer = Renderer(prompt, REQUEST, ["product", "text", "other"])
    body = renderer.body({"product": "Kettle", "text": "Boils fast {really}", "other": 1})
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": 'Answer as {"label": ...}'},
            {"role": "user", "content": "Review of Kettle: Boils fast {really}"},
        ],
        "temperature": 0,
        "max_tokens": 8,
        "seed": 7,
    }
    assert renderer.columns == ("product", "text")


def test_a_missing_column_is_an_input_error_naming_it() -> None:
    with pytest.raises(InputError, match="'txt'"):
        Renderer(PromptSpec(user="{txt}"), REQUEST, ["text"])


@pytest.mark.parametrize("template", ["{", "a }", "{text!r}", "{text:>10}", "{}"])
def test_malformed_templates_say_how_to_write_braces(template: str) -> None:
    with pytest.raises(JobError, match=r"\{\{"):
        Renderer(PromptSpec(user=template), REQUEST, ["text"])


@pytest.mark.parametrize("value", [None, "", "   "])
def test_null_or_empty_values_make_the_row_invalid(value: object) -> None:
    renderer = Renderer(PromptSpec(user="Review: {text}"), REQUEST, ["text"])
    with pytest.raises(RowInvalid, match="'text' is empty"):
        renderer.body({"text": value})


def test_messages_column_from_json_text_and_from_structs() -> None:
    renderer = Renderer(PromptSpec(messages_column="m"), REQUEST, ["m"])
    text = (
        '[{"role": "user", "content": [{"type": "text", "text": "hi"}, '
        '{"type": "image_url", "image_url": {"url": "data:x"}}]}]'
    )
    assert renderer.messages({"m": text})[0]["content"][1]["type"] == "image_url"
    structs = [
        {"role": "system", "content": "s", "name": None},
        {"role": "user", "content": "u", "name": "bob"},
    ]
    assert renderer.messages({"m": structs}) == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u", "name": "bob"},
    ]
    for bad in (None, "not json", "[]", '[{"content": "x"}]', '[{"role": "user"}]'):
        with pytest.raises(RowInvalid):
            renderer.messages({"m": bad})


def test_fingerprints_follow_the_body_not_key_order() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_completion_estimate_uses_max_tokens_and_n() -> None:
    renderer = Renderer(PromptSpec(user="{text}"), {**REQUEST, "n": 3}, ["text"])
    assert renderer.completion_estimate == 24
