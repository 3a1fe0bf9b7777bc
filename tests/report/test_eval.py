"""[parse] and [eval] end to end: through the simulator into the output, and into the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.config.job import EvalSpec, ParseSpec
from batchrun.core.stats import wilson_interval
from batchrun.rows.parse import REASK_PREFIX, Parser
from batchrun.rows.scoring import Scorer
from batchrun.sim import SimConfig, SimServer, start_in_thread

from ..conftest import Workspace

LABELS = ["positive", "negative", "neutral"]
LABEL_PARSE = {"format": "label", "labels": LABELS}
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "schema": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": LABELS},
                "confidence": {"type": "number"},
            },
            "required": ["label", "confidence"],
        },
    },
}


def scorer(name: str, parse: dict[str, Any] | None = None, **spec: Any) -> Scorer:
    parser = Parser(ParseSpec(**parse), {}) if parse else None
    return Scorer(EvalSpec(expected_column="gold", scorer=name, **spec), parser)


def score(s: Scorer, answer: str | None, expected: Any) -> float | None:
    parsed = s.parser.parse(answer) if s.parser is not None else None
    return s.score(answer, parsed, expected)


@pytest.mark.parametrize(
    ("name", "answer", "expected", "want"),
    [
        ("exact", "Paris", "Paris", 1.0),
        ("exact", " Paris\n", "Paris", 1.0),
        ("exact", "paris", "Paris", 0.0),
        ("normalized", "  PARIS. ", "Paris", 1.0),
        ("normalized", "Paris, France", "Paris", 0.0),
        ("contains", "The capital is Paris, of course.", "paris", 1.0),
        ("contains", "The capital is Lyon.", "Paris", 0.0),
        ("regex", "The answer is 42 apples", r"\b42\b", 1.0),
        ("regex", "The answer is 420", r"\b42\b", 0.0),
        ("regex", "anything", "(unclosed", None),  # a bad gold pattern cannot be scored
        ("numeric", "It comes to 1,234.50 dollars", "1234.5", 1.0),
        ("numeric", "-3", -3, 1.0),
        ("numeric", "It comes to 12", "13", 0.0),
        ("numeric", "no number here", "13", 0.0),
        ("numeric", "12", "not a number", None),
        ("exact", "Paris", None, None),  # no expected value: not scored
        ("exact", None, "Paris", None),  # no answer (a failed row): not scored
    ],
)
def test_scorers(name: str, answer: str | None, expected: Any, want: float | None) -> None:
    assert score(scorer(name), answer, expected) == want


@pytest.mark.parametrize(
    ("name", "answer", "expected", "want"),
    [
        ("exact", "1", 1, 1.0),
        ("exact", "1", 1.0, 1.0),  # a pandas int column with a gap arrives as float
        ("exact", "1.5", 1.5, 1.0),
        ("exact", "true", True, 1.0),
        ("normalized", "False.", False, 1.0),
        ("contains", "I give it 5 stars", 5.0, 1.0),
        ("numeric", "3", 3.0, 1.0),
    ],
)
def test_expected_values_that_are_not_text(
    name: str, answer: str, expected: Any, want: float
) -> None:
    assert score(scorer(name), answer, expected) == want


def test_label_scorer_with_numeric_gold_labels() -> None:
    s = scorer("label", {"format": "label", "labels": ["1", "2", "3"]})
    assert score(s, "Label: 2", 2.0) == 1.0 and score(s, "3", 2) == 0.0


def test_numeric_tolerance() -> None:
    assert score(scorer("numeric", tolerance=0.5), "3.4", "3") == 1.0
    assert score(scorer("numeric", tolerance=0.5), "3.6", "3") == 0.0
    assert score(scorer("numeric"), "0.30000000000000004", "0.3") == 1.0  # float noise


def test_label_scorer_compares_parsed_labels() -> None:
    s = scorer("label", LABEL_PARSE)
    assert score(s, 'Label: "Positive".', "positive") == 1.0
    assert score(s, "negative", "Positive") == 0.0
    assert score(s, "negative", " NEGATIVE ") == 1.0  # the gold is matched to the set too
    assert score(s, "mixed", "positive") == 0.0  # an answer that does not parse is wrong


def test_json_field_scorer() -> None:
    s = scorer("json_field", {"format": "json"}, field="verdict.label")
    assert score(s, '{"verdict": {"label": "Positive"}}', "positive") == 1.0
    assert score(s, '{"verdict": {"label": "negative"}}', "positive") == 0.0
    assert score(s, '{"verdict": {}}', "positive") == 0.0
    assert score(s, "not json", "positive") == 0.0
    n = scorer("json_field", {"format": "json"}, field="n", tolerance=0.01)
    assert score(n, '{"n": 2.005}', "2") == 1.0
    assert score(n, '{"n": true}', "true") == 1.0


# -- through the simulator --------------------------------------------------------------------


def gold_reviews(markers: dict[int, str], n: int = 24) -> pl.DataFrame:
    """Reviews whose gold label is what the simulator answers, some with a forced fault."""
    kinds = [("I love it, works great", "positive"), ("Broken on arrival, terrible", "negative")]
    rows = []
    for i in range(n):
        text, gold = kinds[i % 2]
        marker = f" [[sim:{markers[i]}]]" if i in markers else ""
        rows.append({"id": f"r{i:03d}", "text": f"{text} #{i}{marker}", "gold": gold})
    frame = pl.DataFrame(rows)
    return frame.with_columns(
        lang=pl.when(pl.int_range(n) < n // 3).then(pl.lit("zh")).otherwise(pl.lit("en"))
    )


def label_job(ws: Workspace, sim: SimServer, frame: pl.DataFrame, **sections: Any) -> None:
    ws.write_input(frame)
    sections.setdefault("parse", {**LABEL_PARSE})
    ws.job(
        sim.base_url,
        input={"path": "input.parquet", "id_column": "id"},
        prompt={
            "system": "Label the review as positive, negative or neutral. One word.",
            "user": "Review: {text}",
        },
        **sections,
    )


def test_a_label_job_parses_forgivable_answers_and_flags_the_rest(
    ws: Workspace, sim: SimServer
) -> None:
    markers = {1: "chatty", 2: "chatty", 5: "off_format", 8: "off_format"}
    label_job(ws, sim, gold_reviews(markers), eval={"expected_column": "gold", "scorer": "label"})
    result = ws.run("run", str(ws.root / "job.toml"), "-q")
    assert result.code == 0
    # The run's summary says how it went: 22 of 24 right (the two off-format answers wrong).
    assert "unparsed answers: 2 (see parse_error); accuracy 91.7% (" in result.out
    out = ws.read_output().sort("id")
    assert out.columns[-3:] == ["parsed", "parse_error", "score"]
    assert out.schema["score"] == pl.Float64
    chatty = out.filter(pl.col("id").is_in(["r001", "r002"]))
    assert chatty["response"].to_list() == ['Label: "Negative".', 'Label: "Positive".']
    assert chatty["parsed"].to_list() == ["negative", "positive"]
    off = out.filter(pl.col("id").is_in(["r005", "r008"]))
    assert off["parsed"].to_list() == [None, None]
    assert all(e.startswith("not one of the labels") for e in off["parse_error"])
    assert off["score"].to_list() == [0.0, 0.0]
    assert set(off["status"]) == {"ok"}  # a parse error does not fail the row
    assert off["attempts"].to_list() == [1, 1]  # no retry_invalid: asked once
    rest = out.filter(~pl.col("id").is_in(["r005", "r008"]))
    assert rest["parse_error"].null_count() == rest.height
    assert rest["score"].to_list() == [1.0] * rest.height


def test_retry_invalid_asks_again_with_the_reason_and_counts_attempts_and_cost(
    ws: Workspace,
) -> None:
    frame = gold_reviews({3: "off_format"}, n=6)
    with start_in_thread(SimConfig()) as sim:
        label_job(ws, sim, frame, parse={**LABEL_PARSE, "retry_invalid": 0})
        assert ws.run("run", str(ws.root / "job.toml"), "-q").code == 0
        once = ws.read_output().sort("id").row(3, named=True)
    with start_in_thread(SimConfig()) as sim:
        label_job(ws, sim, frame, parse={**LABEL_PARSE, "retry_invalid": 2})
        assert ws.run("run", str(ws.root / "job.toml"), "-q", "--fresh").code == 0
        bodies = [r.body for r in sim.requests if r.body and "#3 [[sim" in str(r.body)]
    row = ws.read_output().sort("id").row(3, named=True)
    # Asked three times; the marker forces every answer off the label set, so it is kept.
    assert row["attempts"] == 3 and row["status"] == "ok"
    assert row["parsed"] is None and row["parse_error"].startswith("not one of the labels")
    assert len(bodies) == 3
    first, second, third = (b["messages"] for b in bodies)
    assert second[: len(first)] == first
    assert second[-2]["role"] == "assistant" and second[-2]["content"] == once["response"]
    assert second[-1]["content"].startswith(REASK_PREFIX)
    assert "positive, negative, neutral" in second[-1]["content"]
    assert len(third) == len(second) + 2
    # Every answer was paid for: tokens and cost add up over the three.
    assert row["prompt_tokens"] > 3 * once["prompt_tokens"]
    assert row["completion_tokens"] == 3 * once["completion_tokens"]
    cached = row["cached_tokens"]
    expected_cost = (
        (row["prompt_tokens"] - cached) * 0.15 + cached * 0.075 + row["completion_tokens"] * 0.6
    ) / 1e6
    assert row["cost_usd"] == pytest.approx(expected_cost)
    assert row["cost_usd"] > 3 * once["cost_usd"]
    report = json.loads(ws.run("report", str(ws.root / "job.toml"), "--json").out)
    assert report["spend_usd"]["current"] == pytest.approx(ws.read_output()["cost_usd"].sum())


def test_retry_invalid_fixes_answers_that_come_out_right_the_next_time(ws: Workspace) -> None:
    with start_in_thread(SimConfig(faults={"off_format": 0.4}, seed=3)) as sim:
        label_job(
            ws,
            sim,
            gold_reviews({}, n=40),
            parse={**LABEL_PARSE, "retry_invalid": 3},
            limits={"concurrency": 1},
        )
        assert ws.run("run", str(ws.root / "job.toml"), "-q").code == 0
        sent = len(sim.requests)
    out = ws.read_output()
    fixed = out.filter(pl.col("attempts") > 1, pl.col("parsed").is_not_null())
    assert fixed.height > 0  # rows whose first answer was off and a later one was not
    kept = out.filter(pl.col("parsed").is_null())
    assert kept["attempts"].to_list() == [4] * kept.height  # 1 + retry_invalid, then kept
    assert out["attempts"].sum() == sent  # every request sent is counted once


def test_a_json_job_with_a_schema_validates_and_expands_typed_columns(
    ws: Workspace, sim: SimServer
) -> None:
    markers = {0: "chatty", 4: "off_format", 6: "bad_json"}
    label_job(
        ws,
        sim,
        gold_reviews(markers, n=10),
        request={"response_format": SCHEMA, "max_tokens": 60},
        parse={"format": "json", "columns": ["label", "confidence"]},
        eval={"expected_column": "gold", "scorer": "json_field", "field": "label"},
    )
    assert ws.run("run", str(ws.root / "job.toml"), "-q").code == 0
    out = ws.read_output().sort("id")
    assert out.schema["label"] == pl.String and out.schema["confidence"] == pl.Float64
    fenced = out.row(0, named=True)
    assert fenced["response"].startswith("```json")  # fenced, and parsed all the same
    assert fenced["parse_error"] is None and fenced["label"] == "positive"
    broken = out.row(4, named=True)
    assert broken["parsed"] is None and broken["score"] == 0.0
    assert broken["parse_error"].startswith("does not match the schema")
    assert "required property" in broken["parse_error"]
    good = out.filter(pl.col("parse_error").is_null())
    assert good.height == 9  # fenced and bad_json-fenced answers parse; the schema break not
    assert good["confidence"].null_count() == 0
    assert good["score"].to_list() == [1.0] * 9


def test_a_regex_job(ws: Workspace, sim: SimServer) -> None:
    label_job(
        ws,
        sim,
        gold_reviews({0: "chatty", 1: "chatty"}, n=4),
        parse={"format": "regex", "pattern": r'Label:\s*"?(\w+)'},
        eval={"expected_column": "gold", "scorer": "normalized"},
    )
    assert ws.run("run", str(ws.root / "job.toml"), "-q").code == 0
    out = ws.read_output().sort("id")
    assert out["parsed"].to_list() == ["Positive", "Negative", None, None]
    assert out["score"].to_list() == [1.0, 1.0, 0.0, 0.0]


def test_changing_parse_or_eval_rescores_without_sending_again(
    ws: Workspace, sim: SimServer
) -> None:
    label_job(ws, sim, gold_reviews({}, n=12), eval={"expected_column": "gold", "scorer": "exact"})
    job = str(ws.root / "job.toml")
    assert ws.run("run", job, "-q").code == 0
    sent = len(sim.requests)
    assert ws.read_output()["score"].to_list() == [1.0] * 12
    again = ws.run("run", job, "-q", "--set", "eval.expected_column=text")
    assert again.code == 0 and "this run 0 rows" in again.out
    assert len(sim.requests) == sent
    assert ws.read_output()["score"].to_list() == [0.0] * 12


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"eval": {"expected_column": "nope"}}, "[eval] names the column 'nope'"),
        ({"eval": {"expected_column": "gold", "group_by": "nope"}}, "column 'nope'"),
        ({"parse": None, "eval": {"expected_column": "gold", "scorer": "label"}}, "needs [parse]"),
        ({"parse": {"format": "label"}}, "needs labels"),
        ({"parse": {"format": "json", "columns": ["gold"]}}, "already has a column named 'gold'"),
        ({"parse": {"format": "json", "columns": ["status"]}}, "batchrun writes already"),
        ({"parse": {"format": "regex", "pattern": "("}}, "not a valid regex"),
        ({"parse": {**LABEL_PARSE, "retry_invalid": 11}}, "retry_invalid"),
    ],
)
def test_mistakes_in_parse_and_eval_stop_before_sending(
    ws: Workspace, sim: SimServer, sections: dict[str, Any], message: str
) -> None:
    label_job(ws, sim, gold_reviews({}, n=3), **sections)
    result = ws.run("run", str(ws.root / "job.toml"), "-q")
    assert result.code == 2, result.err
    assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert sim.requests == []


def test_report_shows_accuracy_with_its_interval_by_group_and_the_confusion_matrix(
    ws: Workspace, sim: SimServer
) -> None:
    frame = gold_reviews({5: "off_format", 9: "off_format"}, n=30)
    # Two gold labels the simulator will not give: wrong answers to count.
    frame = frame.with_columns(
        gold=pl.when(pl.col("id").is_in(["r000", "r001"])).then(pl.lit("neutral")).otherwise("gold")
    )
    label_job(
        ws, sim, frame, eval={"expected_column": "gold", "scorer": "label", "group_by": "lang"}
    )
    job = str(ws.root / "job.toml")
    assert ws.run("run", job, "-q").code == 0
    out = ws.read_output()
    report = json.loads(ws.run("report", job, "--json").out)["evaluation"]
    right = out["score"].sum()
    assert right == 26  # 30 less two off-format answers, less two gold labels changed
    low, high = wilson_interval(26, 30)
    assert report["accuracy"] == {
        "scored": 30,
        "correct": 26.0,
        "accuracy": pytest.approx(26 / 30),
        "low": pytest.approx(low),
        "high": pytest.approx(high),
    }
    assert 0.70 < low < 0.71 and 0.94 < high < 0.95  # Wilson, not Wald (which gives 0.75–0.99)
    assert report["parse"]["parsed"] == 28
    assert report["parse"]["errors"] == [{"error": "not one of the labels", "rows": 2}]
    groups = {g["value"]: g for g in report["groups"]}
    by_lang = out.group_by("lang").agg(pl.col("score").sum(), pl.len())
    for lang, total, rows in by_lang.iter_rows():
        assert groups[lang]["correct"] == total and groups[lang]["scored"] == rows
    confusion = report["confusion"]
    assert confusion["expected"] == LABELS
    assert confusion["answered"] == [*LABELS, "(unparsed)"]
    counts = dict(zip(confusion["expected"], confusion["counts"], strict=True))
    assert sum(map(sum, confusion["counts"])) == 30
    assert counts["neutral"][2] == 0 and sum(counts["neutral"]) == 2  # both answered otherwise
    assert counts["positive"][3] + counts["negative"][3] == 2  # the unparsed answers
    text = ws.run("report", job, "--html", str(ws.root / "r.html")).out
    assert "accuracy (label against gold)" in text and "86.7%" in text
    assert "Confusion matrix" in text and "Accuracy by group" in text
    page = (ws.root / "r.html").read_text()
    assert 'aria-label="Confusion matrix: gold (rows)' in page


# -- the sample jobs docs/evaluation.md and docs/compare.md walk through ---------------------------

REPO = Path(__file__).resolve().parents[2]


def test_the_sample_labeling_job(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "label.parquet"
    job = str(REPO / "jobs" / "label-reviews.toml")
    result = ws.run("run", job, "-q", "--set", f"output.path={out}", "--set", "sim.latency_ms=0")
    assert result.code == 0, result.err
    frame = pl.read_parquet(out)
    assert frame.height == 300 and frame.schema["confidence"] == pl.Float64
    assert set(frame["label"].drop_nulls()) == set(LABELS)
    assert frame["parse_error"].null_count() >= 295  # re-asked answers mostly come out right
    assert frame.filter(pl.col("attempts") > 1).height > 0


def test_the_sample_evaluation_job_gives_the_figures_the_docs_quote(
    ws: Workspace, tmp_path: Path
) -> None:
    out = tmp_path / "eval.parquet"
    job = str(REPO / "jobs" / "eval-reviews.toml")
    sets = ["--set", f"output.path={out}", "--set", "sim.latency_ms=0"]
    assert ws.run("run", job, "-q", *sets).code == 0
    text = ws.run("report", job, *sets).out
    page = (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")
    quoted = page.split("The evaluation's report reads, in part:")[1].split("```")[1]
    for line in quoted.strip().splitlines():
        assert line in text, line


def test_the_sample_comparison_gives_the_figures_the_docs_quote(
    ws: Workspace, tmp_path: Path
) -> None:
    job = str(REPO / "jobs" / "eval-reviews.toml")
    outputs = []
    for model in ("gpt-4o-mini", "gpt-4.1-mini"):
        out = tmp_path / f"{model}.parquet"
        sets = ["--set", f"output.path={out}", "--set", f"request.model={model}"]
        assert ws.run("run", job, "-q", "--set", "sim.latency_ms=0", *sets).code == 0
        outputs.append(str(out))
    text = ws.run("compare", *outputs).out
    page = (REPO / "docs" / "compare.md").read_text(encoding="utf-8")
    quoted = page.split("# Comparing two runs")[1].split("```\n")[2]
    for line in quoted.strip().splitlines():
        if "latency" not in line and line.strip() != "...":  # timings differ run to run
            assert line in text, line


def test_asking_again_never_loses_an_answer_that_was_paid_for(ws: Workspace) -> None:
    # Server errors and off-format answers at random, one attempt per request: a follow-up
    # that fails must leave the row with the answer it had, and what that answer cost.
    with start_in_thread(SimConfig(faults={"server_error": 0.3, "off_format": 0.5}, seed=7)) as sim:
        label_job(
            ws,
            sim,
            gold_reviews({}, n=40),
            parse={**LABEL_PARSE, "retry_invalid": 3},
            limits={"concurrency": 1, "max_attempts": 1},
        )
        assert ws.run("run", str(ws.root / "job.toml"), "-q").code == 0
    out = ws.read_output()
    asked_again = out.filter(pl.col("attempts") > 1)
    assert asked_again.height > 5
    assert set(asked_again["status"]) == {"ok"}  # never turned into a failure
    assert asked_again["response"].null_count() == 0 and asked_again["cost_usd"].min() > 0
    # Kept after a failed follow-up: an off-format answer, with its parse error.
    kept = asked_again.filter(pl.col("parse_error").is_not_null())
    assert kept.height > 0 and set(kept["response"]) == {"Mixed, I would say."}
    failed = out.filter(pl.col("status") == "failed")
    assert failed["attempts"].to_list() == [1] * failed.height  # no answer was ever had
    assert out.filter(pl.col("status") == "ok")["cost_usd"].null_count() == 0


def test_a_stop_while_asking_again_keeps_the_answer_in_hand(ws: Workspace) -> None:
    from batchrun.config.job import load_job
    from batchrun.config.pricing import job_pricer

    frame = gold_reviews({0: "off_format"}, n=1)
    with start_in_thread(SimConfig()) as sim:
        label_job(ws, sim, frame, parse={**LABEL_PARSE, "retry_invalid": 0})
        job = str(ws.root / "job.toml")
        assert ws.run("run", job, "-q").code == 0
        once = ws.read_output().row(0, named=True)
        # A budget that lets the first request go, and not the longer follow-up.
        worst = job_pricer(load_job(job)).worst_case(once["prompt_tokens"], 8)
        assert worst is not None
        budget = ["--set", f"cost.budget_usd={worst * 1.0001}"]
        again = ws.run("run", job, "-q", "--fresh", "--set", "parse.retry_invalid=2", *budget)
        sent = len(sim.requests)
    assert again.code == 3 and "budget" in again.err
    assert sent == 2  # the first run's request, and this run's first
    row = ws.read_output().row(0, named=True)
    assert (row["status"], row["attempts"], row["response"]) == ("ok", 1, once["response"])
    assert row["parse_error"] is not None and row["cost_usd"] == pytest.approx(once["cost_usd"])
    status = json.loads(ws.run("status", job, "--json", *budget).out)
    assert status["pending"] == 0 and status["spend_usd"] == pytest.approx(once["cost_usd"])


def test_the_report_stands_when_the_input_has_moved(ws: Workspace, sim: SimServer) -> None:
    label_job(ws, sim, gold_reviews({}, n=4), eval={"expected_column": "gold"})
    job = str(ws.root / "job.toml")
    assert ws.run("run", job, "-q").code == 0
    (ws.root / "input.parquet").rename(ws.root / "moved.parquet")
    result = ws.run("report", job)
    assert result.code == 0, result.err
    evaluation = [line for line in result.out.splitlines() if line.startswith("evaluation")]
    assert len(evaluation) == 1 and "not available:" in evaluation[0]
    assert "4 committed, 4 ok" in result.out
    report = json.loads(ws.run("report", job, "--json").out)
    assert "does not exist" in report["evaluation"]["unavailable"]
