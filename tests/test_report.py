"""The run report's figures against the output rows, its JSON keys, and its HTML page."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

import polars as pl
import pytest

from batchrun import report as report_module
from batchrun.checkpoint import Checkpoint, checkpoint_dir
from batchrun.columns import FINISHED_AT, KEY, RowResult
from batchrun.job import load_job
from batchrun.report import (
    HISTOGRAM_BINS,
    Report,
    build_report,
    render_text,
    report_json,
)
from batchrun.report_html import render_html
from batchrun.sim import SimConfig, start_in_thread

from .conftest import Workspace, reviews

LABEL = "Label the review as positive, negative or neutral."
HOSTILE_MODEL = "<script>alert('model')</script>"
HOSTILE_MESSAGE = 'bad "gateway" <img src=x onerror=alert(1)> & more'
VOID = {"meta", "br", "hr", "img", "input", "link"}


class Page(HTMLParser):
    """The page's tags, checked for nesting, with the attributes that could load a URL."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []  # tags opened and not yet closed, outermost first
        self.tags: list[str] = []  # every start tag, in order
        self.urls: list[str] = []  # src and href values
        self.problems: list[str] = []  # mismatched end tags
        self.rects_per_svg: list[int] = []  # <rect> count of each <svg>, in order

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]
        if tag == "svg":
            self.rects_per_svg.append(0)
        if tag == "rect":
            self.rects_per_svg[-1] += 1
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
            return
        self.open.pop()


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


@pytest.fixture
def rerun(ws: Workspace) -> tuple[Workspace, pl.DataFrame]:
    """A first run of 20 rows, then the whole job with another max_tokens, against faults.

    The second run supersedes the first 20 results (their spend stays), and has retries,
    failures of two classes, answers cut by max_tokens, and streamed rows with ttft.
    """
    frame = reviews(120)
    texts = frame["text"].to_list()
    for i in (30, 61, 95):
        texts[i] += " [[sim:content_filter]]"
    texts[77] += " [[sim:context_length]]"
    # Rows asked to tell a story get long answers, which max_tokens cuts.
    tasks = [LABEL if i % 10 != 4 else "Tell a story about this:" for i in range(120)]
    ws.write_input(frame.with_columns(pl.Series("text", texts), pl.Series("task", tasks)))
    config = SimConfig(
        faults={"server_error": 0.12, "reset": 0.05},
        seed=5,
        latency_ms=20,
        latency_dist="lognormal",
        ttft_ms=5,
    )
    with start_in_thread(config) as sim:
        job = ws.job(
            sim.base_url,
            input={"id_column": "id"},
            prompt={"system": None, "user": "{task}\n{text}"},
            request={"stream": True},
            limits={"max_attempts": 3},
        )
        first = ws.run("run", str(job), "-q", "--limit", "20", "--set", "request.max_tokens=7")
        assert first.code == 0, first.err
        earlier = ws.read_output()
        assert ws.run("run", str(job), "-q").code == 0
        assert len(sim.requests) == earlier["attempts"].sum() + ws.read_output()["attempts"].sum()
    return ws, earlier


