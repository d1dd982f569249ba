"""What every inference path builder is given (`PathContext`) and gives (`BuiltPath`).

A builder (`tasks.inference.paths.BUILDERS`) turns a trained model into a ready path:
image files -> raw scores. The context is shared by the builders of one (model,
category), so expensive work (the fp32 OpenVINO IR) is done once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from anomalib.models.components import AnomalibModule

from tasks.inference.deployment import AS_TRAINED, Deployment
from tasks.runtime.profiles import InferenceSettings

FileScorer = Callable[[Sequence[Path]], np.ndarray]

# the precision each path runs in (anomalib-openvino states what OpenVINO chose)
PRECISIONS = {
    "torch-fp32": "fp32",
    "torch-bf16": "bf16",
    "torch-fp16-graph": "fp16",
    "openvino-fp32": "fp32",
    "openvino-bf16": "bf16",
    "openvino-int8": "int8",
    "anomalib-torch": "fp32",
    "anomalib-openvino": "fp32",
}


class PathUnsupported(RuntimeError):
    """The device cannot run this path (e.g. no bf16 units); stored as `skipped`."""


@dataclass
class BuiltPath:
    """A ready path: files -> raw scores, plus what it wrote and how it was made."""

    name: str
    precision: str
    score_files: FileScorer
    device: str
    threads: int
    batchable: bool = True  # anomalib's inferencers take one image at a time
    artifacts: dict[str, str] = field(default_factory=dict)
    calibration_paths: list[str] = field(default_factory=list)


@dataclass
class PathContext:
    """What every path builder may use; shared so expensive work (IR, ONNX) is done once."""

    model: AnomalibModule
    image_size: int
    train_paths: list[Path]
    out_dir: Path
    settings: InferenceSettings
    device: str
    threads: int
    torch_export: Path | None = None
    anomaly_paths: list[Path] = field(default_factory=list)  # validation anomalies
    cache: dict = field(default_factory=dict)
    deployment: Deployment = AS_TRAINED  # the model's exported form (its registry entry)
