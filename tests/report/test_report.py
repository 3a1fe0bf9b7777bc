"""The run report's figures against the output rows, its JSON keys, and its HTML page."""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from collections import Counter
from dataclasses import asdict, replace
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from batchrun.checkpoint.batches import Intent, Ledger
from batchrun.checkpoint.folder import Checkpoint, checkpoint_dir
from batchrun.checkpoint.segments import segment_name, write_segment
from batchrun.checkpoint.walk import WINDOW, merge_segments
from batchrun.config.job import load_job
from batchrun.core import quantiles, sizes
from batchrun.core.stats import Accuracy
from batchrun.protocol.result import FINISHED_AT, KEY, POSITION, RowResult
from batchrun.report import figures as report_module
from batchrun.report.figures import (
    HISTOGRAM_BINS,
    TOKEN_KINDS,
    BatchLaneFigures,
    Bin,
    Bucket,
    ErrorClass,
    ModelCost,
    Percentiles,
    Report,
    build_report,
    report_json,
)
from batchrun.report.html import render_html
from batchrun.report.text import render_text
from batchrun.rows.scoring import job_annotator
from batchrun.sim import SimConfig, start_in_thread

from ..conftest import Workspace, merge_all, reviews

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
    # A merge cut short by a kill leaves the merged segment beside the segments it merged.
    [_, second, third] = checkpoint.segments()
    write_segment(
        checkpoint.folder / segment_name(2, 3),
        lambda writer: merge_segments([second, third], writer),
    )
    assert len(list(checkpoint.folder.glob("seg-*.parquet"))) == 4
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


def test_the_batch_lane_figures_come_from_its_ledger(ws: Workspace) -> None:
    ws.write_input(reviews(9))
    job = load_job(ws.job("sim"))
    ledger = Ledger(checkpoint_dir(ws.output))
    t0 = 1_700_000_000.0

    def intent(key: str, rows: int, **fields: object) -> Intent:
        return ledger.record(Intent(key, "openai-batch", rows, 100, 50, 0.0, t0), **fields)

    collected = {"failed": 0, "pending": {}, "already": 0, "late_cost": 0.0}
    intent(  # answered, one line left pending for a server error
        "a",
        4,
        batch_id="batch_a",
        submitted_at=t0,
        finished_at=t0 + 60,
        collected_at=t0 + 61,
        collected={**collected, "ok": 3, "pending": {"server_error": 1}, "cost": 0.25},
    )
    intent(  # refused once for the token limit, then handed over, then answered: paid twice
        "b",
        2,
        batch_id="batch_b",
        refused=["batch_r"],
        submitted_at=t0 + 10,
        finished_at=t0 + 310,
        handed_over_at=t0 + 200,
        collected_at=t0 + 311,
        collected={**collected, "ok": 0, "already": 2, "cost": 0.0, "late_cost": 0.1},
    )
    intent("c", 3, batch_id="batch_c", status="in_progress", submitted_at=t0 + 20)
    report = build_report(job)
    assert report.batch_lane == BatchLaneFigures(
        endpoint="openai-batch",
        files=3,
        batches=4,
        rows=9,
        ok=3,
        failed=0,
        pending=(("server_error", 1),),
        in_flight_files=1,
        in_flight_rows=3,
        handed_over_rows=2,
        answer_p50_s=180.0,
        answer_max_s=300.0,
        cost_usd=0.25,
        paid_twice_usd=0.1,
    )
    text = render_text(report)  # nothing committed yet, and still the lane's figures
    assert "Nothing has run yet" in text and "\nBatch lane at openai-batch\n" in text
    assert "3 rows, 1 files" in text and "$0.100000" in text and "server_error" in text
    page = render_html(report)
    assert "Batch lane at openai-batch" in page and not parse(page).problems
    lane = json.loads(json.dumps(report_json(report)))["batch_lane"]
    assert lane["in_flight"] == {"files": 1, "rows": 3} and lane["pending"] == {"server_error": 1}
    assert lane["submission_to_answer_s"] == {"p50": 180.0, "max": 300.0}
    doc = report_module.__doc__ or ""
    keys = {*lane, *lane["in_flight"], *lane["submission_to_answer_s"]}
    assert not [k for k in keys if f'"{k}"' not in doc]


# -- the streaming passes against the figures computed in memory ------------------------------


