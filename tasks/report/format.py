"""How the report names and formats things: models, metrics, numbers, overlays, durations.

Example:
    >>> model_name("efficientad"), format_number(0.98765)
    ('EfficientAD', '0.988')
"""

from __future__ import annotations

import base64
import io
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from tasks.models import registry

log = logging.getLogger(__name__)

OVERLAY_MAX_PX = 360  # overlays are downscaled so the report stays small


METRIC_NAMES = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "image_f1": "Image F1",
    "pixel_f1": "Pixel F1",
    "aupro": "AUPRO",
}


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
    """The model's display name from its registry entry; unknown names as they are."""
    entry = registry.MODELS.get(model)
    return entry.display_name if entry is not None else model


def format_number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def thin_curve(points: list[tuple[float, float]], max_points: int = 400) -> list[tuple]:
    if len(points) <= max_points:
        return points
    step = (len(points) - 1) / (max_points - 1)
    return [points[round(i * step)] for i in range(max_points)]


def short_run_id(run_id: str) -> str:
    return run_id if len(run_id) <= 16 else "…" + run_id[-15:]


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def clean(row: dict) -> dict:
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
