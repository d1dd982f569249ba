"""EfficientAD-S in the form its OpenVINO paths export, and what int8 leaves in fp32.

EfficientAD's registry entry names its deployment (`tasks.inference.deployment`): its
exported graph is `deployed_graph`, and int8 quantisation keeps the arithmetic between
its networks (teacher-student and autoencoder distances, map normalisation, merge) in
fp32. Its anomalies are small
teacher-student differences that 8-bit steps erase: quantised whole, its test AUROC
fell far below fp32's; with those ops in fp32 it stays close, at little cost
(docs/performance.md, int8). `DeployedEfficientAd` keeps those ops at its top level.

Example:
    >>> deployed = DeployedEfficientAd(model.model).eval()
    >>> deployed(images).pred_score  # anomalib's scores, to float rounding
"""

from __future__ import annotations

import torch
from anomalib.data import InferenceBatch
from anomalib.models.image.efficient_ad.torch_model import (
    EfficientAdModel,
    SmallPatchDescriptionNetwork,
    imagenet_norm_batch,
)
from torch import nn
from torch.nn import functional as F  # noqa: N812


def _conv_part(conv: nn.Conv2d, start: int, stop: int) -> nn.Conv2d:
    """Output channels [start, stop) of `conv`, as a conv of their own."""
    part = nn.Conv2d(conv.in_channels, stop - start, conv.kernel_size, conv.stride, conv.padding)
    part.weight.data = conv.weight.data[start:stop].clone()
    part.bias.data = conv.bias.data[start:stop].clone()
    return part


class DeployedEfficientAd(nn.Module):
    """anomalib's EfficientAD-S inference, the same weights and numbers (to float rounding), in
    the form the OpenVINO paths export, which runs faster (docs/performance.md).

    - The student's last convolution is split into its teacher half and its autoencoder
      half, so the graph does not copy a (768, 56, 56) output apart.
    - The quantile normalisation, fixed after training, is folded into constants and
      both maps are merged at 56 x 56 before the one upsampling to the image size
      (bilinear upsampling and zero padding commute with the affine merge; the padding
      takes the merged value of a zero distance). anomalib upsamples and normalises
      each map at full size, behind tensor `where`s that the graph evaluates per image.

    The torch paths keep anomalib's own forward: they are the reference whose AUROC the
    exported paths are held to."""

    def __init__(self, model: EfficientAdModel) -> None:
        super().__init__()
        channels = model.teacher_out_channels
        student = model.student
        self.teacher = model.teacher
        self.student_body = nn.Sequential(
            student.conv1, nn.ReLU(), student.avgpool1,
            student.conv2, nn.ReLU(), student.avgpool2,
            student.conv3, nn.ReLU(),
        )  # fmt: skip
        self.student_st = _conv_part(student.conv4, 0, channels)
        self.student_ae = _conv_part(student.conv4, channels, 2 * channels)
        self.ae = model.ae
        self.pad_maps = model.pad_maps
        mean, std = torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
        if model.is_set(model.mean_std):
            mean, std = model.mean_std["mean"].detach(), model.mean_std["std"].detach()
        self.register_buffer("teacher_mean", mean.clone())
        self.register_buffer("teacher_std", std.clone())
        scale_st = scale_ae = 1.0
        offset = 0.0
        if model.is_set(model.quantiles):
            q = {key: float(value.detach()) for key, value in model.quantiles.items()}
            scale_st = 0.1 / (q["qb_st"] - q["qa_st"])
            scale_ae = 0.1 / (q["qb_ae"] - q["qa_ae"])
            offset = -q["qa_st"] * scale_st - q["qa_ae"] * scale_ae
        # anomaly map = 0.5 * normalised map_st + 0.5 * normalised map_stae
        self.scale_st, self.scale_ae, self.offset = 0.5 * scale_st, 0.5 * scale_ae, 0.5 * offset

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """EfficientAD-S (the small networks); other models keep their own forward."""
        return isinstance(model, EfficientAdModel) and isinstance(
            model.student, SmallPatchDescriptionNetwork
        )

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        image_size = images.shape[-2:]
        teacher = (self.teacher(images) - self.teacher_mean) / self.teacher_std
        body = self.student_body(imagenet_norm_batch(images))
        reconstruction = self.ae(images, image_size)
        map_st = torch.mean((teacher - self.student_st(body)) ** 2, dim=1, keepdim=True)
        map_ae = torch.mean((reconstruction - self.student_ae(body)) ** 2, dim=1, keepdim=True)
        merged = self.scale_st * map_st + self.scale_ae * map_ae + self.offset
        if self.pad_maps:
            merged = F.pad(merged, (4, 4, 4, 4), value=self.offset)
        anomaly_map = F.interpolate(merged, size=image_size, mode="bilinear")
        return InferenceBatch(
            pred_score=torch.amax(anomaly_map, dim=(-2, -1)), anomaly_map=anomaly_map
        )


def deployed_graph(model: nn.Module) -> nn.Module | None:
    """`DeployedEfficientAd` of EfficientAD-S; None for other sizes (anomalib's forward)."""
    return DeployedEfficientAd(model) if DeployedEfficientAd.supports(model) else None