def old_report(job: Path, segments: list[Path]) -> Report:
    """The report as batchrun built it before it streamed: every committed result in memory
    and a hash table of every key (the oracle). Error examples are the first in position
    order, as the streaming report defines them."""
    head = build_report_heading(job)
    every = pl.read_parquet(segments)
    current = every.unique(subset=KEY, keep="last", maintain_order=True).sort(POSITION)
    ok = pl.col("status") == "ok"
    attempts = pl.col("attempts").cast(pl.Int64)
    model = pl.col("response_model")
    stats: dict[str, pl.Expr] = {}
    for name in ("latency", "ttft"):
        values = pl.col(f"{name}_s").filter(ok)
        stats[f"{name}_min"], stats[f"{name}_max"] = values.min(), values.max()
        for q in (50, 90, 99):
            stats[f"{name}_p{q}"] = values.quantile(q / 100, "linear")
    t = current.select(
        rows=pl.len(),
        ok=ok.sum(),
        failed=(pl.col("status") == "failed").sum(),
        spend=pl.col("cost_usd").sum(),
        attempts=attempts.sum(),
        rows_retried=(attempts > 1).sum(),
        extra_attempts=(attempts - 1).clip(lower_bound=0).sum(),
        length=(pl.col("finish_reason") == "length").sum(),
        estimated=pl.col("usage_estimated").sum(),
        other_model=(model.is_not_null() & (model != head.requested_model)).sum(),
        first=pl.col(FINISHED_AT).min(),
        last=pl.col(FINISHED_AT).max(),
        **{f"{kind}_tokens": pl.col(f"{kind}_tokens").sum() for kind in TOKEN_KINDS},
        **stats,
    ).row(0, named=True)
    models = (
        every.filter(pl.col("total_tokens").is_not_null())
        .group_by(model=model.fill_null("(unknown)"))
        .agg(
            answers=pl.len(),
            cost_usd=pl.col("cost_usd").sum(),
            no_price=pl.col("cost_usd").is_null().sum(),
        )
        .sort(["cost_usd", "answers", "model"], descending=[True, True, False])
    )
    reasons = (
        current.filter(pl.col("finish_reason").is_not_null())
        .group_by("finish_reason")
        .agg(rows=pl.len())
        .sort(["rows", "finish_reason"], descending=[True, False])
    )
    errors = (
        current.filter(pl.col("status") == "failed")
        .group_by(error=pl.col("error").fill_null("(unknown)"), maintain_order=True)
        .agg(rows=pl.len(), example=pl.col("error_message").drop_nulls().first())
        .sort(["rows", "error"], descending=[True, False])
    )
    length = current.filter(pl.col("finish_reason") == "length").sort(POSITION).head(10)
    latency = Percentiles(t["latency_p50"], t["latency_p90"], t["latency_p99"])
    ttft = Percentiles(t["ttft_p50"], t["ttft_p90"], t["ttft_p99"])
    # The histogram and the buckets.
    lo, hi = t["latency_min"], t["latency_p99"]
    width = (hi - lo) / HISTOGRAM_BINS
    index = ((pl.col("latency_s") - lo) / (width or 1.0)).floor().cast(pl.Int64)
    per_bin = dict(
        current.filter(ok & pl.col("latency_s").is_not_null())
        .group_by(bin=index.clip(0, HISTOGRAM_BINS - 1))
        .agg(rows=pl.len())
        .iter_rows()
    )
    edges = [lo + i * width for i in range(HISTOGRAM_BINS)] + [t["latency_max"]]
    histogram = tuple(Bin(edges[i], edges[i + 1], per_bin.get(i, 0)) for i in range(HISTOGRAM_BINS))
    size = next(float(s) for s in (1, 10, 60, 600, 3600) if (t["last"] - t["first"]) / s < 60)
    origin = math.floor(t["first"] / size) * size
    bucket = ((pl.col(FINISHED_AT) - origin) / size).floor().cast(pl.Int64)
    per_bucket = {
        i: (a, b)
        for i, a, b in current.group_by(bucket=bucket)
        .agg(ok=ok.sum(), failed=(pl.col("status") == "failed").sum())
        .iter_rows()
    }
    count = int((t["last"] - origin) // size) + 1
    buckets = tuple(Bucket(origin + i * size, *per_bucket.get(i, (0, 0))) for i in range(count))
    return replace(
        head,
        committed=t["rows"],
        ok=t["ok"],
        failed=t["failed"],
        tokens=tuple((kind, int(t[f"{kind}_tokens"])) for kind in TOKEN_KINDS),
        spend_usd=round(every["cost_usd"].sum(), 10),
        current_spend_usd=round(t["spend"], 10),
        cost_by_model=tuple(
            ModelCost(**{**row, "cost_usd": round(row["cost_usd"], 10)})
            for row in models.iter_rows(named=True)
        ),
        finish_reasons=tuple(reasons.iter_rows()),
        errors=tuple(ErrorClass(**row) for row in errors.iter_rows(named=True)),
        attempts=t["attempts"],
        rows_retried=t["rows_retried"],
        extra_attempts=t["extra_attempts"],
        superseded_results=every.height - current.height,
        requests_sent=int(every["attempts"].cast(pl.Int64).sum()),
        latency=latency,
        ttft=ttft,
        histogram=histogram,
        first_finished_at=t["first"],
        last_finished_at=t["last"],
        rows_per_s=t["rows"] / (t["last"] - t["first"]),
        bucket_s=size,
        buckets=buckets,
        length_rows=t["length"],
        length_examples=tuple(length[KEY].to_list()),
        usage_estimated=t["estimated"],
        other_model_rows=t["other_model"],
    )


def build_report_heading(job: Path) -> Report:
    loaded = load_job(job)
    return Report(loaded.name, loaded.output_path, str(loaded.request["model"]), 8)


def random_result(rng: random.Random, key: str, position: int, t0: float) -> RowResult:
    """A committed result of any kind: ok or failed, with or without usage, price, ttft."""
    finished = t0 + rng.uniform(0, 900)
    attempts = rng.choice([1, 1, 1, 2, 3])
    if rng.random() < 0.15:
        return RowResult(
            key,
            position,
            "fp",
            "failed",
            attempts,
            finished,
            error=rng.choice(["server_error", "content_refused", None]),
            error_message=rng.choice([None, f"message {rng.randrange(50)}"]),
        )
    prompt, completion = rng.randrange(5, 50), rng.randrange(1, 20)
    return RowResult(
        key,
        position,
        "fp",
        "ok",
        attempts,
        finished,
        response="positive",
        finish_reason=rng.choice(["stop", "stop", "length", None]),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion if rng.random() < 0.9 else None,
        cached_tokens=rng.choice([None, 0, 3]),
        reasoning_tokens=rng.choice([None, 2]),
        # Multiples of 1/1024, which add up exactly in any order.
        cost_usd=rng.randrange(1, 200) / 1024 if rng.random() < 0.9 else None,
        latency_s=round(rng.lognormvariate(-1.5, 0.8), rng.choice([2, 6]))
        if rng.random() < 0.95
        else None,
        ttft_s=rng.uniform(0.01, 0.2) if rng.random() < 0.6 else None,
        response_model=rng.choice(["gpt-4o-mini", "gpt-4o-mini", "gpt-4.1-mini", None]),
        usage_estimated=rng.choice([None, False, True]),
    )


@pytest.fixture
def small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row groups, batches and sorted bins far smaller than the data, so that every pass
    takes many reads and the percentiles take several passes."""
    monkeypatch.setattr(sizes, "ROW_GROUP_ROWS", 97)  # of a merged segment and of a commit
    monkeypatch.setattr(sizes, "TALLY_ROWS", 500)
    monkeypatch.setattr(quantiles, "COLLECT", 40)


def test_streamed_figures_equal_those_computed_in_memory(
    ws: Workspace, small_reads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4,000 rows spread over positions from -9,000 (rows gone from the input) to 250,000:
    # four windows of the walk; five commits, the first three merged, rows retried in each.
    ws.write_input(reviews(4))
    job = ws.job("sim")
    rng = random.Random(11)
    rows = [(f"k{i:05d}", (i - 150) * 61) for i in range(4000)]
    t0 = 1_700_000_000.0
    with Checkpoint(checkpoint_dir(ws.output)).open() as checkpoint:
        for commit in range(5):
            chosen = [row for row in rows if commit == 0 or rng.random() < 0.3]
            checkpoint.commit(random_result(rng, key, pos, t0) for key, pos in chosen)
            if commit == 2:
                merge_all(checkpoint)
        segments = checkpoint.segments()
    assert len(segments) == 3 and min(p for _, p in rows) < 0 < WINDOW * 3 < max(p for _, p in rows)

    passes: Counter[int] = Counter()  # passes per Quantiles object
    end_pass = quantiles.Quantiles.end_pass

    def counted(self: quantiles.Quantiles) -> None:
        passes[id(self)] += 1
        end_pass(self)

    monkeypatch.setattr(quantiles.Quantiles, "end_pass", counted)
    report = build_report(load_job(job))
    expected = old_report(job, segments)
    assert asdict(report) == asdict(expected)
    # What the test is about: many windows and row groups, percentiles found in passes.
    with Checkpoint(checkpoint_dir(ws.output)).walk() as walked:
        assert len(list(walked.windows())) >= 4
    assert all(pq.ParquetFile(path).num_row_groups >= 10 for path in segments)
    assert len(passes) == 2 and min(passes.values()) >= 3  # latency and ttft
    assert report.superseded_results > 1000 and report.failed > 300 and report.length_rows > 10
    assert len(report.errors) == 3 and len(report.cost_by_model) == 3


@pytest.mark.parametrize("seed", range(6))
def test_quantiles_equal_polars_to_the_bit(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    n = 5000
    values = [
        rng.lognormal(-2, 1, n),  # spread out
        np.round(rng.random(n) * 2, 2),  # many ties
        np.full(n, 0.125),  # one value
        rng.normal(0, 1, n),  # negative values too
        rng.integers(0, 3, n) * 1e-300,  # tiny values, next to zero
        np.concatenate([rng.random(n - 1), [np.inf]]),
    ][seed]
    column = pl.Series(
        "x", [None if rng.random() < 0.1 else float(v) for v in values], dtype=pl.Float64
    )
    asked = (0.5, 0.9, 0.99, 0.0, 1.0)
    want = tuple(pl.select(column.quantile(q, "linear")).item() for q in asked)
    for collect in (0, 7, 10**6):  # never collected, collected late, collected at once
        monkeypatch.setattr(quantiles, "COLLECT", collect)
        found = quantiles.Quantiles(asked)
        passes = 0
        while not found.done:
            cuts = sorted(rng.integers(0, n, 4))
            for start, end in pairwise([0, *cuts, n]):
                found.feed(column[int(start) : int(end)])
            found.end_pass()
            passes += 1
        assert found.result() == want
        assert passes <= quantiles.MAX_PASSES


def test_streamed_evaluation_equals_the_one_computed_in_memory(
    ws: Workspace, small_reads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The input walked 64 rows at a time; results of rows gone from the input are counted.
    monkeypatch.setattr(sizes, "WALK_ROWS", 64)
    rng = random.Random(5)
    n = 900
    gold = [rng.choice(["positive", "negative", "neutral", "Mixed", None]) for _ in range(n)]
    lang = [rng.choice(["en", "zh", "fr", None]) for _ in range(n)]
    ws.write_input(reviews(n).with_columns(gold=pl.Series(gold), lang=pl.Series(lang)))
    job = ws.job(
        "sim",
        input={"id_column": "id"},
        parse={"format": "label", "labels": ["positive", "negative", "neutral"]},
        eval={"expected_column": "gold", "scorer": "label", "group_by": ["lang"]},
    )
    answers = ["positive", "Negative.", "neutral", "I cannot say", None]
    with Checkpoint(checkpoint_dir(ws.output)).open() as checkpoint:
        for commit in range(3):
            results = [
                RowResult(
                    f"r{i:04d}" if i < n else f"gone{i}",
                    i if i < n else n - 1 - i,
                    "fp",
                    "ok" if rng.random() < 0.9 else "failed",
                    1,
                    1_700_000_000.0 + i,
                    response=rng.choice(answers),
                )
                for i in range(n + 20)
                if commit == 0 or rng.random() < 0.4
            ]
            checkpoint.commit(results)
        segments = checkpoint.segments()

    loaded = load_job(job)
    streamed = build_report(loaded).evaluation
    # The oracle: every current result joined with the whole input, annotated at once.
    annotator = job_annotator(loaded)
    assert annotator is not None and annotator.parser is not None
    current = (
        pl.read_parquet(segments)
        .unique(subset=KEY, keep="last", maintain_order=True)
        .filter(pl.col("status") == "ok")
    )
    inputs = pl.read_parquet(ws.root / "input.parquet").select("id", "gold", "lang")
    frame = annotator(current.join(inputs, left_on=KEY, right_on="id", how="left"))
    scored = frame.filter(pl.col("score").is_not_null())
    assert streamed is not None and streamed.unavailable is None
    assert streamed.answered == frame.height and streamed.parsed == frame["parsed"].count()
    errors = frame["parse_error"].drop_nulls().str.extract(r"^([^(:']*)").str.strip_chars()
    assert dict(streamed.parse_errors) == dict(errors.value_counts().iter_rows())
    assert streamed.overall == Accuracy.of(float(scored["score"].sum()), scored.height)
    assert streamed.unscored == frame.height - scored.height > 0
    groups = scored.group_by("lang").agg(pl.len(), pl.col("score").sum())
    assert {g.value: g.accuracy for g in streamed.groups} == {
        str(value): Accuracy.of(total, rows) for value, rows, total in groups.iter_rows()
    }
    assert [g.accuracy.scored for g in streamed.groups] == sorted(groups["len"], reverse=True)
    match = annotator.parser.match_label
    pairs = Counter(
        (match(str(v)) or str(v), a or "(unparsed)")
        for v, a in zip(scored["gold"], scored["parsed"], strict=True)
    )
    assert streamed.expected_labels == ("positive", "negative", "neutral", "Mixed")
    assert {
        (truth, answer): count
        for truth, row in zip(streamed.expected_labels, streamed.confusion, strict=True)
        for answer, count in zip(streamed.answer_labels, row, strict=True)
        if count
    } == dict(pairs)
