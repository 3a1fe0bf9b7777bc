"""`batchrun report` checked against the output rows, and its HTML page's structure."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from batchrun.sim import SimConfig, start_in_thread

from ..conftest import Workspace, reviews


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]


@pytest.fixture
def finished(ws: Workspace) -> Workspace:
    """A run with failures, retries, several finish reasons and streaming."""
    texts = [*reviews(40)["text"], "[[sim:content_filter]] x", "[[sim:model_not_found]] y"]
    ws.write_input(pl.DataFrame({"text": texts}))
    config = SimConfig(faults={"server_error": 0.2}, seed=9, latency_ms=5)
    with start_in_thread(config) as sim:
        job = ws.job(
            sim.base_url,
            request={"max_tokens": 3, "stream": True},
            prompt={"system": None},
            limits={"max_attempts": 8},
        )
        assert ws.run("run", str(job), "-q").code == 0
    return ws


def test_report_figures_match_the_output_rows(finished: Workspace) -> None:
    job = str(finished.root / "job.toml")
    result = finished.run("report", job, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    out = finished.read_output()
    ok = out.filter(pl.col("status") == "ok")
    assert report["rows"] == {"committed": 42, "ok": ok.height, "failed": 2}
    for kind in ("prompt", "completion", "total"):
        assert report["tokens"][kind] == out[f"{kind}_tokens"].sum()
    assert report["spend_usd"]["current"] == pytest.approx(out["cost_usd"].sum())
    reasons = out["finish_reason"].drop_nulls().value_counts()
    assert report["finish_reasons"] == dict(
        zip(reasons["finish_reason"], reasons["count"], strict=True)
    )
    assert report["finish_reasons"]["length"] == report["length"]["rows"] > 0
    assert report["length"]["max_tokens"] == 3
    errors = {e["error"]: e["rows"] for e in report["errors"]}
    assert errors == {"content_refused": 1, "model_not_found": 1}
    assert report["retries"]["attempts"] == out["attempts"].sum()
    assert report["retries"]["rows_retried"] == (out["attempts"] > 1).sum() > 0
    latency = ok["latency_s"]
    assert report["latency_s"]["p50"] == pytest.approx(latency.quantile(0.5), rel=0.2)
    assert report["ttft_s"]["p90"] <= report["latency_s"]["p99"] + 1e-9
    assert sum(b["ok"] + b["failed"] for b in report["throughput"]["buckets"]) == 42
    assert sum(b["rows"] for b in report["latency_histogram"]) == ok.height


def test_report_in_the_terminal_and_as_a_page(finished: Workspace, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = finished.run("report", str(finished.root / "job.toml"), "--html", str(page))
    assert result.code == 0
    for heading in ("Cost by model", "Finish reasons", "Latency"):
        assert heading in result.out
    text = page.read_text(encoding="utf-8")
    tags = Tags()
    tags.feed(text)
    assert tags.tags.count("svg") >= 3 and tags.tags.count("rect") >= 10
    assert not [u for u in tags.urls if u.startswith(("http:", "https:", "//"))]
    assert "<script" not in text
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed: see docs/cost.md for the screenshot command")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000


def test_report_before_anything_ran(ws: Workspace) -> None:
    ws.write_input(reviews(3))
    result = ws.run("report", str(ws.job("sim")), "--json")
    assert result.code == 0
    assert json.loads(result.out)["rows"]["committed"] == 0
