"""EfficientAD scoring image tensors in one precision: the benchmark scripts' and tests' entry.

`efficientad_inference` gives a callable that scores a batch of already-decoded images
with the torch module (fp32, bf16 autocast) or its OpenVINO IR (fp32, bf16, int8), the
way the inference paths build them (`tasks.inference`), EfficientAD's deployment form
included. The benchmark flow times files end to end instead (`tasks.inference.measure`).

Example:
    >>> score = efficientad_inference(model, "bf16")
    >>> score(images).pred_score  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import AnomalibModule
from torch import nn

from tasks.inference.openvino_backend import openvino_scorer
from tasks.inference.torch_backend import torch_scorer
from tasks.models.efficientad.entry import EFFICIENTAD

# raw torch module in, scores out
Precision = Literal["fp32", "bf16", "openvino-fp32", "openvino-bf16", "openvino-int8"]


def efficientad_inference(
    model: AnomalibModule | nn.Module,
    precision: Precision = "fp32",
    *,
    image_size: int = 256,
    calibration_images: torch.Tensor | None = None,
    threads: int | None = None,
) -> Callable[[torch.Tensor], InferenceBatch]:
    """A callable scoring a batch of images (N, 3, image_size, image_size) in [0, 1].

    Returns anomalib's InferenceBatch with raw `pred_score` (N,) and `anomaly_map`
    (N, 1, H, W), as the torch model gives them (before anomalib's post-processing).
    "bf16" runs the torch model under CPU autocast; "openvino-*" converts it with OpenVINO;
    "openvino-int8" quantises with NNCF on `calibration_images` (training images, no
    labels needed). `model` is the EfficientAd module or its torch model: the EfficientAD
    pre-processor only resizes, so the images go to the torch model as they are.
    """
    torch_model = getattr(model, "model", model)
    if precision in ("fp32", "bf16"):
        return torch_scorer(torch_model, precision)
    if not precision.startswith("openvino-"):
        msg = f"unknown precision {precision!r}: choose one of {Precision.__args__}"
        raise ValueError(msg)
    return openvino_scorer(
        torch_model, precision, image_size, calibration_images, threads, EFFICIENTAD.deployment
    )
