"""The critical-difference diagram of Demšar (2006), as a self-contained SVG string.

Demšar (2006), "Statistical comparisons of classifiers over multiple data sets", JMLR 7,
Figure 1: the models' mean ranks on an axis (1 = best, at the left), each model's name on
a line from its rank, the critical difference as a bar above the axis, and a thick bar
under each group that Nemenyi's test cannot tell apart.

The SVG is drawn by matplotlib's SVG backend on a `Figure` of its own (no pyplot, no global
figure), with text kept as `<text>` elements (``svg.fonttype = 'none'``) so that the report
can be searched and read by a browser's accessibility tools, and no scripts. It is
deterministic: no date, fixed element ids.

Example:
    >>> import numpy as np
    >>> from tasks.stats.ranking import friedman_nemenyi
    >>> result = friedman_nemenyi(np.array([[0.9, 0.8], [0.95, 0.7], [1.0, 0.9]]), ["a", "b"])
    >>> critical_difference_svg(result).startswith("<svg")
    True
"""

from __future__ import annotations

import io

import matplotlib
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

from tasks.stats.ranking import FriedmanResult

MAX_MODELS = 8


def critical_difference_svg(result: FriedmanResult, title: str | None = None) -> str:
    """Draw `result` as an SVG document (starting at `<svg`, to embed in HTML).

    Readable up to `MAX_MODELS` models; more raise ValueError."""
    k = len(result.models)
    if k > MAX_MODELS:
        raise ValueError(f"a critical-difference diagram is readable up to {MAX_MODELS} models")
    order = sorted(range(k), key=lambda i: (result.mean_ranks[i], i))
    names = [result.models[i] for i in order]
    ranks = [result.mean_ranks[i] for i in order]
    cliques = result.cliques()

    left_count = (k + 1) // 2  # the better half is labelled on the left
    labels = [f"{name} ({rank:.2f})" for name, rank in zip(names, ranks, strict=True)]
    # inches: an axis of 3.5 in, and room for the longest label on each side
    margin = 0.3 + 0.075 * max(len(label) for label in labels)
    axis_length = 3.5
    width = axis_length + 2 * margin
    top = 0.45 + (0.3 if title else 0.0)  # the CD bar; the rank axis is below it
    axis_y = top + 0.35
    bars_top = axis_y + 0.2
    labels_top = bars_top + 0.18 * len(cliques) + 0.15
    rows = max(left_count, k - left_count)
    height = labels_top + 0.28 * (rows - 1) + 0.25

    figure = Figure(figsize=(width, height))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)  # y grows downwards, in inches
    axes.axis("off")

    def x_of(rank: float) -> float:
        return margin + (rank - 1) / max(k - 1, 1) * axis_length

    if title:
        axes.text(width / 2, 0.25, title, ha="center", va="center", fontsize=11)
    line = {"color": "black", "linewidth": 1}
    axes.plot([x_of(1), x_of(k)], [axis_y, axis_y], **line)
    for tick in range(1, k + 1):
        axes.plot([x_of(tick), x_of(tick)], [axis_y, axis_y - 0.07], **line)
        axes.text(x_of(tick), axis_y - 0.12, str(tick), ha="center", va="bottom", fontsize=9)
    axes.text(x_of(k), top - 0.07, "mean rank, 1 = best", ha="right", va="bottom", fontsize=8)

    cd = result.critical_difference
    if cd < k - 1:
        axes.plot([x_of(1), x_of(1 + cd)], [top, top], color="black", linewidth=1.5)
        for end in (1, 1 + cd):
            axes.plot([x_of(end), x_of(end)], [top - 0.05, top + 0.05], **line)
        axes.text(
            x_of(1 + cd / 2), top - 0.07, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9
        )

    for j, clique in enumerate(cliques):
        members = [ranks[names.index(m)] for m in clique]
        y = bars_top + 0.18 * j
        axes.plot(
            [x_of(min(members)) - 0.04, x_of(max(members)) + 0.04],
            [y, y],
            color="black",
            linewidth=3,
            solid_capstyle="round",
        )
    for i, (label, rank) in enumerate(zip(labels, ranks, strict=True)):
        on_left = i < left_count
        row = i if on_left else k - 1 - i
        y = labels_top + 0.28 * row
        x_end = margin - 0.15 if on_left else margin + axis_length + 0.15
        axes.plot([x_of(rank), x_of(rank), x_end], [axis_y, y, y], **line)
        axes.text(
            x_end + (-0.05 if on_left else 0.05),
            y,
            label,
            ha="right" if on_left else "left",
            va="center",
            fontsize=9,
        )

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "cd-diagram"}):
        FigureCanvasSVG(figure).print_svg(buffer, metadata={"Date": None})
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]
