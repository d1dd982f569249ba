"""How the values of a result become column values: finite floats, labels, metric rows.

The table declarations (`tasks.results.store.schema`) name, per column, how its value
is read from a row object; the few readers that convert live here.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from tasks.results.types import ModelResult

# Metrics every result has a row for, so the wide view and the report never miss one.
CORE_METRICS = ("image_auroc", "pixel_auroc", "image_f1", "pixel_f1", "aupro")


def as_float(value: Any) -> float | None:
    """A finite float, or None for None / strings / NaN (a NaN metric is not a value)."""
    if value is None or isinstance(value, str | bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def as_label(value: Any) -> int | None:
    """0 for good/normal, 1 for anything else; None when unknown."""
    if value is None:
        return None
    if isinstance(value, str):
        return 0 if value.lower() in ("good", "normal", "0") else 1
    return int(value)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def weights_source(result: ModelResult) -> str:
    return str(result.weights.get("source", "unknown"))


def paper_configuration(result: ModelResult) -> bool:
    """A fallback backbone is never the paper's configuration, whatever else is claimed."""
    return weights_source(result) == "pretrained" and bool(
        result.weights.get("paper_configuration", result.profile == "paper")
    )


def result_status(result: ModelResult) -> str:
    available = any(as_float(v) is not None for v in result.metrics.values())
    return "completed" if available else "no_metrics"


def metric_rows(result: ModelResult) -> list[tuple[str, float | None, bool, str | None]]:
    """(metric, value, available, note) for every metric, the core ones always present.

    A string value `<metric>_method` (e.g. image_f1_method) becomes the note of
    `<metric>`; a missing or None value is stored as NULL with available=False and a
    note saying why: "no masks" for pixel metrics when settings["masks"] is False, else
    the first of the result's notes that names the metric."""
    values = dict(result.metrics)
    methods = {
        name.removesuffix("_method"): str(values.pop(name))
        for name in list(values)
        if name.endswith("_method") and isinstance(values[name], str)
    }
    rows = []
    for metric in dict.fromkeys([*CORE_METRICS, *values]):
        raw = values.get(metric)
        value = as_float(raw)
        if value is not None:
            note = f"method: {methods[metric]}" if metric in methods else None
            rows.append((metric, value, True, note))
            continue
        reason = next((n for n in result.notes if metric in n), None)
        if result.settings.get("masks") is False and metric.startswith(("pixel_", "aupro")):
            reason = "no masks"
        if isinstance(raw, str):
            reason = raw
        note = f"not available: {reason}" if reason else "not available"
        rows.append((metric, None, False, note))
    return rows
