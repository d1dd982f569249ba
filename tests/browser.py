"""Check a rendered report in a real headless browser against the DuckDB store.

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
LATENCY_KEYS = ("p50_ms", "p95_ms", "throughput_ips")

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
    failed_requests, external_requests, mismatches, missing_charts, broken_images)
    plus what was found (run_id, cells_checked, charts, screenshot)."""
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
            chart_ids = page.eval_on_selector_all("svg.chart", "els => els.map(e => e.id)")
            polylines = page.eval_on_selector_all(
                "svg.chart", "els => els.map(e => e.querySelectorAll('polyline').length)"
            )
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
    found["charts"] = dict(zip(chart_ids, polylines, strict=True))
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
            "broken_images",
        )
        if found[key]
    }
    assert not problems, f"report problems: {problems}"
    assert found["cells_checked"] > 0, "no metric cells in the report table"


def table_mismatches(con, run_id: str, cells: list[dict]) -> list[str]:
    """Differences between the report's table cells (model, category, metric,
    available, value = data-value, text = shown figure) and what DuckDB holds."""
    expected: dict[tuple[str, str, str], float | None] = {}
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
    headline = con.execute(
        "SELECT model, category, p50_ms, p95_ms, throughput_ips FROM latency "
        "WHERE run_id = ? AND p50_ms IS NOT NULL "  # a failed path has no figures
        "QUALIFY row_number() OVER (PARTITION BY model, category ORDER BY idx) = 1",
        [run_id],
    ).fetchall()
    for model, category, *values in headline:
        figures = zip(LATENCY_KEYS, values, strict=True)
        expected.update({(model, category, key): value for key, value in figures})
    for key in LATENCY_KEYS:
        for model in {row[0] for row in headline}:
            figures = [row[2 + LATENCY_KEYS.index(key)] for row in headline if row[0] == model]
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
        if value is None:
            if cell["available"] != "false" or cell["text"] != "n/a":
                problems.append(f"{key}: DuckDB has no value, report shows {cell['text']!r}")
        elif cell["value"] is None or not math.isclose(float(cell["value"]), value):
            problems.append(f"{key}: DuckDB {value!r}, report data-value {cell['value']!r}")
        elif cell["text"] != f"{value:.{digits}f}":
            problems.append(f"{key}: DuckDB {value!r}, report text {cell['text']!r}")
    problems += [f"{key}: in DuckDB, not in the report" for key in expected.keys() - seen]
    return problems


def _missing_charts(con, run_id: str, charts: dict[str, int]) -> list[str]:
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
    return [
        f"{chart_id}: {'absent' if chart_id not in charts else 'no lines'}"
        for chart_id in sorted(wanted)
        if charts.get(chart_id, 0) == 0
    ]
