"""The report's sections, each built from the rows read back from the store.

`tasks.report.render` reads the store once and hands each section its rows: the
headline table (one row per category and model, with the model's deployable inference
path), one speed-versus-AUROC chart per category, the inference-path tables, ROC and loss
charts, the validation summary, overlays, the trend against earlier runs, provenance
cards and the environment. Nothing here assumes two models: each model of the run gets
a style of its own (`model_styles`) that every chart and the table's swatches share.

Example:
    >>> paths = path_results(latency_rows)  # doctest: +SKIP
    >>> inference_path_tables(paths, ["patchcore"], ["demo_grid"])[0]["deployable"].path
    'openvino-int8'
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from tasks.report.charts import (
    DASHES,
    MARKERS,
    Key,
    Marker,
    Point,
    Series,
    Style,
    line_chart,
    scatter_chart,
    styles,
    thin,
)
from tasks.report.format import (
    flatten,
    format_number,
    image_data_uri,
    model_name,
    short_run_id,
    thin_curve,
)
from tasks.results.store.rows import CORE_METRICS
from tasks.results.types import AUROC_TOLERANCE, LatencyResult, deployable

TABLE_METRICS = ("image_auroc", "pixel_auroc", "image_f1", "aupro")
ANOMALIB_PATHS = ("anomalib-torch", "anomalib-openvino")
_LATENCY_FIELDS = set(LatencyResult.__dataclass_fields__)

Cell = tuple[str, str]  # (model, category)


def model_styles(models: list[str]) -> dict[str, Style]:
    """One style (colour, marker, dash) per model of the report, in the run's order, so
    a model looks the same in every chart and the table's swatch matches it."""
    return dict(zip(models, styles(len(models)), strict=True))


def path_results(latency: list[dict]) -> dict[Cell, list[LatencyResult]]:
    """The stored latency rows per (model, category) as LatencyResults, in `idx` order."""
    grouped: dict[Cell, list[LatencyResult]] = {}
    for row in latency:
        if "image_auroc" not in row:  # a store from before paths were compared
            continue
        fields = {k: v for k, v in row.items() if k in _LATENCY_FIELDS}
        grouped.setdefault((row["model"], row["category"]), []).append(LatencyResult(**fields))
    return grouped


def results_table(models, categories, metrics, averages, paths, result_by_key, style) -> dict:
    """The headline table: one row per (category, model) with its test metrics and its
    deployable path (name, p50, img/s); then one average row per model."""
    metric_at = {(m["model"], m["category"], m["metric"]): m for m in metrics}
    body = []
    for category in categories:
        for i, model in enumerate(models):
            result = result_by_key.get((model, category))
            measured = paths.get((model, category), [])
            body.append(
                {
                    "category": category,
                    "model": model,
                    "first": i == 0,
                    "style": style[model],
                    "present": result is not None,
                    "fallback": bool(result and result["weights_source"] == "fallback"),
                    "metrics": {m: metric_at.get((model, category, m)) for m in TABLE_METRICS},
                    "measured": bool(measured),
                    "deployable": deployable(measured),
                    "cached_from": result.get("cached_from") if result else None,
                }
            )
    average = {(a["model"], a["metric"]): a for a in averages if a["metric"] in TABLE_METRICS}
    speed_average = {}
    for model in models:
        chosen = [r["deployable"] for r in body if r["model"] == model and r["deployable"]]
        if chosen:
            speed_average[model] = {
                "p50_ms": sum(d.p50_ms for d in chosen) / len(chosen),
                "throughput_ips": sum(d.throughput_ips for d in chosen) / len(chosen),
                "count": len(chosen),
                "total": sum(1 for r in body if r["model"] == model and r["measured"]),
            }
    return {
        "metrics": TABLE_METRICS,
        "rows": body,
        "average": average,
        "speed_average": speed_average,
        "styles": style,
        "tolerance": AUROC_TOLERANCE,
        "hardware": sorted({r.hardware for rows in paths.values() for r in rows if r.hardware}),
        "any_fallback": any(r["weights_source"] == "fallback" for r in result_by_key.values()),
        "cached": [r for r in result_by_key.values() if r.get("cached_from")],
    }


