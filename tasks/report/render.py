"""The benchmark's HTML report: one self-contained file rendered from the DuckDB store.

Everything shown is read back from DuckDB (never from in-memory results), so the report
is exactly what was stored. The file has inline CSS, inline SVG charts
(`tasks.report.charts`) and overlay images as base64 data URIs: no scripts, no external
URL. It is written atomically to `reports/<run-id>/report.html` and
`reports/latest.html`. The sections are built in `tasks.report.sections`.

The first screen is for decisions: a results table with one row per (category, model),
its test metrics beside its deployable inference path (name, p50, img/s), and one
speed-versus-AUROC chart per category covering every model and path. Above the table
sits the place for issue 28's recommendation per category (`decision`).

Elements carry stable ids and data attributes, e.g.
`<td data-model="patchcore" data-category="demo_grid" data-metric="image_auroc"
data-value="0.987">`, `<svg id="roc-demo_grid">`, `<svg id="loss-patchcore-demo_grid">`,
`<svg id="speed-auroc-demo_grid">`, `<svg id="trend-image_auroc-demo_grid">`, so a
browser test can compare the page with the database.

Example:
    >>> render_report("results/benchmark.duckdb", "2025-01-01T00-00-00")
    PosixPath('reports/2025-01-01T00-00-00/report.html')
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from tasks.report.format import METRIC_NAMES, clean, duration, format_number, model_name
from tasks.report.sections import (
    environment,
    inference_path_tables,
    loss_charts,
    model_styles,
    overlays,
    path_results,
    provenance,
    results_table,
    roc_charts,
    speed_charts,
    trend,
    validation_summary,
)
from tasks.results.store.result_store import ResultStore
from tasks.runtime.paths import REPO_ROOT
from tasks.runtime.writes import write_atomic

log = logging.getLogger(__name__)

TEMPLATES = REPO_ROOT / "templates"


def render_report(
    db_path: str | Path,
    run_id: str,
    reports_dir: str | Path = "reports",
    tolerance: float = 0.02,
) -> Path:
    """Render the run's report from DuckDB; returns reports/<run-id>/report.html.
    `tolerance`: the metric drop against the previous comparable run that is flagged."""
    if not run_id or run_id in (".", "..") or any(c in run_id for c in "/\\\0"):
        raise ValueError(f"run id {run_id!r} cannot be used as a folder name")
    html = render_html(load_report_data(db_path, run_id, tolerance))
    reports_dir = Path(reports_dir)
    report_path = reports_dir / run_id / "report.html"
    # readers never see half a report; a full or read-only disk fails naming the file
    write_atomic(report_path, html, "report")  # readable by others: reports are shared
    write_atomic(reports_dir / "latest.html", html, "report")
    log.info("report written: %s", report_path)
    return report_path


def render_html(data: dict[str, Any]) -> str:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = format_number
    env.globals["model_name"] = model_name
    env.globals["metric_name"] = lambda m: METRIC_NAMES.get(m, m)
    return env.get_template("report.html.j2").render(**data)


def load_report_data(db_path: str | Path, run_id: str, tolerance: float = 0.02) -> dict[str, Any]:
    """Everything the template shows, read from the store."""
    if not Path(db_path).is_file():
        raise FileNotFoundError(f"no results store at {db_path}: run the benchmark first")
    data = ResultStore(db_path).report_data(run_id, tolerance)
    run, results, metrics = data["run"], data["results"], data["metrics"]
    averages, latency, attempts = data["averages"], data["latency"], data["attempts"]
    losses, roc, validations = data["losses"], data["roc"], data["validations"]
    recoveries, stages = data["recoveries"], data["stages"]
    artifacts, score_counts = data["artifacts"], data["score_counts"]
    comparison, history = data["comparison"], data["history"]
    comparison = [clean(r) for r in comparison.to_dict("records")]

    models = list(dict.fromkeys([*run["models"], *(r["model"] for r in results)]))
    categories = list(dict.fromkeys([*run["categories"], *(r["category"] for r in results)]))
    result_by_key = {(r["model"], r["category"]): r for r in results}
    style = model_styles(models)
    paths = path_results(latency)
    return {
        "run": _run_header(run),
        "models": models,
        "categories": categories,
        # issue 28 fills this: the recommendation per category, the critical-difference
        # diagram; templates/_decision.html.j2 shows it above the results table
        "decision": None,
        "table": results_table(models, categories, metrics, averages, paths, result_by_key, style),
        "speed_charts": speed_charts(models, categories, paths, style),
        "all_metrics": metrics,
        "latency": latency,
        "roc_charts": roc_charts(models, categories, roc, metrics, style),
        "loss_charts": loss_charts(attempts, losses, recoveries),
        "stage_failures": [s for s in stages if s["status"] == "failed"],
        "stages": stages,
        "validation": validation_summary(validations, run),
        "overlays": overlays(artifacts),
        "other_artifacts": [a for a in artifacts if not a["kind"].startswith("overlay")],
        "trend": trend(comparison, history, run_id, tolerance, style),
        "provenance": provenance(results),
        "environment": environment(run, results, latency),
        "inference_paths": inference_path_tables(paths, models, categories),
        "score_counts": score_counts,
    }


def _run_header(run: dict) -> dict:
    started, ended = run["started_at"], run["ended_at"]
    run = dict(run)
    run["duration"] = duration((ended - started).total_seconds()) if ended else None
    run["environment"] = json.loads(run["environment"]) if run["environment"] else {}
    return run
