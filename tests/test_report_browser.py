"""The report in a real headless Chromium: no errors, no requests out, values equal DuckDB,
and charts that read: no overlapping text, distinct ticks, every model told apart.

Needs Debian's chromium (`make browser`). Without it the tests fail, unless
ALLOW_NO_BROWSER=1 is set, in which case they are skipped with that reason.
Screenshots land in `test-artifacts/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import CHROMIUM, assert_report_ok, check_report_in_browser, chromium_missing_message
from store_samples import (
    CATEGORIES,
    MANY_CATEGORIES,
    MANY_MODELS,
    build_many_models_store,
    build_sample_store,
)

from tasks.report.render import render_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SCREENSHOT = ARTIFACTS / "report.png"


@pytest.fixture(autouse=True)
def chromium_present():
    if CHROMIUM.exists():
        return
    if os.environ.get("ALLOW_NO_BROWSER") == "1":
        pytest.skip(f"ALLOW_NO_BROWSER=1 and {chromium_missing_message()}")
    pytest.fail(chromium_missing_message())


@pytest.fixture
def sample_report(tmp_path):
    db = tmp_path / "results.duckdb"
    run_id = build_sample_store(db, tmp_path / "overlays", evil_overlay=True)
    return render_report(db, run_id, tmp_path / "reports"), db


def test_report_in_a_browser_matches_duckdb(sample_report):
    report, db = sample_report
    found = check_report_in_browser(report, db, screenshot=SCREENSHOT)
    assert_report_ok(found)
    assert found["run_id"] == "run-0002"
    # per model: each category's 4 metrics + deployable path, p50, img/s; the average's 4 + 2
    assert found["cells_checked"] == 2 * (len(CATEGORIES) * (4 + 3) + 4 + 2)
    for category in CATEGORIES:
        assert found["charts"][f"roc-{category}"] == 2  # one curve per model
        # every model and timed path (4 of each model's 7 ran), anomalib's included
        assert found["charts"][f"speed-auroc-{category}"] == 2 * 5
    assert found["charts"]["loss-efficientad-demo_grid"] >= 4  # 2 attempts x 2 losses
    assert SCREENSHOT.stat().st_size > 10_000


def test_eight_models_stay_apart_in_a_browser(tmp_path):
    db = tmp_path / "results.duckdb"
    run_id = build_many_models_store(db, tmp_path / "overlays")
    report = render_report(db, run_id, tmp_path / "reports")
    found = check_report_in_browser(report, db, screenshot=ARTIFACTS / "report-8-models.png")
    assert_report_ok(found)  # values, and no overlapping text or look-alike series
    assert found["cells_checked"] == len(MANY_MODELS) * (len(MANY_CATEGORIES) * 7 + 6)
    for category in MANY_CATEGORIES:
        for chart in ("speed-auroc-", "roc-", "trend-image_auroc-"):
            chart += category
            assert sorted(found["chart_models"][chart]) == sorted(MANY_MODELS), chart
        assert found["charts"][f"roc-{category}"] == len(MANY_MODELS)


def test_browser_check_reports_what_is_wrong(sample_report, tmp_path):
    report, db = sample_report
    html = report.read_text()
    html = html.replace(">0.900<", ">0.990<", 1)  # a value that is not the stored one
    html = html.replace("</main>", '<img src="http://127.0.0.1:9/x.png" alt="remote"></main>')
    # a chart that reads badly: overlapping texts, a repeated tick, a label out of the
    # frame, two series drawn alike
    bad_chart = (
        '<svg id="bad" class="chart" viewBox="0 0 200 100" width="200" height="100">'
        '<g class="xtick"><text x="20" y="90">0.5</text></g>'
        '<g class="xtick"><text x="24" y="90">0.5</text></g>'
        '<text x="150" y="50">a label too long for the chart</text>'
        '<g class="series"><path d="M0 0 L10 10" style="stroke: #123456"/></g>'
        '<g class="series"><path d="M0 5 L10 20" style="stroke: #123456"/></g></svg>'
    )
    html = html.replace("</main>", bad_chart + "</main>")
    tampered = tmp_path / "tampered.html"
    tampered.write_text(html)
    found = check_report_in_browser(tampered, db)
    assert found["external_requests"] == ["http://127.0.0.1:9/x.png"]
    assert found["failed_requests"] and found["broken_images"] == ["remote"]
    assert len(found["mismatches"]) == 1 and "image_auroc" in found["mismatches"][0]
    problems = found["chart_problems"]
    assert all(p.startswith("bad: ") for p in problems), problems  # the real charts read well
    assert any("text '0.5' overlaps '0.5'" in p for p in problems), problems
    assert any("xtick labels repeat" in p for p in problems), problems
    assert any("outside the chart" in p for p in problems), problems
    assert any("two series elements look alike" in p for p in problems), problems
    with pytest.raises(AssertionError, match="report problems"):
        assert_report_ok(found)
