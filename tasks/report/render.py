"""The benchmark's HTML report: one self-contained file rendered from the DuckDB store.

Everything shown is read back from DuckDB (never from in-memory results), so the report
is exactly what was stored. The file has inline CSS, inline SVG charts (tasks.report.charts)
and overlay images as base64 data URIs: no scripts, no external URL. It is written
atomically to `reports/<run-id>/report.html` and `reports/latest.html`.

Elements carry stable ids and data attributes, e.g.
`<td data-model="patchcore" data-category="demo_grid" data-metric="image_auroc"
data-value="0.987">`, `<svg id="roc-demo_grid">`, `<svg id="loss-patchcore-demo_grid">`,
so a browser test can compare the page with the database.

Example:
    >>> render_report("results/benchmark.duckdb", "2025-01-01T00-00-00")
    PosixPath('reports/2025-01-01T00-00-00/report.html')
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from PIL import Image

from tasks.report.charts import (
    DASHES,
    PALETTE,
    Marker,
    Point,
    Series,
    line_chart,
    scatter_chart,
    thin,
)
from tasks.results.store.result_store import CORE_METRICS, ResultStore
from tasks.results.types import AUROC_TOLERANCE, LatencyResult, deployable
from tasks.runtime.paths import REPO_ROOT

log = logging.getLogger(__name__)

TEMPLATES = REPO_ROOT / "templates"
TABLE_METRICS = ("image_auroc", "pixel_auroc", "image_f1", "aupro")
METRIC_NAMES = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "image_f1": "Image F1",
    "pixel_f1": "Pixel F1",
    "aupro": "AUPRO",
}
MODEL_NAMES = {"patchcore": "PatchCore", "efficientad": "EfficientAD"}
OVERLAY_MAX_PX = 360  # overlays are downscaled so the report stays small


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
    write_atomic(report_path, html)
    write_atomic(reports_dir / "latest.html", html)
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


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write to a temporary file beside `path`, then rename over it (readers never see
    half a report). The file gets `mode` (readable by others: reports are shared)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- reading the store -------------------------------------------------------------------


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
    comparison = [_clean(r) for r in comparison.to_dict("records")]

    models = list(dict.fromkeys([*run["models"], *(r["model"] for r in results)]))
    categories = list(dict.fromkeys([*run["categories"], *(r["category"] for r in results)]))
    result_by_key = {(r["model"], r["category"]): r for r in results}
    return {
        "run": _run_header(run),
        "models": models,
        "categories": categories,
        "table": _comparison_table(models, categories, metrics, averages, latency, result_by_key),
        "all_metrics": metrics,
        "latency": latency,
        "roc_charts": _roc_charts(models, categories, roc, metrics),
        "loss_charts": _loss_charts(attempts, losses, recoveries),
        "stage_failures": [s for s in stages if s["status"] == "failed"],
        "stages": stages,
        "validation": _validation_summary(validations, run),
        "overlays": _overlays(artifacts),
        "other_artifacts": [a for a in artifacts if not a["kind"].startswith("overlay")],
        "trend": _trend(comparison, history, run_id, tolerance),
        "provenance": _provenance(results),
        "environment": _environment(run, results, latency),
        "inference_paths": inference_path_tables(latency, models, categories),
        "score_counts": score_counts,
    }


def _run_header(run: dict) -> dict:
    started, ended = run["started_at"], run["ended_at"]
    run = dict(run)
    run["duration"] = _duration((ended - started).total_seconds()) if ended else None
    run["environment"] = json.loads(run["environment"]) if run["environment"] else {}
    return run


def _comparison_table(models, categories, metrics, averages, latency, result_by_key) -> dict:
    metric_at = {(m["model"], m["category"], m["metric"]): m for m in metrics}
    headline_latency = {}
    for row in latency:  # idx 0 first: the headline figure per (model, category)
        if row["p50_ms"] is not None:  # a failed or skipped path has no figures
            headline_latency.setdefault((row["model"], row["category"]), row)
    body = []
    for category in categories:
        cells = {}
        for model in models:
            result = result_by_key.get((model, category))
            cells[model] = {
                "present": result is not None,
                "fallback": bool(result and result["weights_source"] == "fallback"),
                "metrics": {m: metric_at.get((model, category, m)) for m in TABLE_METRICS},
                "latency": headline_latency.get((model, category)),
                "cached_from": result.get("cached_from") if result else None,
            }
        body.append({"category": category, "cells": cells})
    average = {(a["model"], a["metric"]): a for a in averages if a["metric"] in TABLE_METRICS}
    latency_avg = {}
    for model in models:
        rows = [headline_latency[k] for k in headline_latency if k[0] == model]
        if rows:
            latency_avg[model] = {
                key: sum(r[key] for r in rows) / len(rows)
                for key in ("p50_ms", "p95_ms", "throughput_ips")
            }
    return {
        "metrics": TABLE_METRICS,
        "rows": body,
        "average": average,
        "latency_average": latency_avg,
        "any_fallback": any(r["weights_source"] == "fallback" for r in result_by_key.values()),
        "cached": [r for r in result_by_key.values() if r.get("cached_from")],
    }


def _roc_charts(models, categories, roc, metrics) -> list[dict]:
    auroc = {(m["model"], m["category"], m["metric"]): m["value"] for m in metrics}
    charts = []
    for category in categories:
        chart = {"category": category, "levels": []}
        for level in ("image", "pixel"):
            curves = [r for r in roc if r["category"] == category and r["level"] == level]
            curves.sort(key=lambda r: models.index(r["model"]) if r["model"] in models else 99)
            if not curves:
                continue
            series = []
            for curve in curves:
                value = auroc.get((curve["model"], category, f"{level}_auroc"))
                label = model_name(curve["model"]) + (
                    f" (AUROC {value:.3f})" if value is not None else ""
                )
                points = list(zip(curve["fpr"], curve["tpr"], strict=True))
                series.append(
                    Series(
                        label,
                        _thin_curve(points),
                        color=model_color(curve["model"]),
                        width=2.2,
                        attrs={"model": curve["model"]},
                    )
                )
            suffix = "" if level == "image" else "-pixel"
            chart["levels"].append(
                {
                    "level": level,
                    "svg": line_chart(
                        f"roc-{category}{suffix}",
                        series,
                        title=f"{category}: {level}-level ROC",
                        x_label="false positive rate",
                        y_label="true positive rate",
                        x_range=(0.0, 1.0),
                        y_range=(0.0, 1.0),
                        diagonal=True,
                        width=360,
                        height=280,
                    ),
                }
            )
        charts.append(chart)
    return charts


def _loss_charts(attempts, losses, recoveries=()) -> list[dict]:
    keys = list(dict.fromkeys((a["model"], a["category"]) for a in attempts))
    keys += [k for k in dict.fromkeys((x["model"], x["category"]) for x in losses) if k not in keys]
    charts = []
    for model, category in keys:
        tries = [dict(a) for a in attempts if (a["model"], a["category"]) == (model, category)]
        rolled = [r for r in recoveries if (r["model"], r["category"]) == (model, category)]
        for a in tries:
            a["recoveries"] = [r for r in rolled if r["attempt"] == a["attempt"]]
        curves = [x for x in losses if (x["model"], x["category"]) == (model, category)]
        chosen = {a["attempt"] for a in tries if a["chosen"]}
        loss_names = list(dict.fromkeys(c["loss_name"] for c in curves))
        series = []
        for curve in curves:
            attempt = curve["attempt"]
            is_chosen = attempt in chosen
            points = [
                (float(s), float("nan") if v is None else float(v))
                for s, v in zip(curve["steps"], curve["values"], strict=True)
            ]
            series.append(
                Series(
                    f"attempt {attempt} · {curve['loss_name']}"
                    + (" (chosen)" if is_chosen else ""),
                    thin(points),
                    color=PALETTE[(attempt - 1) % len(PALETTE)],
                    dash=DASHES[loss_names.index(curve["loss_name"]) % len(DASHES)],
                    width=2.4 if is_chosen else 1.3,
                    opacity=1.0 if is_chosen or not chosen else 0.55,
                    attrs={"attempt": str(attempt), "chosen": str(is_chosen).lower()},
                )
            )
        markers = [
            Marker(
                a["spike_step"],
                a["spike_value"],
                f"attempt {a['attempt']}: spike in {a['spike_loss_name']} at step "
                f"{a['spike_step']} ({format_number(a['spike_magnitude'])})",
            )
            for a in tries
            if a["spike_step"] is not None and a["spike_value"] is not None
        ] + [
            Marker(
                r["onset_step"],
                r["value"],
                f"attempt {r['attempt']}: spike in {r['loss_name']} at step {r['onset_step']}, "
                f"rolled back to step {r['restored_step']}",
            )
            for r in rolled
            if r["value"] is not None
        ]
        values = [v for c in curves for v in c["values"] if v is not None and math.isfinite(v)]
        svg = None
        if series:
            svg = line_chart(
                f"loss-{model}-{category}",
                series,
                title=f"{model_name(model)} · {category}: training loss",
                x_label="optimizer step",
                y_label="loss",
                log_y=bool(values) and min(values) > 0,
                markers=markers,
                width=560,
                height=280,
            )
        charts.append({"model": model, "category": category, "svg": svg, "attempts": tries})
    return charts


def _validation_summary(validations, run) -> dict:
    failed = [v for v in validations if not v["passed"]]
    return {
        "rules": validations,
        "failing": failed,
        "passing": [v for v in validations if v["passed"]],
        "failed": len(failed),
        "total": len(validations),
        "notes": run["dataset_notes"] or [],
    }


def _overlays(artifacts) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for artifact in artifacts:
        if not artifact["kind"].startswith("overlay"):
            continue
        path = Path(artifact["path"])
        groups.setdefault((artifact["model"], artifact["category"]), []).append(
            {
                "kind": artifact["kind"],
                "name": path.name,
                "path": artifact["path"],
                "data_uri": image_data_uri(path),
            }
        )
    return [{"model": m, "category": c, "images": images} for (m, c), images in groups.items()]


def _trend(comparison, history: pd.DataFrame, run_id: str, tolerance: float) -> dict:
    rows = [c for c in comparison if c["metric"] in CORE_METRICS]
    rows.sort(key=lambda c: not c["regression"])  # stable: regressions first
    compared = [c for c in rows if c["previous_run_id"] is not None]
    svg = None
    run_ids = list(dict.fromkeys(history["run_id"])) if len(history) else []
    if len(run_ids) >= 2:
        series = []
        for i, ((model, category), group) in enumerate(history.groupby(["model", "category"])):
            points = [
                (float(run_ids.index(r)), float(v))
                for r, v in zip(group["run_id"], group["image_auroc"], strict=True)
                if pd.notna(v)
            ]
            series.append(
                Series(
                    f"{model_name(model)} · {category}",
                    points,
                    color=model_color(model),
                    dash=DASHES[i % len(DASHES)],
                    attrs={"model": model, "category": category},
                )
            )
        svg = line_chart(
            "trend-image_auroc",
            series,
            title="image AUROC over recent runs",
            x_label="run (oldest → newest)",
            y_label="image AUROC",
            x_range=(-0.3, len(run_ids) - 0.7),
            x_ticks_labels=[_short_run_id(r) for r in run_ids],
            width=620,
            height=280,
        )
    return {
        "rows": rows,
        "compared": len(compared),
        "regressions": [c for c in rows if c["regression"]],
        "svg": svg,
        "runs": len(run_ids),
        "current": run_id,
        "tolerance": tolerance,
    }


def _provenance(results) -> list[dict]:
    """One card per model and weights; settings shared by its categories are listed
    once, settings that differ (e.g. masks, test image count) per category."""
    groups: dict[tuple, dict] = {}
    for r in results:
        weights = json.loads(r["weights"])
        key = (r["model"], r["weights"], r["weights_source"], r["paper_configuration"])
        group = groups.setdefault(
            key,
            {
                "model": r["model"],
                "categories": [],
                "weights_source": r["weights_source"],
                "weights": weights,
                "paper_configuration": r["paper_configuration"],
                "paper_text": paper_configuration_text(r, weights),
                "devices": set(),
                "workers": {},
                "notes": [],
                "per_category": {},
            },
        )
        group["categories"].append(r["category"])
        group["devices"].add(r["device"])
        group["workers"][r["category"]] = r.get("worker") or "?"
        group["notes"] += [n for n in r["notes"] if n not in group["notes"]]
        group["per_category"][r["category"]] = flatten(json.loads(r["settings"]))
    for group in groups.values():
        per_category = group.pop("per_category")
        names = list(dict.fromkeys(k for flat in per_category.values() for k in flat))
        group["settings"] = {}
        for name in names:
            values = {c: flat.get(name) for c, flat in per_category.items()}
            distinct = {json.dumps(v, sort_keys=True, default=str) for v in values.values()}
            if len(distinct) == 1:
                group["settings"][name] = next(iter(values.values()))
            else:
                group["settings"][name] = ", ".join(f"{c}: {v}" for c, v in values.items())
    return list(groups.values())


def paper_configuration_text(result: dict, weights: dict) -> str:
    """Say plainly whether the numbers are the paper's setup; a fallback never is."""
    if result["paper_configuration"]:
        return "yes"
    if result["weights_source"] == "fallback":
        what = weights.get("backbone") or (
            "distilled teacher" if "teacher" in weights else "another backbone"
        )
        reason = weights.get("reason") or weights.get("fallback_reason")
        label = weights.get("weights")
        detail = "".join(f"; {x}" for x in (label, reason) if x)
        return f"no (fallback weights: {what}{detail})"
    if result["weights_source"] != "pretrained":
        return f"no (weights source: {result['weights_source']})"
    return f"no (profile {result['profile']}: settings differ from the paper's)"


