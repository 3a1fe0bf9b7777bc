"""The run report as one self-contained HTML page: inline CSS and SVG charts, no script, no
URL, so it can be mailed or archived and opened anywhere."""

from __future__ import annotations

import html
import math
from collections.abc import Collection, Sequence

from .evaluation import Evaluation, percent
from .figures import EndpointFigures, Report
from .text import (
    batch_lane_tables,
    nothing_yet,
    one_line,
    period,
    secs,
    summary_lines,
    tables,
    usd,
    when,
)

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       margin: 24px auto; max-width: 1100px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.meta { color: #59636e; margin: 0 0 16px; word-break: break-all; }
table { border-collapse: collapse; margin: 0 0 8px; }
th, td { padding: 4px 12px 4px 0; text-align: left; vertical-align: top;
         border-bottom: 1px solid #d1d9e0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.msg { max-width: 560px; word-break: break-word; color: #59636e; }
.charts { display: grid; grid-template-columns: 1fr; gap: 20px; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
svg { width: 100%; height: auto; max-width: 760px; background: #fff; }
svg text { font: 11px system-ui, sans-serif; fill: #59636e; }
.bar { fill: #4e79a7; } .ok { fill: #59a14f; } .failed { fill: #e15759; }
.grid { stroke: #d1d9e0; stroke-width: 1; } .legend { font-size: 12px; }
"""

_CHART_W, _CHART_H = 760, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 24, 36


def render_html(report: Report) -> str:
    """One self-contained page (inline CSS and SVG, no script, no URL) with charts and tables."""
    head = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>batchrun report: {_e(report.job)}</title>\n<style>{_CSS}</style>\n</head>\n"
    )
    parts = [
        f"<h1>batchrun report: {_e(report.job)}</h1>",
        f'<p class="meta">{_e(report.output)} · requested model {_e(report.requested_model)}</p>',
    ]
    if not report.committed:
        parts.append(f"<p>{_e(nothing_yet(report))}</p>")
        for heading, header, body, right in batch_lane_tables(report):
            parts += [f"<h2>{_e(heading)}</h2>", _html_table(header, body, right)]
    else:
        parts += _html_body(report)
    return head + "<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n"


def _e(value: object) -> str:
    """Any value, escaped for HTML text and attributes."""
    return html.escape(str(value), quote=True)


def _html_body(report: Report) -> list[str]:
    rows = "".join(
        f"<tr><th>{_e(label)}</th><td>{_e(value)}</td></tr>"
        for label, value in summary_lines(report)
    )
    parts = [
        "<h2>Summary</h2>",
        f"<table>{rows}</table>",
        "<h2>Charts</h2>",
        '<div class="charts">',
    ]
    if report.evaluation is not None and report.evaluation.confusion:
        caption = "Confusion matrix: how each expected label was answered"
        parts.append(_figure(caption, confusion_svg(report.evaluation)))
    parts += [_latency_chart(report), _throughput_chart(report), _cost_chart(report)]
    parts += [_endpoint_chart(e) for e in report.endpoints]
    parts.append("</div>")
    for heading, header, body, right in tables(report):
        parts += [f"<h2>{_e(heading)}</h2>", _html_table(header, body, right)]
    return parts


def _html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int]
) -> str:
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(
            f"<{tag}{' class=num' if i in right else ''}>{_e(v)}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><thead><tr>{cells('th', header)}</tr></thead><tbody>{body}</tbody></table>"


def _figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{_e(caption)}</figcaption>{svg}</figure>"


def _svg_open(label: str, height: int = _CHART_H) -> str:
    return (
        f'<svg viewBox="0 0 {_CHART_W} {height}" width="{_CHART_W}" height="{height}" '
        f'role="img" aria-label="{_e(label)}"><title>{_e(label)}</title>'
    )


def _latency_chart(report: Report) -> str:
    label = "Latency of ok rows (rows per latency bin)"
    if not report.histogram:
        return _figure(label, "<p>No ok rows.</p>")
    values = [[float(b.rows)] for b in report.histogram]
    tips = [f"{secs(b.from_s)} to {secs(b.to_s)}: {b.rows:,} rows" for b in report.histogram]
    first, last = report.histogram[0], report.histogram[-1]
    ticks = (secs(first.from_s), secs(last.from_s) + "+")
    return _figure(label, _columns(label, values, ["bar"], tips, ticks, []))


def _throughput_chart(report: Report) -> str:
    label = f"Rows finished per {period(report.bucket_s)}: ok and failed"
    values = [[float(b.ok), float(b.failed)] for b in report.buckets]
    tips = [f"{when(b.start)} UTC: {b.ok:,} ok, {b.failed:,} failed" for b in report.buckets]
    ticks = (when(report.buckets[0].start), when(report.buckets[-1].start) + " UTC")
    legend = [("ok", "ok"), ("failed", "failed")]
    return _figure(label, _columns(label, values, ["ok", "failed"], tips, ticks, legend))


def _columns(
    label: str,
    values: Sequence[Sequence[float]],
    classes: Sequence[str],
    tips: Sequence[str],
    ticks: tuple[str, str],
    legend: Sequence[tuple[str, str]],
) -> str:
    """A column chart: one stack of bars per entry of `values`, with axes and tooltips."""
    plot_w, plot_h = _CHART_W - _LEFT - _RIGHT, _CHART_H - _TOP - _BOTTOM
    peak = _nice(max((sum(stack) for stack in values), default=0.0))
    step = plot_w / len(values)
    parts = [_svg_open(label), *_y_axis(peak, plot_h)]
    for i, (stack, tip) in enumerate(zip(values, tips, strict=True)):
        x, base = _LEFT + i * step, float(_TOP + plot_h)
        for value, css in zip(stack, classes, strict=True):
            h = value / peak * plot_h
            base -= h
            parts.append(
                f'<rect class="{css}" x="{x + step * 0.1:.1f}" y="{base:.1f}" '
                f'width="{step * 0.8:.1f}" height="{h:.1f}"><title>{_e(tip)}</title></rect>'
            )
    bottom = _CHART_H - _BOTTOM + 16
    parts.append(f'<text x="{_LEFT}" y="{bottom}">{_e(ticks[0])}</text>')
    parts.append(
        f'<text x="{_CHART_W - _RIGHT}" y="{bottom}" text-anchor="end">{_e(ticks[1])}</text>'
    )
    for i, (css, name) in enumerate(legend):
        x = _LEFT + 8 + i * 90
        parts.append(f'<rect class="{css}" x="{x}" y="6" width="10" height="10"></rect>')
        parts.append(f'<text class="legend" x="{x + 14}" y="15">{_e(name)}</text>')
    return "".join(parts) + "</svg>"


def _nice(value: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten at or above `value` (1 at least)."""
    if value <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def _y_axis(peak: float, plot_h: float) -> list[str]:
    """Grid lines and labels at zero, half and the peak."""
    parts = []
    for share in (0.0, 0.5, 1.0):
        y = _TOP + plot_h - share * plot_h
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_CHART_W - _RIGHT}" '
            f'y1="{y:.1f}" y2="{y:.1f}"></line>'
        )
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{peak * share:,.4g}</text>'
        )
    return parts


def confusion_svg(ev: Evaluation) -> str:
    """The confusion matrix as an SVG heat map: each row shaded by its share of the row."""
    if not ev.confusion:
        return ""
    answers = ev.answer_labels
    cell, left, top = 64, 150, 70
    width = left + cell * len(answers) + 16
    height = top + cell * len(ev.expected_labels) + 16
    title = f"Confusion matrix: {ev.expected_column} (rows) against the parsed answer (columns)"
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'style="max-width: {width}px" role="img" '
        f'aria-label="{_e(title)}"><title>{_e(title)}</title>',
        f'<text x="{left}" y="16" class="legend">parsed answer →</text>',
        f'<text x="8" y="{top - 8}" class="legend">{_e(ev.expected_column)} ↓</text>',
    ]
    for j, answer in enumerate(answers):
        x = left + j * cell + cell / 2
        parts.append(f'<text x="{x:.0f}" y="{top - 10}" text-anchor="middle">{_e(answer)}</text>')
    for i, (truth, row) in enumerate(zip(ev.expected_labels, ev.confusion, strict=True)):
        y = top + i * cell
        parts.append(
            f'<text x="{left - 8}" y="{y + cell / 2 + 4:.0f}" text-anchor="end">{_e(truth)}</text>'
        )
        total = sum(row) or 1
        for j, count in enumerate(row):
            share = count / total
            right = answers[j] == truth
            colour = f"rgba(89,161,79,{share:.3f})" if right else f"rgba(225,87,89,{share:.3f})"
            tip = f"{truth} answered {answers[j]}: {count:,} ({percent(share)} of the row)"
            parts += [
                f'<rect x="{left + j * cell}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
                f'fill="{colour}" stroke="#d1d9e0"><title>{_e(tip)}</title></rect>',
                f'<text x="{left + j * cell + cell / 2 - 1:.0f}" y="{y + cell / 2 + 4:.0f}" '
                f'text-anchor="middle">{count:,}</text>',
            ]
    return "".join(parts) + "</svg>"


def _endpoint_chart(e: EndpointFigures) -> str:
    """One endpoint's rows: ok, and failed by error, as horizontal bars, with its cost,
    latency and (from its last run) the rate it allowed."""
    run = e.last_run or {}
    allowed = run.get("allowed_rpm")
    rate = f", {allowed:,.0f} requests/min got through" if allowed is not None else ""
    ended = run.get("state", "serving")  # the endpoint's state when its last run ended
    shown = "" if ended == "serving" else f", {ended}"
    state = f", out: {run['out']}" if run.get("out") else shown
    label = (
        f"Endpoint {e.name}: {e.rows:,} rows, {usd(e.cost_usd)}, mean latency "
        f"{secs(e.latency_mean_s)}{rate}{state}"
    )
    bars = [("ok", e.ok, "ok"), *((error, rows, "failed") for error, rows in e.errors)]
    row_h, name_w = 26, 220
    height = _TOP + row_h * len(bars) + 8
    peak = max(rows for _, rows, _ in bars) or 1
    bar_room = _CHART_W - name_w - 120
    parts = [_svg_open(label, height)]
    for i, (name, rows, kind) in enumerate(bars):
        y = _TOP + i * row_h
        w = rows / peak * bar_room
        parts += [
            f'<text x="{name_w - 8}" y="{y + 16}" text-anchor="end">{_e(name)}</text>',
            f'<rect class="{kind}" x="{name_w}" y="{y + 4}" width="{w:.1f}" '
            f'height="{row_h - 8}"><title>{_e(f"{name}: {rows:,} rows")}</title></rect>',
            f'<text x="{name_w + w + 6:.1f}" y="{y + 16}">{rows:,}</text>',
        ]
    return _figure(label, "".join(parts) + "</svg>")


def _cost_chart(report: Report) -> str:
    """Horizontal bars of spend per response model."""
    label = "Cost by response model (every committed answer)"
    models = report.cost_by_model
    if not models:
        return _figure(label, "<p>No answers with usage.</p>")
    row_h, name_w = 26, 220
    height = _TOP + row_h * len(models) + 8
    peak = max(m.cost_usd for m in models) or 1.0
    bar_room = _CHART_W - name_w - 120
    parts = [_svg_open(label, height)]
    for i, m in enumerate(models):
        y = _TOP + i * row_h
        w = m.cost_usd / peak * bar_room
        value = usd(m.cost_usd) + (f" ({m.no_price:,} no price)" if m.no_price else "")
        tip = f"{m.model}: {value}, {m.answers:,} answers"
        parts += [
            f'<text x="{name_w - 8}" y="{y + 16}" text-anchor="end">'
            f"{_e(one_line(m.model, 32))}</text>",
            f'<rect class="bar" x="{name_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}">'
            f"<title>{_e(tip)}</title></rect>",
            f'<text x="{name_w + w + 6:.1f}" y="{y + 16}">{_e(value)}</text>',
        ]
    return _figure(label, "".join(parts) + "</svg>")