def test_figures_match_the_output_rows(rerun: tuple[Workspace, pl.DataFrame]) -> None:
    ws, earlier = rerun
    report = build_report(load_job(ws.root / "job.toml"))
    out = ws.read_output()
    ok = out.filter(pl.col("status") == "ok")
    failed = out.filter(pl.col("status") == "failed")
    assert (report.committed, report.ok, report.failed) == (120, ok.height, failed.height)
    assert failed.height >= 4 and ok.height >= 100
    for kind, total in report.tokens:
        assert total == out[f"{kind}_tokens"].sum()
    assert report.current_spend_usd == pytest.approx(out["cost_usd"].sum())
    assert report.spend_usd == pytest.approx(earlier["cost_usd"].sum() + out["cost_usd"].sum())
    assert report.spend_usd > report.current_spend_usd

    [model] = report.cost_by_model
    answered = out["total_tokens"].is_not_null().sum() + earlier["total_tokens"].is_not_null().sum()
    assert (model.model, model.answers, model.no_price) == ("gpt-4o-mini", answered, 0)
    assert model.cost_usd == pytest.approx(report.spend_usd)

    reasons = out["finish_reason"].drop_nulls().value_counts()
    assert dict(report.finish_reasons) == dict(zip(*reasons.get_columns(), strict=True))
    assert {"stop", "length"} <= set(dict(report.finish_reasons))

    errors = {e.error: e for e in report.errors}
    assert {k: e.rows for k, e in errors.items()} == dict(
        zip(*failed["error"].value_counts().get_columns(), strict=True)
    )
    assert {"content_refused", "context_length"} <= set(errors)
    for error in report.errors:
        messages = failed.filter(pl.col("error") == error.error)["error_message"]
        assert error.example in messages.to_list()

    attempts = out["attempts"]
    assert report.attempts == attempts.sum()
    assert report.rows_retried == (attempts > 1).sum() > 0
    assert report.extra_attempts == (attempts - 1).clip(lower_bound=0).sum() > 0
    assert report.superseded_results == earlier.height == 20
    assert report.requests_sent == earlier["attempts"].sum() + attempts.sum()

    assert report.latency is not None and report.ttft is not None
    for got, values in ((report.latency, ok["latency_s"]), (report.ttft, ok["ttft_s"])):
        cuts = statistics.quantiles(values.to_list(), n=100, method="inclusive")
        assert (got.p50, got.p90, got.p99) == pytest.approx((cuts[49], cuts[89], cuts[98]))

    cut = out.filter(pl.col("finish_reason") == "length")
    assert report.length_rows == cut.height > 0
    assert list(report.length_examples) == cut["id"].head(10).to_list()
    assert report.max_tokens == 8
    assert report.usage_estimated == 0 and report.other_model_rows == 0


def test_throughput_and_histogram_add_up(rerun: tuple[Workspace, pl.DataFrame]) -> None:
    ws, _ = rerun
    report = build_report(load_job(ws.root / "job.toml"))
    segments = [str(s) for s in Checkpoint(checkpoint_dir(ws.output)).segments()]
    finished = pl.read_parquet(segments).group_by(KEY).agg(pl.col(FINISHED_AT).max())
    first, last = finished[FINISHED_AT].min(), finished[FINISHED_AT].max()
    assert (report.first_finished_at, report.last_finished_at) == (first, last)
    assert report.rows_per_s == pytest.approx(120 / (last - first))

    assert report.bucket_s == 1.0  # a run of a few seconds
    assert sum(b.ok for b in report.buckets) == report.ok
    assert sum(b.failed for b in report.buckets) == report.failed
    starts = [b.start for b in report.buckets]
    assert starts == [starts[0] + i for i in range(len(starts))]
    assert starts[0] <= first < starts[0] + 1 and starts[-1] <= last < starts[-1] + 1

    bins = report.histogram
    assert len(bins) == HISTOGRAM_BINS and sum(b.rows for b in bins) == report.ok
    assert all(a.to_s == pytest.approx(b.from_s) for a, b in pairwise(bins))
    assert report.latency is not None
    assert bins[-1].from_s < report.latency.p99 <= bins[-1].to_s


def test_text_report_has_aligned_tables(rerun: tuple[Workspace, pl.DataFrame]) -> None:
    ws, _ = rerun
    text = render_text(build_report(load_job(ws.root / "job.toml")))
    for heading in ("Cost by model", "Finish reasons", "Errors", "Latency (ok rows)"):
        assert f"\n{heading}\n" in text
    assert "content_refused" in text and "context_length" in text
    assert "max_tokens = 8" in text and "Rows finished per 1 s (UTC)" in text
    block = text.split("\nFinish reasons\n")[1].split("\n\n")[0].splitlines()
    assert len({len(line) for line in block}) == 1  # the counts are right-aligned


def test_json_is_serialisable_and_every_key_is_documented(
    rerun: tuple[Workspace, pl.DataFrame],
) -> None:
    ws, _ = rerun
    data = report_json(build_report(load_job(ws.root / "job.toml")))
    again = json.loads(json.dumps(data, allow_nan=False))
    assert again == data
    doc = report_module.__doc__ or ""
    keys = set(data) | {k for v in data.values() if isinstance(v, dict) for k in v}
    keys |= {k for v in data.values() if isinstance(v, list) and v for k in v[0]}
    keys |= set(data["throughput"]["buckets"][0])
    keys -= set(data["finish_reasons"])  # these are the reasons themselves
    assert not [k for k in keys if f'"{k}"' not in doc]
    assert data["retries"]["superseded_results"] == 20
    assert data["length"]["max_tokens"] == 8


