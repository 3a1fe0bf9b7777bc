"""The progress display: a tqdm bar on a terminal, a plain line every few seconds elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

PLAIN_EVERY_S = 5.0


class Progress:
    """Counts finished rows, tokens and spend; shows them unless quiet."""

    def __init__(
        self,
        total: int,
        done: int,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.total = total  # rows this run covers (the input, or --limit)
        self.done = done  # rows with a final result, including those done before this run
        self.ok = 0  # rows that finished ok in this run
        self.failed = 0  # rows that failed in this run
        self.tokens = 0  # tokens used in this run
        self.spend = 0.0  # USD spent in this run, where the price is known
        # With several endpoints: what each is doing ("a serving, b out"), for the line.
        self.endpoints: Callable[[], str] | None = None
        self._stream = stream or sys.stderr
        self._started = time.monotonic()
        self._last_line = self._started  # when the last plain line was printed
        self._start_done = done
        if interactive is None:
            interactive = self._stream.isatty()
        self._bar: tqdm[None] | None = None
        self._quiet = quiet
        self._plain = not quiet and not interactive
        if not quiet and interactive:
            self._bar = tqdm(
                total=total,
                initial=done,
                unit="row",
                file=self._stream,
                dynamic_ncols=True,
                smoothing=0.05,
            )

    def advance(self, *, ok: bool, tokens: int, cost: float | None) -> None:
        """One row reached its final state."""
        self.done += 1
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self.tokens += tokens
        self.spend += cost or 0.0
        if self._bar is not None:
            self._bar.update(1)

    def skip(self, rows: int = 1) -> None:
        """Rows already finished by an earlier run: counted as done, not in the rate."""
        self.done += rows
        self._start_done += rows
        if self._bar is not None:
            self._bar.n += rows
            self._bar.last_print_n += rows
            self._bar.initial += rows

    def show(
        self, *, done: int, settled: int, ok: int, failed: int, tokens: int, spend: float
    ) -> None:
        """Set the figures from a count kept elsewhere (the workers of a Ray run, summed by
        their desk): `settled` of the `done` rows were finished before this run."""
        self._start_done = settled
        self.done, self.ok, self.failed, self.tokens, self.spend = done, ok, failed, tokens, spend
        if self._bar is not None:
            self._bar.initial = settled
            self._bar.n = done
        self.refresh()

    def note(self, text: str) -> None:
        """A line for the user (a warning), shown even when quiet, without breaking the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            self._stream.write(text + "\n")
            self._stream.flush()

    def refresh(self) -> None:
        """Redraw the figures (called about once a second)."""
        if self._bar is not None:
            self._bar.set_postfix_str(self._figures(), refresh=True)
        elif self._plain and time.monotonic() - self._last_line >= PLAIN_EVERY_S:
            self._last_line = time.monotonic()
            self._stream.write(self.line() + "\n")
            self._stream.flush()

    def line(self) -> str:
        """A one-line account: rows done of total, rate, ETA, failures, tokens, spend."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = (self.done - self._start_done) / elapsed
        left = self.total - self.done
        eta = f"{left / rate:,.0f}s" if rate > 0 else "?"
        pct = 100 * self.done / self.total if self.total else 100.0
        return (
            f"{self.done:,}/{self.total:,} rows ({pct:.0f}%) · {rate:,.1f} rows/s · ETA {eta} · "
            + self._figures()
        )

    def _figures(self) -> str:
        figures = f"failed {self.failed:,} · {self.tokens:,} tokens · ${self.spend:,.4f}"
        return figures if self.endpoints is None else f"{figures} · {self.endpoints()}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._figures(), refresh=True)
            self._bar.close()
            self._bar = None