def _environment(run, results, latency) -> dict:
    env = json.loads(run["environment"]) if run["environment"] else {}
    packages = env.pop("packages", {}) or {}
    devices = sorted({r["device"] for r in results if r["device"]})
    timing = sorted(
        {
            (
                x["device"],
                x.get("hardware"),
                x["threads"],
                x["precision"],
                x["path"],
                x["batch_size"],
            )
            for x in latency
        },
        key=str,
    )
    return {"host": env, "packages": packages, "devices": devices, "timing": timing}


# ---- inference paths ---------------------------------------------------------------------

ANOMALIB_PATHS = ("anomalib-torch", "anomalib-openvino")
_LATENCY_FIELDS = set(LatencyResult.__dataclass_fields__)


def inference_path_tables(latency: list[dict], models: list[str], categories: list[str]) -> list:
    """Per (model, category): every inference path with p50, p95, img/s, AUROC, its delta
    to torch-fp32 and its speed-up over anomalib's two paths (p50 ratio), the deployable
    path (fastest within AUROC_TOLERANCE of fp32) and a speed-versus-AUROC chart."""
    tables = []
    for model in models:
        for category in categories:
            rows = [r for r in latency if r["model"] == model and r["category"] == category]
            if rows and "image_auroc" in rows[0]:
                tables.append(_inference_table(model, category, rows))
    return tables


