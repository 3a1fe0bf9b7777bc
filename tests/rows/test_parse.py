"""Parsing answers: label matching, JSON (fenced, schema-checked, fields typed), regex."""

from __future__ import annotations

from typing import Any

import pytest

from batchrun.config.job import ParseSpec
from batchrun.errors import JobError
from batchrun.rows.parse import REASK_PREFIX, Parser, normalize
from batchrun.sim.request import REASK_PREFIX as SIM_REASK_PREFIX

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "schema": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                "confidence": {"type": "number"},
                "votes": {"type": "integer"},
                "flagged": {"type": ["boolean", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["label", "confidence"],
        },
    },
}


def parser(response_format: dict[str, Any] | None = None, **spec: Any) -> Parser:
    return Parser(
        ParseSpec(**spec), {"response_format": response_format} if response_format else {}
    )


LABELS = parser(format="label", labels=["Positive", "negative", "neutral"])
CHINESE = parser(format="label", labels=["正面", "负面", "中性"])


@pytest.mark.parametrize(
    "answer",
    [
        "positive",
        "Positive",
        "  POSITIVE \n",
        "Positive.",
        '"positive"',
        "'Positive'!",
        "**Positive**",
        "Label: Positive",
        "label：positive。",
        'Label: "Positive".',
        "Answer: positive",
        "**Label:** Positive",
        "Ｐｏｓｉｔｉｖｅ",  # full-width letters
    ],
)
def test_label_forgives_case_space_punctuation_quotes_and_a_label_prefix(answer: str) -> None:
    parsed = LABELS.parse(answer)
    assert (parsed.value, parsed.error) == ("Positive", None)  # the label as the job wrote it


@pytest.mark.parametrize(
    "answer", ["正面", "正面。", "「正面」", "标签：正面", "标签: 正面！", " 正面\n"]
)
def test_chinese_labels(answer: str) -> None:
    assert CHINESE.parse(answer).value == "正面"


@pytest.mark.parametrize(
    "answer", ["mixed", "positive-ish", "not positive", "positive or negative", "正面", "pos"]
)
def test_an_answer_outside_the_set_is_null_with_a_parse_error(answer: str) -> None:
    parsed = LABELS.parse(answer)
    assert parsed.value is None
    assert parsed.error is not None and parsed.error.startswith("not one of the labels")
    assert answer in parsed.error


@pytest.mark.parametrize("answer", [None, "", "   "])
def test_no_answer_does_not_parse(answer: str | None) -> None:
    assert LABELS.parse(answer).error == "no answer to parse"


def test_labels_that_read_the_same_are_a_job_error() -> None:
    with pytest.raises(JobError, match="read the same"):
        parser(format="label", labels=["Yes", "yes."])


def test_normalize_keeps_inner_text() -> None:
    assert normalize("  The answer:  very   positive!! ") == "very positive"
    assert normalize("C") == "c"


@pytest.mark.parametrize(
    "answer",
    [
        '{"label": "positive", "confidence": 0.9}',
        '```json\n{"label": "positive", "confidence": 0.9}\n```',
        '```\n{"label": "positive", "confidence": 0.9}\n```',
        '  ```JSON\n{"label": "positive", "confidence": 0.9}```  ',
    ],
)
def test_json_with_or_without_a_code_fence(answer: str) -> None:
    parsed = parser(format="json").parse(answer)
    assert parsed.error is None
    assert parsed.value == '{"label":"positive","confidence":0.9}'
    assert parsed.document == {"label": "positive", "confidence": 0.9}


def test_text_that_is_not_json_says_so() -> None:
    parsed = parser(format="json").parse("Sure! The label is positive.")
    assert parsed.value is None and parsed.error is not None
    assert parsed.error.startswith("not JSON")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ('{"label": "positive"}', "'confidence' is a required property"),
        ('{"label": "great", "confidence": 0.5}', "at label: 'great' is not one of"),
        ('{"label": "positive", "confidence": "high"}', "at confidence: 'high' is not of type"),
    ],
)
def test_json_against_the_request_schema(answer: str, error: str) -> None:
    parsed = parser(SCHEMA, format="json").parse(answer)
    assert parsed.value is None
    assert parsed.error is not None and parsed.error.startswith("does not match the schema")
    assert error in parsed.error


def test_an_invalid_schema_is_a_job_error() -> None:
    bad = {"type": "json_schema", "json_schema": {"schema": {"type": "not-a-type"}}}
    with pytest.raises(JobError, match="JSON schema is not valid"):
        parser(bad, format="json")


