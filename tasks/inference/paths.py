"""The inference path registry: every path's name and its builder.

A profile names the paths it times (`InferenceSettings.paths`, names from `PATHS`);
`torch-fp32` is always measured first: it is the AUROC reference. A builder that finds
its path cannot run on this hardware (no bf16 units, no CUDA) raises `PathUnsupported`
and the path is stored as `skipped` with the reason; any other error stores it as
`failed`. To add a path: write its builder (context in, `BuiltPath` out) in a backend
module and name it here and in `tasks.runtime.profiles.InferencePath`.

Example:
    >>> BUILDERS["openvino-int8"](ctx).score_files(test_paths)
"""

from __future__ import annotations

from collections.abc import Callable

from tasks.inference.anomalib_backend import anomalib_openvino_path, anomalib_torch_path
from tasks.inference.openvino_backend import openvino_path
from tasks.inference.path_types import BuiltPath, PathContext
from tasks.inference.torch_backend import torch_path
from tasks.runtime.profiles import ALL_INFERENCE_PATHS

PATHS = ALL_INFERENCE_PATHS  # one list, kept by the settings that name them
REFERENCE_PATH = "torch-fp32"

BUILDERS: dict[str, Callable[[PathContext], BuiltPath]] = {
    "torch-fp32": lambda ctx: torch_path(ctx, "torch-fp32"),
    "torch-bf16": lambda ctx: torch_path(ctx, "torch-bf16"),
    "torch-fp16-graph": lambda ctx: torch_path(ctx, "torch-fp16-graph"),
    "openvino-fp32": lambda ctx: openvino_path(ctx, "fp32"),
    "openvino-bf16": lambda ctx: openvino_path(ctx, "bf16"),
    "openvino-int8": lambda ctx: openvino_path(ctx, "int8"),
    "anomalib-torch": anomalib_torch_path,
    "anomalib-openvino": anomalib_openvino_path,
}
