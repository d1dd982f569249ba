"""The HTML report: atomic writes, escaping, self-containment, values equal to DuckDB."""

from __future__ import annotations

import dataclasses
import errno
import re
from collections import Counter
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest
from browser import table_mismatches
from store_samples import (
    EVIL_NAME,
    MANY_CATEGORIES,
    MANY_MODELS,
    build_many_models_store,
    build_sample_store,
    inference_paths,
    model_result,
)

from flows.benchmark import comparison_rows
from tasks.report.charts import Point, Series, line_chart, scatter_chart
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
    assert {"speed-auroc-demo_grid", "speed-auroc-demo_leather"} <= ids
    assert {"trend-image_auroc-demo_grid", "trend-image_auroc-demo_leather"} <= ids
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


def test_the_headline_shows_each_models_deployable_path(sample):
    db, run_id, reports = sample
    cells = read_cells(render_report(db, run_id, reports).read_text()).cells
    by_key = {(c["model"], c["category"], c["metric"]): c for c in cells}
    # PatchCore's int8 keeps its AUROC: the fastest of our paths (anomalib's faster one
    # is only a comparison); EfficientAD's int8 moves it by 0.02, so openvino-fp32
    patchcore = by_key[("patchcore", "demo_grid", "deployable_path")]
    assert patchcore["text"] == "openvino-int8"
    assert by_key[("patchcore", "demo_grid", "p50_ms")]["value"] == "10.0"
    assert by_key[("patchcore", "demo_grid", "throughput_ips")]["text"] == "100.0"
    assert by_key[("efficientad", "demo_grid", "deployable_path")]["text"] == "openvino-fp32"
    assert by_key[("efficientad", "demo_grid", "p50_ms")]["text"] == "25.0"


def test_a_run_without_a_deployable_path_says_so(tmp_path):
    db = tmp_path / "r.duckdb"
    store = ResultStore(db)
    store.start_run("r", flow_run_id=None, dataset="demo", data_root="data/demo",
                    categories=["demo_grid"], models=["patchcore"], profile="quick",
                    environment={})  # fmt: skip
    paths = [dataclasses.replace(p, auroc_delta=-0.1) for p in inference_paths("x", 0.9)]
    paths[0] = dataclasses.replace(paths[0], status="failed", p50_ms=None)  # torch-fp32
    result = model_result("patchcore", "demo_grid", image_auroc=0.9)
    store.write_result("r", dataclasses.replace(result, latency=paths))
    store.finish_run("r", "completed")
    cells = read_cells(render_report(db, "r", tmp_path / "reports").read_text()).cells
    path = next(c for c in cells if c["metric"] == "deployable_path")
    assert path["available"] == "false" and path["text"] == "n/a"
    with duckdb.connect(str(db), read_only=True) as con:
        assert table_mismatches(con, "r", cells) == []


def test_eight_models_get_a_row_each_and_a_look_of_their_own(tmp_path):
    db = tmp_path / "r.duckdb"
    run_id = build_many_models_store(db)
    html = render_report(db, run_id, tmp_path / "reports").read_text()
    reader = read_cells(html)
    with duckdb.connect(str(db), read_only=True) as con:
        assert table_mismatches(con, run_id, reader.cells) == []
    rows = re.findall(r'<tr data-category="(\w+)" data-model="(\w+)"', html)
    assert rows[: len(MANY_MODELS)] == [(MANY_CATEGORIES[0], m) for m in MANY_MODELS]
    assert len(rows) == len(MANY_MODELS) * (len(MANY_CATEGORIES) + 1)  # + the averages
    swatches = re.findall(r'class="swatch" style="background: (#\w+)"', html)
    assert len(set(swatches)) == len(MANY_MODELS)
    assert [i for i, n in Counter(reader.ids).items() if n > 1] == []  # ids unique in the page
    for category in MANY_CATEGORIES:
        speed = html[html.index(f'<svg id="speed-auroc-{category}"') :].split("</svg>", 1)[0]
        points = re.findall(r'<g class="point" data-model="(\w+)" data-path="([\w-]+)"', speed)
        assert {m for m, _ in points} == set(MANY_MODELS)
        assert len(points) == len(set(points)) == len(MANY_MODELS) * 5  # 5 timed paths each
        assert speed.count('<g class="ring"') == len(MANY_MODELS)  # one deployable each


def test_comparison_artifact_has_a_row_per_category_and_model_with_its_deployable_path():
    results = [
        dataclasses.replace(
            model_result(model, category, image_auroc=0.9),
            latency=inference_paths(model, 0.9, speed=1 + i),
        )
        for category in reversed(MANY_CATEGORIES)
        for i, model in enumerate(reversed(MANY_MODELS))
    ]
    rows = comparison_rows(results, MANY_MODELS, MANY_CATEGORIES)
    assert [(r["category"], r["model"]) for r in rows] == [
        (c, m) for c in MANY_CATEGORIES for m in MANY_MODELS
    ]
    patchcore = rows[0]
    assert patchcore["deployable_path"] == "openvino-int8"
    assert patchcore["p50_ms"] == 10.0 / len(MANY_MODELS)  # its speed factor is 8
    assert rows[1]["deployable_path"] == "openvino-fp32"
    assert rows[1]["img_per_s"] == pytest.approx(1000 * 7 / 25.0)


def _texts(svg: str, kind: str) -> list[str]:
    return re.findall(rf'<g class="{kind}">.*?<text[^>]*>([^<]*)</text>', svg, re.S)


def test_chart_ticks_name_their_values_and_differ():
    # AUROCs that differ in the third decimal, and all at 1.0: never "1, 1" or a rounded tick
    for ys in ([0.9975, 0.999, 1.0], [1.0, 1.0], [0.5, 0.98]):
        points = [Point(x=10.0 * (i + 1), y=y, label=str(i)) for i, y in enumerate(ys)]
        svg = scatter_chart("c", points, x_label="img/s", y_label="AUROC", log_x=True, y_max=1.0)
        labels = _texts(svg, "ytick")
        assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
        values = [float(v) for v in labels]
        assert max(values) <= 1.0, labels
        steps = {round(b - a, 9) for a, b in zip(values, values[1:], strict=False)}
        assert len(steps) == 1, labels  # evenly spaced as written: no label was rounded
    losses = [Series("loss", [(s, 10 ** (-s / 50)) for s in range(200)])]
    svg = line_chart("l", losses, x_label="step", y_label="loss", log_y=True)
    assert _texts(svg, "ytick") == ["0.0001", "0.001", "0.01", "0.1", "1"]


def test_charts_are_inline_svg_with_text_as_text():
    name = "a $x$ <b> & category"
    series = [Series(name, [(0, 0), (1, 1)], attrs={"model": "m<1>"})]
    svg = line_chart(
        "roc-evil", series, x_label="false positive rate", y_label="true positive rate", title=name
    )
    assert svg.startswith('<svg id="roc-evil" class="chart"') and svg.endswith("</svg>")
    assert "<?xml" not in svg and "<!DOCTYPE" not in svg and "<metadata" not in svg
    assert "http" not in svg and "<style" not in svg and "<script" not in svg
    assert ">false positive rate</text>" in svg  # text, not glyph outlines
    assert "a $x$ &lt;b&gt; &amp; category</text>" in svg  # escaped, no maths
    assert '<g class="series" data-model="m&lt;1&gt;"><title>a $x$ &lt;b&gt;' in svg