def test_fields_take_their_types_from_the_schema() -> None:
    p = parser(SCHEMA, format="json", columns=["label", "confidence", "votes", "flagged", "tags"])
    assert {k: str(v) for k, v in p.columns.items()} == {
        "parsed": "String",
        "parse_error": "String",
        "label": "String",
        "confidence": "Float64",
        "votes": "Int64",
        "flagged": "Boolean",
        "tags": "String",
    }
    answer = '{"label": "negative", "confidence": 1, "votes": 3, "flagged": null, "tags": ["a"]}'
    assert p.field_values(p.parse(answer)) == ["negative", 1.0, 3, None, '["a"]']


def test_fields_without_a_schema_are_typed_by_types_or_kept_as_text() -> None:
    p = parser(format="json", columns=["label", "score", "meta.ok"], types={"score": "float"})
    parsed = p.parse('{"label": "x", "score": 2, "meta": {"ok": true}}')
    assert parsed.error is None
    assert p.field_values(parsed) == ["x", 2.0, "true"]
    wrong = p.parse('{"label": "x", "score": "high", "meta": {"ok": true}}')
    assert wrong.value is None and wrong.error == "field 'score' is not a number: 'high'"
    assert p.field_values(wrong) == ["x", None, "true"]  # the fields that fit still fill in
    missing = p.parse('{"label": "x", "score": 1}')
    assert missing.error == "no field 'meta.ok' in the answer"


def test_json_from_a_tool_call_when_there_is_no_text() -> None:
    calls = (
        '[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\\"a\\": 1}"}}]'
    )
    assert parser(format="json").parse(None, calls).document == {"a": 1}


@pytest.mark.parametrize(
    ("pattern", "answer", "value"),
    [
        (r"Answer:\s*(\d+)", "Reasoning... Answer: 42.", "42"),
        (r"\d+", "about 17 apples", "17"),  # no group: the whole match
        (r"(?i)score\s*=\s*(\w+)", "SCORE = high", "high"),
    ],
)
def test_regex_takes_the_first_group(pattern: str, answer: str, value: str) -> None:
    assert parser(format="regex", pattern=pattern).parse(answer).value == value


def test_regex_without_a_match() -> None:
    parsed = parser(format="regex", pattern=r"Answer:\s*(\d+)").parse("I cannot say.")
    assert parsed.value is None and parsed.error is not None
    assert parsed.error.startswith("no match for the pattern")


def test_a_bad_pattern_is_a_job_error() -> None:
    with pytest.raises(JobError, match="not a valid regex"):
        parser(format="regex", pattern="(unclosed")


def test_the_reask_names_what_is_wanted_and_the_simulator_knows_it() -> None:
    assert SIM_REASK_PREFIX == REASK_PREFIX
    text = LABELS.reask("not one of the labels: 'mixed'")
    assert text.startswith(REASK_PREFIX)
    assert "Positive, negative, neutral" in text and "'mixed'" in text


def test_signs_and_symbols_tell_labels_apart() -> None:
    scale = parser(format="label", labels=["-1", "0", "1"])
    assert [scale.parse(a).value for a in ["-1", "1.", "'0'", "+1", "−1"]] == [
        "-1",
        "1",
        "0",
        None,  # a plus sign is not nothing
        None,  # nor is a minus that is not the label's hyphen-minus
    ]
    languages = parser(format="label", labels=["C", "C#", "C++"])
    assert [languages.parse(a).value for a in ["c#", "C++.", "**C**"]] == ["C#", "C++", "C"]


def test_an_integer_too_large_for_its_column_is_a_parse_error_not_a_crash() -> None:
    p = parser(format="json", columns=["n"], types={"n": "int"})
    parsed = p.parse('{"n": 1e20}')
    assert parsed.value is None and parsed.error == "field 'n' is not a 64-bit integer: 1e+20"
    assert p.field_values(parsed) == [None]
    assert p.field_values(p.parse('{"n": 9223372036854775807}')) == [2**63 - 1]


def test_a_schema_violation_still_fills_the_fields_that_are_fine() -> None:
    p = parser(SCHEMA, format="json", columns=["label", "confidence"])
    parsed = p.parse('{"label": "great", "confidence": 0.5}')
    assert parsed.value is None and parsed.error is not None
    assert p.field_values(parsed) == ["great", 0.5]