def _inference_table(model: str, category: str, rows: list[dict]) -> dict:
    results = [LatencyResult(**{k: v for k, v in r.items() if k in _LATENCY_FIELDS}) for r in rows]
    best = deployable(results)
    anomalib_p50 = {r.path: r.p50_ms for r in results if r.path in ANOMALIB_PATHS and r.p50_ms}
    table_rows = []
    for r in results:
        speedup = {
            path: (p50 / r.p50_ms if r.p50_ms else None) for path, p50 in anomalib_p50.items()
        }
        table_rows.append({"row": r, "speedup": speedup, "deployable": r is best})
    points = [
        Point(
            x=1000 / r.p50_ms,
            y=r.image_auroc,
            label=r.path,
            color=PALETTE[3] if r.path in ANOMALIB_PATHS else model_color(model),
            highlight=r is best,
            attrs={"path": r.path},
        )
        for r in results
        if r.p50_ms and r.image_auroc is not None
    ]
    chart = scatter_chart(
        f"speed-auroc-{model}-{category}",
        points,
        x_label="images/s at batch 1, decode included",
        y_label="image AUROC",
        title=f"{model_name(model)} · {category}",
        log_x=True,
    )
    return {
        "model": model,
        "category": category,
        "rows": table_rows,
        "anomalib_paths": [p for p in ANOMALIB_PATHS if p in anomalib_p50],
        "deployable": best,
        "tolerance": AUROC_TOLERANCE,
        "chart": chart if points else None,
        "hardware": sorted({r.hardware for r in results if r.hardware}),
    }


