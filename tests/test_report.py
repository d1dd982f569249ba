"""The HTML report: atomic writes, escaping, self-containment, values equal to DuckDB."""

from __future__ import annotations

import errno
import re
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest
from browser import table_mismatches
from store_samples import EVIL_NAME, build_sample_store

from tasks.report.render import render_report
from tasks.results.store.result_store import ResultStore
from tasks.runtime import writes
from tasks.runtime.writes import WriteFailed


class CellReader(HTMLParser):
    """Collects the table cells (<td data-metric>) and every src/href attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self.links: list[str] = []
        self.ids: list[str] = []
        self._cell: dict | None = None
        self._in_value = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "td" and "data-metric" in attrs:
            self._cell = {
                "model": attrs["data-model"],
                "category": attrs["data-category"],
                "metric": attrs["data-metric"],
                "available": attrs["data-available"],
                "value": attrs.get("data-value"),
                "all_text": "",
                "value_text": None,
            }
        elif tag == "span" and self._cell is not None and attrs.get("class") == "value":
            self._in_value = True
            self._cell["value_text"] = ""

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_value = False
        if tag == "td" and self._cell is not None:
            cell = self._cell
            text = cell.pop("value_text")
            cell["text"] = (text if text is not None else cell.pop("all_text")).strip()
            cell.pop("all_text", None)
            self.cells.append(cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["all_text"] += data
            if self._in_value:
                self._cell["value_text"] += data


def read_cells(html: str) -> CellReader:
    reader = CellReader()
    reader.feed(html)
    return reader


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    db = folder / "results.duckdb"
    return db, build_sample_store(db, folder / "overlays", evil_overlay=True)


@pytest.fixture
def sample(sample_store, tmp_path):
    """The shared (read-only) store, and a fresh reports folder per test."""
    db, run_id = sample_store
    return db, run_id, tmp_path / "reports"


def test_renders_the_same_page_to_the_run_and_latest(sample):
    db, run_id, reports = sample
    path = render_report(db, run_id, reports)
    assert path == reports / run_id / "report.html"
    latest = reports / "latest.html"
    assert path.read_text() == latest.read_text()
    assert f'data-run-id="{run_id}"' in path.read_text()
    leftovers = [p for p in reports.rglob("*") if p.is_file() and p.suffix == ".tmp"]
    assert not leftovers
    # a later run replaces latest.html, the earlier run's own report stays
    render_report(db, "run-0001", reports)
    assert 'data-run-id="run-0001"' in latest.read_text()
    assert f'data-run-id="{run_id}"' in path.read_text()


def test_a_failed_write_keeps_the_previous_report(sample, monkeypatch):
    db, run_id, reports = sample
    render_report(db, run_id, reports)
    before = (reports / "latest.html").read_text()

    def refuse(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writes.os, "replace", refuse)  # the one write seam of the report
    with pytest.raises(WriteFailed, match=r"cannot write report .*report\.html: \[Errno 28\]"):
        render_report(db, "run-0001", reports)
    assert (reports / "latest.html").read_text() == before
    assert not list(reports.rglob("*.tmp"))


def test_an_incomplete_run_says_why(tmp_path):
    db = tmp_path / "results.duckdb"
    run_id = build_sample_store(db, tmp_path / "overlays")
    ResultStore(db).finish_run(run_id, "incomplete", error="efficientad/demo_grid: <busy>")
    html = render_report(db, run_id, tmp_path / "reports").read_text()
    assert 'id="run-error">efficientad/demo_grid: &lt;busy&gt;</dd>' in html


def test_reports_are_readable_by_others(sample):
    db, run_id, reports = sample
    path = render_report(db, run_id, reports)
    for written in (path, reports / "latest.html"):
        assert written.stat().st_mode & 0o777 == 0o644, written


def test_file_names_and_examples_are_escaped(sample):
    db, run_id, reports = sample
    html = render_report(db, run_id, reports).read_text()
    assert "<script" not in html.lower()  # the report has no scripts at all
    assert "<img src=x" not in html
    assert escape(EVIL_NAME, quote=False) in html  # shown as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_report_is_self_contained(sample):
    db, run_id, reports = sample
    html = render_report(db, run_id, reports).read_text()
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html
    assert all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", html))
    links = read_cells(html).links
    images = [link for link in links if link.startswith("data:image/jpeg;base64,")]
    assert len(images) == 8  # best and worst overlay for 2 models x 2 categories
    assert all(link.startswith(("#", "data:image/jpeg;base64,")) for link in links)


def test_each_result_names_the_worker_that_computed_it(sample):
    db, run_id, reports = sample
    html = render_report(db, run_id, reports).read_text()
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("select category, worker from results where run_id = ?", [run_id])
        workers = rows.fetchall()
    assert workers and all(worker for _, worker in workers)
    for category, worker in workers:
        assert f"{escape(category)}: <code>{escape(worker)}</code>" in html


def test_table_values_equal_duckdb(sample):
    db, run_id, reports = sample
    cells = read_cells(render_report(db, run_id, reports).read_text()).cells
    with duckdb.connect(str(db), read_only=True) as con:
        assert table_mismatches(con, run_id, cells) == []
    by_key = {(c["model"], c["category"], c["metric"]): c for c in cells}
    # not available is shown as n/a, never as 0
    leather = by_key[("patchcore", "demo_leather", "pixel_auroc")]
    assert leather["text"] == "n/a" and leather["available"] == "false"
    assert by_key[("efficientad", "demo_grid", "image_auroc")]["text"] == "0.900"
    # the average skips unavailable values instead of counting them as 0
    assert by_key[("patchcore", "average", "pixel_auroc")]["text"] == "0.960"


def test_table_check_notices_a_wrong_value(sample):
    db, run_id, reports = sample
    html = render_report(db, run_id, reports).read_text()
    tampered = html.replace(">0.900<", ">0.990<", 1)
    with duckdb.connect(str(db), read_only=True) as con:
        problems = table_mismatches(con, run_id, read_cells(tampered).cells)
    assert len(problems) == 1 and "image_auroc" in problems[0]


def test_fallback_weights_are_never_the_paper_configuration(sample):
    db, run_id, reports = sample
    html = render_report(db, run_id, reports).read_text()
    patchcore = html[html.index('data-model="patchcore" data-weights-source="fallback"') :]
    paper = patchcore[: patchcore.index("</dd>", patchcore.index("paper-configuration"))]
    assert 'data-paper="false"' in paper
    assert "no (fallback weights: efficientnet_lite0" in paper
    badges = re.findall(
        r'data-model="patchcore"[^>]*>[^<]*<span class="value">[^<]*</span>'
        r'<span class="badge warn"[^>]*>fallback weights',
        html,
    )
    assert len(badges) == 2  # one per category row
    assert (
        "fallback weights</span>"
        not in html.split('data-model="efficientad"', 1)[1].split("</tr>", 1)[0]
    )


def test_charts_and_regressions_are_present(sample):
    db, run_id, reports = sample
    html = render_report(db, run_id, reports).read_text()
    ids = set(read_cells(html).ids)
    assert {"roc-demo_grid", "roc-demo_leather", "roc-demo_grid-pixel"} <= ids
    assert "roc-demo_leather-pixel" not in ids  # no masks, no pixel ROC
    assert {"loss-efficientad-demo_grid", "loss-efficientad-demo_leather"} <= ids
    assert "trend-image_auroc" in ids
    flagged = re.findall(
        r'data-model="(\w+)" data-category="(\w+)" data-metric="(\w+)" '
        r'data-regression="true"',
        html,
    )
    assert ("efficientad", "demo_grid", "image_auroc") in flagged
    assert not [f for f in flagged if f[0] == "patchcore"]
    assert 'data-attempt="2" data-chosen="true"' in html
    assert "loss_spike" in html


def test_unknown_run_and_unsafe_run_ids_are_refused(sample):
    db, _, reports = sample
    with pytest.raises(KeyError, match="no-such-run"):
        render_report(db, "no-such-run", reports)
    with pytest.raises(ValueError, match="folder name"):
        render_report(db, "../escape", reports)
    with pytest.raises(FileNotFoundError, match="no results store"):
        render_report(Path(reports) / "missing.duckdb", "run-0001", reports)
