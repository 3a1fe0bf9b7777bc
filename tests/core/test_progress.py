"""The progress display: what the bar and the plain line tell."""

from __future__ import annotations

import io

from batchrun.core import progress as progress_module
from batchrun.core.progress import Progress


def test_the_bar_shows_rows_failures_tokens_and_spend() -> None:
    stream = io.StringIO()
    bar = Progress(10, 0, stream=stream, interactive=True)
    bar.skip(4)
    bar.advance(ok=True, tokens=120, cost=0.25)
    bar.advance(ok=False, tokens=0, cost=None)
    bar.refresh()
    bar.close()
    text = stream.getvalue()
    assert "6/10" in text
    assert "failed 1" in text and "120 tokens" in text and "$0.2500" in text
    assert (bar.done, bar.ok, bar.failed) == (6, 1, 1)


def test_without_a_terminal_a_plain_line_every_few_seconds() -> None:
    stream = io.StringIO()
    line = Progress(100, 0, stream=stream, interactive=False)
    line.advance(ok=True, tokens=10, cost=0.0)
    line.refresh()
    assert stream.getvalue() == ""  # not yet: less than PLAIN_EVERY_S since the start
    line._last_line -= progress_module.PLAIN_EVERY_S
    line.refresh()
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert "1/100 rows (1%)" in text and "ETA" in text and "failed 0" in text


def test_quiet_prints_nothing() -> None:
    stream = io.StringIO()
    quiet = Progress(5, 0, stream=stream, quiet=True)
    quiet.advance(ok=True, tokens=1, cost=None)
    quiet.refresh()
    quiet.close()
    assert stream.getvalue() == ""
