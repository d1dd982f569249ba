"""The report in a real headless Chromium: no errors, no requests out, values equal DuckDB.

Needs Debian's chromium (`make browser`). Without it the tests fail, unless
ALLOW_NO_BROWSER=1 is set, in which case they are skipped with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import CHROMIUM, assert_report_ok, check_report_in_browser, chromium_missing_message
from store_samples import CATEGORIES, build_sample_store

from tasks.report.render import render_report

SCREENSHOT = Path(__file__).resolve().parents[1] / "test-artifacts" / "report.png"


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
    assert found["cells_checked"] == 2 * (4 + 3) * (len(CATEGORIES) + 1)
    for category in CATEGORIES:
        assert found["charts"][f"roc-{category}"] == 2  # one curve per model
    assert found["charts"]["loss-efficientad-demo_grid"] >= 4  # 2 attempts x 2 losses
    assert SCREENSHOT.stat().st_size > 10_000


def test_browser_check_reports_what_is_wrong(sample_report, tmp_path):
    report, db = sample_report
    html = report.read_text()
    html = html.replace(">0.900<", ">0.990<", 1)  # a value that is not the stored one
    html = html.replace("</main>", '<img src="http://127.0.0.1:9/x.png" alt="remote"></main>')
    tampered = tmp_path / "tampered.html"
    tampered.write_text(html)
    found = check_report_in_browser(tampered, db)
    assert found["external_requests"] == ["http://127.0.0.1:9/x.png"]
    assert found["failed_requests"] and found["broken_images"] == ["remote"]
    assert len(found["mismatches"]) == 1 and "image_auroc" in found["mismatches"][0]
    with pytest.raises(AssertionError, match="report problems"):
        assert_report_ok(found)
