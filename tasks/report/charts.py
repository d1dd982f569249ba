"""Inline SVG charts for the self-contained HTML report, drawn by matplotlib.

Each chart is a matplotlib `Figure` (no pyplot: no global figure registry), saved as SVG
with `svg.fonttype = 'none'`, so text stays text in the page's font, and then made fit
to sit inside HTML:
- no XML prolog, DTD, metadata, namespace URLs or document-wide CSS;
- ids unique in the page: the root carries the chart's id, the ids matplotlib references
  (clip paths, marker shapes) are salted with it (`svg.hashsalt`), and its other ids are
  dropped, except ticks and legends, which become classes (`xtick`, `ytick`, `legend`);
- every data series is a `<g class="series" data-...>` (spike markers `class="marker"`,
  scatter points `class="point"`) with a `<title>`, so a test can find each model's curve.

Text from data is escaped by matplotlib's SVG writer, and maths parsing is off, so a
`$` in a category name is shown as it is. Styles (`Style`) give every series a colour, a
marker and a dash pattern of its own, so eight models stay apart in colour and shape.

Example:
    >>> svg = line_chart("roc-demo_grid", [Series("PatchCore", [(0, 0), (0.1, 0.9), (1, 1)])],
    ...                  x_label="false positive rate", y_label="true positive rate",
    ...                  x_range=(0, 1), y_range=(0, 1))
    >>> svg.startswith('<svg id="roc-demo_grid" class="chart"')
    True

See Also:
    matplotlib's SVG backend: https://matplotlib.org/stable/api/backend_svg_api.html
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

import matplotlib
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.textpath import TextToPath
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

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
RING = "#111827"
FONT = "DejaVu Sans"  # what the SVG asks the browser for; matplotlib lays text out in it
FONT_SIZE = 10
SVG_RC = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.sans-serif": [FONT],
    "font.size": FONT_SIZE,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "axes.edgecolor": "#cbd5e1",
    "axes.labelcolor": "#374151",
    "axes.titlecolor": "#111827",
    "axes.titleweight": "bold",
    "axes.grid": True,
    "grid.color": "#eef2f7",
    "xtick.color": "#6b7280",
    "ytick.color": "#6b7280",
    "legend.fontsize": FONT_SIZE,
    "legend.frameon": False,
}


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
    with _Chart(chart_id, title, width, height) as chart:
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
    with _Chart(chart_id, title, width, height) as chart:
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


class _Chart:
    """One figure being drawn, inside the report's matplotlib settings (`SVG_RC`, entered
    for the figure's whole life: text takes its font when it is made): its axes, its
    legend keys, and the `<g>` groups that become classes and data attributes."""

    LEGEND_ROW = 17  # px per legend row

    def __init__(self, chart_id: str, title: str, width: int, height: int) -> None:
        self.chart_id, self.title = chart_id, title
        self.width, self.height = width, height
        self.plot_width, self.plot_height = width - 70, height - 70
        self.groups: dict[str, str] = {}  # gid -> the <g> start tag it becomes
        self.keys: dict[str, list[tuple]] = {}  # legend group -> (handle, label)
        self._settings = matplotlib.rc_context({**SVG_RC, "svg.hashsalt": chart_id})

    def __enter__(self) -> _Chart:
        self._settings.__enter__()
        self.figure = Figure(
            figsize=(self.width / 72, self.height / 72), dpi=72, layout="constrained"
        )
        self.ax = self.figure.add_subplot()
        if self.title:
            self.ax.set_title(self.title, loc="left")
        return self

    def __exit__(self, *exc) -> None:
        self._settings.__exit__(*exc)

    def group(self, kind: str, label: str, attrs: dict[str, str]) -> str:
        """The gid of a new artist: its `<g>` becomes class `kind`, `attrs` as data-*
        attributes and `label` as its `<title>`."""
        gid = f"{kind}-gid-{len(self.groups)}"
        data = "".join(f' data-{escape(k)}="{escape(str(v))}"' for k, v in attrs.items())
        self.groups[gid] = f'<g class="{kind}"{data}><title>{escape(label)}</title>'
        return gid

    def key(self, handle, label: str, group: str = "") -> None:
        self.keys.setdefault(group, []).append((handle, label))

    def render(self) -> Markup:
        if self.keys:
            handles, labels, rows = _legend_layout(list(self.keys.values()), self.width - 20)
            self.figure.set_figheight((self.height + rows * self.LEGEND_ROW) / 72)
            self.figure.legend(
                handles,
                labels,
                loc="outside lower center",
                ncols=len(labels) // rows,
                handlelength=2.6,
                columnspacing=1.4,
                borderaxespad=0.2,
            )
        buffer = io.StringIO()
        self.figure.savefig(buffer, format="svg", metadata={"Date": None})
        return Markup(_inline(buffer.getvalue(), self.chart_id, self.title, self.groups))


def _inline(svg: str, chart_id: str, title: str, groups: dict[str, str]) -> str:
    """matplotlib's SVG document as an element to put inside HTML (see the module doc)."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s*<style type="text/css">.*?</style>', "", svg, flags=re.S)
    svg = re.sub(r"\s*<defs>\s*</defs>", "", svg)
    svg = svg.replace("xlink:href=", "href=")
    for gid, start_tag in groups.items():
        svg = svg.replace(f'<g id="{gid}">', start_tag)
    referenced = set(re.findall(r'(?:href="#|url\(#)([^")]+)', svg))

    def keep(match: re.Match) -> str:
        ident = match.group(1)
        kind = re.fullmatch(r"(xtick|ytick|legend)_\d+", ident)
        if kind:
            return f' class="{kind.group(1)}"'
        return match.group(0) if ident in referenced else ""

    head, body = svg.split(">", 1)
    body = re.sub(r' id="([^"]*)"', keep, body)
    box = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', head)
    w, h = (round(float(v)) for v in box.groups()) if box else (0, 0)
    root = (
        f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {w} {h}" width="{w}" '
        f'height="{h}" role="img" aria-label="{escape(title or chart_id)}"'
    )
    return root + ">" + body.strip()


def _legend_layout(groups: list[list[tuple]], room: float) -> tuple[list, list[str], int]:
    """Legend keys in columns, each group in columns of its own (models apart from paths),
    in as few rows as fit `room` px: (handles, labels, rows), blank keys padding each
    group's last column (matplotlib fills a legend column by column)."""
    measure = TextToPath()
    font = FontProperties(family=FONT, size=FONT_SIZE)
    labels = [label for group in groups for _, label in group]
    widest = max(measure.get_text_width_height_descent(t, font, ismath=False)[0] for t in labels)
    fit = max(1, int(room // (widest + FONT_SIZE * (2.6 + 0.8 + 1.4))))  # + handle, gaps
    rows = next(
        r for r in range(1, len(labels) + 1) if sum(math.ceil(len(g) / r) for g in groups) <= fit
    )
    handles, names = [], []
    for group in groups:
        padded = math.ceil(len(group) / rows) * rows
        blank = (Line2D([], [], linestyle="", marker=""), "")
        for handle, label in group + [blank] * (padded - len(group)):
            handles.append(handle)
            names.append(label)
    return handles, names, rows


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
    bins = max(2, min(6, int(room // 55)))
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
    font = FontProperties(family=FONT, size=FONT_SIZE)
    measure = TextToPath()
    widest = max(
        (measure.get_text_width_height_descent(t, font, False)[0] for t in labels), default=0
    )
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