def speed_charts(models, categories, paths, style) -> list[dict]:
    """One speed-versus-AUROC chart per category: every model (colour) and inference path
    (marker), each model's deployable path ringed."""
    names = list(dict.fromkeys(r.path for rows in paths.values() for r in rows))
    path_marker = {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(names)}
    charts = []
    for category in categories:
        points, shown_models, shown_paths = [], [], []
        for model in models:
            rows = paths.get((model, category), [])
            best = deployable(rows)
            for r in rows:
                if not (r.p50_ms and r.image_auroc is not None):
                    continue
                ips = 1000 / r.p50_ms
                points.append(
                    Point(
                        x=ips,
                        y=r.image_auroc,
                        label=f"{model_name(model)} · {r.path}: {ips:.1f} img/s, "
                        f"AUROC {r.image_auroc:.3f}" + (" (deployable)" if r is best else ""),
                        color=style[model].color,
                        marker=path_marker[r.path],
                        highlight=r is best,
                        attrs={"model": model, "path": r.path},
                    )
                )
                shown_models += [model] if model not in shown_models else []
                shown_paths += [r.path] if r.path not in shown_paths else []
        if not points:
            continue
        legend = [Key(model_name(m), style[m].color, "o", group="model") for m in shown_models]
        legend += [Key(p, marker=path_marker[p], group="path") for p in names if p in shown_paths]
        legend.append(Key("deployable path", ring=True, group="path"))
        svg = scatter_chart(
            f"speed-auroc-{category}",
            points,
            x_label="images/s at batch 1, decode included",
            y_label="image AUROC",
            title=f"{category}: speed and accuracy",
            log_x=True,
            legend=legend,
            y_max=1.0,
            width=560,
            height=300,
        )
        charts.append({"category": category, "svg": svg, "models": shown_models})
    return charts


def roc_charts(models, categories, roc, metrics, style) -> list[dict]:
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
                look = style.get(curve["model"]) or styles(1)[0]
                label = model_name(curve["model"]) + (
                    f" (AUROC {value:.3f})" if value is not None else ""
                )
                points = list(zip(curve["fpr"], curve["tpr"], strict=True))
                series.append(
                    Series(
                        label,
                        thin_curve(points),
                        color=look.color,
                        dash=look.dash,
                        marker=look.marker if len(curves) > 1 else None,
                        width=2.0,
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
                        width=400,
                        height=300,
                    ),
                }
            )
        charts.append(chart)
    return charts