def crafted(ws: Workspace) -> tuple[Path, Checkpoint]:
    """A job whose checkpoint is written by hand: hostile names, a rerun, a merge leftover."""
    ws.write_input(reviews(4))
    job = ws.job("sim")
    checkpoint = Checkpoint(checkpoint_dir(ws.output)).open()
    t0 = 1_700_000_003.0
    answer = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    checkpoint.commit(
        [
            RowResult("0", 0, "fp", "failed", 2, t0, error="server_error", error_message="x"),
            RowResult("1", 1, "fp", "ok", 1, t0 + 1, response_model=HOSTILE_MODEL, **answer),
        ]
    )
    checkpoint.commit(
        [
            RowResult("0", 0, "fp", "ok", 1, t0 + 70, cost_usd=0.5, latency_s=0.2, **answer),
            RowResult("2", 2, "fp", "failed", 1, t0 + 149, error="invalid_request"),
            RowResult("3", 3, "fp", "ok", 3, t0 + 150, cost_usd=0.25, latency_s=1.0, **answer),
        ]
    )
    checkpoint.commit(
        [RowResult("2", 2, "fp", "failed", 1, t0 + 140, error="x", error_message=HOSTILE_MESSAGE)]
    )
    # A merge cut short by a kill leaves a merged copy beside the segment it merged.
    [*_, last] = checkpoint.segments()
    shutil.copy(last, last.with_name(last.name.replace(".parquet", ".m.parquet")))
    return job, checkpoint


def test_a_report_during_a_run_counts_each_commit_once(ws: Workspace) -> None:
    job, checkpoint = crafted(ws)
    try:  # the running job holds the checkpoint's lock: the report needs none
        report = build_report(load_job(job))
    finally:
        checkpoint.close()
    assert (report.committed, report.ok, report.failed) == (4, 3, 1)
    assert report.superseded_results == 2
    assert report.spend_usd == report.current_spend_usd == 0.75
    assert report.requests_sent == 2 + 1 + 1 + 1 + 3 + 1
    by_model = {m.model: (m.answers, m.cost_usd, m.no_price) for m in report.cost_by_model}
    assert by_model == {"(unknown)": (2, 0.75, 0), HOSTILE_MODEL: (1, 0.0, 1)}
    assert report.other_model_rows == 1
    assert [(e.error, e.rows, e.example) for e in report.errors] == [("x", 1, HOSTILE_MESSAGE)]
    assert report.bucket_s == 10.0  # a span of 149 s
    assert [b.start % 10 for b in report.buckets] == [0.0] * len(report.buckets)
    assert sum(b.ok + b.failed for b in report.buckets) == 4
    assert report.ttft is None and json.loads(json.dumps(report_json(report)))["ttft_s"] is None


def test_html_page_is_self_contained_and_escapes_gateway_text(ws: Workspace) -> None:
    job, checkpoint = crafted(ws)
    checkpoint.close()
    page = render_html(build_report(load_job(job)))
    parsed = parse(page)
    assert not parsed.problems and not parsed.open
    assert parsed.tags[:4] == ["html", "head", "meta", "title"]
    assert len(parsed.rects_per_svg) == 3  # latency, throughput, cost by model
    assert parsed.rects_per_svg[0] == HISTOGRAM_BINS
    assert all(rects >= 2 for rects in parsed.rects_per_svg)
    assert "<script" not in page and "<img" not in page
    assert html_escaped(HOSTILE_MODEL) in page and html_escaped(HOSTILE_MESSAGE) in page
    assert not parsed.urls
    assert not re.search(r"url\(|@import|https?://", page)


def html_escaped(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


def test_nothing_run_yet_is_a_report_not_an_error(ws: Workspace) -> None:
    ws.write_input(reviews(3))
    report = build_report(load_job(ws.job("sim")))
    assert report == Report("test-job", ws.output.resolve(), "gpt-4o-mini", 8)
    assert "Nothing has run yet" in render_text(report)
    page = render_html(report)
    assert "Nothing has run yet" in page and "<svg" not in page and not parse(page).problems
    data = json.loads(json.dumps(report_json(report)))
    assert data["rows"] == {"committed": 0, "ok": 0, "failed": 0}
    assert data["latency_s"] is None and data["throughput"]["buckets"] == []