# ---- small helpers -----------------------------------------------------------------------


def image_data_uri(path: Path) -> str | None:
    """The image as a JPEG data URI, downscaled to OVERLAY_MAX_PX; None if unreadable.
    JPEG because overlays are photographs: a tenth of the PNG's size at this quality."""
    try:
        with Image.open(path) as image:
            image.thumbnail((OVERLAY_MAX_PX, OVERLAY_MAX_PX))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=88)
    except (OSError, ValueError) as error:
        log.warning("overlay %s not embedded: %s", path, error)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def flatten(settings: dict, prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {"model": {"max_steps": 5}} -> {"model.max_steps": 5}."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def model_color(model: str) -> str:
    known = list(MODEL_NAMES)
    index = known.index(model) if model in known else 2 + sum(map(ord, model)) % 5
    return PALETTE[index]


def format_number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _thin_curve(points: list[tuple[float, float]], max_points: int = 400) -> list[tuple]:
    if len(points) <= max_points:
        return points
    step = (len(points) - 1) / (max_points - 1)
    return [points[round(i * step)] for i in range(max_points)]


def _short_run_id(run_id: str) -> str:
    return run_id if len(run_id) <= 16 else "…" + run_id[-15:]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _clean(row: dict) -> dict:
    """pandas NaN/NaT/numpy scalars to plain Python (None for missing)."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "tolist") and not isinstance(value, str):
            value = value.tolist()
        if isinstance(value, float) and math.isnan(value):
            value = None
        elif value is pd.NaT:
            value = None
        elif hasattr(value, "to_pydatetime"):
            value = value.to_pydatetime()
        out[key] = value
    return out
