"""EfficientAD's training losses with less work per step, and the training precision.

EfficientAD (Batzner et al., WACV 2024, Algorithm 1) trains, at each step, a student
against a frozen teacher on one training image (hard-feature loss on the teacher's
channels), on one penalty image (the student's teacher channels pushed to zero), and an
autoencoder plus the student's other channels on a colour-jittered copy of the image.
anomalib's `EfficientAdModel.compute_losses` runs each network once per image. Here the
same losses, from the same random draws, cost less:

- the student's last convolution computes only the channels a loss reads: the first
  half (teacher-like) for the image and the penalty image, the second half (autoencoder-
  like) for the jittered copy. On EfficientAD-S that is half of its largest convolution,
  about a fifth of a training step's arithmetic;
- the image and the penalty image go through the student as one batch, the image and
  the jittered copy through the teacher as one batch;
- the teacher's (frozen, standardised) output for a training image is kept between
  epochs, within a memory budget, so each image costs one teacher forward per run;
- the 99.9 % quantile of the hard-feature loss takes the top-k values instead of sorting
  all 1.4 million distances.

`resolve_training_precision` picks bf16 autocast where the hardware runs it faster than
fp32 (AMX tiles on a CPU, bf16 support on a GPU): on a CPU with AVX-512 BF16 but no AMX,
oneDNN's bf16 convolutions are slower than its fp32 ones (docs/performance.md).

Example:
    >>> loss_st, loss_ae, loss_stae = efficientad_losses(model.model, images, penalty)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.image.efficient_ad.torch_model import (
    EfficientAdModel,
    MediumPatchDescriptionNetwork,
    SmallPatchDescriptionNetwork,
    imagenet_norm_batch,
    reduce_tensor_elems,
)

HARD_QUANTILE = 0.999  # EfficientAD's hard-feature mining: the top 0.1 % of distances
TEACHER_CACHE_BYTES = 512 * 2**20


def cpu_has_amx() -> bool:
    """Whether the CPU exposes AMX tiles (bf16 matrix units) to this process."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def resolve_training_precision(precision: str, device: str) -> str:
    """Lightning precision for `precision` on `device` ("cpu" or "cuda").

    "auto": "bf16-mixed" on a GPU with bf16 or a CPU with AMX, else "32-true".
    """
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_amx() else "32-true"


def cpu_training_layout() -> torch.memory_format:
    """EfficientAD's training layout on this CPU: channels-last where torch runs AVX-512
    kernels, contiguous (NCHW) elsewhere.

    oneDNN's convolutions and their gradients run at different speeds in the two layouts,
    and which is quicker depends on the vector width (measured with
    `python -m benchmarks.efficientad_train_speed --losses ours`; docs/performance.md).
    """
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return torch.channels_last
    return torch.contiguous_format


def pdn_forward(pdn: torch.nn.Module, images: torch.Tensor, channels: slice) -> torch.Tensor:
    """A patch description network's output, computing only `channels` in its last layer.

    Same layers as anomalib's `SmallPatchDescriptionNetwork.forward` and
    `MediumPatchDescriptionNetwork.forward`; the output equals `pdn(images)[:, channels]`.
    """
    if not isinstance(pdn, SmallPatchDescriptionNetwork | MediumPatchDescriptionNetwork):
        raise TypeError(f"not an EfficientAD patch description network: {type(pdn).__name__}")
    x = imagenet_norm_batch(images)
    x = pdn.avgpool1(F.relu(pdn.conv1(x)))
    x = pdn.avgpool2(F.relu(pdn.conv2(x)))
    x = F.relu(pdn.conv3(x))
    if isinstance(pdn, SmallPatchDescriptionNetwork):
        last = pdn.conv4
    else:
        x = F.relu(pdn.conv5(F.relu(pdn.conv4(x))))
        last = pdn.conv6
    bias = last.bias[channels] if last.bias is not None else None
    return F.conv2d(x, last.weight[channels], bias, last.stride, last.padding)


def hard_feature_loss(distances: torch.Tensor, quantile: float = HARD_QUANTILE) -> torch.Tensor:
    """Mean of the distances at or above their `quantile` (torch.quantile's linear rule):
    the ceil(q (n - 1))-th smallest and all above it, found by top-k instead of a sort."""
    flat = reduce_tensor_elems(distances).flatten()
    count = flat.numel() - math.ceil(quantile * (flat.numel() - 1))
    return torch.topk(flat, count, sorted=False).values.mean()


class TeacherCache:
    """Standardised teacher outputs of training images by path, up to `max_bytes`."""

    def __init__(self, max_bytes: int = TEACHER_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._outputs: dict[str, torch.Tensor] = {}
        self._bytes = 0

    def get(self, keys: Sequence[str] | None) -> torch.Tensor | None:
        if not keys or any(key not in self._outputs for key in keys):
            return None
        return torch.cat([self._outputs[key] for key in keys])

    def put(self, keys: Sequence[str] | None, outputs: torch.Tensor) -> None:
        if not keys:
            return
        for key, output in zip(keys, outputs.detach().float(), strict=True):
            size = output.numel() * output.element_size()
            if key not in self._outputs and self._bytes + size <= self.max_bytes:
                self._outputs[key] = output[None].clone()
                self._bytes += size

    def transform(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace every kept output by `fn(output)` (e.g. standardise raw outputs)."""
        self._outputs = {key: fn(output) for key, output in self._outputs.items()}

    def clear(self) -> None:
        self._outputs.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._outputs)


def efficientad_losses(
    model: EfficientAdModel,
    images: torch.Tensor,
    penalty_images: torch.Tensor,
    teacher_cache: TeacherCache | None = None,
    keys: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss_st, loss_ae, loss_stae) of anomalib's `EfficientAdModel` in training mode.

    Same losses and the same random draws (the jitter choice, then the autoencoder's
    dropout) as `model(images, penalty_images)`, for images under about 850 px (above,
    anomalib subsamples the hard-loss distances at random, here one draw later);
    `keys` (the images' paths) index `teacher_cache`.
    """
    channels = model.teacher_out_channels
    teacher_part, ae_part = slice(0, channels), slice(channels, None)
    jittered = model.choose_random_aug_image(images)
    cached = teacher_cache.get(keys) if teacher_cache is not None else None
    with torch.no_grad():
        if cached is None:
            teacher = model._normalize_teacher(model.teacher(torch.cat([images, jittered])))  # noqa: SLF001
            teacher_images, teacher_jittered = teacher.float().split(len(images))
            if teacher_cache is not None:
                teacher_cache.put(keys, teacher_images)
        else:
            teacher_images = cached.to(images.device)
            teacher_jittered = model._normalize_teacher(model.teacher(jittered)).float()  # noqa: SLF001
    student = pdn_forward(model.student, torch.cat([images, penalty_images]), teacher_part)
    student_images, student_penalty = student.float().split([len(images), len(penalty_images)])
    loss_hard = hard_feature_loss((teacher_images - student_images) ** 2)
    loss_st = loss_hard + torch.mean(student_penalty**2)

    ae_jittered = model.ae(jittered, images.shape[-2:]).float()
    student_jittered = pdn_forward(model.student, jittered, ae_part).float()
    loss_ae = torch.mean((teacher_jittered - ae_jittered) ** 2)
    loss_stae = torch.mean((ae_jittered - student_jittered) ** 2)
    return loss_st, loss_ae, loss_stae
