"""`batchrun compare` in the terminal: the figures of `compare.Comparison` as plain text."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..core.stats import Accuracy
from ..protocol.result import INPUT_ROW
from ..report.text import secs, text_table, usd
from .comparison import POSITION, Comparison, Disagreement, Side, minus
from .join import TOKENS

TEXT_WIDTH = 40  # characters of an answer shown in the terminal


def render_text(c: Comparison) -> str:
    """The comparison as plain text for the terminal."""
    lines = [
        "batchrun compare",
        *(f"  {name}  {_identity(side)}" for name, side in (("A", c.a), ("B", c.b))),
        "",
        f"rows: {c.both:,} in both, {c.only_a:,} only in A, {c.only_b:,} only in B; "
        f"{_joined(c)}; answers from {c.answer_column!r}",
        "",
    ]
    if not c.both:
        lines.append("No row is in both files: check that they cover the same rows, or pass --id.")
        return "\n".join(lines) + "\n"
    lines += [
        f"Side by side, over the {_n(c.both, 'row')} in both",
        *("  " + line for line in text_table(["", "A", "B", "B - A"], _rows(c), {1, 2, 3})),
        "",
        *_verdict(c),
        "",
        *_disagreement_lines(c),
    ]
    return "\n".join(lines) + "\n"


def _identity(side: Side) -> str:
    about = [_n(side.rows, "row")]
    if side.job is not None:
        about.insert(0, f"job {side.job}")
    if side.model is not None:
        about.insert(len(about) - 1, f"model {side.model}")
    return f"{side.path} ({', '.join(about)})"


def _joined(c: Comparison) -> str:
    if c.join_column is None:
        return "matched by position (no id column)"
    if c.join_from == INPUT_ROW:
        return f"joined on {INPUT_ROW!r} (the rows' positions in the input)"
    origin = "--id" if c.join_from == "--id" else "the runs' metadata"
    return f"joined on {c.join_column!r} (from {origin})"


def _rows(c: Comparison) -> list[list[str]]:
    """The side-by-side table: label, A, B, B − A."""
    a, b = c.a, c.b

    def count(name: str) -> list[str]:
        x, y = getattr(a, name), getattr(b, name)
        return [f"{x:,}", f"{y:,}", _signed(y - x, lambda v: f"{v:,}")]

    rows = [["ok", *count("ok")], ["failed", *count("failed")]]
    if a.accuracy is not None or b.accuracy is not None:
        acc_a, acc_b = a.accuracy, b.accuracy
        diff = None if acc_a is None or acc_b is None else acc_b.accuracy - acc_a.accuracy
        rows += [
            [
                "accuracy",
                *(_percent(x.accuracy if x else None) for x in (acc_a, acc_b)),
                _signed(None if diff is None else diff * 100, lambda v: f"{v:.1f} pts"),
            ],
            ["  95% interval", *(_range(x) for x in (acc_a, acc_b)), ""],
            ["  rows scored", *(f"{x.scored:,}" if x else "0" for x in (acc_a, acc_b)), ""],
        ]
    rows.append(
        ["cost", usd(a.cost_usd), usd(b.cost_usd), _signed(minus(b.cost_usd, a.cost_usd), usd)]
    )
    if a.no_cost or b.no_cost:
        rows.append(["  rows without cost", f"{a.no_cost:,}", f"{b.no_cost:,}", ""])
    for kind in TOKENS:
        x, y = getattr(a, f"{kind}_tokens"), getattr(b, f"{kind}_tokens")
        rows.append(
            [f"{kind} tokens", _int(x), _int(y), _signed(minus(y, x), lambda v: f"{v:,.0f}")]
        )
    for stat in ("mean", "p50", "p95"):
        x, y = getattr(a, f"latency_{stat}"), getattr(b, f"latency_{stat}")
        rows.append([f"latency {stat}", secs(x), secs(y), _signed(minus(y, x), secs)])
    return rows


def _signed(value: float | None, show: Callable[[float], str]) -> str:
    """A difference with its sign: +2, -$0.0012, +15 ms; 0 without one."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return ("+" if value > 0 else "-") + show(abs(value))


def _n(count: int, noun: str) -> str:
    """A count with its noun: 1 row, 2 rows, 1,000 rows."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _range(accuracy: Accuracy | None) -> str:
    if accuracy is None:
        return "-"
    return f"{accuracy.low * 100:.1f}-{accuracy.high * 100:.1f}%"


def _verdict(c: Comparison) -> list[str]:
    """Which run is more accurate, by how much, and whether that could be chance."""
    p = c.paired
    if p is None:
        return ["Accuracy: not compared (a score column is needed in both files)."]
    if not p.rows:
        return ["Accuracy: no row is scored in both files, so there is nothing to test."]
    low, high = (x * 100 for x in p.interval)
    where = f"on the {_n(p.rows, 'row')} scored in both"
    interval = f"95% CI for B - A: {low:+.1f} to {high:+.1f} points, Newcombe"
    if p.b == p.c:
        lead = f"A and B are equally accurate {where} ({interval})."
    else:
        better, worse = ("B", "A") if p.c > p.b else ("A", "B")
        lead = (
            f"{better} is more accurate than {worse} by {abs(p.difference) * 100:.1f} points "
            f"{where} ({interval})."
        )
    chance = (
        "unlikely to be chance at the 5% level"
        if p.significant
        else "not distinguishable from chance"
    )
    return [
        lead,
        f"A right and B wrong on {_n(p.b, 'row')}, A wrong and B right on {p.c:,}: "
        f"McNemar exact {_p(p.p_value)}, {chance}.",
    ]


def _p(value: float) -> str:
    """The p-value as "p = …": two decimals from 0.1 up, else three significant figures, so
    that a p just under 0.05 never prints as 0.05."""
    if value < 0.0001:
        return "p < 0.0001"
    return f"p = {value:.2f}" if value >= 0.1 else f"p = {value:.3g}"


def _disagreement_lines(c: Comparison) -> list[str]:
    if not c.disagreements:
        lines = [
            f"No disagreements: the {_n(c.both, 'row')} in both have the same answers and scores."
        ]
    else:
        parts = [f"answers differ in {c.answers_differ:,}"]
        if c.paired is not None:
            parts.append(f"scores in {c.scores_differ:,}")
        shown = len(c.sample)
        lines = [
            f"Disagreements: {_n(c.disagreements, 'row')} ({', '.join(parts)}); "
            + ("all of them:" if shown == c.disagreements else f"the first {shown} in A's order:"),
            *(
                "  " + line
                for line in text_table(
                    [c.join_column or POSITION, "A", "B", "score A", "score B"],
                    [_sample_row(d) for d in c.sample],
                    {3, 4},
                )
            ),
        ]
    if c.out is not None:
        lines.append(f"every disagreeing row ({c.disagreements:,}) written to {c.out}")
    return lines


def _sample_row(d: Disagreement) -> list[str]:
    return [
        _short(str(d.id)),
        _answer(d.answer_a, d.status_a),
        _answer(d.answer_b, d.status_b),
        *("-" if s is None else f"{s:g}" for s in (d.score_a, d.score_b)),
    ]


def _answer(text: str | None, status: str | None) -> str:
    if text is None:
        return "(failed)" if status == "failed" else "(none)"
    return _short(text)


def _short(text: str, limit: int = TEXT_WIDTH) -> str:
    """Text on one line, cut to `limit` characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
