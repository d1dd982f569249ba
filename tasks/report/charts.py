"""Inline SVG line charts for the self-contained HTML report (ROC, loss, trend).

Hand-written SVG rather than a plotting library: the report must work offline with no
scripts, every chart gets a stable id the browser test can find, and many charts in one
page must not share element ids (matplotlib's SVG reuses clip-path ids). All text that
comes from data is escaped here, so the output can be embedded as markup.

Example:
    >>> svg = line_chart("roc-demo_grid", [Series("patchcore", [(0, 0), (0.1, 0.9), (1, 1)])],
    ...                  x_label="FPR", y_label="TPR", x_range=(0, 1), y_range=(0, 1))
    >>> svg.startswith('<svg id="roc-demo_grid"')
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

PALETTE = ("#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d")
DASHES = ("", "6 3", "2 3", "8 3 2 3")


@dataclass
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: str = PALETTE[0]
    dash: str = ""
    width: float = 1.8
    opacity: float = 1.0
    attrs: dict[str, str] = field(default_factory=dict)  # extra data-* attributes


@dataclass
class Marker:
    """A point worth pointing at, e.g. a loss spike."""

    x: float
    y: float
    label: str
    color: str = "#dc2626"


def line_chart(
    chart_id: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    title: str = "",
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    log_y: bool = False,
    markers: Sequence[Marker] = (),
    diagonal: bool = False,
    x_ticks_labels: Sequence[str] | None = None,
    width: int = 460,
    height: int = 280,
) -> Markup:
    """An SVG line chart; non-finite y values break the line instead of bending it."""
    finite = [
        (x, y)
        for s in series
        for x, y in s.points
        if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y)
    ]
    finite += [(m.x, m.y) for m in markers if math.isfinite(m.y) and (m.y > 0 or not log_y)]
    xs = [p[0] for p in finite] or [0.0, 1.0]
    ys = [p[1] for p in finite] or [0.0, 1.0]
    x0, x1 = x_range or (min(xs), max(xs))
    y0, y1 = y_range or (min(ys), max(ys))
    if log_y:
        y0, y1 = math.log10(y0), math.log10(y1)
    if x1 - x0 <= 0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 - y0 <= 0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if not y_range:
        pad = 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad

    legend_rows = len(series) + (1 if markers else 0)
    left, right, top, bottom = 56, 14, 26 if title else 10, 40
    plot_h = height - top - bottom
    full_h = height + 18 * legend_rows + 6
    plot_w = width - left - right

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        v = math.log10(y) if log_y else y
        return top + plot_h - (v - y0) / (y1 - y0) * plot_h

    out = _open_svg(chart_id, title, width, full_h, left)
    for value in _ticks(x0, x1):
        x = px(value)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}"/>')
        label = _tick_label(value, x_ticks_labels)
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 14}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    for exponent in _ticks(y0, y1, integer=log_y):
        value = 10**exponent if log_y else exponent
        y = py(value)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="tick" x="{left - 5}" y="{y + 3.5:.1f}" '
            f'text-anchor="end">{_format_number(value)}</text>'
        )
    out.append("</g>")
    out.append(_frame(left, top, plot_w, plot_h, x_label, y_label + (" (log)" if log_y else "")))
    if diagonal:
        out.append(
            f'<line class="diagonal" x1="{px(x0):.1f}" y1="{py(y0):.1f}" '
            f'x2="{px(x1):.1f}" y2="{py(y1):.1f}"/>'
        )
    clip_id = f"{escape(chart_id)}-clip"
    out.append(
        f'<clipPath id="{clip_id}"><rect x="{left}" y="{top - 6}" width="{plot_w}" '
        f'height="{plot_h + 12}"/></clipPath><g class="plot" clip-path="url(#{clip_id})">'
    )
    for s in series:
        attrs = "".join(f' data-{escape(k)}="{escape(str(v))}"' for k, v in s.attrs.items())
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        for segment in _segments(s.points, log_y):
            points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in segment)
            out.append(
                f'<polyline class="series" data-label="{escape(s.label)}"{attrs} '
                f'points="{points}" stroke="{s.color}" stroke-width="{s.width}" '
                f'stroke-opacity="{s.opacity}"{dash}/>'
            )
    for m in markers:
        if not (math.isfinite(m.y) and (m.y > 0 or not log_y)):
            continue
        x, y = px(m.x), py(m.y)
        out.append(
            f'<g class="marker" data-label="{escape(m.label)}">'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" stroke="{m.color}"/>'
            f"<title>{escape(m.label)}</title></g>"
        )
    out.append("</g>")
    legend_y = height + 4
    for i, s in enumerate(series):
        y = legend_y + 18 * i
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(
            f'<line x1="{left}" y1="{y}" x2="{left + 24}" y2="{y}" stroke="{s.color}" '
            f'stroke-width="{max(s.width, 1.5)}" stroke-opacity="{s.opacity}"{dash}/>'
            f'<text class="legend" x="{left + 30}" y="{y + 4}">{escape(s.label)}</text>'
        )
    if markers:
        y = legend_y + 18 * len(series)
        out.append(
            f'<circle cx="{left + 12}" cy="{y}" r="5" class="marker-key"/>'
            f'<text class="legend" x="{left + 30}" y="{y + 4}">loss spike</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def thin(points: Sequence[tuple[float, float]], max_points: int = 600) -> list[tuple]:
    """Fewer points for drawing, keeping each bucket's min and max so spikes survive."""
    if len(points) <= max_points:
        return list(points)
    bucket = math.ceil(len(points) / (max_points // 2))
    kept: list[tuple[float, float]] = []
    for start in range(0, len(points), bucket):
        chunk = points[start : start + bucket]
        finite = [p for p in chunk if math.isfinite(p[1])]
        if len(finite) < len(chunk):  # keep the break a non-finite value makes
            kept.append(next(p for p in chunk if not math.isfinite(p[1])))
        if finite:
            low = min(finite, key=lambda p: p[1])
            high = max(finite, key=lambda p: p[1])
            kept.extend(sorted({low, high}))
    return kept


def _segments(points: Sequence[tuple[float, float]], log_y: bool) -> list[list]:
    segments: list[list] = [[]]
    for x, y in points:
        if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y):
            segments[-1].append((x, y))
        elif segments[-1]:
            segments.append([])
    return [s for s in segments if s]


def _ticks(low: float, high: float, integer: bool = False) -> list[float]:
    """About five round tick values in [low, high]."""
    span = high - low
    step = 10 ** math.floor(math.log10(span / 5))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= 6:
            step *= factor
            break
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(low / step) * step
    count = int((high - first) / step + 1e-9) + 1
    return [round(first + i * step, 10) for i in range(count)]


def _tick_label(value: float, labels: Sequence[str] | None) -> str:
    if labels is None:
        return _format_number(value)
    index = round(value)
    return labels[index] if abs(value - index) < 1e-9 and 0 <= index < len(labels) else ""


def _format_number(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10000 or magnitude < 0.001:
        return f"{value:.0e}"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


@dataclass
class Point:
    """One labelled dot of a scatter chart, e.g. an inference path."""

    x: float
    y: float
    label: str
    color: str = PALETTE[0]
    highlight: bool = False  # drawn larger, with a ring (e.g. the deployable path)
    attrs: dict[str, str] = field(default_factory=dict)  # extra data-* attributes


def scatter_chart(
    chart_id: str,
    points: Sequence[Point],
    *,
    x_label: str,
    y_label: str,
    title: str = "",
    log_x: bool = False,
    width: int = 460,
    height: int = 280,
) -> Markup:
    """An SVG scatter chart with each dot labelled; non-finite or (log) non-positive x
    points are left out."""
    shown = [
        p for p in points if math.isfinite(p.x) and math.isfinite(p.y) and (p.x > 0 or not log_x)
    ]

    def tx(x: float) -> float:
        return math.log10(x) if log_x else x

    xs = [tx(p.x) for p in shown] or [0.0, 1.0]
    ys = [p.y for p in shown] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x_pad = 0.08 * (x1 - x0) if x1 > x0 else 0.5
    y_pad = 0.08 * (y1 - y0) if y1 > y0 else 0.01
    x0, x1, y0, y1 = x0 - x_pad, x1 + x_pad * 3, y0 - y_pad, y1 + y_pad
    left, right, top, bottom = 56, 14, 26 if title else 10, 40
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (tx(x) - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    out = _open_svg(chart_id, title, width, height, left)
    for value in _ticks(x0, x1, integer=log_x):
        shown_value = 10**value if log_x else value
        x = left + (value - x0) / (x1 - x0) * plot_w
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}"/>')
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 14}" '
            f'text-anchor="middle">{_format_number(shown_value)}</text>'
        )
    for value in _ticks(y0, y1):
        y = py(value)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="tick" x="{left - 5}" y="{y + 3.5:.1f}" '
            f'text-anchor="end">{_format_number(value)}</text>'
        )
    out.append("</g>")
    out.append(_frame(left, top, plot_w, plot_h, x_label + (" (log)" if log_x else ""), y_label))
    for p in shown:
        attrs = "".join(f' data-{escape(k)}="{escape(str(v))}"' for k, v in p.attrs.items())
        x, y = px(p.x), py(p.y)
        ring = (
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="8" fill="none" stroke="{p.color}"/>'
            if p.highlight
            else ""
        )
        out.append(
            f'<g class="point" data-label="{escape(p.label)}"{attrs}>{ring}'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{5 if p.highlight else 4}" fill="{p.color}"/>'
            f'<text class="legend" x="{x + 7:.1f}" y="{y - 5:.1f}">{escape(p.label)}</text>'
            f"<title>{escape(p.label)}: {_format_number(p.x)}, {_format_number(p.y)}</title></g>"
        )
    out.append("</svg>")
    return Markup("".join(out))


def _open_svg(chart_id: str, title: str, width: int, height: int, left: int) -> list[str]:
    """The chart's root element, its title and the opening of its grid group."""
    out = [
        f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title or chart_id)}">'
    ]
    if title:
        out.append(f'<text class="chart-title" x="{left}" y="16">{escape(title)}</text>')
    out.append('<g class="grid">')
    return out


def _frame(left: int, top: int, plot_w: int, plot_h: int, x_label: str, y_label: str) -> str:
    """The plot's border and its two axis labels."""
    return (
        f'<rect class="frame" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>'
        f'<text class="axis-label" x="{left + plot_w / 2:.1f}" y="{top + plot_h + 32}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text class="axis-label" transform="translate(13 {top + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
