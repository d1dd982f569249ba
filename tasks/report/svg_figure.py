"""A matplotlib figure drawn for the HTML report, and its SVG made fit to sit in the page.

`SvgFigure` is a `matplotlib.figure.Figure` (no pyplot: no global figure registry) made
and saved inside the report's settings (`SVG_RC`): `svg.fonttype = 'none'`, so text
stays text in the page's font, and maths parsing off, so a `$` in a name is shown as it
is. Text from data is escaped by matplotlib's SVG writer. `inline_svg` then turns the
SVG document into an element for HTML:
- no XML prolog, DTD, metadata, namespace URLs or document-wide CSS;
- ids unique in the page: the root carries the chart's id, the ids matplotlib references
  (clip paths, marker shapes) are salted with it (`svg.hashsalt`), and its other ids are
  dropped, except ticks and legends, which become classes (`xtick`, `ytick`, `legend`);
- artists given a gid by `SvgFigure.group` become `<g class="..." data-...>` with a
  `<title>`, so a test (or a reader hovering) finds each model's curve.

Example:
    >>> with SvgFigure("demo", "a title", 300, 200) as figure:
    ...     _ = figure.ax.plot([0, 1], [0, 1], gid=figure.group("series", "a line", {}))
    ...     svg = figure.render()
    >>> svg.startswith('<svg id="demo" class="chart"'), '<g class="series">' in svg
    (True, True)
"""

from __future__ import annotations

import io
import math
import re
from html import escape

import matplotlib
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.textpath import TextToPath

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


class SvgFigure:
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

    def __enter__(self) -> SvgFigure:
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
            handles, labels, rows = legend_layout(list(self.keys.values()), self.width - 20)
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
        return Markup(inline_svg(buffer.getvalue(), self.chart_id, self.title, self.groups))


def inline_svg(svg: str, chart_id: str, title: str, groups: dict[str, str]) -> str:
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

    svg = re.sub(r">\s+<", "><", re.sub(r"\s*\n\s*", " ", svg))  # whitespace: bytes only
    head, body = svg.split(">", 1)
    body = re.sub(r' id="([^"]*)"', keep, body)
    box = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', head)
    w, h = (round(float(v)) for v in box.groups()) if box else (0, 0)
    root = (
        f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {w} {h}" width="{w}" '
        f'height="{h}" role="img" aria-label="{escape(title or chart_id)}"'
    )
    return root + ">" + body.strip()


def legend_layout(groups: list[list[tuple]], room: float) -> tuple[list, list[str], int]:
    """Legend keys in columns, each group in columns of its own (models apart from paths),
    in as few rows as fit `room` px: (handles, labels, rows), blank keys padding each
    group's last column (matplotlib fills a legend column by column)."""
    labels = [label for group in groups for _, label in group]
    widest = max(map(text_width, labels))
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


def text_width(text: str, size: float = FONT_SIZE) -> float:
    """How wide `text` is, in px, in the report's font."""
    font = FontProperties(family=FONT, size=size)
    return TextToPath().get_text_width_height_descent(text, font, ismath=False)[0]
