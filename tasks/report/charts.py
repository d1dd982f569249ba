"""The report's charts: line charts (ROC curves, training losses, trends) and scatter
charts (speed against AUROC), drawn by matplotlib as inline SVG (`tasks.report.svg_figure`).

What makes them readable, with any number of models:
- `styles` gives every series a colour, a marker and a dash pattern of its own, so eight
  models stay apart in colour and shape;
- ticks are round values, as many as fit, each labelled with just the digits that write
  it exactly: neighbours never read alike ("1.01, 1, 1"), and no AUROC tick exceeds 1;
- legends sit below the plot in as many columns as fit, each group (models, paths) in
  columns of its own, and the figure grows to hold them instead of shrinking the plot.

Series carry data attributes (`attrs`) onto their `<g class="series">`, so the page can be
checked against the store.

Example:
    >>> svg = line_chart("roc-demo_grid", [Series("PatchCore", [(0, 0), (0.1, 0.9), (1, 1)])],
    ...                  x_label="false positive rate", y_label="true positive rate",
    ...                  x_range=(0, 1), y_range=(0, 1))
    >>> svg.startswith('<svg id="roc-demo_grid" class="chart"')
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from tasks.report.svg_figure import SvgFigure, text_width

# Tableau's ten categorical colours: distinct from one another on white
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")  # 9: coprime with 10 colours
DASHES = ("", "6 3", "2 2", "8 3 2 3", "4 1")
RING = "#111827"  # the ring around a highlighted point


@dataclass(frozen=True)
class Style:
    """How one series looks: colour, marker shape, dash pattern ("" = solid)."""

    color: str
    marker: str
    dash: str


def styles(count: int) -> list[Style]:
    """`count` styles that differ pairwise in colour, marker or dash, in a fixed order."""
    return [
        Style(PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)], DASHES[i % len(DASHES)])
        for i in range(count)
    ]


@dataclass
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: str = PALETTE[0]
    dash: str = ""
    width: float = 1.8
    opacity: float = 1.0
    marker: str | None = None  # drawn at a few points along the line
    attrs: dict[str, str] = field(default_factory=dict)  # extra data-* attributes


@dataclass
class Marker:
    """A point worth pointing at, e.g. a loss spike."""

    x: float
    y: float
    label: str
    color: str = "#dc2626"


@dataclass
class Point:
    """One dot of a scatter chart, e.g. one inference path of one model."""

    x: float
    y: float
    label: str
    color: str = PALETTE[0]
    marker: str = "o"
    highlight: bool = False  # drawn larger, with a dark ring (e.g. the deployable path)
    attrs: dict[str, str] = field(default_factory=dict)  # extra data-* attributes


@dataclass
class Key:
    """One legend entry of a scatter chart: a colour (a model) or a marker (a path)."""

    label: str
    color: str = "#4b5563"
    marker: str = "o"
    ring: bool = False  # the ring drawn around highlighted points
    group: str = ""  # keys of one group share legend columns (e.g. models, paths)


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
    x_tick_labels: Sequence[str] | None = None,
    width: int = 460,
    height: int = 280,
) -> Markup:
    """A line chart with its legend below. Non-finite y values (and, on a log axis,
    non-positive ones) break the line instead of bending it. `x_tick_labels` names the
    integer x positions 0, 1, ... (e.g. runs)."""
    with SvgFigure(chart_id, title, width, height) as chart:
        return _draw_lines(
            chart,
            series,
            x_label,
            y_label,
            x_range,
            y_range,
            log_y,
            markers,
            diagonal,
            x_tick_labels,
        )


def _draw_lines(
    chart, series, x_label, y_label, x_range, y_range, log_y, markers, diagonal, x_tick_labels
) -> Markup:
    ax = chart.ax
    for s in series:
        xs = [float(x) for x, _ in s.points]
        ys = [_plottable(y, log_y) for _, y in s.points]
        ax.plot(
            xs,
            ys,
            color=s.color,
            linewidth=s.width,
            alpha=s.opacity,
            linestyle=_dash(s.dash),
            marker=s.marker,
            markevery=max(1, len(xs) // 8) if s.marker else None,
            markersize=5,
            gid=chart.group("series", s.label, s.attrs),
        )
        chart.key(
            Line2D(
                [],
                [],
                color=s.color,
                linewidth=max(s.width, 1.5),
                alpha=s.opacity,
                linestyle=_dash(s.dash),
                marker=s.marker,
                markersize=5,
            ),
            s.label,
        )
    shown = [m for m in markers if math.isfinite(m.y) and (m.y > 0 or not log_y)]
    for m in shown:
        ax.scatter(
            [m.x],
            [m.y],
            s=70,
            facecolors=m.color + "26",
            edgecolors=m.color,
            linewidths=2,
            zorder=4,
            gid=chart.group("marker", m.label, {"label": m.label}),
        )
    if shown:
        chart.key(
            Line2D(
                [],
                [],
                linestyle="",
                marker="o",
                markersize=8,
                markerfacecolor="#dc262626",
                markeredgecolor="#dc2626",
                markeredgewidth=2,
            ),
            "loss spike",
        )
    if diagonal:
        ax.plot([0, 1], [0, 1], color="#9ca3af", linestyle=(0, (4, 4)), linewidth=1)
    if log_y:
        ax.set_yscale("log")
    if x_range:
        ax.set_xlim(*x_range)
    if y_range:
        ax.set_ylim(*y_range)
    _number_ticks(ax.xaxis, ax.get_xlim(), log=False, room=chart.plot_width)
    _number_ticks(ax.yaxis, ax.get_ylim(), log=log_y, room=chart.plot_height)
    if x_tick_labels is not None:
        _named_ticks(ax.xaxis, x_tick_labels, chart.plot_width)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label + (" (log)" if log_y else ""))
    return chart.render()


def scatter_chart(
    chart_id: str,
    points: Sequence[Point],
    *,
    x_label: str,
    y_label: str,
    title: str = "",
    log_x: bool = False,
    legend: Sequence[Key] = (),
    y_max: float | None = None,
    width: int = 460,
    height: int = 280,
) -> Markup:
    """A scatter chart, its keys (`legend`) below it. Points with a non-finite value, or
    (on a log axis) a non-positive x, are left out. No tick above `y_max`."""
    with SvgFigure(chart_id, title, width, height) as chart:
        return _draw_points(chart, points, x_label, y_label, log_x, legend, y_max)


def _draw_points(chart, points, x_label, y_label, log_x, legend, y_max) -> Markup:
    ax = chart.ax
    shown = [
        p for p in points if math.isfinite(p.x) and math.isfinite(p.y) and (p.x > 0 or not log_x)
    ]
    for p in shown:
        gid = chart.group("point", p.label, p.attrs)
        ax.scatter([p.x], [p.y], s=46, c=p.color, marker=p.marker, edgecolors="white",
                   linewidths=0.6, zorder=3, clip_on=False, gid=gid)  # fmt: skip
        if p.highlight:
            ring = chart.group("ring", p.label, p.attrs)
            ax.scatter([p.x], [p.y], s=240, facecolors="none", edgecolors=RING, linewidths=1.4,
                       zorder=2, clip_on=False, gid=ring)  # fmt: skip
    for k in legend:
        look = {"markerfacecolor": "none", "markeredgecolor": RING} if k.ring else {}
        handle = Line2D([], [], linestyle="", marker=k.marker, markersize=12 if k.ring else 7,
                        color=k.color, **look)  # fmt: skip
        chart.key(handle, k.label, k.group)
    xs = [p.x for p in shown] or [1.0, 10.0]
    ys = [p.y for p in shown] or [0.0, 1.0]
    log_x = log_x and max(xs) / min(xs) > 4  # a narrow range reads better on a linear axis
    if log_x:
        ax.set_xscale("log")
        ax.set_xlim(_round_down(min(xs) * 0.9), _round_up(max(xs) * 1.1))  # a tick at each end
    else:
        ax.set_xlim(*_padded(min(xs), max(xs), 0.08, 0.5))
    low, high = min(ys), max(ys)
    span = max(high - low, 0.02)
    bottom, top = low - 0.1 * span, high + 0.1 * span
    if y_max is not None:  # room for a marker at the top, no more
        top = min(top, y_max + 0.06 * (y_max - bottom))
    ax.set_ylim(bottom, top)
    _number_ticks(ax.xaxis, ax.get_xlim(), log=log_x, room=chart.plot_width)
    _number_ticks(ax.yaxis, ax.get_ylim(), log=False, room=chart.plot_height, cap=y_max)
    ax.set_xlabel(x_label + (" (log)" if log_x else ""))
    ax.set_ylabel(y_label)
    return chart.render()


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


def _number_ticks(
    axis,
    limits: tuple[float, float],
    *,
    log: bool,
    room: float,
    cap: float | None = None,
) -> None:
    """Round tick values, as many as fit in `room` px, labelled with just enough digits
    for neighbours to differ (never "1.01, 1, 1"); none above `cap` (AUROC: 1)."""
    low, high = sorted(limits)
    bins = max(2, min(6, int(room // 45)))
    if log:
        decades = math.log10(high) - math.log10(low)
        subs = (1, 2, 5) if decades <= 2.5 else (1, 3) if decades <= 4 else (1,)
        ticks = [
            m * 10**e
            for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
            for m in subs
            if low <= m * 10**e <= high
        ]
        if len(ticks) < 2:  # less than a decade: round values on the log axis
            ticks = [t for t in MaxNLocator(bins).tick_values(low, high) if low <= t <= high]
    else:
        ticks = [t for t in MaxNLocator(bins, steps=[1, 2, 5, 10]).tick_values(low, high)]
        ticks = [t for t in ticks if low - 1e-12 <= t <= high + 1e-12]
    if cap is not None:
        ticks = [t for t in ticks if t <= cap + 1e-12]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_minor_locator(NullLocator())
    digits = None if log else _digits_to_differ(ticks)
    axis.set_major_formatter(FuncFormatter(lambda v, _: _format(v, digits)))


def _named_ticks(axis, labels: Sequence[str], room: float) -> None:
    """Integer positions named by `labels`, thinned to what fits without overlapping."""
    widest = max(map(text_width, labels), default=0)
    fits = max(1, int(room // (widest + 12)))
    step = math.ceil(len(labels) / fits)
    positions = list(range(len(labels) - 1, -1, -step))[::-1]  # the newest always named
    axis.set_major_locator(FixedLocator(positions))
    axis.set_major_formatter(
        FuncFormatter(lambda v, _: labels[round(v)] if 0 <= round(v) < len(labels) else "")
    )


def _digits_to_differ(ticks: Sequence[float]) -> int | None:
    """The fewest decimals (up to 6) that write every tick exactly, so neighbours differ
    and none is rounded to a value it is not; None for whole ticks (`_format` decides)."""
    if all(float(t).is_integer() for t in ticks):
        return None
    for digits in range(1, 7):
        if all(abs(round(t, digits) - t) < 1e-9 for t in ticks):
            return digits
    return 6


def _format(value: float, digits: int | None = None) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if digits is not None and magnitude >= 0.001:
        return f"{value:.{digits}f}"
    if magnitude >= 10000 or magnitude < 0.0001:
        return f"{value:.0e}"
    if magnitude >= 100 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.3g}"


def _round_down(value: float) -> float:
    """The largest of 1, 2, 5 x 10^k at or below `value` (> 0)."""
    exponent = math.floor(math.log10(value))
    return max(m * 10**exponent for m in (1, 2, 5) if m * 10**exponent <= value * (1 + 1e-9))


def _round_up(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above `value` (> 0)."""
    exponent = math.floor(math.log10(value))
    return min(m * 10**exponent for m in (1, 2, 5, 10) if m * 10**exponent >= value * (1 - 1e-9))


def _padded(low: float, high: float, share: float, least: float) -> tuple[float, float]:
    pad = max(share * (high - low), least)
    return low - pad, high + pad


def _plottable(y: float | None, log: bool) -> float:
    if y is None or not math.isfinite(y) or (log and y <= 0):
        return math.nan
    return float(y)


def _dash(dash: str):
    return "-" if not dash else (0, tuple(float(v) for v in dash.split()))
