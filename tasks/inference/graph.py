"""An anomalib model as the plain tensor graph every inference path runs.

`model_graph` turns an anomalib module (or a bare torch model) into `ScoreAndMap`:
images in [0, 1] -> (raw score per image, anomaly map), with the model's own
pre-processing transform in front. A model may say how its exported (OpenVINO) form
differs from its torch form with a `Deployment` (`tasks.inference.deployment`), which
its registry entry holds (`tasks.models.registry`): a cheaper graph with the same
numbers, and which of its ops int8 quantisation must leave in fp32. The default changes
nothing.

Example:
    >>> graph = model_graph(model)                      # what the torch paths run
    >>> graph = model_graph(model, entry.deployment)    # what the OpenVINO paths export
    >>> scores, maps = graph(images)
"""

from __future__ import annotations

import torch
from anomalib.models.components import AnomalibModule
from torch import nn

from tasks.inference.deployment import Deployment


class ScoreAndMap(nn.Module):
    """An anomalib model as plain tensors: images in [0, 1] -> (score (N,), map (N,1,H,W)).

    `pre_process` is the anomalib pre-processor's transform (normalise, crop) when the
    model has one; post-processing (score normalisation) is left out: it is monotone,
    so the image AUROC does not depend on it."""

    def __init__(self, model: nn.Module, pre_process: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.pre_process = pre_process

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pre_process is not None:
            images = self.pre_process(images)
        result = self.model(images)
        return result.pred_score.reshape(-1), result.anomaly_map


def model_graph(
    model: AnomalibModule | nn.Module, deployment: Deployment | None = None
) -> ScoreAndMap:
    """The torch computation of an anomalib module (or of a bare torch model), in eval
    mode; with a `deployment`, in its exported form where it has one."""
    inner = model.model if isinstance(model, AnomalibModule) else model
    if deployment is not None and deployment.export_graph is not None:
        inner = deployment.export_graph(inner) or inner
    if isinstance(model, AnomalibModule):
        pre = model.pre_processor
        transform = getattr(pre, "transform", None) if pre is not None else None
        return ScoreAndMap(inner, transform).eval()
    return ScoreAndMap(inner).eval()