def loss_charts(attempts, losses, recoveries=()) -> list[dict]:
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
        loss_style = styles(len(loss_names))
        series = []
        for curve in curves:
            attempt = curve["attempt"]
            is_chosen = attempt in chosen
            points = [
                (float(s), float("nan") if v is None else float(v))
                for s, v in zip(curve["steps"], curve["values"], strict=True)
            ]
            series.append(
                Series(  # a colour per loss, a dash pattern per attempt
                    f"attempt {attempt} · {curve['loss_name']}"
                    + (" (chosen)" if is_chosen else ""),
                    thin(points),
                    color=loss_style[loss_names.index(curve["loss_name"])].color,
                    dash=DASHES[(attempt - 1) % len(DASHES)],
                    width=2.2 if is_chosen else 1.2,
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


def validation_summary(validations, run) -> dict:
    failed = [v for v in validations if not v["passed"]]
    return {
        "rules": validations,
        "failing": failed,
        "passing": [v for v in validations if v["passed"]],
        "failed": len(failed),
        "total": len(validations),
        "notes": run["dataset_notes"] or [],
    }


def overlays(artifacts) -> list[dict]:
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


def trend(comparison, history: pd.DataFrame, run_id: str, tolerance: float, style) -> dict:
    """The comparison with the previous comparable run (regressions first), and one chart
    per category of image AUROC over the recent comparable runs, a line per model."""
    rows = [c for c in comparison if c["metric"] in CORE_METRICS]
    rows.sort(key=lambda c: not c["regression"])  # stable: regressions first
    compared = [c for c in rows if c["previous_run_id"] is not None]
    run_ids = list(dict.fromkeys(history["run_id"])) if len(history) else []
    charts = []
    if len(run_ids) >= 2:
        models = list(style) + sorted(set(history["model"]) - set(style))
        looks = dict(zip(models, styles(len(models)), strict=True))
        for category, in_category in history.groupby("category", sort=False):
            series = []
            for model in [m for m in models if m in set(in_category["model"])]:
                group = in_category[in_category["model"] == model]
                points = [
                    (float(run_ids.index(r)), float(v))
                    for r, v in zip(group["run_id"], group["image_auroc"], strict=True)
                    if pd.notna(v)
                ]
                series.append(
                    Series(
                        model_name(model),
                        points,
                        color=looks[model].color,
                        dash=looks[model].dash,
                        marker=looks[model].marker,
                        attrs={"model": model, "category": category},
                    )
                )
            svg = line_chart(
                f"trend-image_auroc-{category}",
                series,
                title=f"{category}: image AUROC over recent runs",
                x_label="run (oldest → newest)",
                y_label="image AUROC",
                x_range=(-0.3, len(run_ids) - 0.7),
                x_tick_labels=[short_run_id(r) for r in run_ids],
                width=460,
                height=260,
            )
            charts.append({"category": category, "svg": svg})
    return {
        "rows": rows,
        "compared": len(compared),
        "regressions": [c for c in rows if c["regression"]],
        "charts": charts,
        "runs": len(run_ids),
        "current": run_id,
        "tolerance": tolerance,
    }


def provenance(results) -> list[dict]:
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
        # each part a model names as `<part>_source: fallback` (EfficientAD: its teacher,
        # its penalty data) was substituted; else the backbone was
        parts = [
            k.removesuffix("_source")
            for k, v in weights.items()
            if k.endswith("_source") and v == "fallback"
        ]
        what = (
            ", ".join(f"substitute {part}" for part in parts)
            or weights.get("backbone")
            or "another backbone"
        )
        reason = weights.get("reason") or weights.get("fallback_reason")
        label = weights.get("weights")
        detail = "".join(f"; {x}" for x in (label, reason) if x)
        return f"no (fallback weights: {what}{detail})"
    if result["weights_source"] != "pretrained":
        return f"no (weights source: {result['weights_source']})"
    return f"no (profile {result['profile']}: settings differ from the paper's)"


def environment(run, results, latency) -> dict:
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


def inference_path_tables(paths, models: list[str], categories: list[str]) -> list:
    """Per (model, category), in category order: every inference path with p50, p95,
    img/s, AUROC, its delta to torch-fp32 and its speed-up over anomalib's two paths (p50
    ratio), and the deployable path (fastest within AUROC_TOLERANCE of fp32)."""
    tables = []
    for category in categories:
        for model in models:
            if paths.get((model, category)):
                tables.append(_inference_table(model, category, paths[(model, category)]))
    return tables


def _inference_table(model: str, category: str, results: list[LatencyResult]) -> dict:
    best = deployable(results)
    anomalib_p50 = {r.path: r.p50_ms for r in results if r.path in ANOMALIB_PATHS and r.p50_ms}
    table_rows = []
    for r in results:
        speedup = {
            path: (p50 / r.p50_ms if r.p50_ms else None) for path, p50 in anomalib_p50.items()
        }
        table_rows.append({"row": r, "speedup": speedup, "deployable": r is best})
    return {
        "model": model,
        "category": category,
        "rows": table_rows,
        "anomalib_paths": [p for p in ANOMALIB_PATHS if p in anomalib_p50],
        "deployable": best,
        "tolerance": AUROC_TOLERANCE,
        "hardware": sorted({r.hardware for r in results if r.hardware}),
    }
