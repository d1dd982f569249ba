"""Check a rendered report in a real headless browser against the DuckDB store.

Besides values, it checks how the charts read, from the boxes the browser lays the text
out in: no two texts of a chart overlap, none sticks out of its chart, the tick labels
of an axis all differ, and no two series (or scatter points) of a chart look alike.

Used by tests/test_report_browser.py and by the end-to-end test:

    >>> found = check_report_in_browser(Path("reports/latest.html"), Path("results/b.duckdb"),
    ...                                 screenshot=Path("test-artifacts/report.png"))
    >>> assert_report_ok(found)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import duckdb

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
TABLE_METRICS = ("image_auroc", "pixel_auroc", "image_f1", "aupro")
LATENCY_KEYS = ("p50_ms", "throughput_ips")  # of the deployable path
AUROC_TOLERANCE = 0.005  # the deployable path: within this of torch-fp32's image AUROC

# Per chart: its id, how many series and points it draws, and how it reads.
READ_CHARTS = """svgs => svgs.map(svg => {
    const box = svg.getBoundingClientRect();
    const texts = [...svg.querySelectorAll('text')].filter(t => t.textContent.trim())
        .map(t => ({text: t.textContent.trim(), r: t.getBoundingClientRect()}));
    const problems = [];
    const apart = (a, b) => a.right <= b.left + 0.5 || b.right <= a.left + 0.5
        || a.bottom <= b.top + 0.5 || b.bottom <= a.top + 0.5;
    texts.forEach((a, i) => texts.slice(i + 1).forEach(b => {
        if (!apart(a.r, b.r)) problems.push(`text '${a.text}' overlaps '${b.text}'`);
    }));
    texts.forEach(t => {
        if (t.r.left < box.left - 1 || t.r.right > box.right + 1 || t.r.top < box.top - 1
            || t.r.bottom > box.bottom + 1) problems.push(`text '${t.text}' outside the chart`);
    });
    for (const axis of ['xtick', 'ytick']) {
        const labels = [...svg.querySelectorAll(`g.${axis} text`)].map(t => t.textContent);
        if (new Set(labels).size < labels.length) problems.push(`${axis} labels repeat: ${labels}`);
    }
    const look = g => {  // line colour and dashes, marker colour and shape
        const line = g.querySelector(':scope > path');
        const mark = g.querySelector('use');
        const lineStyle = line ? getComputedStyle(line) : {};
        const markStyle = mark ? getComputedStyle(mark) : {};
        const ref = mark ? document.getElementById(mark.getAttribute('href').slice(1)) : null;
        return [lineStyle.stroke, lineStyle.strokeDasharray, markStyle.fill,
                ref ? ref.getAttribute('d') : ''].join('|');
    };
    for (const kind of ['series', 'point']) {
        const looks = [...svg.querySelectorAll(`g.${kind}`)].map(look);
        if (new Set(looks).size < looks.length) problems.push(`two ${kind} elements look alike`);
    }
    const models = g => [...new Set([...svg.querySelectorAll(g)].map(e => e.dataset.model))];
    return {id: svg.id, series: svg.querySelectorAll('g.series, g.point').length,
            models: models('g.series, g.point').filter(m => m), problems};
})"""

READ_CELLS = """els => els.map(e => ({
    model: e.dataset.model, category: e.dataset.category, metric: e.dataset.metric,
    available: e.dataset.available, value: e.dataset.value ?? null,
    text: (e.querySelector('.value') || e).textContent.trim()}))"""


def chromium_missing_message() -> str:
    return (
        f"headless Chromium not found at {CHROMIUM}: run `make browser` "
        "(apt-get install -y chromium), or set ALLOW_NO_BROWSER=1 to skip browser tests"
    )


def check_report_in_browser(
    report_path: Path, db_path: Path, screenshot: Path | None = None
) -> dict[str, Any]:
    """Load the report over file:// in headless Chromium and compare it with DuckDB.

    Returns lists that are empty for a good report (console_errors, page_errors,
    failed_requests, external_requests, mismatches, missing_charts, chart_problems,
    broken_images) plus what was found (run_id, cells_checked, charts: series and
    points per chart id, chart_models: the models each chart draws, screenshot)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise FileNotFoundError(chromium_missing_message())
    found: dict[str, Any] = {
        "console_errors": [],
        "page_errors": [],
        "failed_requests": [],
        "external_requests": [],
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.on(
                "console",
                lambda m: m.type == "error" and found["console_errors"].append(m.text),
            )
            page.on("pageerror", lambda e: found["page_errors"].append(str(e)))
            page.on(
                "requestfailed",
                lambda r: found["failed_requests"].append(f"{r.url}: {r.failure}"),
            )
            page.on(
                "request",
                lambda r: (
                    not r.url.startswith(("file:", "data:"))
                    and found["external_requests"].append(r.url)
                ),
            )
            page.goto(Path(report_path).resolve().as_uri(), wait_until="load")
            run_id = page.get_attribute("body", "data-run-id")
            cells = page.eval_on_selector_all("td[data-metric]", READ_CELLS)
            charts = page.eval_on_selector_all("svg.chart", READ_CHARTS)
            found["broken_images"] = page.eval_on_selector_all(
                "img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0)).map(e => e.alt)"
            )
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    found["run_id"] = run_id
    found["cells_checked"] = len(cells)
    found["charts"] = {c["id"]: c["series"] for c in charts}
    found["chart_models"] = {c["id"]: c["models"] for c in charts}
    found["chart_problems"] = [f"{c['id']}: {p}" for c in charts for p in c["problems"]]
    found["screenshot"] = screenshot
    with duckdb.connect(str(db_path), read_only=True) as con:
        found["mismatches"] = table_mismatches(con, run_id, cells)
        found["missing_charts"] = _missing_charts(con, run_id, found["charts"])
    return found


def assert_report_ok(found: dict[str, Any]) -> None:
    """Fail with every problem the browser found."""
    problems = {
        key: found[key]
        for key in (
            "console_errors",
            "page_errors",
            "failed_requests",
            "external_requests",
            "mismatches",
            "missing_charts",
            "chart_problems",
            "broken_images",
        )
        if found[key]
    }
    assert not problems, f"report problems: {problems}"
    assert found["cells_checked"] > 0, "no metric cells in the report table"


def table_mismatches(con, run_id: str, cells: list[dict]) -> list[str]:
    """Differences between the report's table cells (model, category, metric,
    available, value = data-value, text = shown figure) and what DuckDB holds."""
    expected: dict[tuple[str, str, str], float | str | None] = {}
    for model, category, metric, value, available in con.execute(
        "SELECT model, category, metric, value, available FROM metrics "
        "WHERE run_id = ? AND metric IN (SELECT unnest(?::VARCHAR[]))",
        [run_id, list(TABLE_METRICS)],
    ).fetchall():
        expected[(model, category, metric)] = value if available else None
    for model, metric, value in con.execute(
        "SELECT model, metric, avg(value) FILTER (WHERE available) FROM metrics "
        "WHERE run_id = ? AND metric IN (SELECT unnest(?::VARCHAR[])) GROUP BY ALL",
        [run_id, list(TABLE_METRICS)],
    ).fetchall():
        expected[(model, "average", metric)] = value
    # the deployable path: the fastest of this project's paths (not anomalib's) that ran
    # and whose AUROC is within the tolerance of torch-fp32's
    deployable = con.execute(
        "SELECT model, category, path, p50_ms, throughput_ips FROM latency "
        "WHERE run_id = ? AND status = 'ok' AND p50_ms IS NOT NULL "
        "AND path NOT LIKE 'anomalib-%' AND abs(auroc_delta) <= ? "
        "QUALIFY row_number() OVER (PARTITION BY model, category ORDER BY p50_ms) = 1",
        [run_id, AUROC_TOLERANCE],
    ).fetchall()
    for model, category, path, *values in deployable:
        expected[(model, category, "deployable_path")] = path
        for key, value in zip(LATENCY_KEYS, values, strict=True):
            expected[(model, category, key)] = value
    for i, key in enumerate(LATENCY_KEYS):
        for model in {row[0] for row in deployable}:
            figures = [row[3 + i] for row in deployable if row[0] == model]
            expected[(model, "average", key)] = sum(figures) / len(figures)

    problems = []
    seen = set()
    for cell in cells:
        key = (cell["model"], cell["category"], cell["metric"])
        seen.add(key)
        if key not in expected:
            if cell["available"] != "false":
                problems.append(f"{key}: in the report, not in DuckDB")
            continue
        value = expected[key]
        digits = 1 if cell["metric"] in LATENCY_KEYS else 3
        if isinstance(value, str):
            if cell["value"] != value or cell["text"] != value:
                problems.append(f"{key}: DuckDB {value!r}, report shows {cell['text']!r}")
        elif value is None:
            if cell["available"] != "false" or cell["text"] != "n/a":
                problems.append(f"{key}: DuckDB has no value, report shows {cell['text']!r}")
        elif cell["value"] is None or not math.isclose(float(cell["value"]), value):
            problems.append(f"{key}: DuckDB {value!r}, report data-value {cell['value']!r}")
        elif cell["text"] != f"{value:.{digits}f}":
            problems.append(f"{key}: DuckDB {value!r}, report text {cell['text']!r}")
    problems += [f"{key}: in DuckDB, not in the report" for key in expected.keys() - seen]
    return problems


def _missing_charts(con, run_id: str, charts: dict[str, int]) -> list[str]:
    """Charts the stored rows call for that the page lacks or leaves empty: ROC curves per
    category and level, a loss chart per trained model, a speed chart per category."""
    wanted = [
        f"roc-{category}" if level == "image" else f"roc-{category}-pixel"
        for category, level in con.execute(
            "SELECT DISTINCT category, level FROM roc_points WHERE run_id = ?", [run_id]
        ).fetchall()
    ]
    wanted += [
        f"loss-{model}-{category}"
        for model, category in con.execute(
            "SELECT DISTINCT model, category FROM losses WHERE run_id = ?", [run_id]
        ).fetchall()
    ]
    wanted += [
        f"speed-auroc-{category}"
        for (category,) in con.execute(
            "SELECT DISTINCT category FROM latency WHERE run_id = ? AND p50_ms IS NOT NULL "
            "AND image_auroc IS NOT NULL",
            [run_id],
        ).fetchall()
    ]
    return [
        f"{chart_id}: {'absent' if chart_id not in charts else 'nothing drawn'}"
        for chart_id in sorted(wanted)
        if charts.get(chart_id, 0) == 0
    ]


def screenshot(report_path: Path, out: Path, selector: str | None = None, height: int = 900):
    """A PNG of the report's first screen (1360 px wide, `height` tall), or of the element
    `selector` picks, as the headless browser of the tests renders it."""
    from playwright.sync_api import sync_playwright

    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": height})
            page.goto(Path(report_path).resolve().as_uri(), wait_until="load")
            target = page.locator(selector).first if selector else page
            target.screenshot(path=str(out))
        finally:
            browser.close()


if __name__ == "__main__":  # the README's pictures: python tests/browser.py REPORT OUT [SELECTOR]
    import sys

    screenshot(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
